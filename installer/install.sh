#!/usr/bin/env bash
# installer/install.sh — install ilot on a fresh Debian 12 / Raspberry Pi OS machine.
#
#   sudo installer/install.sh [--demo] [--no-build | --binary PATH]
#
# Run from a checkout of ilot. Idempotent: a second run changes nothing (and says so).
#  1. packages: docker.io (if there is no dockerd), busybox-static, build tools when building
#  2. a Docker engine that answers (systemd: enable docker; otherwise start dockerd)
#  3. the binary: cargo build --release (or --binary PATH), installed as /usr/local/bin/ilot
#  4. group ilot, /etc/ilot/ilot.toml (only if absent), /var/lib/ilot
#  5. the daemon: systemd unit ilot.service, or a background `ilot daemon` without systemd
#  6. the images: images/build.sh hello
#  7. --demo: install the demo app hello
set -Eeuo pipefail

prog=install.sh
checkout=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

BIN=/usr/local/bin/ilot
CONF_DIR=/etc/ilot
CONF=$CONF_DIR/ilot.toml
STATE_DIR=/var/lib/ilot
RUN_DIR=/run/ilot
UNIT=/etc/systemd/system/ilot.service
DAEMON_LOG=/var/log/ilot.log
DAEMON_PIDFILE=/run/ilot-daemon.pid
DOCKERD_LOG=/var/log/ilot-dockerd.log
# The oldest Rust known to build ilot's dependencies (Debian 12's own cargo, 1.63, is too old).
MIN_RUST=1.85

step() { printf '==> %s\n' "$*"; }
info() { printf '    %s\n' "$*"; }
warn() { printf '%s: warning: %s\n' "$prog" "$*" >&2; }
die() { printf '%s: error: %s\n' "$prog" "$*" >&2; exit 1; }
trap 'printf "%s: error: command failed (line %s): %s\n" "$prog" "$LINENO" "$BASH_COMMAND" >&2' ERR

usage() {
	cat <<EOF
usage: sudo installer/install.sh [--demo] [--no-build | --binary PATH]

Installs ilot from this checkout ($checkout):
docker.io and busybox-static, the binary as $BIN, group ilot, $CONF (if absent),
the daemon (systemd unit, or a background process without systemd), the hello image.

  --demo          also install the demo app: ilot app install hello --name hello
  --no-build      do not run cargo: use target/release/ilot if present, else the installed $BIN
  --binary PATH   install this prebuilt ilot binary (e.g. cross-compiled for a Pi)
  -h, --help      this help

Safe to run again: it only changes what is missing or different.
EOF
}

# --- arguments ---------------------------------------------------------------------------------

cmdline="$0${*:+ $*}"
demo=0
build=1
binary=""
while [ $# -gt 0 ]; do
	case $1 in
	--demo) demo=1 ;;
	--no-build) build=0 ;;
	--binary)
		[ $# -ge 2 ] || die "--binary needs a path"
		binary=$2
		build=0
		shift
		;;
	--binary=*) binary=${1#--binary=}; build=0 ;;
	-h | --help) usage; exit 0 ;;
	*) die "unknown argument '$1' (see --help)" ;;
	esac
	shift
done

# --- preflight: nothing is changed until these pass ---------------------------------------------

[ "$(id -u)" -eq 0 ] || die "run as root: sudo $cmdline"
command -v apt-get >/dev/null 2>&1 || die "apt-get not found: this installer is for Debian 12 / Raspberry Pi OS"
if [ -r /etc/os-release ]; then
	# shellcheck disable=SC1091
	os_id=$(. /etc/os-release && printf '%s %s' "${ID:-}" "${ID_LIKE:-}")
	case " $os_id " in
	*" debian "* | *" raspbian "*) ;;
	*) warn "this is not Debian ($os_id); continuing, but only Debian 12 is tested" ;;
	esac
fi
for f in images/build.sh systemd/ilot.service; do
	[ -f "$checkout/$f" ] || die "$checkout/$f is missing: run the installer from a complete checkout of ilot"
done

have_systemd=0
[ -d /run/systemd/system ] && have_systemd=1

# Where the binary comes from: --binary, an existing build, or cargo.
binary_src=""
cargo=""
cargo_user=root
if [ -n "$binary" ]; then
	[ -f "$binary" ] || die "--binary $binary: no such file"
	binary_src=$(cd "$(dirname "$binary")" && pwd)/$(basename "$binary")
