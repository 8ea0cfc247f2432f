#!/usr/bin/env bash
# Builds the Debian 12 system that tests/system_vm.rs hibernates, or takes it
# from the cache, and prints the directory that holds it:
#
#   tests/vm/debian-system.sh VARIANT BZIMAGE DEB WORKLOAD
#     -> /var/cache/kjump/debian-system/VARIANT-HASH/{disk.raw,initrd.img,release,build.log}
#
# VARIANT is the initramfs generator: initramfs-tools (update-initramfs) or
# dracut. BZIMAGE is the test kernel (tests/vm/build-kernel.sh; its .config
# beside it), DEB the kjump package (packaging/deb/build.sh), WORKLOAD the
# static kjump-workload program (tests/vm/workload.c).
#
# Two stages, each cached by a hash of its inputs (run as root):
# 1. base-VARIANT-HASH.tar: mmdebstrap of bookworm (minbase) with systemd,
#    udev, dbus, the initramfs generator, kexec-tools and a few tools. About
#    3 minutes, once.
# 2. the system: the base unpacked; the kernel installed as the system's
#    kernel (/boot/vmlinuz-RELEASE, its config and System.map, an empty
#    /lib/modules/RELEASE: everything is built in); the initramfs made by the
#    generator; then kjump installed with `apt-get install ./kjump_*.deb` in a
#    chroot, removed, and installed again, checking each time that the
#    package's update-initramfs trigger rebuilt the initramfs with kjump's
#    resume step, and without it after the removal (lines starting with
#    "package:" in build.log); a serial console that logs root in, the
#    workload as a systemd service (kjump-workload.service: 512 MiB, seed 42),
#    and a GPT disk: partition 1 "root" (ext4, 1.5 GiB, /dev/vda1), partition
#    2 "kjump" (1.6 GiB, /dev/disk/by-partlabel/kjump, kjump.conf's default).
#    Under a minute. Older systems of the variant are removed.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

die() {
	echo "debian-system.sh: $*" >&2
	exit 1
}

(($# == 4)) || die "usage: $0 initramfs-tools|dracut BZIMAGE DEB WORKLOAD"
variant=$1 bzimage=$2 deb=$3 workload=$4
case $variant in
initramfs-tools) generator=(initramfs-tools zstd) ;;
dracut) generator=(dracut) ;;
*) die "unknown variant ${variant@Q} (initramfs-tools or dracut)" ;;
esac
[[ $EUID -eq 0 ]] || die "run as root (chroot, mkfs)"
for f in "$bzimage" "$(dirname "$bzimage")/.config" "$deb" "$workload"; do
	[[ -f $f ]] || die "$f is missing"
done
for tool in mmdebstrap sgdisk mkfs.ext4 chroot; do
	command -v "$tool" >/dev/null || die "$tool is missing (tests/setup.sh installs it)"
done

cache=${KJUMP_CACHE:-/var/cache/kjump}/debian-system
mkdir -p "$cache"
exec 9>"$cache/.lock"
flock 9

packages=(systemd systemd-sysv udev dbus "${generator[@]}" kexec-tools e2fsprogs procps util-linux kmod)
base_hash=$(printf '%s\n' bookworm minbase "${packages[@]}" | sha256sum | cut -c1-12)
base=$cache/base-$variant-$base_hash.tar
if [[ ! -f $base ]]; then
	echo "debian-system.sh: building $base with mmdebstrap (a few minutes, once)" >&2
	mmdebstrap --variant=minbase --include="$(
		IFS=,
		echo "${packages[*]}"
	)" bookworm "$cache/.base-$variant.tmp.tar" >&2 || die "mmdebstrap failed"
	mv "$cache/.base-$variant.tmp.tar" "$base"
fi

inputs=$(sha256sum "$bzimage" "$(dirname "$bzimage")/.config" "$deb" "$workload" "${BASH_SOURCE[0]}" | cut -c1-64)
hash=$(printf '%s\n' "$base_hash" "$inputs" | sha256sum | cut -c1-12)
dest=$cache/$variant-$hash
if [[ -f $dest/disk.raw ]]; then
	echo "$dest"
	exit 0
fi

tmp=$(mktemp -d "$cache/.build-$variant.XXXXXX")
root=$tmp/root
log=$tmp/build.log
mounts=()
cleanup() {
	local m
	for ((i = ${#mounts[@]} - 1; i >= 0; i--)); do
		umount -l "${mounts[i]}" 2>/dev/null || true
	done
	[[ -n ${keep:-} ]] || rm -rf "$tmp"
}
trap cleanup EXIT
note() { echo "$*" | tee -a "$log" >&2; }
in_root() { chroot "$root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive "$@"; }

mkdir "$root"
tar -C "$root" --numeric-owner -xpf "$base"
for m in proc sys dev; do
	mount --rbind "/$m" "$root/$m"
	mounts+=("$root/$m")
done
# kexec-tools must not arm a kexec reboot in the guest.
sed -i 's/^LOAD_KEXEC=.*/LOAD_KEXEC=false/' "$root/etc/default/kexec"
# The image boots QEMU's virtual machine, not this one: a generic initramfs.
if [[ $variant == dracut ]]; then
	echo 'hostonly="no"' >"$root/etc/dracut.conf.d/10-kjump-test.conf"
fi
# No service starts inside the chroot.
printf '#!/bin/sh\nexit 101\n' >"$root/usr/sbin/policy-rc.d"
chmod 755 "$root/usr/sbin/policy-rc.d"

# The kernel, as a distribution kernel package would install it.
release=$(file -bL "$bzimage" | sed -n 's/.*, version \([^ ]*\) .*/\1/p')
[[ -n $release ]] || die "cannot read the kernel release from $bzimage"
cp "$bzimage" "$root/boot/vmlinuz-$release"
cp "$(dirname "$bzimage")/.config" "$root/boot/config-$release"
[[ -f $(dirname "$bzimage")/System.map ]] && cp "$(dirname "$bzimage")/System.map" "$root/boot/System.map-$release"
# Everything is built in: no modules, and empty lists of them.
mkdir -p "$root/lib/modules/$release"
touch "$root/lib/modules/$release/"{modules.order,modules.builtin,modules.builtin.modinfo}
in_root depmod -a "$release" >>"$log" 2>&1

initrd=/boot/initrd.img-$release
make_initrd() {
	case $variant in
	initramfs-tools) in_root update-initramfs -c -k "$release" ;;
	dracut) in_root dracut --force --kver "$release" "$initrd" ;;
	esac
}
has_kjump() {
	local listing
	case $variant in
	initramfs-tools) listing=$(in_root lsinitramfs "$initrd") ;;
	dracut) listing=$(in_root lsinitrd "$initrd") ;;
	esac
	grep -Eq '(^| )usr/bin/kjump$' <<<"$listing"
}
stamp() { stat -c %Y.%s "$root$initrd"; }

