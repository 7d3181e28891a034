#!/usr/bin/env bash
# bench/guard.sh: ilot's ban engine (the guard) next to fail2ban, in one run.
#
#   bench/guard.sh
#
# 1. Filter throughput: one generated sshd log (1,000,000 lines, 30 % failures in the three
#    forms both filters agree on: "Failed password for root", "Failed password for invalid
#    user X", "Invalid user X"; 70 % sshd lines that are not failures: Accepted publickey,
#    pam_unix session opened/closed, "Received disconnect ...:11: Bye Bye [preauth]",
#    "Connection closed by A port P [preauth]"; 3,000 addresses). It is generated once, into
#    ILOT_BENCH_OUT, and kept. On it: `ilot guard test sshd LOG --summary --json` (all cores;
#    then `taskset -c 0`, one core), median of 3 each, and `fail2ban-regex LOG
#    /etc/fail2ban/filter.d/sshd.conf` once (it takes 30-60 s). Wall time of each command,
#    lines/s, and the ratio ilot/fail2ban (target >= 100x). Both must report the same number of
#    matched lines, or the run fails. ilot is also run with TZ=:/etc/localtime, as a check:
#    without TZ, glibc's local-time functions stat /etc/localtime and take a process-wide lock
#    on every call, and a build that called mktime per matched line (the first one did) ran
#    2.8x slower than with TZ set. The two figures should now be the same.
# 2. Append -> kernel latency: a daemon of its own, in a network namespace this script makes
#    (the guard writes nftables), follows a log file with an sshd jail of maxretry = 1. A
#    python3 helper appends 200 failing lines, each from a new address (10.200.x.y, current
#    syslog date), one write every 50 ms, and reads `nft monitor new elements` in the
#    namespace: the time from each write to the address's `add element inet ilot ban4` line.
#    p50/p99/max (target: p99 < 50 ms).
# 3. Blocklist load: the same daemon starts with a [[guard.blocklists]] file of 100,000 distinct
#    random IPv4 addresses (single addresses, none adjacent, so none merge). The figure is the
#    daemon's own log line, "guard: N blocklist entries loaded in S s" (the nft transaction);
#    the element count of set block4 in the kernel is checked (target < 0.5 s). For reference,
#    `nft -f` loading the same 100,000 addresses into a set of a scratch table is timed too.
# 4. Daemon RSS with 100,000 bans: after 2-3, VmRSS of the daemon (baseline), then 100,000
#    failing lines from distinct addresses (100.64.0.0/10) appended in one write. Two times from
#    the append: until `ilot ban list --json` counts them all (decided, in the engine's memory),
#    and until the daemon has logged the last ban event (it publishes a batch's events once the
#    batch's nft transaction is done; the store is written after). VmRSS then, and once the
#    daemon is idle again (its CPU time still; peak VmHWM too);
#    the element count of set ban4 in the kernel. Then the daemon is stopped, and a
#    fail2ban-server of its own (foreground, private config dir, socket, database and log in
#    the temp dir) gets the same 100,000 lines: jail sshd, maxretry 1, and no action, so its
#    figures are its bookkeeping alone (a real nftables action runs one `nft` per ban on top):
#    the time until it logged the last ban, and its VmRSS once idle. fail2ban is not run for 3
#    (it has no blocklist import).
#
# It is a benchmark, not a test: it exits non-zero only when it cannot measure.
# It needs root (network namespace, nftables), python3, nft, ip, taskset and a Docker engine (the
# daemon's start-up; dockerd is started if none answers, and stopped at the end). It installs
# fail2ban with apt-get if fail2ban-regex is missing (the fail2ban service is never started or
# touched; the script runs a fail2ban-server of its own for 4).
# Its daemon (temp config, owner test-gbench-XXXXXX, ACME off, the firewall on: in the namespace, and bans need it, no app installed)
# runs inside namespace ilot-bench-PID; everything it made is removed at exit.
#
# Environment:
#   ILOT_BIN                  the binary (default target/release/ilot; built if missing)
#   ILOT_BENCH_LINES          lines of the generated log (default 1000000)
#   ILOT_BENCH_RUNS           runs of ilot guard test per variant, median (default 3)
#   ILOT_BENCH_LATENCY_LINES  lines appended one by one for 2 (default 200)
#   ILOT_BENCH_GAP_MS         ms between those appends (default 50)
#   ILOT_BENCH_BLOCKLIST      blocklist addresses for 3 (default 100000)
#   ILOT_BENCH_BANS           bans made at once for 4 (default 100000)
#   ILOT_BENCH_BAN_TIMEOUT    seconds to wait for them (default 240)
#   ILOT_BENCH_OUT            where results are kept (default target/bench)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
# shellcheck source=tests/lib/common.sh
source "$ROOT/tests/lib/common.sh"

bench_args "$@"

N_LINES=${ILOT_BENCH_LINES:-1000000}
RUNS=${ILOT_BENCH_RUNS:-3}
N_LAT=${ILOT_BENCH_LATENCY_LINES:-200}
GAP_MS=${ILOT_BENCH_GAP_MS:-50}
N_BLOCK=${ILOT_BENCH_BLOCKLIST:-100000}
N_BANS=${ILOT_BENCH_BANS:-100000}
BAN_TIMEOUT=${ILOT_BENCH_BAN_TIMEOUT:-240}
GEN_VERSION=1           # bump when the generator changes: the kept log is made again
OUT_DIR=${ILOT_BENCH_OUT:-$ROOT/target/bench}
BIN=${ILOT_BIN:-$ROOT/target/release/ilot}
F2B_FILTER=/etc/fail2ban/filter.d/sshd.conf
INVOCATION="bench/guard.sh (ILOT_BENCH_LINES=$N_LINES ILOT_BENCH_RUNS=$RUNS ILOT_BENCH_LATENCY_LINES=$N_LAT ILOT_BENCH_GAP_MS=$GAP_MS ILOT_BENCH_BLOCKLIST=$N_BLOCK ILOT_BENCH_BANS=$N_BANS)"
[[ -d $HOME/.cargo/bin ]] && PATH=$HOME/.cargo/bin:$PATH
PATH=$PATH:/usr/sbin:/sbin
export PATH

for v in N_LINES RUNS N_LAT GAP_MS N_BLOCK N_BANS BAN_TIMEOUT; do
    [[ ${!v} =~ ^[1-9][0-9]*$ ]] || die "$v must be a positive integer (got '${!v}')"
done
((N_LAT <= 60000)) || die "ILOT_BENCH_LATENCY_LINES must be at most 60000 (addresses 10.200.0.0/16)"
((N_BANS <= 4000000)) || die "ILOT_BENCH_BANS must be at most 4000000 (addresses 100.64.0.0/10)"
((EUID == 0)) || die "run it as root: it makes a network namespace and writes nftables there"
for c in ip nft python3 jq taskset awk; do
    command -v "$c" >/dev/null 2>&1 || die "$c is required"