elif [ "$build" -eq 0 ]; then
	if [ -x "$checkout/target/release/ilot" ]; then
		binary_src=$checkout/target/release/ilot
	elif [ -x "$BIN" ]; then
		binary_src=$BIN
	else
		die "--no-build, but there is no $checkout/target/release/ilot and no $BIN: build it (cargo build --release) or pass --binary PATH"
	fi
else
	# Build as the owner of the checkout (so target/ stays theirs), with their toolchain if any.
	owner=$(stat -c %U "$checkout")
	owner_home=""
	if [ "$owner" != root ] && [ "$owner" != UNKNOWN ]; then
		owner_home=$(getent passwd "$owner" | cut -d: -f6)
	fi
	for c in ${owner_home:+"$owner_home/.cargo/bin/cargo"} "$(command -v cargo || true)" /root/.cargo/bin/cargo; do
		if [ -n "$c" ] && [ -x "$c" ]; then cargo=$c; break; fi
	done
	if [ -z "$cargo" ]; then
		die "no Rust toolchain found (cargo not on PATH${owner_home:+, nor in $owner_home/.cargo/bin}, nor in /root/.cargo/bin).
    Either install Rust >= $MIN_RUST with rustup, then run this again:
        curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh
    (Debian 12's 'apt-get install cargo' gives Rust 1.63, too old for ilot's dependencies.)
    Or build ilot on another machine (cargo build --release, with --target aarch64-unknown-linux-gnu
    for a 64-bit Pi) and run: sudo $0 --binary PATH/TO/ilot"
	fi
	case $cargo in
	/root/*) cargo_user=root ;;
	*) [ "$owner" != root ] && [ "$owner" != UNKNOWN ] && cargo_user=$owner ;;
	esac
fi

run_cargo() { # ARGS...: cargo in the checkout, as $cargo_user, with the toolchain's bin on PATH
	local path
	path="$(dirname "$cargo"):/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
	if [ "$cargo_user" = root ]; then
		case $cargo in
		/root/*) (cd "$checkout" && PATH=$path HOME=/root "$cargo" "$@") ;; # rustup finds /root/.rustup
		*) (cd "$checkout" && PATH=$path "$cargo" "$@") ;;
		esac
	else
		(cd "$checkout" && runuser -u "$cargo_user" -- env PATH="$path" \
			HOME="$(getent passwd "$cargo_user" | cut -d: -f6)" \
			${CARGO_BUILD_JOBS:+CARGO_BUILD_JOBS=$CARGO_BUILD_JOBS} "$cargo" "$@")
	fi
}

# --- 1. packages -------------------------------------------------------------------------------

step "Packages"
pkg_installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }
pkgs=()
if ! command -v dockerd >/dev/null 2>&1; then
	pkgs+=(docker.io)
elif ! command -v docker >/dev/null 2>&1; then
	die "dockerd is installed but the docker client is not: install it (docker-ce-cli, or docker.io)"
fi
pkg_installed busybox-static || pkgs+=(busybox-static)
if [ -n "$cargo" ]; then
	for p in gcc libc6-dev pkg-config ca-certificates; do
		pkg_installed "$p" || pkgs+=("$p")
	done
fi
if [ ${#pkgs[@]} -gt 0 ]; then
	info "installing: ${pkgs[*]}"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq || die "apt-get update failed: check the network and /etc/apt/sources.list"
	apt-get install -y -qq "${pkgs[@]}" >/dev/null || die "apt-get install ${pkgs[*]} failed (run it by hand to see why)"
else
	info "already installed: docker, busybox-static${cargo:+, build tools}"
fi

# --- 2. Docker engine --------------------------------------------------------------------------

step "Docker engine"
docker_answers() { docker info >/dev/null 2>&1; }
wait_for() { # SECONDS COMMAND...: true once COMMAND succeeds, false after SECONDS
	local deadline=$((SECONDS + $1))
	shift
	until "$@"; do
		[ "$SECONDS" -lt "$deadline" ] || return 1
		sleep 0.5
	done
}
if docker_answers; then
	info "answering"
	if [ "$have_systemd" -eq 1 ] && ! systemctl is-enabled --quiet docker 2>/dev/null; then
		systemctl enable --quiet docker
		info "enabled docker.service at boot"
	fi
elif [ "$have_systemd" -eq 1 ]; then
	systemctl enable --now --quiet docker || die "systemctl enable --now docker failed: see journalctl -u docker"
	wait_for 30 docker_answers || die "the Docker engine does not answer after 30 s: see journalctl -u docker"
	info "started docker.service"
else
	if pidof dockerd >/dev/null 2>&1; then
		info "dockerd is running but not answering yet; waiting"
	else
		info "no systemd: starting dockerd in the background (log: $DOCKERD_LOG)"
		setsid --fork nohup dockerd >>"$DOCKERD_LOG" 2>&1 </dev/null
	fi
	wait_for 30 docker_answers || die "the Docker engine does not answer after 30 s: see $DOCKERD_LOG"
	info "answering (not started at boot: without systemd, start dockerd from your init system)"
fi

# --- 3. the binary -----------------------------------------------------------------------------

step "ilot binary"
if [ -n "$cargo" ]; then
	rust_version=$(run_cargo --version 2>/dev/null | awk '{print $2}')
	if [ -n "$rust_version" ] && [ "$(printf '%s\n%s\n' "$MIN_RUST" "$rust_version" | sort -V | head -1)" != "$MIN_RUST" ]; then
		warn "cargo $rust_version is older than $MIN_RUST; the build will likely fail. Update with: rustup update stable"
	fi
	mem_kib=$(awk '/^MemTotal:/ {print $2}' /proc/meminfo 2>/dev/null || echo 0)
	if [ -z "${CARGO_BUILD_JOBS:-}" ] && [ "${mem_kib:-0}" -gt 0 ] && [ "$mem_kib" -lt 2000000 ]; then
		export CARGO_BUILD_JOBS=1
		info "less than 2 GiB of memory: building with one job (slow; --binary avoids building here)"
	fi
	info "cargo build --release (as $cargo_user, cargo $rust_version)"
	if ! run_cargo build --release --locked --quiet; then
		die "cargo build failed (see above). Needs Rust >= $MIN_RUST (rustup update stable); or build elsewhere and pass --binary PATH"
	fi
	binary_src=$checkout/target/release/ilot
	[ -x "$binary_src" ] || die "cargo build succeeded but $binary_src is missing"
fi
if ! "$binary_src" --help >/dev/null 2>&1; then
	die "$binary_src does not run on this machine ($(uname -m)): wrong architecture or a broken build"
fi
binary_changed=0
if [ "$binary_src" != "$BIN" ] && ! cmp -s "$binary_src" "$BIN"; then
	install -m 0755 "$binary_src" "$BIN"
	binary_changed=1
	info "installed $BIN"
else
	info "$BIN is up to date"
fi

# --- 4. group, configuration, state ------------------------------------------------------------

step "Group, configuration, state"
if ! getent group ilot >/dev/null; then
	groupadd --system ilot
	info "created group ilot (members may use the CLI without sudo)"
fi
[ -d "$CONF_DIR" ] || install -d -m 0755 "$CONF_DIR"
if [ ! -e "$CONF" ]; then
	(
		umask 0027
		cat >"$CONF" <<'EOF'
# ilot host configuration. Every key is optional: a commented-out key takes the built-in default
# shown. The daemon reads this file at start (systemctl restart ilot after a change).

[daemon]
# socket = "/run/ilot/ilot.sock"        # the CLI's Unix socket (mode 0660, group ilot)
# state_dir = "/var/lib/ilot"           # store, journal, snapshots (0700)
# docker = "unix:///var/run/docker.sock" # Docker engine address
# catalog = ["/etc/ilot/apps"]          # extra catalogue dirs, searched before the built-in one

[proxy]
# http = "0.0.0.0:80"                   # redirects to HTTPS, answers ACME HTTP-01
# https = "0.0.0.0:443"                 # apps installed with --domain are served here
# access_log = "/var/log/ilot/access.log"

[acme]
# directory = "letsencrypt"             # or "letsencrypt-staging", or any ACME directory URL
# email = "admin@example.org"           # the CA's expiry warnings go here

[host]
# ipv4 = "203.0.113.10"                 # the public address: A records, reverse DNS checks
# hostname = "mail.example.org"         # the host's name (HELO): A/AAAA and PTR

[firewall]
# enabled = true                        # ilot's nftables table: SSH, 80/443 and apps' ports open,
#                                       # the rest dropped (docs/firewall.md)
# open = ["60001/udp"]                  # more ports to keep open (mosh, WireGuard...)

[guard]
# enabled = true                        # bans brute-forcers (sshd, the proxy, apps' logs)
# allow = ["home.example.net"]          # never banned: your home address, by name or CIDR
#                                       # (docs/guard.md; `ilot ban list`, `ilot guard show`)
EOF
	)
	chgrp ilot "$CONF"
	chmod 0640 "$CONF"
	info "wrote $CONF (all defaults)"
else
	info "$CONF exists: left as it is"
fi
[ -d "$STATE_DIR" ] || install -d -m 0700 "$STATE_DIR"

# The CLI must use the socket the daemon listens on.
socket=$(sed -n 's/^[[:space:]]*socket[[:space:]]*=[[:space:]]*"\([^"]*\)".*/\1/p' "$CONF" | head -n 1)
socket=${socket:-$RUN_DIR/ilot.sock}
ilot() { "$BIN" --socket "$socket" "$@"; }
ilot_answers() { ilot status >/dev/null 2>&1; }