note "debian-system.sh: $variant system with Linux $release and $(basename "$deb")"
make_initrd >>"$log" 2>&1 || die "making the initramfs failed (see $log)"
has_kjump && die "the initramfs has kjump before the package is installed"
cp "$deb" "$root/tmp/"
pkg=/tmp/$(basename "$deb")
before=$(stamp)
sleep 1
in_root apt-get install -y "$pkg" >>"$log" 2>&1 || die "apt-get install $pkg failed (see $log)"
[[ $(stamp) != "$before" ]] || die "installing kjump did not rebuild the initramfs"
has_kjump || die "installing kjump left no resume step in the initramfs"
note "package: installed with apt-get install ./$(basename "$deb"); the trigger rebuilt $initrd with kjump's resume step"
in_root apt-get remove -y kjump >>"$log" 2>&1 || die "apt-get remove kjump failed (see $log)"
has_kjump && die "removing kjump left its resume step in the initramfs"
for f in /usr/share/initramfs-tools/hooks/kjump /usr/lib/dracut/modules.d/90kjump /usr/bin/kjump; do
	[[ ! -e $root$f ]] || die "removing kjump left $f"
done
note "package: removed; the trigger rebuilt $initrd without kjump's resume step"
in_root apt-get install -y "$pkg" >>"$log" 2>&1 || die "apt-get install $pkg (again) failed (see $log)"
has_kjump || die "installing kjump again left no resume step in the initramfs"
note "package: installed again; the initramfs has kjump's resume step"
rm -f "$root$pkg" "$root/usr/sbin/policy-rc.d"

# The machine the test drives: root on the serial console, the workload.
install -m 755 "$workload" "$root/usr/local/bin/kjump-workload"
mkdir -p "$root/etc/systemd/system/serial-getty@ttyS0.service.d" "$root/etc/systemd/system/multi-user.target.wants"
cat >"$root/etc/systemd/system/serial-getty@ttyS0.service.d/autologin.conf" <<'EOF'
[Service]
ExecStart=
ExecStart=-/sbin/agetty --autologin root --noclear --keep-baud 115200,38400,9600 %I $TERM
EOF
cat >"$root/etc/systemd/system/kjump-workload.service" <<'EOF'
[Unit]
Description=kjump test workload: 512 MiB of memory re-checked, a counter, a log on the root filesystem

[Service]
ExecStartPre=/bin/mkdir -p /var/lib/kjump-workload
ExecStart=/usr/local/bin/kjump-workload 512 42 /var/lib/kjump-workload/log /run/kjump-workload.status

[Install]
WantedBy=multi-user.target
EOF
ln -sf ../kjump-workload.service "$root/etc/systemd/system/multi-user.target.wants/kjump-workload.service"
# Timers that would only add noise to a test machine.
for unit in apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer fstrim.timer; do
	ln -sf /dev/null "$root/etc/systemd/system/$unit"
done
echo 'kjump-test' >"$root/etc/hostname"
echo '/dev/vda1 / ext4 errors=remount-ro 0 1' >"$root/etc/fstab"
mkdir -p "$root/var/log/journal"
in_root passwd -d root >>"$log" 2>&1
echo "$release" >"$tmp/release"
cp "$root$initrd" "$tmp/initrd.img"

for ((i = ${#mounts[@]} - 1; i >= 0; i--)); do
	umount -l "${mounts[i]}"
done
mounts=()
root_mib=1536 disk_mib=3200
mkfs.ext4 -q -F -L root -d "$root" "$tmp/root.img" "${root_mib}M" >>"$log" 2>&1 || die "mkfs.ext4 -d failed (see $log)"
rm -rf "$root"
truncate -s "${disk_mib}M" "$tmp/disk.raw"
sgdisk -n "1:1M:+${root_mib}M" -c 1:root -t 1:8300 -n 2:0:0 -c 2:kjump -t 2:8300 "$tmp/disk.raw" >>"$log" 2>&1 ||
	die "sgdisk failed (see $log)"
dd if="$tmp/root.img" of="$tmp/disk.raw" bs=1M seek=1 conv=notrunc,sparse status=none
rm "$tmp/root.img"
note "debian-system.sh: built in $SECONDS s"

# Older systems of this variant only take room.
find "$cache" -mindepth 1 -maxdepth 1 -type d -name "$variant-*" -exec rm -rf {} +
mv "$tmp" "$dest"
trap - EXIT
echo "$dest"
