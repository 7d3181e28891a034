#!/usr/bin/env bash
# images/build.sh — build ilot's own container images locally, without any registry.
#
#   images/build.sh NAME_OR_DIR [...]   build images/NAME/ or the image directory DIR
#   images/build.sh --all               build every images/*/ directory
#
# An image directory holds image.conf (shell key=value, see images/README.md) and either an
# optional rootfs/ overlay or a Containerfile.
#  - rootfs images: the base is a root filesystem with Debian's busybox-static and one symlink per
#    applet. The rootfs is packed into a reproducible tar and fed to `docker import`.
#  - Containerfile images: `docker build` of the directory, FROM ilot/debian:bookworm, a Debian
#    base this script makes itself when missing (debootstrap --variant=minbase + docker import).
# Either way a content hash is stored as the label ilot.build-hash, so rebuilding unchanged
# sources does nothing and keeps the same image ID.
set -euo pipefail

prog=images/build.sh
script_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# The base of Containerfile images, made here when missing (see ensure_debian_base).
debian_base=ilot/debian:bookworm
debian_suite=bookworm
debian_mirror=${ILOT_DEBIAN_MIRROR:-http://deb.debian.org/debian}

die() { printf '%s: error: %s\n' "$prog" "$*" >&2; exit 1; }
note() { printf '%s: %s\n' "$prog" "$*" >&2; }

usage() {
	cat <<EOF
usage: $prog NAME_OR_DIR [...]
       $prog --all

Builds ilot/NAME:TAG from an image directory, without any registry: image.conf + rootfs/ on a
busybox-static base (docker import), or image.conf + Containerfile (docker build FROM
$debian_base, which is made with debootstrap when missing). A NAME without a slash means
$script_dir/NAME; anything with a slash is a directory path. --all builds every image directory
under images/. See images/README.md for the image.conf keys.
EOF
}

# --- arguments ---------------------------------------------------------------------------------

dirs=()
[ $# -gt 0 ] || { usage >&2; exit 2; }
for arg in "$@"; do
	case $arg in
	-h | --help) usage; exit 0 ;;
	--all)
		for d in "$script_dir"/*/; do
			[ -f "$d/image.conf" ] && dirs+=("${d%/}")
		done
		;;
	-*) die "unknown option '$arg' (see --help)" ;;
	*/* | . | ..) dirs+=("$arg") ;;
	*) dirs+=("$script_dir/$arg") ;;
	esac