done

# ---------------------------------------------------------------------------- state + cleanup
# /tmp rather than $TMPDIR: the socket path must stay short (108 bytes).
BENCH_DIR=$(mktemp -d /tmp/ilot-bench-guard-XXXXXX)
SUFFIX=${BENCH_DIR##*-}
OWNER=test-gbench-$(printf %s "$SUFFIX" | tr "[:upper:]" "[:lower:]")
NS=ilot-bench-$$
SOCK=$BENCH_DIR/ilot.sock
CONFIG=$BENCH_DIR/ilot.toml
DAEMON_LOG=$BENCH_DIR/daemon.log
# The followed files get a directory of their own: the follower wakes on any change in the
# directories it watches, and the daemon's own log (100,000 ban lines) must not be one of them.
LOGS_DIR=$BENCH_DIR/logs
AUTH_LOG=$LOGS_DIR/auth.log         # the file the sshd jail follows
BLOCK_FILE=$BENCH_DIR/drop.txt
NS_MADE=""
DAEMON_PID=""
HELPER_PID=""                       # the latency helper (python3)
MONITOR_PIDFILE=$BENCH_DIR/monitor.pid
F2B_DIR=$BENCH_DIR/f2b               # fail2ban-server's private config, socket, db and log (4)
F2B_PID=""
POLICY_RC_D=""                      # a policy-rc.d this run wrote (apt must not start fail2ban)
STAMP=$(date +%Y%m%d-%H%M%S)
RAW_PREFIX=$OUT_DIR/guard-$STAMP

ilot_cli() { "$BIN" --socket "$SOCK" "$@"; }
in_ns() { ip netns exec "$NS" "$@"; }

# shellcheck disable=SC2317  # invoked by the EXIT trap
cleanup() {
    local rc=$? pid
    trap - EXIT INT TERM
    set +e
    printf '\n==== cleanup\n'
    if [[ -n $POLICY_RC_D ]]; then rm -f -- "$POLICY_RC_D"; fi
    if ((rc != 0)) && [[ -s $DAEMON_LOG ]]; then
        printf -- '---- last lines of the daemon log (%s)\n' "$DAEMON_LOG"
        tail -n 20 "$DAEMON_LOG"
    fi
    if [[ -n $HELPER_PID ]]; then stop_pid "$HELPER_PID" 3; fi
    if [[ -s $MONITOR_PIDFILE ]]; then
        pid=$(<"$MONITOR_PIDFILE")
        [[ $pid =~ ^[0-9]+$ ]] && stop_pid "$pid" 3
    fi
    if [[ -n $F2B_PID ]] && kill -0 "$F2B_PID" 2>/dev/null; then
        info "stopping fail2ban-server (pid $F2B_PID)"
        stop_pid "$F2B_PID" 10
    fi
    if [[ -n $DAEMON_PID ]] && kill -0 "$DAEMON_PID" 2>/dev/null; then
        info "stopping the daemon (pid $DAEMON_PID)"
        stop_pid "$DAEMON_PID" 10
    fi
    if [[ -n $NS_MADE ]]; then
        info "deleting network namespace $NS"
        ip netns delete "$NS" || warn "could not delete network namespace $NS"
    fi
    rm -rf -- "$BENCH_DIR"
    stop_started_dockerd
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------------------- helpers
f0() { awk -v v="$1" 'BEGIN { printf "%.0f", v }'; }
f1() { awk -v v="$1" 'BEGIN { printf "%.1f", v }'; }
f2() { awk -v v="$1" 'BEGIN { printf "%.2f", v }'; }
f3() { awk -v v="$1" 'BEGIN { printf "%.3f", v }'; }
# thousands N: 1234567 -> 1,234,567
thousands() { printf '%s' "$1" | sed -E ':a; s/^([0-9]+)([0-9]{3})/\1,\2/; ta'; }
verdict() { # verdict AWK-EXPR: "met" if true
    if awk "BEGIN { exit !($1) }"; then echo "met"; else echo "MISSED"; fi
}
# shellcheck disable=SC2086  # the list is split on purpose
med() { printf '%s\n' $1 | median; }   # med "v1 v2 v3"
secs_since() { awk -v a="$1" -v b="$(now_us)" 'BEGIN { printf "%.3f", (b - a) / 1e6 }'; }
rss_kb() { awk -v k="$2" '$1 == k":" { print $2 }' "/proc/$1/status"; }
mib() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }
# set_count SET: elements of a set of table inet ilot, in the kernel.
set_count() {
    in_ns nft -j list set inet ilot "$1" | python3 -c '
import json, sys
n = 0
for o in json.load(sys.stdin)["nftables"]:
    if "set" in o:
        n += len(o["set"].get("elem", []))
print(n)'
}
daemon_alive() {
    kill -0 "$DAEMON_PID" 2>/dev/null || die "the daemon (pid $DAEMON_PID) has exited; $1"
}
ban_total() { ilot_cli ban list --json | jq -r '.total'; }

# ---------------------------------------------------------------------------- set-up
printf '==== set-up\n'
if ! command -v fail2ban-regex >/dev/null 2>&1; then
    # Debian's fail2ban package starts its service on install unless policy-rc.d forbids it.
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        POLICY_RC_D=/usr/sbin/policy-rc.d
        printf '#!/bin/sh\nexit 101\n' >"$POLICY_RC_D"
        chmod 755 "$POLICY_RC_D"
    fi
    info "installing: fail2ban (apt-get; its service is not started)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y --no-install-recommends fail2ban >"$BENCH_DIR/apt.log" 2>&1 ||
        { apt-get update >>"$BENCH_DIR/apt.log" 2>&1 &&
            apt-get install -y --no-install-recommends fail2ban >>"$BENCH_DIR/apt.log" 2>&1; } ||
        { tail -n 20 "$BENCH_DIR/apt.log" >&2; die "apt-get install fail2ban failed"; }
    if [[ -n $POLICY_RC_D ]]; then rm -f -- "$POLICY_RC_D"; POLICY_RC_D=""; fi
fi
command -v fail2ban-regex >/dev/null 2>&1 || die "fail2ban-regex is not installed"
[[ -r $F2B_FILTER ]] || die "$F2B_FILTER is missing (package fail2ban)"
F2B_VERSION=$(fail2ban-regex --version 2>/dev/null | head -n 1 | sed "s/^fail2ban-regex *//" || echo "?")

if [[ ! -x $BIN ]]; then
    [[ -z ${ILOT_BIN:-} ]] || die "ILOT_BIN=$ILOT_BIN is not an executable"
    info "target/release/ilot missing: cargo build --release"
    locked=()
    [[ -f Cargo.lock ]] && locked=(--locked)
    cargo build --release "${locked[@]}"
fi
ILOT_VERSION=$("$BIN" --version 2>/dev/null | head -n 1 || echo "?")
# Which build: the commit, and whether src/ differed from it (the binary may be newer).
if GIT_HEAD=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null); then
    git -C "$ROOT" diff --quiet HEAD -- src Cargo.toml Cargo.lock filters 2>/dev/null || GIT_HEAD+=" + uncommitted changes"
    ILOT_VERSION+=" (binary of $(date -r "$BIN" '+%Y-%m-%d %H:%M'), tree at $GIT_HEAD)"
