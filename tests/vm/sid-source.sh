#!/usr/bin/env bash
# Fetch a source package tarball (linux-source-X.Y) from Debian unstable (sid)
# on a Debian stable machine, without touching the machine's own apt setup.
#
#   tests/vm/sid-source.sh --version linux-source-7.2  -> 7.2.13-1
#   tests/vm/sid-source.sh linux-source-7.2            -> /var/cache/kjump/source/linux-source-7.2/7.2.13-1/linux-source-7.2.tar.xz
#
# apt runs with a source list, a lists directory and a package cache of its
# own ($KJUMP_CACHE/apt-sid): suite sid of the Debian archive this machine
# already uses, whose URI comes from the machine's apt configuration
# (`apt-get indextargets` over /etc/apt/sources.list and sources.list.d, the
# entry for this release's codename). The machine's lists, its apt cache
# and its update hooks are left alone; nothing is installed.
#
# Signatures are checked as for any apt source: sid's InRelease must carry a
# good signature from a key in the Debian archive keyring. Sid is signed by the
# archive's automatic keys of the current and the previous release (in 2026
# those of bookworm and trixie, both in bookworm's debian-archive-keyring
# 2023.3+deb12u2), so on an up-to-date stable machine the keyring it has is
# enough. When sid is signed by no key the machine knows (a machine whose
# keyring predates the keys sid now uses), the newer keyring is taken through
# a chain of verified steps, never by turning verification off: suite
# `stable`, whose InRelease also carries the stable release key and is
# checked with the machine's keyring, provides the debian-archive-keyring
# package (its hash checked against that signed index); its keyring then
# checks sid. (Taking that package from sid itself would be circular: sid's
# index has to be verified before anything it lists can be trusted.)
#
# The package is downloaded with `apt-get download` (checked against the signed
# index), unpacked with `dpkg-deb -x`, and only its /usr/src tarball is kept,
# under a directory named by the package version: each version is downloaded
# once. The lists are refreshed only when a package is fetched, or when there
# are none yet.
#
# Environment:
#   KJUMP_CACHE           cache root (default /var/cache/kjump)
#   KJUMP_DEBIAN_ARCHIVE  the archive URI, instead of the machine's
#   KJUMP_APT_KEYRING     the keyring trusted to start from (default
#                         /usr/share/keyrings/debian-archive-keyring.gpg)
#
# stdout carries the answer and nothing else; progress and errors go to stderr.
set -euo pipefail

root=${KJUMP_CACHE:-/var/cache/kjump}
keyring=${KJUMP_APT_KEYRING:-/usr/share/keyrings/debian-archive-keyring.gpg}

die() {
	echo "sid-source.sh: $*" >&2
	exit 1
}

usage() {
	echo "usage: sid-source.sh [--version] PACKAGE" >&2
	exit 2
}

only_version=
if [[ ${1:-} == --version ]]; then
	only_version=1
	shift
