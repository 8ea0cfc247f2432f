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
# with the same configuration: allnoconfig plus the fragment below, which
# names every option the guests use (kexec jump, crash kernel, /dev/mem,
# virtio disk, ext4, serial console, what systemd needs) and nothing for
# hardware QEMU does not emulate. After `make olddefconfig` every option the
# fragment wants on is checked to really be =y: Kconfig silently drops an
# option whose dependencies are missing, and the build fails loudly naming
# it instead. Building 6.12 takes about 7 minutes on 2 cores (12 CPU-minutes;
# x86_64_defconfig took 31), 7.2 about as long.
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
# The whole script is one compound command, so bash reads it to the end
# before it runs any of it: editing this file while a build runs (a build
# takes minutes) cannot change what the running build does next.
{

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

# Configuration on top of the base target. One OPTION=VALUE a line: y must
# come out as =y, n must come out unset, anything else is set as a value.
#
# The base is allnoconfig, not x86_64_defconfig: the guests need a virtio
# disk, a serial console, ext4 and what kjump and systemd use, not the
# drivers, network stack and filesystems of a generic PC. A build takes 12
# CPU-minutes instead of defconfig's 31, which was most of a fresh CI run's
# kernel build time. Every option below says why it is here; the check after
# olddefconfig fails the build when Kconfig drops one.
base_targets=(allnoconfig)
fragment='
# the machine: 64-bit SMP x86 under QEMU (pc and q35), with ACPI
64BIT=y
SMP=y
NR_CPUS=8
X86_MPPARSE=y
HYPERVISOR_GUEST=y
PARAVIRT=y
ACPI=y
ACPI_BUTTON=y
PCI=y
PCI_MSI=y
# A disk plugged in while A runs: B, booting afresh, names the disks in
# slot order (tests/targets_vm.rs, disks that B names otherwise).
HOTPLUG_PCI=y
HOTPLUG_PCI_ACPI=y
HPET_TIMER=y
# tickless idle: an idle guest costs the host no CPU, which leaves the
# cores of the host to the guests that are busy
NO_HZ_IDLE=y
HIGH_RES_TIMERS=y
RTC_CLASS=y
RTC_DRV_CMOS=y
# memory as distributions set it up: NUMA, compaction (kjump compacts
# before it reserves). Not yet transparent huge pages: with them, the swap
# area that kjump swaps off before the jump runs A out of memory in
# targets_vm (KERNELS.md, known problems), a kjump defect to fix first.
SPARSEMEM_VMEMMAP=y
NUMA=y
TRANSPARENT_HUGEPAGE=n
MIGRATION=y
COMPACTION=y
SWAP=y
SHMEM=y
# kexec jump: A loads B with KEXEC_PRESERVE_CONTEXT and is jumped back into
KEXEC=y
KEXEC_FILE=y
KEXEC_JUMP=y
PM=y
HIBERNATION=y
SUSPEND=y
PM_SLEEP=y
PM_SLEEP_SMP=y
HOTPLUG_CPU=y
RELOCATABLE=y
RANDOMIZE_BASE=y
# crashkernel= region, and /proc/vmcore and vmcoreinfo for the kdump tests
CRASH_DUMP=y
PROC_VMCORE=y
VMCORE_INFO=y
KALLSYMS=y
# kexec-tools reads /proc/kcore for the kernel'"'"'s own mapping
PROC_KCORE=y
# B and R read and write A'"'"'s RAM through /dev/mem (with iomem=relaxed),
# restricted as distributions restrict it
DEVMEM=y
STRICT_DEVMEM=y
IO_STRICT_DEVMEM=y
MTRR=y
X86_PAT=y
DEBUG_FS=y
MAGIC_SYSRQ=y
# booting: the initramfs (gzip for the test rigs, zstd for initramfs-tools,
# the others for dracut and users), ELF and script programs
BLK_DEV_INITRD=y
RD_GZIP=y
RD_ZSTD=y
RD_XZ=y
RD_LZ4=y
BINFMT_ELF=y
BINFMT_SCRIPT=y
PRINTK=y
TTY=y
UNIX98_PTYS=y
SERIAL_8250=y
SERIAL_8250_CONSOLE=y
# disks: virtio, partition tables, ext4, the block layer'"'"'s fiemap for files
BLOCK=y
BLK_DEV=y
VIRTIO_MENU=y
VIRTIO=y
VIRTIO_PCI=y
VIRTIO_BLK=y
PARTITION_ADVANCED=y
MSDOS_PARTITION=y
EFI_PARTITION=y
EXT4_FS=y
EXT4_FS_POSIX_ACL=y
# filesystems the guests and systemd mount
PROC_FS=y
PROC_SYSCTL=y
SYSFS=y
TMPFS=y
TMPFS_POSIX_ACL=y
TMPFS_XATTR=y
DEVTMPFS=y
DEVTMPFS_MOUNT=y
AUTOFS_FS=y
# what systemd 252 requires or uses on a Debian 12 system (its README:
# cgroup v2, fhandle, signalfd, timerfd, epoll, inotify, namespaces, unix
# sockets and netlink, seccomp)
MULTIUSER=y
SYSVIPC=y
POSIX_MQUEUE=y
CGROUPS=y
NAMESPACES=y
UTS_NS=y
IPC_NS=y
PID_NS=y
NET_NS=y
USER_NS=y
FHANDLE=y
SIGNALFD=y
TIMERFD=y
EVENTFD=y
EPOLL=y
INOTIFY_USER=y
FUTEX=y
AIO=y
FILE_LOCKING=y
SECCOMP=y
SECCOMP_FILTER=y
NET=y
UNIX=y
INET=y
IPV6=n
# the guest runs as installed; Secure Boot lockdown would refuse kexec_load and /dev/mem
SECURITY_LOCKDOWN_LSM=n
# no modules: everything the guests use is built in
MODULES=n
# no debug info (no pahole, much faster)
DEBUG_INFO=n
'
# Bump when the build procedure changes in a way the fragment does not show.
recipe=2

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

echo "build-kernel.sh: compiling bzImage with $(nproc) jobs (about 7 minutes on 2 cores)" >&2
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
exit
}
