#!/usr/bin/env bash
# Builds the Debian package kjump_<version>_amd64.deb with cargo-deb and
# prints its path: the static kjump, its man pages and shell completions
# (generated from the clap definitions by `kjump generate`), the
# initramfs-tools and dracut integration, the systemd units and drop-ins,
# and /etc/kjump/kjump.conf as a conffile (Cargo.toml's
# [package.metadata.deb]). Needs cargo-deb: cargo install cargo-deb --locked
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

if ! cargo deb --version >/dev/null 2>&1; then
	echo "packaging/deb/build.sh: cargo-deb is missing (cargo install cargo-deb --locked)" >&2
	exit 1
fi
out=${1:-target/debian}
cargo build --release --locked --bin kjump >&2
target_dir=$(cargo metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
# .cargo/config.toml builds for x86_64-unknown-linux-gnu with +crt-static.
kjump="$target_dir/x86_64-unknown-linux-gnu/release/kjump"
if ! file -b "$kjump" | grep -q 'static-pie linked\|statically linked'; then
	echo "packaging/deb/build.sh: $kjump is not statically linked" >&2
	exit 1
fi
rm -rf target/deb-generated
"$kjump" generate --man target/deb-generated/man --completions target/deb-generated/completions >&2
mkdir -p "$out"
cargo deb --no-build --locked --target x86_64-unknown-linux-gnu --output "$out" >&2
ls "$out"/kjump_*_amd64.deb | sort -V | tail -n 1