# --- 5. the daemon -----------------------------------------------------------------------------

step "ilot daemon"
if [ "$have_systemd" -eq 1 ]; then
	unit_changed=0
	if ! cmp -s "$checkout/systemd/ilot.service" "$UNIT"; then
		install -m 0644 "$checkout/systemd/ilot.service" "$UNIT"
		systemctl daemon-reload
		unit_changed=1
		info "installed $UNIT"
	fi
	if ! systemctl is-enabled --quiet ilot 2>/dev/null; then
		systemctl enable --quiet ilot
		info "enabled ilot.service at boot"
	fi
	if ! systemctl is-active --quiet ilot; then
		systemctl start ilot || die "systemctl start ilot failed: journalctl -u ilot -n 50"
		info "started ilot.service"
	elif [ "$binary_changed" -eq 1 ] || [ "$unit_changed" -eq 1 ]; then
		systemctl restart ilot || die "systemctl restart ilot failed: journalctl -u ilot -n 50"
		info "restarted ilot.service (new binary or unit)"
	else
		info "ilot.service is running"
	fi
	wait_for 20 ilot_answers ||
		die "ilot does not answer on $socket after 20 s: systemctl status ilot; journalctl -u ilot -n 50"
else
	daemon_pid() { # the PID of the daemon this installer started, if it still runs
		local pid
		pid=$(cat "$DAEMON_PIDFILE" 2>/dev/null) || return 1
		[ -n "$pid" ] && [ -d "/proc/$pid" ] &&
			tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q "^$BIN daemon " && printf '%s' "$pid"
	}
	start_daemon() {
		install -d -m 0750 -g ilot "$RUN_DIR"
		# A new session (no terminal, no SIGHUP); the shell records its PID, then becomes the daemon.
		# shellcheck disable=SC2016 # $$ and $@ belong to the inner sh
		(umask 0077 && setsid --fork sh -c 'echo $$ >"$1" && shift && exec nohup "$@"' sh \
			"$DAEMON_PIDFILE" "$BIN" daemon --config "$CONF" >>"$DAEMON_LOG" 2>&1 </dev/null)
		wait_for 20 ilot_answers ||
			die "ilot does not answer on $socket after 20 s: see $DAEMON_LOG"
	}
	if ilot_answers; then
		if [ "$binary_changed" -eq 1 ]; then
			if pid=$(daemon_pid); then
				info "restarting the daemon (pid $pid) on the new binary"
				kill "$pid"
				stopped() { ! [ -d "/proc/$pid" ]; }
				wait_for 30 stopped || die "the daemon (pid $pid) did not stop within 30 s"
				start_daemon
				info "restarted (log: $DAEMON_LOG)"
			else
				warn "a daemon answers on $socket but was not started by this installer: restart it yourself to use the new binary"
			fi
		else
			info "running"
		fi
	else
		info "no systemd: starting ilot daemon in the background (log: $DAEMON_LOG)"
		start_daemon
		info "running (not started at boot: without systemd, start it from your init system)"
	fi
fi

# --- 6. images ---------------------------------------------------------------------------------

step "Images"
"$checkout/images/build.sh" hello | sed 's/^/    /'

# --- 7. demo -----------------------------------------------------------------------------------

if [ "$demo" -eq 1 ]; then
	step "Demo app hello"
	if ilot app show hello >/dev/null 2>&1; then
		info "already installed"
	else
		ilot app install hello --name hello || die "ilot app install hello failed (see above)"
	fi
	ilot app show hello | sed 's/^/    /'
fi

step "Done"
cat <<EOF
    ilot status                 the daemon and the host
    ilot app list               installed apps
    ilot app show hello         an app's state and its URL
    ilot app install hello --name NAME
EOF
if [ "$socket" != "$RUN_DIR/ilot.sock" ]; then
	info "(the socket is $socket: add --socket $socket to these commands)"
fi
if [ -n "${SUDO_USER:-}" ] && [ "$SUDO_USER" != root ] && ! id -nG "$SUDO_USER" 2>/dev/null | tr ' ' '\n' | grep -qx ilot; then
	info "to use ilot without sudo: usermod -aG ilot $SUDO_USER (then log in again)"
fi