fi
mkdir -p "$OUT_DIR"

# ---------------------------------------------------------------------------- the log
# The fail2ban sshd filter (1.0) joins the lines of one sshd process (same host and pid): an
# "Accepted ..." line after a failure of the same pid counts as matched ("MLFGAINED"). Real
# sshd never logs both for one connection here, so "Accepted" lines get pids of their own.
LOG=$OUT_DIR/guard-sshd-$N_LINES-v$GEN_VERSION.log
cat >"$BENCH_DIR/gen.py" <<'PY'
import random, sys
out, n = sys.argv[1], int(sys.argv[2])
rng = random.Random(20261122)
addrs, seen = [], set()
while len(addrs) < 3000:
    a = (rng.choice([45, 61, 92, 103, 118, 141, 159, 185, 193, 203, 212]),
         rng.randrange(256), rng.randrange(256), rng.randrange(1, 255))
    if a not in seen:
        seen.add(a)
        addrs.append("%d.%d.%d.%d" % a)
users = ["admin", "oracle", "test", "ubuntu", "postgres", "git", "user", "pi", "ftpuser", "guest"]
with open(out + ".tmp", "w") as f:
    w = f.write
    t = 0
    for i in range(n):
        if i % 40 == 0:
            t += 1
        ts = "Nov 21 %02d:%02d:%02d" % ((t // 3600) % 24, (t // 60) % 60, t % 60)
        pid = 1000 + rng.randrange(60000)          # 1000..60999
        a = rng.choice(addrs)
        port = rng.randrange(1024, 65536)
        r = rng.random()
        if r < 0.10:
            m = "Failed password for root from %s port %d ssh2" % (a, port)
        elif r < 0.20:
            m = "Failed password for invalid user %s from %s port %d ssh2" % (rng.choice(users), a, port)
        elif r < 0.30:
            m = "Invalid user %s from %s port %d" % (rng.choice(users), a, port)
        elif r < 0.45:
            pid = 61000 + rng.randrange(4000)      # never a failing pid (see above)
            m = "Accepted publickey for admin from %s port %d ssh2: ED25519 SHA256:abc" % (a, port)
        elif r < 0.60:
            m = "pam_unix(sshd:session): session opened for user admin(uid=1000) by (uid=0)"
        elif r < 0.75:
            m = "Received disconnect from %s port %d:11: Bye Bye [preauth]" % (a, port)
        elif r < 0.90:
            m = "Connection closed by %s port %d [preauth]" % (a, port)
        else:
            m = "pam_unix(sshd:session): session closed for user admin"
        w("%s pi sshd[%d]: %s\n" % (ts, pid, m))
import os
os.replace(out + ".tmp", out)
PY
if [[ -s $LOG ]] && (($(wc -l <"$LOG") == N_LINES)); then
    info "log: $LOG (kept from an earlier run)"
else
    info "generating $LOG ($N_LINES lines)"
    t0=$(now_us)
    python3 "$BENCH_DIR/gen.py" "$LOG" "$N_LINES"
    info "generated in $(secs_since "$t0") s"
fi
LOG_MB=$(awk -v b="$(stat -c %s "$LOG")" 'BEGIN { printf "%.0f", b / 1e6 }')
EXPECTED_FAILS=$(grep -c -E 'sshd\[[0-9]+\]: (Failed password for|Invalid user) ' "$LOG" || true)
cat "$LOG" >/dev/null # in the page cache for every run alike

# ---------------------------------------------------------------------------- 1. throughput
printf '\n==== 1. filter throughput on %s lines (%s MB)\n' "$(thousands "$N_LINES")" "$LOG_MB"
declare -A WALL=() SELF=() MATCHED=()
# run_ilot KEY PREFIX...: one `ilot guard test` run; wall and self-reported seconds appended.
run_ilot() {
    local key=$1 t0 t out=$BENCH_DIR/ilot-run.json
    shift
    t0=$(now_us)
    "$@" "$BIN" guard test sshd "$LOG" --summary --json >"$out" 2>"$BENCH_DIR/ilot-run.err" ||
        { cat "$BENCH_DIR/ilot-run.err" >&2; die "ilot guard test failed ($key)"; }
    t=$(secs_since "$t0")
    jq -c --arg k "$key" --argjson wall "$t" '{run: $k, wall: $wall, lines, matched, ignored, bad_address, missed, seconds}' \
        "$out" >>"$RAW_PREFIX-ilot-runs.jsonl"
    WALL[$key]+="$t "
    SELF[$key]+="$(f3 "$(jq -r .seconds "$out")") "
    local m
    m=$(jq -r .matched "$out")
    [[ -z ${MATCHED[$key]:-} || ${MATCHED[$key]} == "$m" ]] || die "ilot guard test matched $m, then ${MATCHED[$key]} ($key)"
    MATCHED[$key]=$m
    info "$(printf '%-28s wall %6.3f s (self-reported %6.3f s), %s matched' "$key" "$t" "$(jq -r .seconds "$out")" "$m")"
}
: >"$RAW_PREFIX-ilot-runs.jsonl"
for ((r = 1; r <= RUNS; r++)); do
    run_ilot "ilot (all cores)" env
    run_ilot "ilot (one core)" taskset -c 0
done
for ((r = 1; r <= RUNS; r++)); do
    run_ilot "ilot, TZ set (check)" env TZ=:/etc/localtime
done

info "fail2ban-regex $LOG $F2B_FILTER (this takes a while)"
t0=$(now_us)
fail2ban-regex --print-no-missed --print-no-ignored "$LOG" "$F2B_FILTER" >"$RAW_PREFIX-fail2ban-regex.txt" 2>&1 ||
    { tail -n 20 "$RAW_PREFIX-fail2ban-regex.txt" >&2; die "fail2ban-regex failed"; }
F2B_WALL=$(secs_since "$t0")
# "Lines: 1000000 lines, 449734 ignored, 300360 matched, 249906 missed"
read -r F2B_LINES F2B_IGNORED F2B_MATCHED F2B_MISSED < <(
    sed -n -E 's/^Lines: ([0-9]+) lines, ([0-9]+) ignored, ([0-9]+) matched, ([0-9]+) missed.*/\1 \2 \3 \4/p' \
        "$RAW_PREFIX-fail2ban-regex.txt" | head -n 1
) || true
[[ -n ${F2B_MATCHED:-} ]] || { tail -n 20 "$RAW_PREFIX-fail2ban-regex.txt" >&2; die "no 'Lines: ...' line in fail2ban-regex's output"; }
F2B_SELF=$(sed -n -E 's/^\[processed in ([0-9.]+) sec\].*/\1/p' "$RAW_PREFIX-fail2ban-regex.txt" | head -n 1)
info "$(printf '%-28s wall %6.3f s (self-reported %s s), %s matched, %s ignored, %s missed' "fail2ban-regex" "$F2B_WALL" "${F2B_SELF:-?}" "$F2B_MATCHED" "$F2B_IGNORED" "$F2B_MISSED")"
((F2B_LINES == N_LINES)) || die "fail2ban-regex read $F2B_LINES lines, not $N_LINES"

I_MATCHED=${MATCHED["ilot (all cores)"]}
info "matched lines: ilot $I_MATCHED, fail2ban-regex $F2B_MATCHED (failure lines generated: $EXPECTED_FAILS)"
if ((I_MATCHED != F2B_MATCHED)); then
    die "ilot and fail2ban-regex disagree: $I_MATCHED vs $F2B_MATCHED matched lines. Find the lines with
    fail2ban-regex --print-all-matched $LOG $F2B_FILTER  and  $BIN guard test sshd $LOG,
    and make the generator (bench/guard.sh, gen.py) write only forms both agree on"
fi
((I_MATCHED == EXPECTED_FAILS)) || warn "both matched $I_MATCHED lines, but $EXPECTED_FAILS failure lines were generated"

W_ALL=$(med "${WALL["ilot (all cores)"]}")
W_ONE=$(med "${WALL["ilot (one core)"]}")
W_TZ=$(med "${WALL["ilot, TZ set (check)"]}")
LPS_ALL=$(awk -v n="$N_LINES" -v t="$W_ALL" 'BEGIN { print n / t }')
LPS_ONE=$(awk -v n="$N_LINES" -v t="$W_ONE" 'BEGIN { print n / t }')
LPS_TZ=$(awk -v n="$N_LINES" -v t="$W_TZ" 'BEGIN { print n / t }')
LPS_F2B=$(awk -v n="$N_LINES" -v t="$F2B_WALL" 'BEGIN { print n / t }')
R_ALL=$(awk -v a="$LPS_ALL" -v b="$LPS_F2B" 'BEGIN { print a / b }')
R_ONE=$(awk -v a="$LPS_ONE" -v b="$LPS_F2B" 'BEGIN { print a / b }')
R_TZ=$(awk -v a="$LPS_TZ" -v b="$LPS_F2B" 'BEGIN { print a / b }')

# ---------------------------------------------------------------------------- the daemon
printf '\n==== the daemon, in network namespace %s\n' "$NS"
ensure_docker "$BENCH_DIR"
ip netns add "$NS"
NS_MADE=1
in_ns ip link set lo up

# Blocklist: distinct random IPv4 addresses with an odd last byte (no two can merge into a
# prefix), outside 0/8, 10/8, 100.64/10, 127/8, 169.254/16, 172.16/12, 192.168/16, 224/3 and
# Docker's networks (allowlisted by the guard).
mapfile -t DOCKER_NETS < <(docker network ls -q 2>/dev/null |
    xargs -r docker network inspect -f '{{range .IPAM.Config}}{{.Subnet}} {{end}}' 2>/dev/null |
    tr ' ' '\n' | grep -v ':' | grep . || true)
python3 - "$BLOCK_FILE" "$N_BLOCK" "${DOCKER_NETS[@]}" <<'PY'
import ipaddress, random, sys
out, n, extra = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
rng = random.Random(7)
bad = [ipaddress.ip_network(x) for x in ["0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8",
       "169.254.0.0/16", "172.16.0.0/12", "192.168.0.0/16", "224.0.0.0/3"] + extra]
seen = set()
with open(out, "w") as f:
    f.write("; generated by bench/guard.sh: %d single addresses\n" % n)
    while len(seen) < n:
        a = ipaddress.IPv4Address((rng.randrange(1, 224) << 24) | (rng.randrange(1 << 16) << 8) | (rng.randrange(0, 127) * 2 + 1))
        if a in seen or any(a in b for b in bad):
            continue
        seen.add(a)
        f.write("%s\n" % a)
PY
info "blocklist: $(thousands "$N_BLOCK") addresses in $BLOCK_FILE"
mkdir -p "$LOGS_DIR"
: >"$AUTH_LOG"

cat >"$CONFIG" <<CONF
[daemon]
socket = "$SOCK"
state_dir = "$BENCH_DIR/state"
owner = "$OWNER"
catalog = ["$ROOT/apps"]

[proxy]
http = "127.0.0.1:0"
https = "127.0.0.1:0"
access_log = "$LOGS_DIR/access.log"

[acme]
enabled = false

# On, in the namespace: bans reach the kernel only through the firewall's table.
[firewall]
enabled = true

[guard]

[guard.jails.sshd]
files = ["$AUTH_LOG"]
maxretry = 1
findtime = "10m"
bantime = "1h"

[[guard.blocklists]]
name = "big"
file = "$BLOCK_FILE"
CONF
info "starting: ip netns exec $NS $BIN daemon --config $CONFIG (owner $OWNER)"
# `ip netns exec` execs the command: the pid is the daemon's.
ip netns exec "$NS" "$BIN" daemon --config "$CONFIG" >"$DAEMON_LOG" 2>&1 </dev/null &
DAEMON_PID=$!
T_START=$(now_us)
until ilot_cli status --json >/dev/null 2>&1; do
    daemon_alive "at start (see $DAEMON_LOG)"
    (($(now_us) - T_START < 30000000)) || die "ilot status did not answer within 30 s"
    sleep 0.05
done
info "daemon (pid $DAEMON_PID, $(cat "/proc/$DAEMON_PID/comm")) answers after $(secs_since "$T_START") s"

# ---------------------------------------------------------------------------- 3. blocklist
printf '\n==== 3. blocklist load (%s addresses)\n' "$(thousands "$N_BLOCK")"
BL_RE='guard: ([0-9]+) blocklist entries loaded in ([0-9.]+) s'
until grep -q -E "$BL_RE" "$DAEMON_LOG"; do
    daemon_alive "while loading the blocklist"
    (($(now_us) - T_START < 120000000)) || die "no 'blocklist entries loaded' line in the daemon log within 120 s"
    sleep 0.1
done
BL_LINE=$(sed 's/\x1b\[[0-9;]*m//g' "$DAEMON_LOG" | grep -o -E "$BL_RE" | head -n 1)
BL_ENTRIES=$(sed -E "s/$BL_RE/\1/" <<<"$BL_LINE")
BL_SECS=$(sed -E "s/$BL_RE/\2/" <<<"$BL_LINE")
info "daemon log: \"$BL_LINE\""
BL_KERNEL=$(set_count block4)
info "kernel: set block4 holds $BL_KERNEL elements"
((BL_ENTRIES == N_BLOCK)) || warn "the daemon loaded $BL_ENTRIES entries, not $N_BLOCK"
((BL_KERNEL == N_BLOCK)) || warn "block4 holds $BL_KERNEL elements, not $N_BLOCK"
BL_LIST_ENTRIES=$(ilot_cli ban list --json | jq -r '.blocklists.entries')

# Reference: the same addresses with `nft -f`, one transaction into a set of a scratch table.
{
    printf 'table inet ilotbenchref {\n  set ref4 { type ipv4_addr; size 1048576; }\n}\n'
    printf 'add element inet ilotbenchref ref4 {\n'
    grep -v '^;' "$BLOCK_FILE" | sed 's/$/,/'
    printf '}\n'
} >"$BENCH_DIR/ref.nft"
t0=$(now_us)
in_ns nft -f "$BENCH_DIR/ref.nft" || die "nft -f of the reference blocklist failed"
NFT_REF_SECS=$(secs_since "$t0")
in_ns nft delete table inet ilotbenchref
info "reference: nft -f of the same $(thousands "$N_BLOCK") addresses: $NFT_REF_SECS s"

# ---------------------------------------------------------------------------- 2. latency
printf '\n==== 2. append -> kernel latency (%d lines, one every %d ms)\n' "$N_LAT" "$GAP_MS"
cat >"$BENCH_DIR/latency.py" <<'PY'
import json, os, re, subprocess, sys, threading, time
ns, logfile, n, gap, pidfile, raw = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]) / 1000, sys.argv[5], sys.argv[6]
def nft(*args):
    subprocess.run(["ip", "netns", "exec", ns, "nft", *args], check=True)
