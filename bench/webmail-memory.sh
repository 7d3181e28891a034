#!/usr/bin/env bash
# bench/webmail-memory.sh: what the mail stack with webmail costs in memory: the mail container
# alone idle, mail + webmail idle, and both after a small load.
#
#   bench/webmail-memory.sh [--settle S] [--messages N] [--logins N]
#
#   --settle S     seconds of quiet before each measurement (default 30; php-fpm's idle
#                  workers leave after 10 s)
#   --messages N   messages delivered with swaks during the load (default 20)
#   --logins N     webmail sessions during the load: log in, list the inbox, read a message,
#                  through ilot's proxy with curl (default 5)
#
# 1. A daemon of its own (temp config, owner test-wmbench-XXXXXX, proxy on 127.0.0.1:0, ACME,
#    firewall and guard off) installs the mail app with its ports on free host ports and adds
#    bob@example.org, then after S seconds measures the mail container.
# 2. It installs the webmail (`ilot app install webmail --domain webmail.example.org
#    --set tls_verify=false`: the mail server's certificate is self-signed here) and, after S
#    seconds, measures both containers.
# 3. The load: N messages to bob with swaks (port 25), then L webmail sessions; after S seconds
#    both are measured again, with the cgroup's peak since the container started.
# Each measurement is `docker stats --no-stream` (MEM USAGE: usage minus inactive page cache)
# and the container's memory cgroup: memory.usage_in_bytes (v1) or memory.current (v2), and
# the anonymous memory from memory.stat. The sum of the two containers' MEM USAGE is compared
# with the 200 MiB the issue sets for the mail stack with webmail, idle.
#
# It is a benchmark, not a test: it exits non-zero only when it cannot measure. It needs root,
# a Docker engine, the images ilot/mail:1.0 and ilot/webmail:1.0 (images/build.sh mail webmail),
# jq, curl and swaks. On exit, including on failure or Ctrl-C, it removes the instances (then
# any Docker object labelled with its owner), stops the daemon and deletes its temp dir.
#
# Environment:
#   ILOT_BIN         the binary (default target/release/ilot)
#   ILOT_BENCH_OUT   where the summary is kept (default target/bench)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
# shellcheck source=tests/lib/common.sh
source "$ROOT/tests/lib/common.sh"

