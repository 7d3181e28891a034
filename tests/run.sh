#!/usr/bin/env bash
# The one test command of ilot. CI runs it as root on a fresh Debian 12 machine (.ci/run).
#
#   tests/run.sh [--no-install] [FILTER]
#
#   --no-install   do not install missing packages (step 1)
#   FILTER         a test-name filter, passed to `cargo nextest run` / `cargo test`
#
# Steps: install what the tests need (only what is missing), make sure a Docker engine answers
# (start dockerd if none does, and stop it again at the end), build the test images, build the
# release binary, run the Rust tests against it, and clean up whatever the tests left behind:
# Docker objects labelled ilot.owner=test-*, `ilot daemon`, `named`, `sshd`, `s3s-fs` and `busybox syslogd` processes whose
# config or data lives in ${TMPDIR:-/tmp}/ilot-test-*, and those temp dirs. Objects of any other owner
# are never touched.
#
# Environment:
#   ILOT_TEST_THREADS   parallel tests (default 4)
#   ILOT_TEST_TIMEOUT   limit for the test step, in seconds (default 3600)
#   ILOT_TEST_RUNNER    auto (default: nextest if installed, else cargo test), nextest or cargo
#   ILOT_S3S_FS         the s3s-fs binary for the S3 backup tests (default: the one step 1 installs)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
# shellcheck source=tests/lib/common.sh
source "$ROOT/tests/lib/common.sh"

usage() { sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'; }

INSTALL=1
FILTER=""
while (($#)); do
    case $1 in
        --no-install) INSTALL=0 ;;
        -h | --help) usage; exit 0 ;;
        --) shift; [[ $# -le 1 ]] || die "at most one FILTER (see --help)"; FILTER=${1:-}; break ;;
        -*) die "unknown option '$1' (see --help)" ;;
        *) [[ -z $FILTER ]] || die "at most one FILTER, got '$FILTER' and '$1' (see --help)"; FILTER=$1 ;;
    esac
    shift
done

THREADS=${ILOT_TEST_THREADS:-4}
TEST_TIMEOUT=${ILOT_TEST_TIMEOUT:-3600}
TMP_BASE=${TMPDIR:-/tmp}
TMP_BASE=${TMP_BASE%/}
[[ -n $TMP_BASE ]] || TMP_BASE=/tmp
RUN_DIR=$TMP_BASE/ilot-tests
mkdir -p "$RUN_DIR"
TEST_LOG=$RUN_DIR/tests.log
[[ -d $HOME/.cargo/bin ]] && PATH=$HOME/.cargo/bin:$PATH
export PATH

# ---------------------------------------------------------------------------- summary
START_MS=$(now_ms)
declare -a STEP_LINES=()
CURRENT_STEP=""
CURRENT_STEP_START=0
TEST_CLOSING=""
FAILED=0

step_begin() {
    CURRENT_STEP=$1
    CURRENT_STEP_START=$(now_ms)
    printf '\n==== %s\n' "$1"
}
step_end() { # step_end STATUS [NOTE]
    local secs
    secs=$(awk -v a="$CURRENT_STEP_START" -v b="$(now_ms)" 'BEGIN { printf "%.1f", (b - a) / 1000 }')
    STEP_LINES+=("$(printf '  %-6s %-34s %7ss  %s' "$1" "$CURRENT_STEP" "$secs" "${2:-}")")
    [[ $1 == FAIL ]] && FAILED=1
    CURRENT_STEP=""
}