# A scratch set to learn when nft monitor listens. It must exist before the monitor starts:
# nft monitor prints the elements of the sets it knew when it started. It reads the whole
# ruleset first (about a second with the 100,000-element blocklist), and starts that read over
# whenever the ruleset changes meanwhile: changes must be spaced out until it shows one.
nft("add table inet ilotbenchmon; add set inet ilotbenchmon s { type ipv4_addr; }")
mon = subprocess.Popen(["ip", "netns", "exec", ns, "nft", "monitor", "new", "elements"],
                       stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, bufsize=1)
with open(pidfile, "w") as f:
    f.write(str(mon.pid))
import atexit
atexit.register(lambda: mon.poll() is None and mon.terminate())
seen = {}
cond = threading.Condition()
addr_re = re.compile(r"\b(10\.(?:199|200)\.\d+\.\d+)\b")

ready = threading.Event()

def reader():
    for line in mon.stdout:
        t = time.monotonic()
        if "ilotbenchmon" in line:
            ready.set()
        if " ban4 " not in line:
            continue
        with cond:
            for a in addr_re.findall(line):
                seen.setdefault(a, t)
            cond.notify_all()

threading.Thread(target=reader, daemon=True).start()
fd = os.open(logfile, os.O_WRONLY | os.O_APPEND)
pid = [20000]