done
[ ${#dirs[@]} -gt 0 ] || die "no image directories found under $script_dir"

for d in "${dirs[@]}"; do
	[ -d "$d" ] || die "no such image directory: $d (expected a name under $script_dir/ or a path)"
	[ -f "$d/image.conf" ] || die "$d has no image.conf (see images/README.md)"
done

# --- privileges --------------------------------------------------------------------------------
# The tar must carry real ownership (root for the system, 10001 for e.g. /data), which needs
# chown. As non-root, re-run under fakeroot (only chown/stat are faked; docker is unaffected).
# (Containerfile images need no chown, but making their Debian base needs real root; see
# ensure_debian_base.)
if [ "$(id -u)" -ne 0 ]; then
	if [ -z "${ILOT_BUILD_UNDER_FAKEROOT:-}" ] && command -v fakeroot >/dev/null 2>&1; then
		export ILOT_BUILD_UNDER_FAKEROOT=1
		exec fakeroot -- "$0" "$@"
	fi
	die "must run as root (file ownership in the image needs chown), or install fakeroot: apt-get install fakeroot"
fi

# --- prerequisites -----------------------------------------------------------------------------

command -v docker >/dev/null 2>&1 || die "the docker client is not installed: apt-get install docker.io"
if ! docker_err=$(docker version --format '{{.Server.Version}}' 2>&1 >/dev/null); then
	die "cannot reach the Docker engine at ${DOCKER_HOST:-unix:///var/run/docker.sock}: ${docker_err##*$'\n'}
    Start it (systemctl start docker, or: nohup dockerd >/var/log/dockerd.log 2>&1 &) and make sure
    this user may use its socket (root or group docker)."
fi

busybox=${ILOT_BUSYBOX:-/bin/busybox}
need_busybox=no
for d in "${dirs[@]}"; do
	[ -f "$d/Containerfile" ] || need_busybox=yes
done
if [ "$need_busybox" = yes ]; then
	[ -x "$busybox" ] || die "$busybox not found: apt-get install busybox-static"
	# A dynamically linked busybox (Debian's 'busybox' package) would not run in an empty image.
	if LC_ALL=C ldd "$busybox" >/dev/null 2>&1; then
		die "$busybox is dynamically linked; the image base needs the static one: apt-get install busybox-static"
	fi
fi

for tool in tar sha256sum find; do
	command -v "$tool" >/dev/null 2>&1 || die "$tool is required"
done

umask 022
work=$(mktemp -d "${TMPDIR:-/tmp}/ilot-image-build.XXXXXX")
cleanup() { rm -rf -- "$work"; }
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- the base rootfs, made once per run --------------------------------------------------------

make_base() {
	local root=$1 path
	mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,etc,root,tmp,proc,sys,dev,var/run}
	chmod 0700 "$root/root"
	chmod 1777 "$root/tmp"
	cp "$busybox" "$root/bin/busybox"
	chmod 0755 "$root/bin/busybox"
	# One symlink per applet at its usual place (bin/sh, usr/sbin/httpd...); not linuxrc (init).
	local -a links=()
	while IFS= read -r path; do
		case $path in
		bin/busybox | linuxrc | */ | '') ;;
		*/*) links+=("$root/$path") ;;
		esac
	done < <("$busybox" --list-full)
	[ ${#links[@]} -gt 0 ] || die "$busybox --list-full listed no applets"
	mkdir -p "${links[@]%/*}"
	if command -v perl >/dev/null 2>&1; then # one process instead of one ln per applet
		perl -e 'for (@ARGV) { symlink("/bin/busybox", $_) or die "symlink $_: $!\n" }' "${links[@]}"
	else
		for path in "${links[@]}"; do ln -s /bin/busybox "$path"; done
	fi
	[ -e "$root/bin/sh" ] || die "$busybox has no sh applet"
	cat >"$root/etc/passwd" <<-'EOF'
		root:x:0:0:root:/root:/bin/sh
		app:x:10001:10001:app:/data:/usr/sbin/nologin
	EOF
	cat >"$root/etc/group" <<-'EOF'
		root:x:0:
		app:x:10001:
	EOF
	chmod 0644 "$root/etc/passwd" "$root/etc/group"
}

layers=() # filled by add_layers for the image being built
base="$work/base"
[ "$need_busybox" = no ] || make_base "$base"

# --- the Debian base of Containerfile images ---------------------------------------------------

# Makes $debian_base with debootstrap unless the engine already has it. Not reproducible (package
# versions and dates change), hence made once and kept: remove it (docker rmi $debian_base) to
# refresh it; the images built on it then rebuild, since their hash includes the base's ID.
ensure_debian_base() {
	docker image inspect "$debian_base" >/dev/null 2>&1 && return
	if [ -n "${ILOT_BUILD_UNDER_FAKEROOT:-}" ]; then
		die "making $debian_base runs debootstrap, which needs real root: run this once as root (sudo $0 ...)"
	fi
	if ! command -v debootstrap >/dev/null 2>&1; then
		note "installing debootstrap (apt-get install debootstrap)"
		DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends debootstrap >&2 ||
			die "could not install debootstrap: apt-get install debootstrap, then run again"
	fi
	local root="$work/debian-$debian_suite" log="$work/debootstrap.log"
	note "making $debian_base: debootstrap --variant=minbase $debian_suite from $debian_mirror (about a minute)"
	if ! debootstrap --variant=minbase "$debian_suite" "$root" "$debian_mirror" >"$log" 2>&1; then
		tail -n 20 "$log" >&2
		die "debootstrap failed (log above); check that $debian_mirror is reachable (set ILOT_DEBIAN_MIRROR=URL for another mirror)"
	fi
	# Updates and security fixes for the images' apt-get; no caches or lists in the base.
	local security=${debian_mirror%/debian}/debian-security
	cat >"$root/etc/apt/sources.list" <<-EOF
		deb $debian_mirror $debian_suite main
		deb $debian_mirror $debian_suite-updates main
		deb $security $debian_suite-security main
	EOF
	rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* "$root"/var/log/*.log \
		"${root:?}"/dev/* "$root"/proc/* "$root"/sys/* "$root"/tmp/*
	local id
	id=$(tar -C "$root" --numeric-owner --no-acls --no-xattrs -c . |
		docker import --change "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
			--change 'CMD ["/bin/bash"]' --change "LABEL ilot.built-by=images/build.sh" \
			--message "debootstrap --variant=minbase $debian_suite $debian_mirror, by images/build.sh" \
			- "$debian_base") || die "docker import failed for $debian_base"
	printf '%s %s\n' "$debian_base" "$id"
	rm -rf "$root"
}

# The content hash of a directory: every path with its type, mode and contents (or link target).
dir_hash() {
	local dir=$1
	(
		cd "$dir" || exit 1
		find . -mindepth 1 \( -type f -o -type l -o -type d \) -printf '%y %m %p -> %l\n' | LC_ALL=C sort
		find . -type f -print0 | LC_ALL=C sort -z | xargs -0 -r sha256sum
	) | sha256sum
}

# An image directory with a Containerfile: docker build, skipped when the hash label matches.
build_containerfile() {
	local dir=$1 name=$2 tag=$3
	shift 3
	local -a labels=("$@")
	local ref="ilot/$name:$tag"
	local base_id="" from id
	# The ID of every local ilot/* image a FROM line names goes into the hash, so that a rebuilt
	# base (ilot/debian:bookworm, or e.g. ilot/standin-base:1.0) rebuilds the images on it. The
	# Debian base is made here when missing; any other ilot/* base must have been built before
	# (name it earlier on the same command line). Other FROMs must be local images too.
	while read -r from; do
		case $from in
		"$debian_base") ensure_debian_base ;;
		ilot/*)
			id=${from#ilot/}
			docker image inspect "$from" >/dev/null 2>&1 ||
				die "$dir/Containerfile: FROM $from, which is not built: build it first (images/build.sh ${id%%:*} ${dir##*/})"
			;;
		*) continue ;;
		esac
		id=$(docker image inspect --format '{{.Id}}' "$from") || die "cannot inspect $from"
		base_id=${base_id:+$base_id }$id
	done < <(sed -n 's/^[[:space:]]*[Ff][Rr][Oo][Mm][[:space:]]\{1,\}\(--[^[:space:]]*[[:space:]]\{1,\}\)*\([^[:space:]]*\).*/\2/p' "$dir/Containerfile")

	local hash
	hash=$({ dir_hash "$dir"; printf '%s\n' "$ref" "$base_id" "${labels[@]}"; } | sha256sum)
	hash=${hash%% *}
	local current
	current=$(docker image inspect --format '{{index .Config.Labels "ilot.build-hash"}}' "$ref" 2>/dev/null || true)
	if [ "$current" = "$hash" ]; then
		printf '%s %s (up to date)\n' "$ref" "$(docker image inspect --format '{{.Id}}' "$ref")"
		return
	fi

	local -a args=(--file "$dir/Containerfile" --tag "$ref" --force-rm)
	local l
	for l in "${labels[@]}"; do args+=(--label "$l"); done
	args+=(--label "ilot.built-by=images/build.sh" --label "ilot.build-hash=$hash")
	note "building $ref with docker build (apt-get inside: a few minutes the first time)"
	# The build log goes to stderr; stdout keeps one line per image, like the rootfs images.
	docker build "${args[@]}" "$dir" >&2 || die "docker build failed for $ref (log above)"
	printf '%s %s\n' "$ref" "$(docker image inspect --format '{{.Id}}' "$ref")"
}

