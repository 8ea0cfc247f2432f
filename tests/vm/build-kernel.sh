#!/usr/bin/env bash
# Print the path of a kernel image (bzImage) that can run kjump's VM tests,
# building it first when it is not cached yet (run as root the first time: it
# installs Debian packages). The same kernel serves as the hibernating kernel A,
# the capture kernel B and the restore kernel R.
#
#   tests/vm/build-kernel.sh [SERIES]  -> /var/cache/kjump/kernel/<pkgversion>-<hash12>/bzImage
#
# SERIES is the kernel series the tests run on:
#   6.12  (default) Debian 12's linux-source-6.12, installed with apt from
#         this machine's own suites
#   7.2   Debian sid's linux-source-7.2, fetched by tests/vm/sid-source.sh
#         through a source list and lists directory of its own; nothing is
#         installed from sid
#
# No Debian kernel enables CONFIG_KEXEC_JUMP, so both are built from source
# with the same configuration: x86_64_defconfig + kvm_guest.config + the
# fragment below (kexec jump, crash kernel, /dev/mem, virtio disk, serial
# console; no DRM, sound, wireless, USB or debug info). After `make
# olddefconfig` every option the fragment wants on is checked to really be =y:
# Kconfig silently drops an option whose dependencies are missing, and the
# build fails loudly naming it instead. Building 6.12 takes 8.5 to 14 minutes
# on 2 cores, 7.2 about as long.
#
# The cache key is the source package version plus a hash of the fragment, so
# editing the fragment builds a new kernel beside the old one, and each series
# has its own entries. The cache directory keeps bzImage, .config, System.map
# and build.log; the source tree is deleted after a successful build. The build
# runs in a temporary directory that is renamed into place only when complete.
#
# Environment:
#   KJUMP_CACHE   cache root (default /var/cache/kjump)
#
# stdout carries the path and nothing else; progress and errors go to stderr,
# the compiler's output to a log file whose tail is shown on failure.
set -euo pipefail

series=${1:-6.12}
case $series in
6.12 | 7.2) ;;
*)
	echo "build-kernel.sh: unknown kernel series ${series@Q} (6.12 or 7.2)" >&2
	exit 2
	;;
esac
src_pkg=linux-source-$series
sid_source=$(dirname "${BASH_SOURCE[0]}")/sid-source.sh
build_deps=(build-essential bc bison flex libelf-dev libssl-dev cpio kmod xz-utils dwarves)
cache=${KJUMP_CACHE:-/var/cache/kjump}/kernel

# Configuration on top of the base targets. One OPTION=VALUE a line: y must
# come out as =y, n must come out unset, anything else is set as a value.
base_targets=(x86_64_defconfig kvm_guest.config)
fragment='
# kexec jump: A loads B with KEXEC_PRESERVE_CONTEXT and is jumped back into
KEXEC=y
KEXEC_FILE=y
KEXEC_JUMP=y
HIBERNATION=y
PM_SLEEP=y
PM_SLEEP_SMP=y
HOTPLUG_CPU=y
SMP=y
RELOCATABLE=y
# crashkernel= region, and /proc/vmcore for kdump tests
CRASH_DUMP=y
PROC_VMCORE=y
# B and R read and write A'"'"'s RAM through /dev/mem (with iomem=relaxed)
DEVMEM=y
STRICT_DEVMEM=y
IO_STRICT_DEVMEM=y
X86_PAT=y
DEBUG_FS=y
# the guest machine: virtio disk, ext4, serial console, ACPI power off
ACPI=y
VIRTIO=y
VIRTIO_PCI=y
VIRTIO_BLK=y
EXT4_FS=y
BLK_DEV_INITRD=y
RD_GZIP=y
SERIAL_8250=y
SERIAL_8250_CONSOLE=y
TMPFS=y
DEVTMPFS=y
DEVTMPFS_MOUNT=y
PROC_FS=y
SYSFS=y
MAGIC_SYSRQ=y
# the guest runs as installed; Secure Boot lockdown would refuse kexec_load and /dev/mem
SECURITY_LOCKDOWN_LSM=n
# bulk the guest has no use for
DRM=n
FB=n
SOUND=n
WLAN=n
WIRELESS=n
CFG80211=n
MAC80211=n
RFKILL=n
USB_SUPPORT=n
HID=n
AGP=n
NETFILTER=n
NET_SCHED=n
ETHERNET=n
INPUT_JOYSTICK=n
INPUT_TABLET=n
INPUT_TOUCHSCREEN=n
# no debug info (no pahole, much faster), no signed modules (no keys needed)
DEBUG_INFO_NONE=y
DEBUG_INFO=n
DEBUG_INFO_BTF=n
MODULE_SIG=n
'
# Bump when the build procedure changes in a way the fragment does not show.
recipe=1