SETTLE=30
MESSAGES=20
LOGINS=5
usage() { sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'; }
while (($#)); do
    case $1 in
        -h | --help) usage; exit 0 ;;
        --settle) (($# >= 2)) || die "--settle needs a value"; SETTLE=$2; shift 2 ;;
        --messages) (($# >= 2)) || die "--messages needs a value"; MESSAGES=$2; shift 2 ;;
        --logins) (($# >= 2)) || die "--logins needs a value"; LOGINS=$2; shift 2 ;;
        *) die "unknown argument '$1' (see bench/webmail-memory.sh --help)" ;;
    esac
done
for v in "$SETTLE" "$MESSAGES" "$LOGINS"; do
    [[ $v =~ ^[0-9]+$ ]] || die "--settle, --messages and --logins take a number (got '$v')"
done

BIN=${ILOT_BIN:-$ROOT/target/release/ilot}
OUT_DIR=${ILOT_BENCH_OUT:-$ROOT/target/bench}
PW=bob-bench-passphrase
((EUID == 0)) || die "run it as root (it reads the containers' cgroups)"
for c in docker jq curl swaks; do
    command -v "$c" >/dev/null 2>&1 || die "$c is required (apt-get install ${c/docker/docker.io})"
done
[[ -x $BIN ]] || die "$BIN is missing: build it with cargo build --release (or set ILOT_BIN)"
for image in ilot/mail:1.0 ilot/webmail:1.0; do
    docker image inspect "$image" >/dev/null 2>&1 || die "$image is missing: build it with images/build.sh mail webmail"
done

BENCH_DIR=$(mktemp -d /tmp/ilot-wmbench-XXXXXX)
SUFFIX=$(printf %s "${BENCH_DIR##*-}" | tr "[:upper:]" "[:lower:]")
OWNER=test-wmbench-$SUFFIX
MAIL=mlw$SUFFIX
WEB=wmw$SUFFIX
SOCK=$BENCH_DIR/ilot.sock
CONFIG=$BENCH_DIR/ilot.toml
DAEMON_LOG=$BENCH_DIR/daemon.log
DAEMON_PID=""
mkdir -p "$OUT_DIR"
SUMMARY=$OUT_DIR/webmail-memory-$(date +%Y%m%d-%H%M%S).txt

ilot_cli() { "$BIN" --socket "$SOCK" "$@"; }

# shellcheck disable=SC2317  # invoked by the EXIT trap
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    set +e
    printf '\n==== cleanup\n'
    if [[ -n $DAEMON_PID ]] && kill -0 "$DAEMON_PID" 2>/dev/null; then
        timeout 120 "$BIN" --socket "$SOCK" app remove "$WEB" --purge >/dev/null 2>&1
        timeout 120 "$BIN" --socket "$SOCK" app remove "$MAIL" --purge >/dev/null 2>&1
        stop_pid "$DAEMON_PID" 30
    fi
    ((rc == 0)) || tail -n 20 "$DAEMON_LOG" 2>/dev/null
    docker_cleanup_owned exact "$OWNER"
    rm -rf -- "$BENCH_DIR"
    stop_started_dockerd
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# mem CONTAINER: "STATS_MIB CGROUP_MIB ANON_MIB PEAK_MIB" (peak: v1 max_usage, v2 memory.peak
# where the kernel has it, else -).
mem() {
    local c=$1 pid line path dir usage anon peak stats
    pid=$(docker inspect --format '{{.State.Pid}}' "$c")
    dir=""
    while IFS= read -r line; do
        path=${line#*:*:}
        case $line in
            *:memory:*) [[ -d /sys/fs/cgroup/memory$path ]] && dir=/sys/fs/cgroup/memory$path ;;
            0::*) [[ -z $dir && -f /sys/fs/cgroup$path/memory.current ]] && dir=/sys/fs/cgroup$path ;;
        esac
    done <"/proc/$pid/cgroup"
    [[ -n $dir ]] || die "no memory cgroup for $c (pid $pid)"
    if [[ -f $dir/memory.usage_in_bytes ]]; then
        usage=$(<"$dir/memory.usage_in_bytes")
        anon=$(awk '$1 == "total_rss" { print $2 }' "$dir/memory.stat")
        peak=$(<"$dir/memory.max_usage_in_bytes")
    else
        usage=$(<"$dir/memory.current")
        anon=$(awk '$1 == "anon" { print $2 }' "$dir/memory.stat")
        peak=$(cat "$dir/memory.peak" 2>/dev/null || echo -)
    fi
    stats=$(docker stats --no-stream --format '{{.MemUsage}}' "$c" | awk '{ print $1 }')
    awk -v s="$stats" -v u="$usage" -v a="$anon" -v p="$peak" 'BEGIN {
        n = s + 0; if (s ~ /GiB$/) n *= 1024; else if (s ~ /KiB$/) n /= 1024; else if (s ~ /[0-9]B$/ && s !~ /iB$/) n /= 1048576
        printf "%.1f %.1f %.1f %s\n", n, u / 1048576, a / 1048576, (p == "-" ? "-" : sprintf("%.1f", p / 1048576)) }'
}

ROWS=()
record() { # record WHAT CONTAINER...
    local what=$1 c total=0 m
    shift
    for c in "$@"; do
        read -r -a m <<<"$(mem "$c")"
        ROWS+=("$(printf '%-28s %-10s %9s %9s %9s %9s' "$what" "${c##*-}" "${m[0]}" "${m[1]}" "${m[2]}" "${m[3]}")")
        total=$(awk -v t="$total" -v v="${m[0]}" 'BEGIN { print t + v }')
    done
    ROWS+=("$(printf '%-28s %-10s %9s' "$what" "total" "$total")")
    LAST_TOTAL=$total
}

settle() { info "settling ${SETTLE}s"; sleep "$SETTLE"; }

# ---------------------------------------------------------------------------- run
ensure_docker "$BENCH_DIR"
bench_write_config ""
bench_start_daemon

info "installing the mail server ($MAIL)"
ilot_cli app install mail --name "$MAIL" --domain mail.example.org --set smtp_port=0 \
    --set submission_port=0 --set submissions_port=0 --set imaps_port=0 >/dev/null
printf '%s\n' "$PW" | ilot_cli mail user add bob@example.org >/dev/null
SMTP=$(ilot_cli app show "$MAIL" --json | jq -r '.services[0].ports[] | select(.container == 25) | .host' | sed 's/.*://')
settle
record "mail alone, idle" "ilot-$MAIL-mail"

info "installing the webmail ($WEB)"
ilot_cli app install webmail --name "$WEB" --domain webmail.example.org --set tls_verify=false >/dev/null
settle
record "mail + webmail, idle" "ilot-$MAIL-mail" "ilot-$WEB-webmail"
IDLE_TOTAL=$LAST_TOTAL

info "load: $MESSAGES messages with swaks, $LOGINS webmail sessions"
for ((i = 1; i <= MESSAGES; i++)); do
    swaks --server "127.0.0.1:$SMTP" --from alice@example.net --to bob@example.org \
        --header "Subject: bench $i" --body "message $i" >/dev/null 2>&1 || die "swaks: message $i refused"
done
HTTPS=$(ilot_cli status --json | jq -r '.proxy.https' | sed 's/.*://')
for ((i = 1; i <= LOGINS; i++)); do
    jar=$BENCH_DIR/jar-$i
    c=(curl -sk --max-time 30 -b "$jar" -c "$jar" --resolve "webmail.example.org:$HTTPS:127.0.0.1")
    token=$("${c[@]}" "https://webmail.example.org:$HTTPS/" | sed -n 's/.*name="_token" value="\([^"]*\)".*/\1/p' | head -1)
    [[ -n $token ]] || die "no login form"
    code=$("${c[@]}" -o /dev/null -w '%{http_code}' --data-urlencode "_token=$token" -d _task=login \
        -d _action=login -d _timezone=UTC --data-urlencode _user=bob --data-urlencode "_pass=$PW" \
        "https://webmail.example.org:$HTTPS/?_task=login")
    [[ $code == 302 ]] || die "login $i: HTTP $code"
    rt=$("${c[@]}" "https://webmail.example.org:$HTTPS/?_task=mail&_mbox=INBOX" | sed -n 's/.*"request_token":"\([^"]*\)".*/\1/p' | head -1)
    for mbox in INBOX Junk; do
        "${c[@]}" -H "X-Roundcube-Request: $rt" -o /dev/null \
            "https://webmail.example.org:$HTTPS/?_task=mail&_action=list&_mbox=$mbox&_remote=1"
    done
    "${c[@]}" -o /dev/null "https://webmail.example.org:$HTTPS/?_task=mail&_action=show&_uid=$i&_mbox=INBOX"
done
record "right after the load" "ilot-$MAIL-mail" "ilot-$WEB-webmail"
settle
record "after the load, settled" "ilot-$MAIL-mail" "ilot-$WEB-webmail"

{
    printf 'bench/webmail-memory.sh --settle %s --messages %s --logins %s   (%s)\n\n' "$SETTLE" "$MESSAGES" "$LOGINS" "$(date -u +%FT%TZ)"
    printf '%-28s %-10s %9s %9s %9s %9s\n' "when" "container" "stats MiB" "cgroup" "anon" "peak"
    printf '%s\n' "${ROWS[@]}"
    printf '\nmail + webmail idle: %s MiB (docker stats), limit set by the issue: 200 MiB: %s\n' \
        "$IDLE_TOTAL" "$(awk -v t="$IDLE_TOTAL" 'BEGIN { print (t < 200 ? "under" : "OVER") }')"
} | tee "$SUMMARY"
info "kept in $SUMMARY"