def append(addr):
    pid[0] += 1
    line = "%s pi sshd[%d]: Failed password for root from %s port %d ssh2\n" % (
        time.strftime("%b %e %H:%M:%S"), pid[0], addr, 40000 + pid[0] % 20000)
    t0 = time.monotonic()
    os.write(fd, line.encode())
    return t0

def wait_for(addrs, timeout):
    end = time.monotonic() + timeout
    with cond:
        while not all(a in seen for a in addrs):
            left = end - time.monotonic()
            if left <= 0:
                return False
            cond.wait(left)
    return True

for i, wait in enumerate([1, 2, 4, 8, 16], 1):
    nft("add element inet ilotbenchmon s { 192.0.2.%d }" % i)
    if ready.wait(wait):
        break
else:
    print(json.dumps({"error": "nft monitor showed nothing within 31 s"}))
    sys.exit(2)
nft("delete table inet ilotbenchmon")
# Warm-up (not counted): 3 addresses, each awaited, which also proves the whole path works.
for i in range(1, 4):
    a = "10.199.0.%d" % i
    append(a)
    if not wait_for([a], 15):
        print(json.dumps({"error": "no ban of %s seen by nft monitor within 15 s" % a}))
        sys.exit(2)
sent = {}
start = time.monotonic()
for i in range(n):
    a = "10.200.%d.%d" % (i // 250, i % 250 + 1)
    target = start + i * gap
    d = target - time.monotonic()
    if d > 0:
        time.sleep(d)
    sent[a] = append(a)
wait_for(list(sent), 10)
mon.terminate()
with cond:
    lat = sorted((seen[a] - t) * 1000 for a, t in sent.items() if a in seen)
lost = n - len(lat)
with open(raw, "w") as f:
    with cond:
        for a, t in sent.items():
            f.write("%s %s\n" % (a, "%.3f" % ((seen[a] - t) * 1000) if a in seen else "lost"))

def pct(p):
    if not lat:
        return None
    k = max(0, min(len(lat) - 1, -(-len(lat) * p // 100) - 1))  # nearest rank
    return round(lat[int(k)], 3)

print(json.dumps({"sent": n, "seen": len(lat), "lost": lost, "min": pct(0) if lat else None,
                  "p50": pct(50), "p90": pct(90), "p99": pct(99), "max": round(lat[-1], 3) if lat else None,
                  "mean": round(sum(lat) / len(lat), 3) if lat else None,
                  "seconds": round(time.monotonic() - start, 3)}))
PY
python3 "$BENCH_DIR/latency.py" "$NS" "$AUTH_LOG" "$N_LAT" "$GAP_MS" "$MONITOR_PIDFILE" \
    "$RAW_PREFIX-latency.txt" >"$BENCH_DIR/latency.json" &
HELPER_PID=$!
rc=0
wait "$HELPER_PID" || rc=$?
HELPER_PID=""
LAT_JSON=$(cat "$BENCH_DIR/latency.json")
if ((rc != 0)); then
    warn "the latency helper failed (exit $rc): $LAT_JSON"
    printf -- '---- what the daemon says\n'
    ilot_cli guard show --json | jq -c '.jails[] | {name, sources, failures, bans}' || true
    ilot_cli ban list --json | jq -c '{total, bans: [.bans[].address]}' || true
    printf -- '---- the followed file\n'
    cat "$AUTH_LOG"
    printf -- '---- set ban4 in the kernel\n'
    in_ns nft list set inet ilot ban4 || true
    printf -- '---- the daemon'"'"'s children\n'
    ps -o pid,etime,stat,wchan:20,cmd --ppid "$DAEMON_PID" || true
    die "the latency helper failed: no ban seen"
fi
LAT_P50=$(jq -r .p50 <<<"$LAT_JSON")
LAT_P90=$(jq -r .p90 <<<"$LAT_JSON")
LAT_P99=$(jq -r .p99 <<<"$LAT_JSON")
LAT_MAX=$(jq -r .max <<<"$LAT_JSON")
LAT_MIN=$(jq -r .min <<<"$LAT_JSON")
LAT_MEAN=$(jq -r .mean <<<"$LAT_JSON")
LAT_SEEN=$(jq -r .seen <<<"$LAT_JSON")
LAT_LOST=$(jq -r .lost <<<"$LAT_JSON")
[[ $LAT_P50 != null ]] || die "nft monitor saw none of the $N_LAT bans"
info "$LAT_SEEN of $N_LAT seen in the kernel: p50 $LAT_P50 ms, p90 $LAT_P90 ms, p99 $LAT_P99 ms, max $LAT_MAX ms (min $LAT_MIN, mean $LAT_MEAN)"
((LAT_LOST == 0)) || warn "$LAT_LOST of the $N_LAT bans did not reach the kernel within 10 s"

# ---------------------------------------------------------------------------- 4. RSS, 100k bans
printf '\n==== 4. daemon memory with %s bans\n' "$(thousands "$N_BANS")"
daemon_alive "before the mass ban"
sleep 2
BANS_BEFORE=$(ban_total)
RSS0_KB=$(rss_kb "$DAEMON_PID" VmRSS)
HWM0_KB=$(rss_kb "$DAEMON_PID" VmHWM)
info "baseline: $BANS_BEFORE bans, blocklist of $(thousands "$BL_ENTRIES") loaded, VmRSS $(mib "$RSS0_KB") MiB (VmHWM $(mib "$HWM0_KB") MiB)"
WANT=$((BANS_BEFORE + N_BANS))
python3 - "$BENCH_DIR/mass.log" "$N_BANS" <<'PY'
import sys, time
out, n = sys.argv[1], int(sys.argv[2])
ts = time.strftime("%b %e %H:%M:%S")
users = ["admin", "oracle", "test", "ubuntu", "postgres"]
with open(out, "w") as f:
    for i in range(n):
        b = i // 250
        f.write("%s pi sshd[%d]: Invalid user %s from 100.%d.%d.%d port %d\n" % (
            ts, 1000 + i % 60000, users[i % 5], 64 + b // 256, b % 256, i % 250 + 1, 1024 + i % 60000))
PY
MASS_BYTES=$(stat -c %s "$BENCH_DIR/mass.log")
# One write (python's os.write of the whole buffer) so the follower sees it all at once.
t_append=$(now_us)
python3 -c '
import os, sys
data = open(sys.argv[1], "rb").read()
fd = os.open(sys.argv[2], os.O_WRONLY | os.O_APPEND)
while data:
    data = data[os.write(fd, data):]
' "$BENCH_DIR/mass.log" "$AUTH_LOG"
info "appended $(thousands "$N_BANS") failing lines ($(f1 "$(awk -v b="$MASS_BYTES" 'BEGIN { print b / 1048576 }')") MiB) in $(secs_since "$t_append") s; waiting for $WANT bans"
# Two moments: "decided" when `ilot ban list` counts them (the engine's memory, before the nft
# transaction), "done" when the daemon has logged the last ban event (it publishes a batch's
# events once its nft transaction is done; the store is written after that, off the ban path).
# The daemon logs in UTC, as $EPOCHREALTIME is.
MASS_RE='ilot::events: 100\.[0-9.]+/32 banned for'
logged_count() { grep -c -E "$MASS_RE" "$DAEMON_LOG" || true; }
last_print=0
total=$BANS_BEFORE
logged=0
T_DECIDED=""
while true; do
    if [[ -z $T_DECIDED ]]; then
        total=$(ban_total) || total=0
        ((total >= WANT)) && T_DECIDED=$(secs_since "$t_append") &&
            info "  ilot ban list counts $total bans after $T_DECIDED s"
    fi
    logged=$(logged_count)
    [[ -n $T_DECIDED ]] && ((logged >= N_BANS)) && break
    daemon_alive "during the mass ban"
    el=$(($(now_us) - t_append))
    ((el < BAN_TIMEOUT * 1000000)) ||
        die "after $BAN_TIMEOUT s, ilot ban list counts $total bans (want $WANT), and $logged ban events are logged (want $N_BANS)"
    if ((el - last_print >= 2000000)); then
        info "  $(awk -v e="$el" 'BEGIN { printf "%5.1f", e / 1e6 }') s: ban list $total, ban events logged $logged"
        last_print=$el
    fi
    sleep 0.2
done
RSS1_KB=$(rss_kb "$DAEMON_PID" VmRSS)
HWM1_KB=$(rss_kb "$DAEMON_PID" VmHWM)
LAST_TS=$(grep -E "$MASS_RE" "$DAEMON_LOG" | sed 's/\x1b\[[0-9;]*m//g' | tail -n 1 | awk '{ print $1 }')
T_DONE=$(python3 -c '
import datetime, sys
t = datetime.datetime.fromisoformat(sys.argv[1].replace("Z", "+00:00")).timestamp()
print("%.3f" % (t - int(sys.argv[2]) / 1e6))' "$LAST_TS" "$t_append")
info "all $(thousands "$N_BANS") ban events logged; the last at $LAST_TS, $T_DONE s after the append"
info "VmRSS $(mib "$RSS1_KB") MiB (VmHWM $(mib "$HWM1_KB") MiB)"
# Settled: the daemon's CPU time grows by less than 20 ms a second, twice in a row (it still
# writes the bans and the events to its store after logging them).
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$DAEMON_PID/stat"; }
t_settle=$(now_us)
quiet=0
prev=$(cpu_ticks)
while ((quiet < 2)); do
    sleep 1
    daemon_alive "after the mass ban"
    cur=$(cpu_ticks)
    if ((cur - prev < 2)); then quiet=$((quiet + 1)); else quiet=0; fi
    prev=$cur
    (($(now_us) - t_settle < 60000000)) || { warn "the daemon is still busy 60 s after the mass ban"; break; }
done
SETTLE_SECS=$(secs_since "$t_settle")
RSS2_KB=$(rss_kb "$DAEMON_PID" VmRSS)
HWM2_KB=$(rss_kb "$DAEMON_PID" VmHWM)
info "idle again after $SETTLE_SECS s: VmRSS $(mib "$RSS2_KB") MiB (peak VmHWM $(mib "$HWM2_KB") MiB)"
total=$(ban_total)
BAN_KERNEL=$(set_count ban4)
info "ilot ban list: $total bans; kernel: set ban4 holds $BAN_KERNEL elements"
((BAN_KERNEL >= WANT)) || warn "ban4 holds $BAN_KERNEL elements, fewer than the $WANT bans"
STATE_KB=$(du -sk "$BENCH_DIR/state" | awk '{ print $1 }')

# The daemon log, without most of its 100,000 ban lines.
sed 's/\x1b\[[0-9;]*m//g' "$DAEMON_LOG" | awk '
    / banned for / { if (++n > 20) next }
    { print }
    END { if (n > 20) printf "(bench/guard.sh: %d more \"banned for\" lines left out)\n", n - 20 }' >"$RAW_PREFIX-daemon.log"
cp -- "$CONFIG" "$RAW_PREFIX-ilot.toml"
info "stopping the daemon (pid $DAEMON_PID)"
stop_pid "$DAEMON_PID" 10
DAEMON_PID=""

# ---------------------------------------------------------------------------- 4, fail2ban
# The same 100,000 lines for a fail2ban-server of its own (foreground, private config dir,
# socket, database and log in the temp dir; the system's fail2ban service is never touched):
# jail sshd on the same kind of file, maxretry 1, and NO action. Its figures are its own
# bookkeeping only (a real nftables action would run one `nft` process per ban on top).
printf '\n==== 4b. fail2ban-server with the same %s bans (no action)\n' "$(thousands "$N_BANS")"
mkdir -p "$F2B_DIR/filter.d" "$F2B_DIR/action.d" "$F2B_DIR/logs"
cp -- /etc/fail2ban/filter.d/sshd.conf /etc/fail2ban/filter.d/common.conf "$F2B_DIR/filter.d/"
F2B_LOG=$F2B_DIR/fail2ban.log
F2B_SOCK=$F2B_DIR/f2b.sock
F2B_AUTH=$F2B_DIR/logs/auth.log
: >"$F2B_AUTH"
cat >"$F2B_DIR/fail2ban.conf" <<CONF
[Definition]
loglevel = NOTICE
logtarget = $F2B_LOG
syslogsocket = auto
allowipv6 = auto
socket = $F2B_SOCK
pidfile = $F2B_DIR/f2b.pid
dbfile = $F2B_DIR/f2b.sqlite3
dbpurgeage = 1d
dbmaxmatches = 10
CONF
cat >"$F2B_DIR/jail.conf" <<CONF
[DEFAULT]
ignoreself = false
[sshd]
enabled = true
filter = sshd
logpath = $F2B_AUTH
backend = auto
maxretry = 1
findtime = 10m
bantime = 1h
action =
CONF
F2B_BACKEND=polling
/usr/bin/python3 -c 'import pyinotify' 2>/dev/null && F2B_BACKEND=pyinotify
# `ip netns exec` execs the command (a function, like in_ns, would fork a shell for &).
ip netns exec "$NS" fail2ban-server -c "$F2B_DIR" -s "$F2B_SOCK" -p "$F2B_DIR/f2b.pid" -f -x >"$F2B_DIR/server.out" 2>&1 </dev/null &
F2B_PID=$!
t0=$(now_us)
until fail2ban-client -s "$F2B_SOCK" ping >/dev/null 2>&1; do
    kill -0 "$F2B_PID" 2>/dev/null || { cat "$F2B_DIR/server.out" >&2; die "fail2ban-server exited at start"; }
    (($(now_us) - t0 < 60000000)) || die "fail2ban-server did not answer within 60 s"
    sleep 0.2
done
fail2ban-client -s "$F2B_SOCK" status sshd >/dev/null || die "fail2ban-server has no jail sshd (see $F2B_DIR/server.out)"
sleep 1
F2B_RSS0_KB=$(rss_kb "$F2B_PID" VmRSS)
info "fail2ban-server (pid $F2B_PID, backend $F2B_BACKEND) answers after $(secs_since "$t0") s; VmRSS $(mib "$F2B_RSS0_KB") MiB"
t_append=$(now_us)
cat -- "$BENCH_DIR/mass.log" >>"$F2B_AUTH"
F2B_BAN_RE=' NOTICE +\[sshd\] Ban 100\.'
last_print=0
while true; do
    n=$(grep -c -E "$F2B_BAN_RE" "$F2B_LOG" || true)
    ((n >= N_BANS)) && break
    kill -0 "$F2B_PID" 2>/dev/null || die "fail2ban-server exited during the mass ban"
    el=$(($(now_us) - t_append))
    ((el < BAN_TIMEOUT * 1000000)) || die "after $BAN_TIMEOUT s, fail2ban logged $n bans, not $N_BANS"
    if ((el - last_print >= 5000000)); then
        info "  $(awk -v e="$el" 'BEGIN { printf "%5.1f", e / 1e6 }') s: $n bans logged"
        last_print=$el
    fi
    sleep 0.5
done
# "2026-11-22 01:51:17,005 fail2ban.actions [20134]: NOTICE  [sshd] Ban 100.65.143.250" (local time)
F2B_LAST_TS=$(grep -E "$F2B_BAN_RE" "$F2B_LOG" | tail -n 1 | awk '{ print $1 " " $2 }')
F2B_DONE=$(python3 -c '
import datetime, sys
t = datetime.datetime.strptime(sys.argv[1], "%Y-%m-%d %H:%M:%S,%f").timestamp()
print("%.3f" % (t - int(sys.argv[2]) / 1e6))' "$F2B_LAST_TS" "$t_append")
info "all $(thousands "$N_BANS") bans logged by fail2ban; the last at $F2B_LAST_TS, $F2B_DONE s after the append"
t_settle=$(now_us)
quiet=0
prev=$(awk '{ print $14 + $15 }' "/proc/$F2B_PID/stat")
while ((quiet < 2)); do
    sleep 1
    cur=$(awk '{ print $14 + $15 }' "/proc/$F2B_PID/stat")
    if ((cur - prev < 2)); then quiet=$((quiet + 1)); else quiet=0; fi
    prev=$cur
    (($(now_us) - t_settle < 60000000)) || { warn "fail2ban-server is still busy 60 s after the mass ban"; break; }
done
F2B_RSS2_KB=$(rss_kb "$F2B_PID" VmRSS)
F2B_HWM2_KB=$(rss_kb "$F2B_PID" VmHWM)
F2B_BANNED=$(fail2ban-client -s "$F2B_SOCK" status sshd | awk -F'\t' '/Currently banned/ { print $2 }')
F2B_DB_KB=$(du -sk "$F2B_DIR/f2b.sqlite3" | awk '{ print $1 }')
info "idle again after $(secs_since "$t_settle") s: VmRSS $(mib "$F2B_RSS2_KB") MiB (peak VmHWM $(mib "$F2B_HWM2_KB") MiB); currently banned: $F2B_BANNED"
cp -- "$F2B_DIR/jail.conf" "$RAW_PREFIX-fail2ban-jail.conf"
timeout 30 fail2ban-client -s "$F2B_SOCK" stop >/dev/null 2>&1 || true
wait_gone "$F2B_PID" 10 || stop_pid "$F2B_PID" 5
F2B_PID=""

# ---------------------------------------------------------------------------- summary
V_TPUT=$(verdict "$R_ALL >= 100")
V_LAT=$(verdict "$LAT_P99 < 50 && $LAT_LOST == 0")
V_BL=$(verdict "$BL_SECS < 0.5 && $BL_KERNEL == $N_BLOCK")
SUMMARY=$RAW_PREFIX-summary.txt
{
    printf '\n==== summary: ilot guard vs fail2ban (%s)\n' "$(date -u '+%Y-%m-%d %H:%M UTC')"
    printf 'host: %s, %s CPU(s), %s MiB RAM, kernel %s, load average at the end %s\n' \
        "$(hostname)" "$(nproc)" "$(awk '/^MemTotal:/ { print int($2 / 1024) }' /proc/meminfo)" "$(uname -r)" \
        "$(cut -d' ' -f1-3 /proc/loadavg)"
    printf '%s; fail2ban-regex %s (%s); %s; %s\n' "$ILOT_VERSION" "$F2B_VERSION" "$(python3 --version 2>&1)" \
        "$(nft --version)" "TZ=${TZ:-unset}"
    printf 'log: %s lines (%s MB), %s failures; matched: ilot %s, fail2ban-regex %s (%s ignored, %s missed)\n\n' \
        "$(thousands "$N_LINES")" "$LOG_MB" "$(thousands "$EXPECTED_FAILS")" "$(thousands "$I_MATCHED")" \
        "$(thousands "$F2B_MATCHED")" "$(thousands "$F2B_IGNORED")" "$(thousands "$F2B_MISSED")"
    fmt='%-44s %-16s %-16s %-12s %-12s %s\n'
    # shellcheck disable=SC2059
    {
        printf "$fmt" "metric" "ilot" "fail2ban" "ilot/f2b" "target" "verdict"
        printf "$fmt" "throughput, all cores (lines/s, median $RUNS)" "$(thousands "$(f0 "$LPS_ALL")")" \
            "$(thousands "$(f0 "$LPS_F2B")")" "$(f1 "$R_ALL")x" ">= 100x" "$V_TPUT"
        printf "$fmt" "  wall time (s)" "$(f3 "$W_ALL")" "$(f2 "$F2B_WALL")" "" "" ""
        printf "$fmt" "throughput, one core (taskset -c 0)" "$(thousands "$(f0 "$LPS_ONE")")" \
            "$(thousands "$(f0 "$LPS_F2B")")" "$(f1 "$R_ONE")x" "-" "-"
        printf "$fmt" "  check: all cores, TZ=:/etc/localtime" "$(thousands "$(f0 "$LPS_TZ")")" \
            "$(thousands "$(f0 "$LPS_F2B")")" "$(f1 "$R_TZ")x" "-" "-"
        printf "$fmt" "append -> kernel set, p50 (ms)" "$(f1 "$LAT_P50")" "-" "-" "-" "-"
        printf "$fmt" "append -> kernel set, p99 (ms)" "$(f1 "$LAT_P99")" "-" "-" "< 50 ms" "$V_LAT"
        printf "$fmt" "append -> kernel set, max (ms)" "$(f1 "$LAT_MAX")" "-" "-" "-" "-"
        printf "$fmt" "blocklist load, $(thousands "$N_BLOCK") addresses (s)" "$(f3 "$BL_SECS")" "-" "-" "< 0.5 s" "$V_BL"
        printf "$fmt" "  reference: nft -f of the same (s)" "$(f3 "$NFT_REF_SECS")" "-" "-" "-" "-"
        printf "$fmt" "daemon VmRSS before the mass ban (MiB)" "$(mib "$RSS0_KB")" "$(mib "$F2B_RSS0_KB")" "-" "-" "-"
        printf "$fmt" "daemon VmRSS, $(thousands "$N_BANS") more bans, idle (MiB)" "$(mib "$RSS2_KB")" "$(mib "$F2B_RSS2_KB")" \
            "$(awk -v a="$RSS2_KB" -v b="$F2B_RSS2_KB" 'BEGIN { printf "%.2fx", a / b }')" "-" "-"
        printf "$fmt" "  peak VmHWM (MiB)" "$(mib "$HWM2_KB")" "$(mib "$F2B_HWM2_KB")" "-" "-" "-"
        printf "$fmt" "$(thousands "$N_BANS") bans at once: decided (polled) (s)" "$(f2 "$T_DECIDED")" "-" "-" "-" "-"
        printf "$fmt" "  in the kernel, events logged (s)" "$(f2 "$T_DONE")" "$(f2 "$F2B_DONE") (*)" \
            "$(awk -v a="$T_DONE" -v b="$F2B_DONE" 'BEGIN { printf "%.2fx", a / b }')" "-" "-"
    }
    printf '\nthroughput runs, wall s:'
    for k in "ilot (all cores)" "ilot (one core)" "ilot, TZ set (check)"; do printf ' %s: %s;' "$k" "${WALL[$k]% }"; done
    printf '\nself-reported s (ilot: matching only, the file read excluded; fail2ban: "processed in"):'
    for k in "ilot (all cores)" "ilot (one core)" "ilot, TZ set (check)"; do printf ' %s: %s;' "$k" "${SELF[$k]% }"; done
    printf ' fail2ban-regex: %s\n' "${F2B_SELF:-?}"
    printf 'latency: %s of %s seen by nft monitor, min %s, p90 %s, mean %s ms\n' "$LAT_SEEN" "$N_LAT" "$LAT_MIN" "$LAT_P90" "$LAT_MEAN"
    printf 'blocklist: daemon says %s entries (ban list: %s); kernel set block4: %s elements\n' \
        "$BL_ENTRIES" "$BL_LIST_ENTRIES" "$BL_KERNEL"
    printf 'bans: %s before, %s after; kernel set ban4: %s elements; state dir %s MiB\n' \
        "$BANS_BEFORE" "$total" "$BAN_KERNEL" "$(mib "$STATE_KB")"
    printf 'mass ban: VmRSS %s MiB when the last ban event was logged, %s MiB once idle (%s s later)\n' \
        "$(mib "$RSS1_KB")" "$(mib "$RSS2_KB")" "$SETTLE_SECS"
    printf '(*) fail2ban-server %s, backend %s, jail sshd with no action: its own bookkeeping (no nft), until it logged the last ban; %s currently banned, database %s MiB\n' \
        "$F2B_VERSION" "$F2B_BACKEND" "$F2B_BANNED" "$(mib "$F2B_DB_KB")"
    printf '\ncommand line: %s\n' "$INVOCATION"
    printf '  ilot:     %s guard test sshd %s --summary --json  (also under taskset -c 0, and with TZ=:/etc/localtime)\n' "$BIN" "$LOG"
    printf '  fail2ban: fail2ban-regex --print-no-missed --print-no-ignored %s %s\n' "$LOG" "$F2B_FILTER"
    printf '  daemon:   ip netns exec %s %s daemon --config CONFIG (kept as %s-ilot.toml)\n' "$NS" "$BIN" "$RAW_PREFIX"
    printf 'raw results: %s-ilot-runs.jsonl, -fail2ban-regex.txt, -latency.txt (ms per address), -daemon.log, -ilot.toml, -fail2ban-jail.conf, %s\n' \
        "$RAW_PREFIX" "$SUMMARY"
} | tee "$SUMMARY"