die() {
	echo "build-kernel.sh: $*" >&2
	exit 1
}

# The fragment without comments and blank lines.
options() {
	sed -e 's/#.*//' -e '/^[[:space:]]*$/d' <<<"$fragment"
}

hash=$(printf '%s\n' "recipe=$recipe" "${base_targets[*]}" "$(options)" | sha256sum | cut -c1-12)

installed_version() {
	dpkg-query -W -f='${Status} ${Version}\n' "$1" 2>/dev/null |
		sed -n 's/^install ok installed //p' || true
}

# Newest kernel of this series already built from this fragment, for when
# apt cannot tell us the package version (no package lists yet, or offline).
# Debian's versions of linux-source-X.Y start with X.Y.
cached_kernel() {
	local found
	found=$(find "$cache" -mindepth 2 -maxdepth 2 -path "$cache/$series.*-$hash/bzImage" 2>/dev/null |
		sort -V | tail -n 1)
	[[ -n $found ]] && echo "$found"
}

# The source version: for 6.12 the installed package's, else the one apt
# would install; for 7.2 the one sid's lists (already fetched, if any) offer.
if [[ $series == 6.12 ]]; then
	version=$(installed_version "$src_pkg")
	if [[ -z $version ]]; then
		version=$(apt-cache policy "$src_pkg" 2>/dev/null | sed -n 's/^  Candidate: //p' | head -n 1 || true)
		[[ $version == '(none)' ]] && version=
	fi
else
	version=$(bash "$sid_source" --version "$src_pkg" 2>/dev/null || true)
fi
if [[ -z $version ]] && path=$(cached_kernel); then
	echo "build-kernel.sh: apt does not know $src_pkg; using cached $path" >&2
	echo "$path"
	exit 0
fi
if [[ -n $version && -f $cache/$version-$hash/bzImage ]]; then
	echo "$cache/$version-$hash/bzImage"
	exit 0
fi

# Nothing cached: install what the build needs.
export DEBIAN_FRONTEND=noninteractive
missing=()
wanted=("${build_deps[@]}")
[[ $series == 6.12 ]] && wanted+=("$src_pkg")
for p in "${wanted[@]}"; do
	[[ -n $(installed_version "$p") ]] || missing+=("$p")