fi
[[ $# -eq 1 && -n $1 ]] || usage
pkg=$1

# The Debian archive this machine installs from: the first entry apt has for
# its release's codename. Security and updates suites have other codenames.
archive_uri() {
	if [[ -n ${KJUMP_DEBIAN_ARCHIVE:-} ]]; then
		echo "$KJUMP_DEBIAN_ARCHIVE"
		return
	fi
	local codename uri
	codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
	[[ -n $codename ]] || die "/etc/os-release names no VERSION_CODENAME; set KJUMP_DEBIAN_ARCHIVE"
	uri=$(apt-get indextargets --no-release-info --format '$(REPO_URI)' \
		"Release: $codename" 'Identifier: Packages' 2>/dev/null | head -n 1 || true)
	[[ -n $uri ]] || die "apt has no source for suite $codename (see /etc/apt/sources.list.d); set KJUMP_DEBIAN_ARCHIVE"
	echo "${uri%/}"
}

# apt with the state of `suite` under $root/apt-$suite, nothing of the machine's
# but its dpkg status and its apt.conf.d (proxies, Check-Valid-Until).
apt_in() {
	local suite=$1 tool=$2
	shift 2
	local state=$root/apt-$suite
	"$tool" -q -c "$state/apt.conf" \
		-o Dir::Etc::SourceList="$state/sources.list.d/debian.sources" \
		-o Dir::Etc::SourceParts="$state/sources.list.d" \
		-o Dir::State::Lists="$state/lists" \
		-o Dir::Cache="$state/cache" \
		"$@"
}

# Writes the source entry of `suite`, checked with `signed_by`, and
# refreshes its lists; fails when the InRelease does not verify.
update_suite() {
	local suite=$1 signed_by=$2 uri state=$root/apt-$1
	uri=$(archive_uri)
	mkdir -p "$state/sources.list.d" "$state/lists/partial" "$state/cache"
	# The machine's update hooks (appstream, PackageKit) act on its own lists.
	cat >"$state/apt.conf" <<-EOF
		#clear APT::Update::Pre-Invoke;
		#clear APT::Update::Post-Invoke;
		#clear APT::Update::Post-Invoke-Success;
	EOF
	cat >"$state/sources.list.d/debian.sources" <<-EOF
		Types: deb
		URIs: $uri
		Suites: $suite
		Components: main
		Targets: Packages
		Signed-By: $signed_by
	EOF
	echo "sid-source.sh: apt-get update of $uri $suite (lists in $state)" >&2
	# --error-on=any: a signature that does not verify fails the update
	# instead of leaving the previous lists in use.
	apt_in "$suite" apt-get update --error-on=any >&2
}

# A keyring newer than `trusted`, taken from suite stable as the header says;
# prints its path.
chained_keyring() {
	local trusted=$1 version tmp out
	update_suite stable "$trusted" ||
		die "suite stable does not verify with $trusted either: update this machine's debian-archive-keyring (apt-get install debian-archive-keyring)"
	version=$(apt_in stable apt-cache policy debian-archive-keyring | sed -n 's/^  Candidate: //p')
	[[ -n $version && $version != '(none)' ]] || die "suite stable has no debian-archive-keyring"
	out=$root/apt-sid/keyrings/debian-archive-keyring-$version.gpg
	if [[ ! -f $out ]]; then
		tmp=$(fetch_dir)
		(cd "$tmp" && apt_in stable apt-get download "debian-archive-keyring=$version") >&2 ||
			die "apt-get download debian-archive-keyring=$version from stable failed"
		dpkg-deb -x "$tmp"/debian-archive-keyring_*.deb "$tmp/root" || die "dpkg-deb -x of debian-archive-keyring failed"
		[[ -f $tmp/root/usr/share/keyrings/debian-archive-keyring.gpg ]] ||
			die "debian-archive-keyring $version holds no usr/share/keyrings/debian-archive-keyring.gpg"
		mkdir -p "${out%/*}"
		# Since 2025.1 the .gpg name is a symbolic link to a .pgp file.
		cp -L "$tmp/root/usr/share/keyrings/debian-archive-keyring.gpg" "$out.tmp"
		mv "$out.tmp" "$out"
		rm -rf "$tmp"
	fi
	echo "sid-source.sh: stable's debian-archive-keyring $version, verified with $trusted, now checks sid" >&2
	echo "$out"
}

# Refreshes sid's lists, through a newer keyring when the trusted one cannot
# verify them.
update_sid() {
	local log=$root/apt-sid/update.log newer
	mkdir -p "$root/apt-sid"
	# pipefail: the pipeline fails when the update does.
	if update_suite sid "$keyring" 2>&1 | tee "$log" >&2; then
		return 0
	fi
	grep -q -e NO_PUBKEY -e EXPKEYSIG -e 'is not signed' "$log" ||
		die "apt-get update of sid failed (see above)"
	echo "sid-source.sh: sid is signed by no key in $keyring; looking for a newer keyring" >&2
	newer=$(chained_keyring "$keyring")
	update_suite sid "$newer" || die "sid does not verify with $newer either"
}

candidate() {
	local v
	v=$(apt_in sid apt-cache policy "$pkg" 2>/dev/null | sed -n 's/^  Candidate: //p' | head -n 1 || true)
	[[ $v == '(none)' ]] && v=
	echo "$v"
}

# A directory the unprivileged _apt user, which downloads for a root apt,
# may write.
fetch_dir() {
	local d
	d=$(mktemp -d "$root/.fetch.XXXXXX")
	if [[ $EUID -eq 0 ]] && id _apt >/dev/null 2>&1; then
		chown _apt "$d"
	fi
	echo "$d"
}

mkdir -p "$root" || die "cannot create $root (set KJUMP_CACHE to a writable directory)"
# One apt at a time in this state; parallel test runs wait here.
exec 9>"$root/.sid-source.lock"
flock 9 || die "cannot lock $root/.sid-source.lock"

if [[ -n $only_version ]]; then
	version=
	[[ -d $root/apt-sid/lists ]] && version=$(candidate)
	if [[ -z $version ]]; then
		update_sid
		version=$(candidate)
	fi
	[[ -n $version ]] || die "sid has no package $pkg"
	echo "$version"
	exit 0
fi

update_sid
version=$(candidate)
[[ -n $version ]] || die "sid has no package $pkg: sid drops an old linux-source-X.Y soon after a newer one arrives"
dest=$root/source/$pkg/$version
tarball=$dest/$pkg.tar.xz
if [[ -f $tarball ]]; then
	echo "$tarball"
	exit 0
fi
tmp=$(fetch_dir)
trap 'rm -rf "$tmp"' EXIT
echo "sid-source.sh: downloading $pkg=$version" >&2
(cd "$tmp" && apt_in sid apt-get download "$pkg=$version") >&2 ||
	die "apt-get download $pkg=$version failed"
deb=$(find "$tmp" -maxdepth 1 -name '*.deb' | head -n 1)
[[ -n $deb ]] || die "apt-get download left no .deb in $tmp"
dpkg-deb -x "$deb" "$tmp/root" || die "dpkg-deb -x $deb failed"
[[ -f $tmp/root/usr/src/$pkg.tar.xz ]] || die "$deb holds no usr/src/$pkg.tar.xz"
mkdir -p "$dest"
mv "$tmp/root/usr/src/$pkg.tar.xz" "$tarball"
echo "sid-source.sh: $pkg $version in $tarball" >&2
echo "$tarball"