# --- one image ---------------------------------------------------------------------------------

# Appends the layer directories of an image to the array 'layers', base first: the directories
# named by base_dir (relative to the image directory, or absolute), recursively.
add_layers() {
	local dir=$1 depth=${2:-0} base_rel abs
	[ "$depth" -lt 8 ] || die "base_dir chain too deep (a loop?) at $dir"
	[ -f "$dir/image.conf" ] || die "$dir has no image.conf (named by a base_dir)"
	[ ! -f "$dir/Containerfile" ] ||
		die "$dir has a Containerfile: a base_dir must name a rootfs image (write FROM ilot/NAME:TAG in a Containerfile instead)"
	# shellcheck disable=SC1091
	base_rel=$(unset base_dir; . "$dir/image.conf" >/dev/null; printf '%s' "${base_dir:-}") ||
		die "$dir/image.conf failed to load"
	if [ -n "$base_rel" ]; then
		case $base_rel in
		/*) add_layers "$base_rel" $((depth + 1)) ;;
		*) add_layers "$dir/$base_rel" $((depth + 1)) ;;
		esac
	fi
	abs=$(cd "$dir" && pwd) || die "cannot enter $dir"
	layers+=("$abs")
}

build_one() {
	local dir=$1
	local name="" tag="" cmd="" entrypoint="" user="" workdir="" expose="" base_dir=""
	local -a env=() labels=() chown=() volumes=()
	local layer
	layers=()
	if [ -f "$dir/Containerfile" ]; then
		# Only name, tag and labels apply; the rest belongs in the Containerfile.
		# shellcheck disable=SC1091
		. "$dir/image.conf" || die "$dir/image.conf failed to load"
		[ -n "$name" ] || die "$dir/image.conf: 'name' is not set"
		[ -n "$tag" ] || die "$dir/image.conf: 'tag' is not set"
		[[ $name =~ ^[a-z0-9][a-z0-9._-]*$ ]] || die "$dir/image.conf: bad name '$name' (lowercase letters, digits, . _ -)"
		[[ $tag =~ ^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$ ]] || die "$dir/image.conf: bad tag '$tag'"
		local key
		for key in cmd entrypoint user workdir expose base_dir; do
			[ -z "${!key}" ] || die "$dir/image.conf: '$key' does not apply to an image with a Containerfile; write it in $dir/Containerfile"
		done
		[ $((${#env[@]} + ${#chown[@]} + ${#volumes[@]})) -eq 0 ] ||
			die "$dir/image.conf: env, chown and volumes do not apply to an image with a Containerfile; write them in $dir/Containerfile"
		[ ! -e "$dir/rootfs" ] || die "$dir has both a Containerfile and a rootfs/: keep one (COPY files from the directory in the Containerfile)"
		build_containerfile "$dir" "$name" "$tag" "${labels[@]}"
		return
	fi
	add_layers "$dir"
	# Later layers override keys set by earlier ones (arrays too: set env+=(...) to extend).
	for layer in "${layers[@]}"; do
		# shellcheck disable=SC1091
		. "$layer/image.conf" || die "$layer/image.conf failed to load"
	done

	[ -n "$name" ] || die "$dir/image.conf: 'name' is not set"
	[ -n "$tag" ] || die "$dir/image.conf: 'tag' is not set"
	[ -n "$cmd" ] || [ -n "$entrypoint" ] || die "$dir/image.conf: 'cmd' is not set"
	[[ $name =~ ^[a-z0-9][a-z0-9._-]*$ ]] || die "$dir/image.conf: bad name '$name' (lowercase letters, digits, . _ -)"
	[[ $tag =~ ^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$ ]] || die "$dir/image.conf: bad tag '$tag'"
	local ref="ilot/$name:$tag"

	local root="$work/$name-$tag"
	rm -rf "$root"
	cp -a "$base" "$root"
	for layer in "${layers[@]}"; do
		if [ -d "$layer/rootfs" ]; then
			# No ownership from the checkout: everything is root's unless image.conf says otherwise.
			cp -R --no-preserve=ownership "$layer/rootfs/." "$root/"
		fi
	done
	chown -R 0:0 "$root"

	# chown entries: "UID:GID /path" — the path (a directory, created if missing) or file gets
	# that owner, not recursively.
	local entry owner path
	for entry in "${chown[@]}"; do
		owner=${entry%% *}
		path=${entry#* }
		[[ $owner =~ ^[0-9]+:[0-9]+$ ]] || die "$dir/image.conf: chown entry '$entry': expected 'UID:GID /path' (numeric)"
		case $path in /*) ;; *) die "$dir/image.conf: chown entry '$entry': path must be absolute" ;; esac
		[ -e "$root$path" ] || mkdir -p "$root$path"
		chown -h "$owner" "$root$path"
	done

	# The program named first in cmd/entrypoint must be executable in the image (a checkout
	# made without file modes, e.g. from a zip, loses the x bit).
	local prog_json=${entrypoint:-$cmd} program
	if [[ $prog_json =~ ^\[[[:space:]]*\"(/[^\"]+)\" ]]; then
		program=${BASH_REMATCH[1]}
		[ -x "$root$program" ] || [ -L "$root$program" ] ||
			die "$dir: $program (from cmd/entrypoint) is missing or not executable in the image"
	fi

	local tarball="$work/$name-$tag.tar"
	tar -C "$root" --format=gnu --sort=name --mtime=@0 --numeric-owner --no-acls --no-xattrs \
		-cf "$tarball" .

	local -a changes=()
	changes+=("ENV PATH=/usr/sbin:/usr/bin:/sbin:/bin")
	local e
	for e in "${env[@]}"; do changes+=("ENV $e"); done
	[ -n "$entrypoint" ] && changes+=("ENTRYPOINT $entrypoint")
	[ -n "$cmd" ] && changes+=("CMD $cmd")
	[ -n "$user" ] && changes+=("USER $user")
	[ -n "$workdir" ] && changes+=("WORKDIR $workdir")
	local p
	# shellcheck disable=SC2086 # expose is a space-separated list of ports
	for p in $expose; do changes+=("EXPOSE $p"); done
	for p in "${volumes[@]}"; do changes+=("VOLUME $p"); done
	for p in "${labels[@]}"; do changes+=("LABEL $p"); done
	changes+=("LABEL ilot.built-by=images/build.sh")

	local hash
	hash=$({ sha256sum <"$tarball"; printf '%s\n' "$ref" "${changes[@]}"; } | sha256sum)
	hash=${hash%% *}

	local current
	current=$(docker image inspect --format '{{index .Config.Labels "ilot.build-hash"}}' "$ref" 2>/dev/null || true)
	if [ "$current" = "$hash" ]; then
		printf '%s %s (up to date)\n' "$ref" "$(docker image inspect --format '{{.Id}}' "$ref")"
		return
	fi

	local -a args=()
	for e in "${changes[@]}"; do args+=(--change "$e"); done
	args+=(--change "LABEL ilot.build-hash=$hash")
	args+=(--message "built by images/build.sh from ${dir#"$script_dir"/}")
	local id
	id=$(docker import "${args[@]}" - "$ref" <"$tarball") || die "docker import failed for $ref"
	printf '%s %s\n' "$ref" "$id"
	rm -rf "$root" "$tarball"
}

for d in "${dirs[@]}"; do
	build_one "$d"
done
