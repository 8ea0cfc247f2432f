#!/usr/bin/env bash
# Installs what kjump's tests and demo need on a Debian machine (run as root):
# QEMU and busybox to boot test guests, cpio to pack their initramfs, the peer
# tools the benchmark compares against, lintian and cargo-deb for the Debian
# package, `crash` to read the kdump files kjump writes, the mkfs of each filesystem the stale-filesystem guard is tested
# on (e2fsprogs, btrfs-progs, xfsprogs), the cached Debian guest kernel, and the
# cached test kernels with CONFIG_KEXEC_JUMP (built from Debian's source: 6.12
# for the whole suite, 7.2 from sid for kernel_7_2_vm).
# Safe to run again: apt skips what is installed, the kernels come from cache.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if [[ $(id -u) -ne 0 ]]; then
	echo "tests/setup.sh: run as root (it installs Debian packages)" >&2
	exit 1
fi
export DEBIAN_FRONTEND=noninteractive
packages=(qemu-system-x86 busybox-static cpio lz4 zstd file time kexec-tools ca-certificates gzip
	initramfs-tools-core dracut-core systemd e2fsprogs btrfs-progs xfsprogs lintian mmdebstrap gdisk gcc libc6-dev
	crash)
missing=()
for p in "${packages[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
# Once, before any install: the guest kernel's version comes from the lists too.
apt-get update -q
if ((${#missing[@]})); then
	# kexec-tools would otherwise arm kexec for this machine's next reboot.
	echo 'kexec-tools kexec-tools/load_kexec boolean false' | debconf-set-selections
	apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
# cargo-deb builds the Debian package (packaging/deb/build.sh, deb_package);
# installed from outside the checkout, whose .cargo/config.toml links static.
if ! cargo deb --version >/dev/null 2>&1; then
	(cd / && cargo install cargo-deb --locked --version 3.8.0)
fi
echo "guest kernel: $(bash tests/vm/debian-kernel.sh)"
echo "its debug information: $(bash tests/vm/debian-kernel.sh --debug)"
# The kernels with CONFIG_KEXEC_JUMP that the hibernate VM tests boot as A, B
# and R: each built once (about 7 minutes on two cores) and cached.
for series in 6.12 7.2; do
	started=$SECONDS
	kernel=$(bash tests/vm/build-kernel.sh "$series")
	echo "test kernel $series: $kernel ($((SECONDS - started)) s)"
done
