#!/usr/bin/env bash
# Print the path of a Debian kernel image (bzImage) for booting test guests in
# QEMU, fetching it first when it is not cached yet.
#
#   tests/vm/debian-kernel.sh            -> /var/cache/kjump/debian-kernel/<ver>/boot/vmlinuz-<abi>-cloud-amd64
#   tests/vm/debian-kernel.sh --debug    -> /var/cache/kjump/debian-kernel/<ver>/debug/vmlinux-<abi>-cloud-amd64
#
# --debug prints the same kernel's vmlinux with its debug information
# (DWARF), from Debian's linux-image-<abi>-dbg package: what `crash` and
# drgn need to read a dump of that kernel (tests/kdump_vm.rs). The package
# is 280 MB, almost all of it the modules' debug information; only the
# vmlinux (590 MB for 6.1's cloud flavour) is kept.
#
# The package is downloaded with `apt-get download` (so apt checks it against
# the signed archive indexes) and unpacked with `dpkg-deb -x` into a cache
# directory keyed by the package version; it is never installed and /boot is
# never touched. Only boot/ (vmlinuz, config, System.map) is kept: the guests
# need nothing beyond built-in drivers, so the modules would be dead weight.
#
# Environment:
#   KJUMP_CACHE            cache root (default /var/cache/kjump)
#   KJUMP_KERNEL_FLAVOUR   Debian kernel flavour (default cloud-amd64; amd64 also works)
#
# stdout carries the path and nothing else; progress and errors go to stderr.
# Needs the apt package lists (`apt-get update`) only when nothing is cached.
set -euo pipefail

want=kernel
case ${1:-} in
"") ;;
--debug) want=debug ;;
*)
	echo "debian-kernel.sh: unknown argument ${1@Q} (--debug or nothing)" >&2
	exit 2
	;;
esac
flavour=${KJUMP_KERNEL_FLAVOUR:-cloud-amd64}
cache=${KJUMP_CACHE:-/var/cache/kjump}/debian-kernel
meta=linux-image-$flavour

die() {
	echo "debian-kernel.sh: $*" >&2
	exit 1
}

# Newest already-unpacked kernel (or debug vmlinux) of this flavour, for when
# apt cannot tell us the current version (no package lists on this machine yet).
cached_kernel() {
	local found
	if [[ $want == debug ]]; then
		found=$(find "$cache" -mindepth 3 -maxdepth 3 -path '*/debug/*' \
			-name "vmlinux-*-$flavour" 2>/dev/null | sort -V | tail -n 1)
	else
		found=$(find "$cache" -mindepth 3 -maxdepth 3 -path '*/boot/*' \
			-name "vmlinuz-*-$flavour" 2>/dev/null | sort -V | tail -n 1)
	fi
	[[ -n $found ]] && echo "$found"
}

# "Depends: linux-image-6.1.0-56-cloud-amd64 (= 6.1.192-2)" -> versioned name, version
depends=$(apt-cache show --no-all-versions "$meta" 2>/dev/null | sed -n 's/^Depends: //p' | head -n 1 || true)
pkg=$(sed -n 's/^\(linux-image-[^ ,]*\).*/\1/p' <<<"$depends")
if [[ -z $pkg ]]; then
	if path=$(cached_kernel); then
		echo "debian-kernel.sh: apt does not know $meta; using cached $path" >&2
		echo "$path"
		exit 0
	fi
	die "apt-cache knows no package $meta and nothing is cached in $cache (run apt-get update)"
fi
version=$(apt-cache show --no-all-versions "$pkg" | sed -n 's/^Version: //p' | head -n 1)
[[ -n $version ]] || die "apt-cache shows no version for $pkg"
abi=${pkg#linux-image-}

dest=$cache/$version
kernel=$dest/boot/vmlinuz-$abi
if [[ $want == debug ]]; then
	pkg=$pkg-dbg
	kernel=$dest/debug/vmlinux-$abi
fi
if [[ -f $kernel ]]; then
	echo "$kernel"
	exit 0
fi

mkdir -p "$cache" || die "cannot create cache directory $cache (set KJUMP_CACHE to a writable directory)"
# Parallel test runs must not unpack into each other.
exec 9>"$cache/.lock"
flock 9 || die "cannot lock $cache/.lock"
if [[ -f $kernel ]]; then
	echo "$kernel"
	exit 0
fi

tmp=$(mktemp -d "$cache/.fetch.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
# As root, apt downloads as the unprivileged _apt user if that user may write here.
if [[ $EUID -eq 0 ]] && id _apt >/dev/null 2>&1; then
	chown _apt "$tmp"
fi
echo "debian-kernel.sh: downloading $pkg=$version into $cache" >&2
# apt-get download writes into the working directory and chats on stdout.
(cd "$tmp" && apt-get download -q "$pkg=$version") >&2 ||
	die "apt-get download $pkg=$version failed"
deb=$(find "$tmp" -maxdepth 1 -name '*.deb' | head -n 1)
[[ -n $deb ]] || die "apt-get download left no .deb in $tmp"
if [[ $want == debug ]]; then
	# Only the vmlinux; tar may stop reading once it has it, which ends
	# dpkg-deb with SIGPIPE, so what counts is the file tar leaves.
	member=./usr/lib/debug/boot/vmlinux-$abi
	{ dpkg-deb --fsys-tarfile "$deb" || true; } | tar -x -C "$tmp" "$member" ||
		die "$deb holds no $member"
	readelf -S "$tmp/$member" | grep -q '\.debug_info' ||
		die "$tmp/$member has no .debug_info section"
	mkdir -p "$dest/debug"
	mv -f "$tmp/$member" "$kernel"
	echo "$kernel"
	exit 0
fi
dpkg-deb -x "$deb" "$tmp/root" || die "dpkg-deb -x $deb failed"
[[ -f $tmp/root/boot/vmlinuz-$abi ]] || die "$deb holds no boot/vmlinuz-$abi"

# Another flavour of the same version may already sit in $dest/boot.
mkdir -p "$dest/boot"
for f in "$tmp/root/boot/"*; do
	mv -f "$f" "$dest/boot/"
done
echo "$kernel"
