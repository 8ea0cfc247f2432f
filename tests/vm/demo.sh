#!/usr/bin/env bash
# kjump's main job on a fresh Debian machine, in one command (as root): the
# whole hibernation cycle in QEMU. Installs QEMU, kexec-tools and the rest,
# builds (once, about 14 minutes; cached) a kernel with CONFIG_KEXEC_JUMP,
# builds kjump, then boots that kernel with a RAM-only workload, hibernates
# it through a kexec jump to disk, powers off, boots a new QEMU process,
# resumes, and checks that the workload's memory came back. It prints the
# time of each phase, the image size and the capture and restore throughput.
# Also: a real kernel's memory dump captured, verified and exported.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
bash tests/setup.sh
cargo test --release --test hibernate_vm --test real_kernel_dump -- --nocapture --test-threads 1
