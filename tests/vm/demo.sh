#!/usr/bin/env bash
# kjump's main job on a fresh Debian machine, in one command (as root): a
# real Debian 12 system hibernated with `systemctl hibernate` and resumed, in
# QEMU. Installs QEMU, kexec-tools, mmdebstrap and the rest, builds (once,
# cached in /var/cache/kjump) a Linux 6.12 kernel with CONFIG_KEXEC_JUMP and
# a Debian system on a GPT disk with that kernel, kjump's package installed
# with apt and a service holding 512 MiB of checksummed memory; then boots
# it, hibernates it through logind and kjump's capture kernel, powers off,
# boots a new QEMU process whose initramfs resumes the same systemd
# instance, and checks that the service's memory, counter and log came back.
# Three cycles, a boot with kjump.noresume, a fourth, a clean shutdown and a
# host e2fsck of the root. It prints the time of each phase.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
bash tests/setup.sh
cargo test --release --test system_vm debian_initramfs_tools -- --nocapture
