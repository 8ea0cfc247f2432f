#!/usr/bin/env bash
# kjump's main job on a fresh Debian machine, in one command (as root):
# install QEMU and the guest kernel, build kjump, boot a real Linux kernel in
# QEMU, put known data in its RAM, dump its memory, capture the dump into a
# kjump image, verify it, export it back and compare every byte.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
bash tests/setup.sh
cargo test --release --test real_kernel_dump -- --nocapture