done
if ((${#missing[@]})); then
	[[ $EUID -eq 0 ]] || die "missing packages ${missing[*]}: run as root to install them"
	echo "build-kernel.sh: installing ${missing[*]}" >&2
	# Once, before any install.
	apt-get update -q >&2 || die "apt-get update failed"
	apt-get install -y -q --no-install-recommends "${missing[@]}" >&2 ||
		die "apt-get install ${missing[*]} failed"
fi
if [[ $series == 6.12 ]]; then
	version=$(installed_version "$src_pkg")
	[[ -n $version ]] || die "$src_pkg is not installed"
	tarball=/usr/src/$src_pkg.tar.xz
	[[ -f $tarball ]] || die "$src_pkg $version holds no $tarball"
else
	# .../source/linux-source-7.2/<version>/linux-source-7.2.tar.xz
	tarball=$(bash "$sid_source" "$src_pkg") || die "fetching $src_pkg from sid failed"
	version=$(basename "$(dirname "$tarball")")
fi

key=$version-$hash
dest=$cache/$key
mkdir -p "$cache" || die "cannot create cache directory $cache (set KJUMP_CACHE to a writable directory)"
# Parallel test runs must not build into each other.
exec 9>"$cache/.lock"
flock 9 || die "cannot lock $cache/.lock"
if [[ -f $dest/bzImage ]]; then
	echo "$dest/bzImage"
	exit 0
fi

# Holding the lock, any build directory left here is from a killed build.
rm -rf "$cache"/.build-*
tmp=$(mktemp -d "$cache/.build-$key.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
trap 'exit 1' INT TERM HUP
log=$cache/build-$key.log
: >"$log"
run() {
	if ! "$@" >>"$log" 2>&1; then
		echo "build-kernel.sh: '$*' failed; last lines of $log:" >&2
		tail -n 40 "$log" >&2
		exit 1
	fi
}

start=$SECONDS
echo "build-kernel.sh: building $src_pkg $version ($hash) in $tmp, log in $log" >&2
run tar -xf "$tarball" -C "$tmp"
tree=$tmp/$src_pkg
[[ -f $tree/Makefile ]] || die "$tarball did not unpack into $tree"

echo "build-kernel.sh: configuring" >&2
run make -C "$tree" "${base_targets[@]}"
args=()
while IFS= read -r line; do
	name=${line%%=*}
	value=${line#*=}
	case $value in
	y) args+=(--enable "$name") ;;
	n) args+=(--disable "$name") ;;
	\"*\") args+=(--set-str "$name" "${value:1:${#value}-2}") ;;
	*) args+=(--set-val "$name" "$value") ;;
	esac
done < <(options)
run "$tree/scripts/config" --file "$tree/.config" "${args[@]}"
run make -C "$tree" olddefconfig

# Kconfig drops what it cannot satisfy without a word: check every option.
dropped=() kept=()
while IFS= read -r line; do
	name=${line%%=*}
	value=${line#*=}
	case $value in
	y) grep -qx "CONFIG_$name=y" "$tree/.config" || dropped+=("CONFIG_$name ($(grep -E "^(# )?CONFIG_${name}[= ]" "$tree/.config" || echo absent))") ;;
	n) grep -q "^CONFIG_$name=" "$tree/.config" && kept+=("CONFIG_$name") ;;
	*) grep -qx "CONFIG_$name=$value" "$tree/.config" || dropped+=("CONFIG_$name (wanted $value)") ;;
	esac
done < <(options)
((${#kept[@]} == 0)) || echo "build-kernel.sh: warning: still enabled (selected by another option): ${kept[*]}" >&2
if ((${#dropped[@]})); then
	printf 'build-kernel.sh: olddefconfig dropped a required option (check its "depends on" with make menuconfig, then add the dependency above):\n' >&2
	printf '  %s\n' "${dropped[@]}" >&2
	exit 1
fi

echo "build-kernel.sh: compiling bzImage with $(nproc) jobs (8.5 to 14 minutes on 2 cores)" >&2
run make -C "$tree" -j"$(nproc)" bzImage

out=$tmp/out
mkdir "$out"
cp "$tree/arch/x86/boot/bzImage" "$tree/.config" "$tree/System.map" "$out/"
rm -rf "$tree"
echo "build-kernel.sh: built in $((SECONDS - start)) s" >>"$log"
mv "$log" "$out/build.log"
# A directory that exists is complete: it appears in one rename.
mv -T "$out" "$dest" || die "cannot move the build into $dest"
echo "build-kernel.sh: built $dest/bzImage in $((SECONDS - start)) s" >&2
echo "$dest/bzImage"