# ---------------------------------------------------------------------------- cleanup
# ilot daemons (and the DNS tests' named, the backup tests' sshd and s3s-fs) started by tests: argv[0] is .../ilot, one
# argument is `daemon`, and one argument names a path in a test temp dir (${TMPDIR:-/tmp}/ilot-test-* or
# /tmp/ilot-test-*). A system sshd names no such path, so it is never one of them.
test_daemon_pids() {
    local d pid a is_ilot is_daemon in_test_dir
    local -a args
    for d in /proc/[0-9]*; do
        pid=${d#/proc/}
        [[ $pid != "$$" ]] || continue
        mapfile -d '' -t args <"$d/cmdline" 2>/dev/null || continue
        ((${#args[@]})) || continue
        is_ilot=0 is_daemon=0 in_test_dir=0
        [[ ${args[0]##*/} == ilot ]] && is_ilot=1
        # The DNS tests' own BIND (tests/common/named.rs): named -g -c TESTDIR/named/named.conf
        [[ ${args[0]##*/} == named ]] && is_ilot=1 is_daemon=1
        # The backup tests' storage servers (tests/common/storage.rs): s3s-fs ... TESTDIR/data, and
        # /usr/sbin/sshd -D -e -f TESTDIR/sshd_config, which soon retitles itself into one argument
        # "sshd: /usr/sbin/sshd -D -e -f TESTDIR/sshd_config [listener] ..." (its per-connection
        # processes, "sshd: root@notty", end with their client's connection).
        [[ ${args[0]##*/} == sshd || ${args[0]##*/} == s3s-fs ]] && is_ilot=1 is_daemon=1
        # The fail2ban comparison's syslogd (tests/fail2ban.rs): busybox syslogd -n -S -O TESTDIR/auth.log
        [[ ${args[0]##*/} == busybox && ${args[1]:-} == syslogd ]] && is_ilot=1 is_daemon=1
        if [[ ${args[0]} == "sshd: "* ]]; then
            is_ilot=1 is_daemon=1
            case ${args[0]} in
                *"$TMP_BASE"/ilot-test-* | */tmp/ilot-test-*) in_test_dir=1 ;;
            esac
        fi
        for a in "${args[@]:1}"; do
            [[ $a == daemon ]] && is_daemon=1
            case $a in
                *"$TMP_BASE"/ilot-test-* | */tmp/ilot-test-*) in_test_dir=1 ;;
            esac
        done
        ((is_ilot && is_daemon && in_test_dir)) && printf '%s\n' "$pid"
    done
    return 0
}

cleanup_leftovers() { # cleanup_leftovers WHEN
    local pid ns n=0
    local -a pids dirs
    mapfile -t pids < <(test_daemon_pids)
    if ((${#pids[@]})); then
        info "$1: stopping ${#pids[@]} leftover test daemon(s): ${pids[*]}"
        for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
        for pid in "${pids[@]}"; do stop_pid "$pid" 5; done
        n=$((n + ${#pids[@]}))
    fi
    docker_cleanup_owned prefix test-
    shopt -s nullglob
    dirs=("$TMP_BASE"/ilot-test-*)
    [[ $TMP_BASE == /tmp ]] || dirs+=(/tmp/ilot-test-*)
    shopt -u nullglob
    if ((${#dirs[@]})); then
        info "$1: removing ${#dirs[@]} test temp dir(s)"
        rm -rf -- "${dirs[@]}" || warn "could not remove some of: ${dirs[*]}"
    fi
    # Network namespaces a test made for itself (named ilot-test-*), if a test died before its own
    # cleanup.
    if command -v ip >/dev/null 2>&1; then
        while read -r ns _; do
            [[ $ns == ilot-test-* ]] || continue
            info "$1: deleting leftover network namespace $ns (and its processes)"
            ip netns pids "$ns" 2>/dev/null | xargs -r kill -KILL 2>/dev/null || true
            ip netns delete "$ns" 2>/dev/null || warn "could not delete network namespace $ns"
        done < <(ip netns list 2>/dev/null || true)
    fi
    # The mail ban test's guard-only table on the host (no firewall chains: not a real one).
    if command -v nft >/dev/null 2>&1 && nft list table inet ilot >/dev/null 2>&1 &&
        ! nft list chain inet ilot input >/dev/null 2>&1; then
        info "$1: deleting the host's leftover guard table inet ilot"
        nft delete table inet ilot 2>/dev/null || warn "could not delete table inet ilot"
    fi
    return 0
}

# shellcheck disable=SC2317  # invoked by the EXIT trap
on_exit() {
    local rc=$? total
    trap - EXIT INT TERM
    set +e
    if [[ -n $CURRENT_STEP ]]; then
        step_end FAIL "(interrupted or failed, exit $rc)"
    fi
    if [[ -n ${MADE_POLICY_RC:-} ]]; then rm -f "$MADE_POLICY_RC"; fi
    printf '\n==== cleanup\n'
    cleanup_leftovers "cleanup"
    stop_started_dockerd
    total=$(awk -v a="$START_MS" -v b="$(now_ms)" 'BEGIN { printf "%.0f", (b - a) / 1000 }')
    ((rc != 0)) && FAILED=1
    printf '\n==== summary (tests/run.sh%s, %ss)\n' "${FILTER:+ $FILTER}" "$total"
    printf '%s\n' "${STEP_LINES[@]}"
    [[ -n $TEST_CLOSING ]] && printf '  tests: %s\n' "$TEST_CLOSING"
    printf '  full test output: %s\n' "$TEST_LOG"
    if ((FAILED)); then
        printf 'RESULT: FAIL\n'
        ((rc != 0)) || rc=1
    else
        printf 'RESULT: PASS\n'
    fi
    exit "$rc"
}
trap on_exit EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------------------- 1. packages
# command -> Debian package. A command that is present (whatever installed it) is not reinstalled.
# shellcheck disable=SC2034  # used through a nameref in missing_packages
declare -A REQUIRED=([docker]=docker.io [dockerd]=docker.io [nft]=nftables [ip]=iproute2
    [curl]=curl [jq]=jq [docker-registry]=docker-registry [pebble]=pebble [openssl]=openssl
    [named-checkzone]=bind9utils [named]=bind9 [dig]=bind9-dnsutils [delv]=bind9-dnsutils
    [ldns-verify-zone]=ldnsutils
    [python3]=python3 [ss]=iproute2 [swaks]=swaks [debootstrap]=debootstrap [restic]=restic
    [ssh]=openssh-client [sftp]=openssh-client [ssh-keygen]=openssh-client)
# The ManageSieve test uploads a Sieve script with an independent client.
REQUIRED[sieve-connect]=sieve-connect
# The guard's filters are compared with fail2ban's stock filters (tests/guard.rs).
REQUIRED[fail2ban-regex]=fail2ban
# shellcheck disable=SC2034
declare -A OPTIONAL=([hyperfine]=hyperfine)
# bench/mail-tls.sh scans the mail ports with it.
OPTIONAL[testssl]=testssl.sh

missing_packages() { # missing_packages ASSOC_NAME
    local -n table=$1
    local cmd
    local -A pkgs=()
    for cmd in "${!table[@]}"; do
        command -v "$cmd" >/dev/null 2>&1 || pkgs[${table[$cmd]}]=1
    done
    [[ $1 == REQUIRED ]] && ! dpkg -s busybox-static >/dev/null 2>&1 && pkgs[busybox-static]=1
    # The mail tests verify DKIM signatures with dkimpy, an implementation other than ilot's.
    [[ $1 == REQUIRED ]] && ! dpkg -s python3-dkim >/dev/null 2>&1 && pkgs[python3-dkim]=1
    # The SFTP backup tests run OpenSSH's own sshd (/usr/sbin is not in every PATH: test the file).
    [[ $1 == REQUIRED && ! -x /usr/sbin/sshd ]] && pkgs[openssh-server]=1
    ((${#pkgs[@]})) && printf '%s\n' "${!pkgs[@]}" | sort
    return 0
}

apt_install() {
    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 -y -q install "$@"
}

# apt_install_no_start PACKAGE...: apt_install, with no service started by the packages' scripts:
# openssh-server would start a system sshd on port 22, and the tests run their own. A policy-rc.d
# that answers 101 ("action forbidden") stops invoke-rc.d and deb-systemd-invoke; it is there only
# for this install (one the machine already has is left as it is).
MADE_POLICY_RC="" # the policy-rc.d apt_install_no_start made, while it is there (on_exit removes it)
apt_install_no_start() {
    local policy=/usr/sbin/policy-rc.d rc=0
    if [[ ! -e $policy ]]; then
        MADE_POLICY_RC=$policy
        printf '#!/bin/sh\n# tests/run.sh: no service starts during this install\nexit 101\n' >"$policy"
        chmod 755 "$policy"
    fi
    apt_install "$@" || rc=$?
    if [[ -n $MADE_POLICY_RC ]]; then rm -f "$MADE_POLICY_RC"; MADE_POLICY_RC=""; fi
    return "$rc"
}

step_begin "install packages"
mapfile -t NEED < <(missing_packages REQUIRED)
mapfile -t WANT < <(missing_packages OPTIONAL)
if ((!INSTALL)); then
    if ((${#NEED[@]})); then
        warn "--no-install: missing packages: ${NEED[*]}"
        step_end WARN "skipped (--no-install); missing: ${NEED[*]}"
    else
        step_end SKIP "--no-install"
    fi
elif ((${#NEED[@]} + ${#WANT[@]} == 0)); then
    step_end OK "all present"
else
    [[ $(id -u) == 0 ]] || die "packages missing (${NEED[*]} ${WANT[*]}) and not root: run as root or pass --no-install"
    info "installing: ${NEED[*]} ${WANT[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 -q update
    # openssh-server and fail2ban on their own, so that policy-rc.d keeps only their services
    # from starting (the tests run their own sshd; fail2ban-regex needs no service).
    NO_START_PKGS=()
    for i in "${!NEED[@]}"; do
        if [[ ${NEED[$i]} == openssh-server || ${NEED[$i]} == fail2ban ]]; then NO_START_PKGS+=("${NEED[$i]}"); unset 'NEED[i]'; fi
    done
    NEED=("${NEED[@]}")
    if ((${#NEED[@]})); then apt_install "${NEED[@]}"; fi
    if ((${#NO_START_PKGS[@]})); then apt_install_no_start "${NO_START_PKGS[@]}"; NEED+=("${NO_START_PKGS[@]}"); fi
    note="installed: ${NEED[*]}"
    if ((${#WANT[@]})); then
        if apt_install "${WANT[@]}"; then note+=" ${WANT[*]}"; else warn "optional packages not installed: ${WANT[*]}"; fi
    fi
    step_end OK "$note"
fi
command -v cargo >/dev/null 2>&1 || die "cargo not found (looked in PATH and ~/.cargo/bin): install Rust with rustup"

# s3s-fs: the S3 server of the S3 backup tests (tests/common/storage.rs), a real one that checks
# SigV4 signatures, from crates.io. Compiled once per machine (a few minutes on 2 cores); 0.14.1 is
# the last version that builds with rustc 1.95 (0.15 and later need 1.96).
S3S_FS_VERSION=0.14.1
step_begin "install s3s-fs $S3S_FS_VERSION"
CARGO_BIN=${CARGO_HOME:-$HOME/.cargo}/bin
s3s_fs_version() { "$1" --version 2>/dev/null | awk '{ print $2 }'; }
if [[ -n ${ILOT_S3S_FS:-} ]]; then
    [[ -x $ILOT_S3S_FS ]] || die "ILOT_S3S_FS=$ILOT_S3S_FS is not an executable"
    export ILOT_S3S_FS
    step_end OK "ILOT_S3S_FS=$ILOT_S3S_FS (s3s-fs $(s3s_fs_version "$ILOT_S3S_FS"))"
elif [[ -x $CARGO_BIN/s3s-fs && $(s3s_fs_version "$CARGO_BIN/s3s-fs") == "$S3S_FS_VERSION" ]]; then
    export ILOT_S3S_FS=$CARGO_BIN/s3s-fs
    step_end OK "already installed: $ILOT_S3S_FS"
elif ((!INSTALL)); then
    warn "--no-install: s3s-fs $S3S_FS_VERSION is not installed in $CARGO_BIN: the S3 backup tests will fail"
    step_end WARN "skipped (--no-install); s3s-fs $S3S_FS_VERSION missing"
else
    info "cargo install s3s-fs --version $S3S_FS_VERSION --features binary --locked (once per machine)"
    cargo install s3s-fs --version "$S3S_FS_VERSION" --features binary --locked --force --root "${CARGO_HOME:-$HOME/.cargo}" ||
        die "cargo install s3s-fs $S3S_FS_VERSION failed"
    [[ $(s3s_fs_version "$CARGO_BIN/s3s-fs") == "$S3S_FS_VERSION" ]] || die "cargo install s3s-fs: $CARGO_BIN/s3s-fs is not version $S3S_FS_VERSION"
    export ILOT_S3S_FS=$CARGO_BIN/s3s-fs
    step_end OK "installed $ILOT_S3S_FS"
fi
case ${ILOT_TEST_RUNNER:-auto} in
    auto) NEXTEST=0; cargo nextest --version >/dev/null 2>&1 && NEXTEST=1 ;;
    nextest) NEXTEST=1 ;;
    cargo) NEXTEST=0 ;;
    *) die "ILOT_TEST_RUNNER must be auto, nextest or cargo (got '$ILOT_TEST_RUNNER')" ;;
esac

# ---------------------------------------------------------------------------- 2. docker engine
step_begin "docker engine"
ensure_docker "$RUN_DIR"
if [[ -n $ILOT_LIB_STARTED_DOCKERD ]]; then
    step_end OK "started dockerd (pid $ILOT_LIB_STARTED_DOCKERD, log $RUN_DIR/dockerd.log); stopped at exit"
else
    step_end OK "already running"
fi
# Leftovers of an earlier run that was killed before its cleanup.
cleanup_leftovers "before tests"

# ---------------------------------------------------------------------------- 3. test images
step_begin "build test images"
[[ -f images/build.sh ]] || die "images/build.sh is missing"
bash images/build.sh hello tests/images/hello-2 tests/images/hello-broken tests/images/ws-echo
step_end OK "ilot/hello:1.0, ilot/hello:2.0, ilot/hello:broken, ilot/ws-echo:test"
# The mail and webmail images and the stand-ins of the catalogue tests (ilot/standin-*: Debian
# packages, a few minutes the first time, a second once built) are built while cargo compiles:
# one waits on the network, the other on the CPU. standin-base first: the other stand-ins are
# built FROM it.
bash images/build.sh mail webmail standin-base standin-postgres standin-mysql standin-redis standin-web \
    >"$RUN_DIR/mail-image.log" 2>&1 &
MAIL_IMAGE_PID=$!

# ---------------------------------------------------------------------------- 4. build + tests
LOCKED=()
[[ -f Cargo.lock ]] && LOCKED=(--locked)

step_begin "cargo build --release"
cargo build --release "${LOCKED[@]}"
[[ -x target/release/ilot ]] || die "cargo build succeeded but target/release/ilot is missing"
step_end OK "target/release/ilot"
step_begin "build the mail, webmail and stand-in images"
wait "$MAIL_IMAGE_PID" || die "images/build.sh mail webmail standin-* failed: see $RUN_DIR/mail-image.log"
step_end OK "ilot/mail:1.0, ilot/webmail:1.0, ilot/standin-{base,postgres,mysql,redis,web}:1.0 ($(grep -c '(up to date)$' "$RUN_DIR/mail-image.log" || true) of 7 up to date)"

export ILOT_BIN=$ROOT/target/release/ilot
export ILOT_TEST_IMAGES_BUILT=1
if ((NEXTEST)); then
    TEST_CMD=(cargo nextest run --release "${LOCKED[@]}" --no-fail-fast --test-threads "$THREADS")
    [[ -n $FILTER ]] && TEST_CMD+=("$FILTER")
else
    TEST_CMD=(cargo test --release "${LOCKED[@]}" --no-fail-fast)
    [[ -n $FILTER ]] && TEST_CMD+=("$FILTER")
    TEST_CMD+=(-- --test-threads "$THREADS")
fi

step_begin "tests (${TEST_CMD[*]:0:3})"
info "ILOT_BIN=$ILOT_BIN ILOT_TEST_IMAGES_BUILT=1"
info "running: ${TEST_CMD[*]} (limit ${TEST_TIMEOUT}s)"
set +e
timeout --foreground --kill-after=30 "$TEST_TIMEOUT" "${TEST_CMD[@]}" 2>&1 | tee "$TEST_LOG"
TEST_RC=${PIPESTATUS[0]}
set -e
# The closing line(s): nextest's "Summary [...] N tests run: ...", or cargo test's "test result:"
# lines (one per test binary).
strip_ansi() { sed -e 's/\x1b\[[0-9;]*[A-Za-z]//g'; }
if ((NEXTEST)); then
    TEST_CLOSING=$(strip_ansi <"$TEST_LOG" | grep -E '^[[:space:]]*Summary \[' | tail -n 1 | sed -e 's/^[[:space:]]*//' || true)
else
    TEST_CLOSING=$(strip_ansi <"$TEST_LOG" | grep -E '^test result: ' |
        awk '{ for (i = 1; i <= NF; i++) { if ($(i) ~ /^(passed|failed|ignored);?$/) { k = $(i); sub(/;/, "", k); s[k] += $(i - 1) } } }
             END { printf "%d passed; %d failed; %d ignored (%d test binaries)", s["passed"], s["failed"], s["ignored"], NR }' || true)
fi
if ((TEST_RC == 0)); then
    step_end OK
elif ((TEST_RC == 124 || TEST_RC == 137)); then
    step_end FAIL "timed out after ${TEST_TIMEOUT}s"
else
    step_end FAIL "exit $TEST_RC"
fi
exit "$TEST_RC"
