#!/usr/bin/env bash
# bench/dns.sh: ilot's authoritative DNS server and its RFC 2136 push next to BIND, in one run.
#
#   bench/dns.sh
#
# 1. Queries per second: dnsperf -c 8 -T 2 -l 10 (no rate limit) against ilot's DNS server
#    (`serve` mode) and against BIND's named serving the same zone on 127.0.0.1, alternating
#    (ilot, named) for 3 rounds after a 2 s warm-up of each; medians of queries/s, average
#    latency, and each server's CPU time per 1000 queries (from /proc). Two zones hold the same
#    records (200 A, 10 AAAA, 20 TXT, 5 CNAME, MX and TXT at the apex, plus ilot's own SOA, NS
#    and host A): bench.test, unsigned on both sides (ilot `dnssec = false`),
#    and sig.test, DNSSEC-signed on both sides (ilot `dnssec = true`; named `dnssec-policy
#    default` with inline signing: ECDSA P-256 and NSEC, as ilot) and queried with the DO bit
#    (dnsperf -D). The query file cycles through every name of the zone (mostly A, some
#    AAAA/TXT/MX, CNAMEs, 10 % names that do not exist). named's zone files are ilot's own
#    records (`ilot dns show ZONE --format zone`, with the SOA and NS ilot serves), checked with
#    named-checkzone, and both servers' answers to every query of the files are compared before
#    measuring. Both servers get the same threads: ilot's daemon has 2 tokio workers, named runs
#    with -n 2.
#    "ilot" is the daemon as shipped (default log filter: ILOT_LOG unset; stderr to a file). The
#    bytes it logs per query are printed and the lines from hickory (its DNS library) counted:
#    both should be 0 (hickory logs every query at INFO; ilot's default filter silences it).
# 2. RFC 2136 push: the time `ilot dns apply` takes to add 200 records (150 A, 50 TXT, from the
#    `records` of a `mode = "push"` zone push.test) to named over TCP with TSIG (hmac-sha256,
#    a tsig-keygen key file), against `nsupdate -v -k KEYFILE` sending the same 200 adds in one
#    UPDATE. 3 rounds each, alternating, medians; the records are deleted (nsupdate) between
#    rounds and checked with a zone transfer after every add, and with dig at the end.
#    The daemon pushes its zones by itself when it starts, so each ilot round starts a daemon
#    with a fresh state dir while its TSIG key file is renamed away (that start-up push fails,
#    pushing nothing), puts the file back, then times `ilot dns apply --json` and checks that
#    it reports 200 added. `dns apply` with nothing to change is timed too (for reference).
#
# It is a benchmark, not a test: it exits non-zero only when it cannot measure.
# It installs what is missing (apt-get: dnsperf bind9 bind9-dnsutils bind9utils jq), starts its
# own daemons (temp configs, owner test-dbench-XXXXXX, ACME off, no app installed, Docker not
# needed) and its own named (foreground, config in the temp dir, free port, no rndc channel;
# the system's named service is never touched), and removes everything it made.
#
# Environment:
#   ILOT_BIN                  the binary (default target/release/ilot; built if missing)
#   ILOT_BENCH_ROUNDS         rounds of (ilot, named) and of (ilot dns apply, nsupdate)
#                             (default 3)
#   ILOT_BENCH_DURATION       seconds per measured dnsperf run (default 10)
#   ILOT_BENCH_CLIENTS        dnsperf clients, -c (default 8)
#   ILOT_BENCH_THREADS        dnsperf threads, -T (default 2)
#   ILOT_BENCH_DNSSEC         0 skips the signed zone's runs (default 1)
#   ILOT_BENCH_PUSH           0 skips the RFC 2136 part (default 1)
#   ILOT_BENCH_OUT            where results are kept (default target/bench)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
# shellcheck source=tests/lib/common.sh
source "$ROOT/tests/lib/common.sh"

bench_args "$@"

ROUNDS=${ILOT_BENCH_ROUNDS:-3}
DURATION=${ILOT_BENCH_DURATION:-10}
CLIENTS=${ILOT_BENCH_CLIENTS:-8}
THREADS=${ILOT_BENCH_THREADS:-2}
RUN_DNSSEC=${ILOT_BENCH_DNSSEC:-1}
RUN_PUSH=${ILOT_BENCH_PUSH:-1}
WARMUP_S=2
ZONE=bench.test         # unsigned on both sides
SZONE=sig.test          # signed on both sides
PZONE=push.test         # named's, updated by ilot (mode = "push") and by nsupdate
KEY_NAME=bench-key
N_A=200                 # the served zones' A records (h1..h200)
N_PUSH_A=150            # the push: 150 A (pa1..) and 50 TXT (pt1..), 200 records
N_PUSH_TXT=50
N_PUSH=$((N_PUSH_A + N_PUSH_TXT))
OUT_DIR=${ILOT_BENCH_OUT:-$ROOT/target/bench}
BIN_SRC=${ILOT_BIN:-$ROOT/target/release/ilot}
INVOCATION="bench/dns.sh (ILOT_BENCH_ROUNDS=$ROUNDS ILOT_BENCH_DURATION=$DURATION ILOT_BENCH_CLIENTS=$CLIENTS ILOT_BENCH_THREADS=$THREADS ILOT_BENCH_DNSSEC=$RUN_DNSSEC ILOT_BENCH_PUSH=$RUN_PUSH)"
[[ -d $HOME/.cargo/bin ]] && PATH=$HOME/.cargo/bin:$PATH
PATH=$PATH:/usr/sbin:/sbin
export PATH

for v in ROUNDS DURATION CLIENTS THREADS; do
    [[ ${!v} =~ ^[1-9][0-9]*$ ]] || die "$v must be a positive integer (got '${!v}')"
done
for v in RUN_DNSSEC RUN_PUSH; do
    [[ ${!v} == 0 || ${!v} == 1 ]] || die "$v must be 0 or 1 (got '${!v}')"
done

# ---------------------------------------------------------------------------- state + cleanup
# /tmp rather than $TMPDIR: the socket path must stay short (108 bytes).
BENCH_DIR=$(mktemp -d /tmp/ilot-bench-dns-XXXXXX)
SUFFIX=${BENCH_DIR##*-}
OWNER=test-dbench-$(printf %s "$SUFFIX" | tr "[:upper:]" "[:lower:]")
SOCK=$BENCH_DIR/ilot.sock
CONFIG=$BENCH_DIR/ilot.toml
DAEMON_LOG=$BENCH_DIR/daemon.log
NAMED_DIR=$BENCH_DIR/named
NAMED_CONF=$NAMED_DIR/named.conf
NAMED_LOG=$NAMED_DIR/named.log
KEY_FILE=$BENCH_DIR/bench.key   # tsig-keygen's output: ilot's tsig_secret_file, included by named
DAEMON_PID=""
NAMED_PID=""
KEY_PARKED=""   # the key file while renamed away (put back at exit)
BIN=$BENCH_DIR/ilot

ilot_cli() { "$BIN" --socket "$SOCK" "$@"; }

# shellcheck disable=SC2317  # invoked by the EXIT trap
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    set +e
    printf '\n==== cleanup\n'
    if ((rc != 0)) && [[ -s $DAEMON_LOG ]]; then
        printf -- '---- last lines of the daemon log (%s)\n' "$DAEMON_LOG"
        tail -n 20 "$DAEMON_LOG"
    fi
    if ((rc != 0)) && [[ -s $NAMED_LOG ]]; then
        printf -- '---- last lines of the named log\n'
        tail -n 15 "$NAMED_LOG"
    fi
    if [[ -n $KEY_PARKED ]]; then mv -f -- "$KEY_PARKED" "$KEY_FILE"; fi
    if [[ -n $NAMED_PID ]]; then
        info "stopping named (pid $NAMED_PID)"
        stop_pid "$NAMED_PID" 10
    fi
    if [[ -n $DAEMON_PID ]]; then
        info "stopping the daemon (pid $DAEMON_PID)"
        stop_pid "$DAEMON_PID" 10
    fi
    rm -rf -- "$BENCH_DIR"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------------------- tools
printf '==== set-up\n'
missing=()
for pair in dnsperf:dnsperf named:bind9 named-checkzone:bind9utils dig:bind9-dnsutils \
    nsupdate:bind9-dnsutils tsig-keygen:bind9 jq:jq; do
    command -v "${pair%%:*}" >/dev/null 2>&1 || missing+=("${pair#*:}")
done
if ((${#missing[@]})); then
    mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
    ((EUID == 0)) || die "missing: ${missing[*]} (apt-get install ${missing[*]}, as root)"
    info "installing: ${missing[*]} (apt-get)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y --no-install-recommends "${missing[@]}" >"$BENCH_DIR/apt.log" 2>&1 ||
        { apt-get update >>"$BENCH_DIR/apt.log" 2>&1 &&
            apt-get install -y --no-install-recommends "${missing[@]}" >>"$BENCH_DIR/apt.log" 2>&1; } ||
        { tail -n 20 "$BENCH_DIR/apt.log" >&2; die "apt-get install ${missing[*]} failed"; }
fi
for c in dnsperf named named-checkzone dig nsupdate tsig-keygen jq ss; do
    command -v "$c" >/dev/null 2>&1 || die "$c is not installed"
done

if [[ ! -x $BIN_SRC ]]; then
    [[ -z ${ILOT_BIN:-} ]] || die "ILOT_BIN=$ILOT_BIN is not an executable"
    info "target/release/ilot missing: cargo build --release"
    locked=()
    [[ -f Cargo.lock ]] && locked=(--locked)
    cargo build --release "${locked[@]}"
fi
# A private copy: a cargo build running meanwhile may replace target/release/ilot, and the CLI
# must stay the same build as the daemon.
cp -- "$BIN_SRC" "$BIN"

mkdir -p "$OUT_DIR" "$NAMED_DIR/keys" "$BENCH_DIR/catalog"
STAMP=$(date +%Y%m%d-%H%M%S)
RAW_PREFIX=$OUT_DIR/dns-$STAMP

# ---------------------------------------------------------------------------- helpers
CLK_TCK=$(getconf CLK_TCK)
# cpu_ticks PID: user+system CPU ticks of the process (all its threads).
cpu_ticks() {
    local t
    # Fields after "(comm) ": state is 1, utime 12, stime 13.
    t=$(sed 's/^.*) //' "/proc/$1/stat" 2>/dev/null | awk '{ print $12 + $13 }') || t=0
    printf '%s\n' "${t:-0}"
}
# free_port: a port nothing uses on TCP or UDP (named binds both, and cannot report a port 0).
free_port() {
    local p i
    for ((i = 0; i < 100; i++)); do
        p=$((20000 + RANDOM % 40000))
        [[ -z $(ss -Hlntu "sport = :$p" 2>/dev/null) ]] && { echo "$p"; return 0; }
    done
    die "no free port found"
}
# show_cmd ARG...: the command line, arguments with blanks or quotes in single quotes.
show_cmd() {
    local a out=""
    for a in "$@"; do
        if [[ $a =~ [[:space:]\'\"\$\`\\{}] ]]; then
            out+="'${a//\'/\'\\\'\'}' "
        else
            out+="$a "
        fi
    done
    printf '%s\n' "${out% }"
}
# shellcheck disable=SC2086  # med "V1 V2 ...": median of a list (split on purpose)
med() { printf '%s\n' $1 | median; }
f1() { awk -v v="$1" 'BEGIN { printf "%.1f", v }'; }
f3() { awk -v v="$1" 'BEGIN { printf "%.3f", v }'; }
# f0list "V1 V2 ...": the values rounded to integers.
f0list() { awk -v l="$1" 'BEGIN { n = split(l, v, " "); for (i = 1; i <= n; i++) printf "%s%.0f", (i > 1 ? " " : ""), v[i] }'; }
# ratio A B: A/B as "0.93x (-7 %)"
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "" || b == "" || b <= 0) { print "-"; exit } r = a / b; printf "%.2fx (%+.0f %%)", r, (r - 1) * 100 }'; }
# answers PORT FILE: every answer line of both servers to the queries of FILE ("NAME TYPE"
# lines), one dig process, sorted, blanks normalised.
answers() {
    local port=$1 file=$2
    awk -v p="$port" '{ printf "@127.0.0.1 -p %s +norecurse +noall +answer +time=2 +tries=1 %s %s\n", p, $1, $2 }' "$file" >"$BENCH_DIR/dig.batch"
    dig -f "$BENCH_DIR/dig.batch" 2>&1 | awk 'NF && $1 !~ /^;/ { $1 = $1; print }' | sort -u
}

# ---------------------------------------------------------------------------- records + config
# The served zones' extra records, the same for bench.test and sig.test (names relative).
serve_records() {
    local i
    for ((i = 1; i <= N_A; i++)); do
        printf '    { name = "h%d", type = "A", value = "203.0.113.%d" },\n' "$i" "$i"
    done
    for ((i = 1; i <= 10; i++)); do
        printf '    { name = "v%d", type = "AAAA", value = "2001:db8::%x" },\n' "$i" "$i"
    done
    for ((i = 1; i <= 20; i++)); do
        printf '    { name = "t%d", type = "TXT", value = "ilot bench record %d: the quick brown fox jumps over the lazy dog" },\n' "$i" "$i"
    done
    for ((i = 1; i <= 5; i++)); do
        printf '    { name = "c%d", type = "CNAME", value = "h%d" },\n' "$i" "$i"
    done
    printf '    { name = "@", type = "MX", value = "10 h1" },\n'
    printf '    { name = "@", type = "TXT", value = "v=spf1 mx -all" },\n'
}
push_records() {
    local i
    for ((i = 1; i <= N_PUSH_A; i++)); do
        printf '    { name = "pa%d", type = "A", value = "198.51.100.%d" },\n' "$i" "$i"
    done
    for ((i = 1; i <= N_PUSH_TXT; i++)); do
        printf '    { name = "pt%d", type = "TXT", value = "ilot bench push %d" },\n' "$i" "$i"
    done
}
# write_config FILE SOCKET STATE_DIR WITH_PUSH: a daemon's config; WITH_PUSH=1 adds the push zone.
write_config() {
    local file=$1 sock=$2 state=$3 push=$4 recs dir
    recs=$(serve_records)
    dir=$(dirname "$file")
    cat >"$file" <<CONF
[daemon]
socket = "$sock"
state_dir = "$state"
owner = "$OWNER"
catalog = ["$BENCH_DIR/catalog"]

[proxy]
http = "127.0.0.1:0"
https = "127.0.0.1:0"
access_log = "$dir/access.log"

[acme]
enabled = false

[firewall]
enabled = false

[host]
ipv4 = "203.0.113.10"
hostname = "mail.$ZONE"

[dns]
listen = ["127.0.0.1:0"]

[[dns.zones]]
name = "$ZONE"
mode = "serve"
dnssec = false
records = [
$recs
]

[[dns.zones]]
name = "$SZONE"
mode = "serve"
dnssec = true
records = [
$recs
]
CONF
    if ((push)); then
        cat >>"$file" <<CONF

[[dns.zones]]
name = "$PZONE"
mode = "push"
server = "127.0.0.1:$NAMED_PORT"
tsig_key = "$KEY_NAME"
tsig_secret_file = "$KEY_FILE"
records = [
$(push_records)
]
CONF
    fi
}
# start_daemon CONFIG SOCKET LOG PIDVAR: starts "$BIN daemon" (log appended to LOG) with the
# default log filter (ILOT_LOG unset); waits until `ilot status` answers. Sets the variable
# PIDVAR to the daemon's pid.
start_daemon() {
    local config=$1 sock=$2 log=$3 pidvar=$4 t0
    printf -- '---- %s: env -u ILOT_LOG %s daemon --config %s\n' "$(ilot_lib_ts)" "$BIN" "$config" >>"$log"
    env -u ILOT_LOG "$BIN" daemon --config "$config" >>"$log" 2>&1 </dev/null &
    printf -v "$pidvar" '%s' "$!"
    t0=$(now_ms)
    until "$BIN" --socket "$sock" status >/dev/null 2>&1; do
        kill -0 "${!pidvar}" 2>/dev/null || die "the daemon exited at start (see $log)"
        (($(now_ms) - t0 < 30000)) || die "ilot status did not answer within 30 s ($config)"
        sleep 0.02
    done
}
stop_daemon() {
    [[ -n $DAEMON_PID ]] || return 0
    stop_pid "$DAEMON_PID" 10
    DAEMON_PID=""
}

# ---------------------------------------------------------------------------- ilot daemon
printf '\n==== ilot\n'
NAMED_PORT=$(free_port)
write_config "$CONFIG" "$SOCK" "$BENCH_DIR/state" 0
info "starting: $BIN daemon --config $CONFIG (owner $OWNER, zones $ZONE unsigned, $SZONE signed)"
t0=$(now_ms)
start_daemon "$CONFIG" "$SOCK" "$DAEMON_LOG" DAEMON_PID
info "daemon answers after $(($(now_ms) - t0)) ms"
# dns_port SOCKET: the port of that daemon's DNS server (from `ilot status --json`).
dns_port() {
    local st addr
    st=$("$BIN" --socket "$1" status --json) || die "ilot status --json failed ($1)"
    addr=$(jq -r '.dns.listen[0] // empty' <<<"$st")
    [[ -n $addr ]] || die "ilot's DNS server is not running: $(jq -c '.dns' <<<"$st")"
    printf '%s\n' "${addr##*:}"
}
ILOT_PORT=$(dns_port "$SOCK")
ZONES_INFO=$(ilot_cli status --json | jq -r '[.dns.zones[] | "\(.zone) serial \(.serial), \(.records) records\(if .ds then ", signed" else "" end)"] | join("; ")')
info "ilot's DNS server: 127.0.0.1:$ILOT_PORT ($ZONES_INFO)"

# ---------------------------------------------------------------------------- zone files
# zone_file ZONE: named's zone file: the SOA and NS ilot serves, then `ilot dns show ZONE --format zone`.
zone_file() {
    local z=$1 soa ns
    soa=$(dig +norecurse +noall +answer +time=2 @127.0.0.1 -p "$ILOT_PORT" "$z" SOA)
    ns=$(dig +norecurse +noall +answer +time=2 @127.0.0.1 -p "$ILOT_PORT" "$z" NS)
    [[ $soa == *SOA* && $ns == *NS* ]] || die "ilot does not answer the SOA and NS of $z: '$soa' '$ns'"
    printf '; bench/dns.sh: %s as ilot serves it (SOA and NS from ilot, records from ilot dns show %s --format zone)\n' "$z" "$z"
    printf '%s\n%s\n' "$soa" "$ns"
    ilot_cli dns show "$z" --format zone | grep -v '^;'
}
zone_file "$ZONE" >"$NAMED_DIR/$ZONE.zone"
zone_file "$SZONE" >"$NAMED_DIR/$SZONE.zone"
cat >"$NAMED_DIR/$PZONE.zone" <<EOF
; bench/dns.sh: the zone ilot and nsupdate push to (starts empty but for SOA, NS and glue)
\$TTL 3600
@ IN SOA ns.$PZONE. hostmaster.$PZONE. 1 3600 900 1209600 300
@ IN NS ns.$PZONE.
ns IN A 192.0.2.53
EOF
ZONE_RECORDS=$(grep -cv '^;' "$NAMED_DIR/$ZONE.zone")
for z in "$ZONE" "$SZONE" "$PZONE"; do
    named-checkzone "$z" "$NAMED_DIR/$z.zone" >"$BENCH_DIR/checkzone.log" 2>&1 ||
        { cat "$BENCH_DIR/checkzone.log" >&2; die "named-checkzone rejected $z (ilot's records)"; }
done
info "zone files: named-checkzone accepts $ZONE ($ZONE_RECORDS records), $SZONE and $PZONE"

# ---------------------------------------------------------------------------- named
tsig-keygen -a hmac-sha256 "$KEY_NAME" >"$KEY_FILE" || die "tsig-keygen failed"
chmod 600 "$KEY_FILE"
TSIG_SECRET=$(sed -n 's/.*secret "\(.*\)";.*/\1/p' "$KEY_FILE")
[[ -n $TSIG_SECRET ]] || die "no secret in tsig-keygen's output ($KEY_FILE)"
cat >"$NAMED_CONF" <<EOF
// bench/dns.sh: named serving the same zones as ilot
options {
    directory "$NAMED_DIR";
    pid-file "$NAMED_DIR/named.pid";
    session-keyfile "$NAMED_DIR/session.key";
    listen-on port $NAMED_PORT { 127.0.0.1; };
    listen-on-v6 { none; };
    recursion no;
    dnssec-validation no;
    notify no;
};
controls { };
include "$KEY_FILE";
zone "$ZONE" { type primary; file "$NAMED_DIR/$ZONE.zone"; };
zone "$SZONE" {
    type primary; file "$NAMED_DIR/$SZONE.zone";
    dnssec-policy default; inline-signing yes; key-directory "$NAMED_DIR/keys";
    allow-transfer { 127.0.0.1; };
};
zone "$PZONE" {
    type primary; file "$NAMED_DIR/$PZONE.zone";
    update-policy { grant $KEY_NAME zonesub ANY; };
    allow-transfer { 127.0.0.1; };
};
EOF
named-checkconf "$NAMED_CONF" >"$BENCH_DIR/checkconf.log" 2>&1 ||
    { cat "$BENCH_DIR/checkconf.log" >&2; die "named-checkconf rejected $NAMED_CONF"; }
NAMED_CMD=(named -g -n 2 -c "$NAMED_CONF")
info "starting: $(show_cmd "${NAMED_CMD[@]}") (port $NAMED_PORT)"
"${NAMED_CMD[@]}" >"$NAMED_LOG" 2>&1 </dev/null &
NAMED_PID=$!
t0=$(now_ms)
# named -g logs "running" on a line of its own once every zone is loaded ("running on Linux"
# comes earlier).
until grep -qE ' running$' "$NAMED_LOG"; do
    kill -0 "$NAMED_PID" 2>/dev/null || { tail -n 20 "$NAMED_LOG" >&2; die "named exited at start"; }
    (($(now_ms) - t0 < 30000)) || die "named is not running after 30 s (see $NAMED_LOG)"
    sleep 0.05
done
info "named is running after $(($(now_ms) - t0)) ms"
NAMED_VERSION=$(named -v | head -n 1)

# ---------------------------------------------------------------------------- queries + checks
printf '\n==== checks\n'
# The query file: every name of the zone; ~10 % names that do not exist; a fixed shuffle.
QFILE=$BENCH_DIR/queries-$ZONE.txt
SQFILE=$BENCH_DIR/queries-$SZONE.txt
{
    for ((i = 1; i <= N_A; i++)); do printf 'h%d.%s A\n' "$i" "$ZONE"; done
    for ((i = 1; i <= 10; i++)); do printf 'v%d.%s AAAA\n' "$i" "$ZONE"; done
    for ((i = 1; i <= 20; i++)); do printf 't%d.%s TXT\n' "$i" "$ZONE"; done
    for ((i = 1; i <= 5; i++)); do printf 'c%d.%s A\n' "$i" "$ZONE"; done
    for ((i = 1; i <= 5; i++)); do printf '%s MX\n' "$ZONE"; done
    for ((i = 1; i <= 3; i++)); do printf '%s TXT\n' "$ZONE"; done
    printf 'mail.%s A\n' "$ZONE"
    for ((i = 1; i <= 28; i++)); do printf 'nx%d.%s A\n' "$i" "$ZONE"; done
} | shuf --random-source=<(yes ilot-bench) >"$QFILE"
sed "s/\.$ZONE /.$SZONE /; s/^$ZONE /$SZONE /; /^mail\./d" "$QFILE" >"$SQFILE"
Q_MIX=$(awk '{ t = ($1 ~ /^nx/) ? "NXDOMAIN" : ($1 ~ /^c[0-9]/ ? "CNAME>A" : $2); n[t]++ } END { for (k in n) printf "%s %d, ", k, n[k] }' "$QFILE" | sed 's/, $//')
info "query file: $(wc -l <"$QFILE") queries ($Q_MIX), cycled through by dnsperf"

# Both servers must give the same answers to every query of the files.
ANSWERS_CHECK=""
for pair in "$ZONE:$QFILE" "$SZONE:$SQFILE"; do
    z=${pair%%:*} f=${pair#*:}
    if [[ $z == "$SZONE" ]]; then
        # named signs sig.test in the background: wait until every RRset has its RRSIG.
        t0=$(now_ms)
        until dig +noall +answer +time=2 @127.0.0.1 -p "$NAMED_PORT" "$SZONE" AXFR 2>/dev/null | awk '
                $1 ~ /^;/ { next }
                $4 == "RRSIG" { signed[$1 " " $5] = 1; next }
                NF >= 4 { sets[$1 " " $4] = 1 }
                END { n = 0; for (s in sets) { n++; if (!(s in signed)) exit 1 } exit n == 0 }'; do
            kill -0 "$NAMED_PID" 2>/dev/null || die "named exited while signing $SZONE"
            (($(now_ms) - t0 < 60000)) || die "named has not signed $SZONE after 60 s (see $NAMED_LOG)"
            sleep 0.2
        done
        info "named has signed $SZONE (every RRset has an RRSIG) after $(($(now_ms) - t0)) ms"
    fi
    answers "$ILOT_PORT" "$f" >"$BENCH_DIR/answers-ilot-$z"
    answers "$NAMED_PORT" "$f" >"$BENCH_DIR/answers-named-$z"
    n=$(wc -l <"$BENCH_DIR/answers-ilot-$z")
    ((n > 0)) || die "ilot gave no answer to the queries of $f"
    if diff -u "$BENCH_DIR/answers-ilot-$z" "$BENCH_DIR/answers-named-$z" >"$BENCH_DIR/answers-$z.diff"; then
        info "$z: ilot and named give the same $n answer records to the $(wc -l <"$f") queries"
        ANSWERS_CHECK+="$z identical ($n answer records); "
    else
        warn "$z: ilot and named answer differently (diff in $RAW_PREFIX-answers-$z.diff):"
        head -n 20 "$BENCH_DIR/answers-$z.diff" >&2
        cp -- "$BENCH_DIR/answers-$z.diff" "$RAW_PREFIX-answers-$z.diff"
        ANSWERS_CHECK+="$z DIFFER (see $RAW_PREFIX-answers-$z.diff); "
    fi
done
# DNSSEC: with the DO bit, both must sign their answers and prove a name's absence (NSEC).
for port_name in "$ILOT_PORT:ilot" "$NAMED_PORT:named"; do
    p=${port_name%%:*} name=${port_name#*:}
    rr=$(dig +dnssec +norecurse +noall +answer +time=2 @127.0.0.1 -p "$p" "h1.$SZONE" A | awk '$4 == "RRSIG"' | wc -l)
    nsec=$(dig +dnssec +norecurse +noall +authority +time=2 @127.0.0.1 -p "$p" "nx1.$SZONE" A | awk '$4 == "NSEC"' | wc -l)
    ((rr > 0 && nsec > 0)) || die "$name does not sign $SZONE (RRSIGs on h1.$SZONE A: $rr, NSEC for nx1.$SZONE: $nsec)"
    info "$name signs $SZONE: RRSIG on h1.$SZONE A, $nsec NSEC record(s) proving nx1.$SZONE does not exist"
done

# ---------------------------------------------------------------------------- load
# Targets: ilot and named on the unsigned zone; ilot-sig and named-sig on the signed one, with -D.
dnsperf_cmd() { # dnsperf_cmd TARGET SECONDS: the dnsperf command line
    local port qf dflag=()
    case $1 in
        ilot*) port=$ILOT_PORT ;;
        named*) port=$NAMED_PORT ;;
    esac
    case $1 in
        *-sig) qf=$SQFILE; dflag=(-D) ;;
        *) qf=$QFILE ;;
    esac
    printf '%s\0' dnsperf -s 127.0.0.1 -p "$port" -d "$qf" -c "$CLIENTS" -T "$THREADS" -l "$2" "${dflag[@]}"
}
dnsperf_line() {
    local -a cmd
    mapfile -d '' -t cmd < <(dnsperf_cmd "$1" "$2")
    show_cmd "${cmd[@]}"
}
# dnsperf_field FILE qps|completed|lost|latency|response|rcodes
dnsperf_field() {
    local f=$1
    case $2 in
        qps) awk '/Queries per second:/ { print $4 }' "$f" ;;
        completed) awk '/Queries completed:/ { print $3 }' "$f" ;;
        lost) awk '/Queries lost:/ { print $3 }' "$f" ;;
        latency) awk '/Average Latency \(s\):/ { printf "%.3f\n", $4 * 1000 }' "$f" ;;
        response) awk '/Average packet size:/ { gsub(/,/, ""); print $7 }' "$f" ;;
        rcodes) sed -n 's/^ *Response codes: *//p' "$f" ;;
    esac
}
declare -A QPS=() LAT=() CPU=() LOST=() RESP=() RCODES=() LOGB=()
# run_dnsperf TARGET LABEL SECONDS: run dnsperf, keep its output as RAW_PREFIX-LABEL.txt, record
# the figures (keys TARGET) unless LABEL is a warm-up.
# shellcheck disable=SC2034  # RESP, LOGB are read through the summary's nameref
run_dnsperf() {
    local target=$1 label=$2 secs=$3 out pid log="" c0 c1 l0=0 l1=0 qps answered lost lat resp cpu_ms logb="-"
    local -a cmd
    mapfile -d '' -t cmd < <(dnsperf_cmd "$target" "$secs")
    case $target in
        ilot*) pid=$DAEMON_PID log=$DAEMON_LOG ;;
        named*) pid=$NAMED_PID ;;
    esac
    out=$RAW_PREFIX-$label.txt
    [[ -z $log ]] || l0=$(stat -c %s "$log")
    c0=$(cpu_ticks "$pid")
    "${cmd[@]}" >"$out" 2>&1 || { cat "$out" >&2; die "dnsperf failed: $(show_cmd "${cmd[@]}")"; }
    c1=$(cpu_ticks "$pid")
    [[ -z $log ]] || l1=$(stat -c %s "$log")
    kill -0 "$pid" 2>/dev/null || die "$target's server (pid $pid) exited during the load"
    qps=$(dnsperf_field "$out" qps)
    answered=$(dnsperf_field "$out" completed)
    lost=$(dnsperf_field "$out" lost)
    lat=$(dnsperf_field "$out" latency)
    resp=$(dnsperf_field "$out" response)
    [[ -n $qps && -n $answered && -n $lost ]] || { cat "$out" >&2; die "could not read dnsperf's output ($out)"; }
    ((answered > 0)) || { cat "$out" >&2; die "no query to $target was answered"; }
    # CPU milliseconds the server spent per 1000 answered queries.
    cpu_ms=$(awk -v d="$((c1 - c0))" -v hz="$CLK_TCK" -v n="$answered" 'BEGIN { printf "%.1f", d / hz * 1000 / (n / 1000) }')
    # Bytes the daemon logged per answered query.
    [[ -z $log ]] || logb=$(awk -v d="$((l1 - l0))" -v n="$answered" 'BEGIN { printf "%.0f", d / n }')
    info "$(printf '%-20s %7.0f queries/s  latency %6.3f ms  cpu %5s ms/1k queries  lost %s  response %s B  log %s B/query  %s' \
        "$label" "$qps" "$lat" "$cpu_ms" "$lost" "$resp" "$logb" "$(dnsperf_field "$out" rcodes)")"
    ((lost == 0)) || warn "$label: $lost queries lost (see $out)"
    [[ $label == *warmup* ]] && return 0
    QPS[$target]+="$qps "
    LAT[$target]+="$lat "
    CPU[$target]+="$cpu_ms "
    LOST[$target]=$((${LOST[$target]:-0} + lost))
    RESP[$target]=$resp
    LOGB[$target]=$logb
    RCODES[$target]=$(dnsperf_field "$out" rcodes)
}
TARGETS=(ilot named)
((RUN_DNSSEC)) && TARGETS+=(ilot-sig named-sig)
printf '\n==== load: %d s warm-up each, then %d rounds of (%s), %d s each\n' "$WARMUP_S" "$ROUNDS" "${TARGETS[*]}" "$DURATION"
for t in "${TARGETS[@]}"; do run_dnsperf "$t" "$t-warmup" "$WARMUP_S"; done
for ((r = 1; r <= ROUNDS; r++)); do
    for t in "${TARGETS[@]}"; do run_dnsperf "$t" "$t-$r" "$DURATION"; done
done
DNSPERF_VERSION=$(dnsperf -h 2>&1 | awk '/^Version/ { print $2; exit }')
# hickory (the DNS library) logs every query at INFO, which ilot's default filter silences. Should
# such lines come back, they are counted and a sample kept, not the lines (hundreds of MB a run).
HICKORY_LINES=$(grep -c 'hickory_' "$DAEMON_LOG" || true)
LOG_KB=$(awk -v b="$(stat -c %s "$DAEMON_LOG")" 'BEGIN { printf "%.1f", b / 1024 }')
info "the daemon's log (default filter) holds $LOG_KB KiB after the load: $HICKORY_LINES lines from hickory"
if ((HICKORY_LINES > 0)); then
    grep -m 12 'hickory_' "$DAEMON_LOG" | sed 's/\x1b\[[0-9;]*m//g' >"$RAW_PREFIX-daemon-sample.log" || true
    warn "the daemon logged $HICKORY_LINES lines from hickory with its default filter (sample: $RAW_PREFIX-daemon-sample.log)"
fi

# ---------------------------------------------------------------------------- RFC 2136 push
declare -A PUSH_MS=()
PUSH_NOCHANGE_MS=""
PUSH_VERIFIED="not run (ILOT_BENCH_PUSH=0)"
if ((RUN_PUSH)); then
    printf '\n==== RFC 2136: %d records to named (%s, TSIG %s, TCP), %d rounds of (ilot dns apply, nsupdate)\n' \
        "$N_PUSH" "$PZONE" "$KEY_NAME" "$ROUNDS"
    PUSH_EXPECTED=$BENCH_DIR/push-expected
    # pushed_records: the push records named holds now (a zone transfer), normalised and sorted.
    pushed_records() {
        dig +noall +answer +time=5 @127.0.0.1 -p "$NAMED_PORT" "$PZONE" AXFR |
            awk '$1 ~ /^p[at][0-9]+\./ && ($4 == "A" || $4 == "TXT") { $1 = $1; print }' | sort -u
    }
    # check_pushed WHAT: named must hold exactly the 200 records (WHAT=all) or none of them.
    check_pushed() {
        local have
        have=$(pushed_records | wc -l)
        if [[ $1 == all ]]; then
            pushed_records | diff -u "$PUSH_EXPECTED" - >"$BENCH_DIR/push.diff" ||
                { head -n 20 "$BENCH_DIR/push.diff" >&2; die "named holds $have push records, not the $N_PUSH expected ($2)"; }
        else
            ((have == 0)) || die "named still holds $have push records ($2)"
        fi
    }
    # start_push_daemon R: a daemon with the push zone and a fresh state dir (nothing pushed
    # yet), whose start-up push fails because the TSIG key file is renamed away meanwhile.
    start_push_daemon() {
        local state=$BENCH_DIR/state-push-$1 t0
        stop_daemon
        write_config "$CONFIG" "$SOCK" "$state" 1
        KEY_PARKED=$KEY_FILE.parked
        mv -- "$KEY_FILE" "$KEY_PARKED"
        local before
        before=$(grep -c 'DNS push' "$DAEMON_LOG" || true)
        start_daemon "$CONFIG" "$SOCK" "$DAEMON_LOG" DAEMON_PID
        t0=$(now_ms)
        until (($(grep -c 'DNS push' "$DAEMON_LOG" || true) > before)); do
            (($(now_ms) - t0 < 20000)) || die "the daemon's start-up push did not fail within 20 s (see $DAEMON_LOG)"
            sleep 0.02
        done
        mv -- "$KEY_PARKED" "$KEY_FILE"
        KEY_PARKED=""
    }
    # nsupdate files: the same 200 records as ilot's (from `ilot dns show push.test --format zone`).
    start_push_daemon 0
    ilot_cli dns show "$PZONE" --format zone | grep -v '^;' | awk '{ $1 = $1; print }' | sort -u >"$PUSH_EXPECTED"
    n=$(wc -l <"$PUSH_EXPECTED")
    ((n == N_PUSH)) || die "ilot dns show $PZONE lists $n records, not $N_PUSH"
    NSU_ADD=$BENCH_DIR/nsupdate-add.txt
    NSU_DEL=$BENCH_DIR/nsupdate-delete.txt
    {
        printf 'server 127.0.0.1 %s\nzone %s\n' "$NAMED_PORT" "$PZONE"
        sed 's/^/update add /' "$PUSH_EXPECTED"
        printf 'send\n'
    } >"$NSU_ADD"
    {
        printf 'server 127.0.0.1 %s\nzone %s\n' "$NAMED_PORT" "$PZONE"
        awk '{ $2 = ""; $3 = ""; $0 = $0; $1 = $1; print "update delete " $0 }' "$PUSH_EXPECTED"
        printf 'send\n'
    } >"$NSU_DEL"
    NSU_CMD=(nsupdate -v -k "$KEY_FILE")
    nsu() { # nsu FILE: nsupdate, its output kept
        "${NSU_CMD[@]}" "$1" >"$BENCH_DIR/nsupdate.out" 2>&1 ||
            { cat "$BENCH_DIR/nsupdate.out" >&2; die "$(show_cmd "${NSU_CMD[@]}" "$1") failed"; }
    }
    check_pushed none "before the first round"
    for ((r = 1; r <= ROUNDS; r++)); do
        # ilot: a daemon that has pushed nothing yet, then `ilot dns apply`.
        ((r == 1)) || start_push_daemon "$r"
        t0=$(now_us)
        ilot_cli dns apply --json >"$RAW_PREFIX-push-ilot-$r.json" 2>"$BENCH_DIR/apply.err" ||
            { cat "$BENCH_DIR/apply.err" >&2; die "ilot dns apply failed (round $r)"; }
        ms=$(awk -v d="$(($(now_us) - t0))" 'BEGIN { printf "%.1f", d / 1000 }')
        added=$(jq '[.pushed[] | select(.zone == "'"$PZONE"'.") | .added | length] | add // 0' "$RAW_PREFIX-push-ilot-$r.json")
        ((added == N_PUSH)) || die "ilot dns apply added $added records, not $N_PUSH (round $r; see $RAW_PREFIX-push-ilot-$r.json)"
        check_pushed all "after ilot dns apply, round $r"
        PUSH_MS[ilot]+="$ms "
        # The same command once more: nothing to change (the fixed cost).
        t0=$(now_us)
        ilot_cli dns apply --json >"$BENCH_DIR/apply-again.json" 2>"$BENCH_DIR/apply.err" ||
            { cat "$BENCH_DIR/apply.err" >&2; die "ilot dns apply (nothing to change) failed"; }
        ms2=$(awk -v d="$(($(now_us) - t0))" 'BEGIN { printf "%.1f", d / 1000 }')
        again=$(jq '[.pushed[] | (.added | length) + (.removed | length)] | add // 0' "$BENCH_DIR/apply-again.json")
        ((again == 0)) || warn "the second ilot dns apply changed $again records"
        PUSH_NOCHANGE_MS+="$ms2 "
        info "$(printf 'round %d  ilot dns apply: %8.1f ms (%d added; again, nothing to change: %.1f ms)' "$r" "$ms" "$added" "$ms2")"
        nsu "$NSU_DEL"
        check_pushed none "after nsupdate deleted them, round $r"
        # nsupdate: the same 200 adds in one UPDATE.
        t0=$(now_us)
        nsu "$NSU_ADD"
        ms=$(awk -v d="$(($(now_us) - t0))" 'BEGIN { printf "%.1f", d / 1000 }')
        check_pushed all "after nsupdate, round $r"
        PUSH_MS[nsupdate]+="$ms "
        info "$(printf 'round %d  nsupdate:        %8.1f ms' "$r" "$ms")"
        nsu "$NSU_DEL"
        check_pushed none "after nsupdate deleted them, round $r"
    done
    # End state: ilot's push, checked by asking named for every record with dig.
    start_push_daemon final
    ilot_cli dns apply --json >"$BENCH_DIR/apply-final.json" 2>"$BENCH_DIR/apply.err" ||
        { cat "$BENCH_DIR/apply.err" >&2; die "ilot dns apply failed (final)"; }
    awk '{ print $1, $4 }' "$PUSH_EXPECTED" >"$BENCH_DIR/push-queries"
    answers "$NAMED_PORT" "$BENCH_DIR/push-queries" >"$BENCH_DIR/push-dig"
    if diff -u "$PUSH_EXPECTED" "$BENCH_DIR/push-dig" >"$BENCH_DIR/push.diff"; then
        PUSH_VERIFIED="dig @named finds all $N_PUSH records ilot pushed"
        info "$PUSH_VERIFIED"
    else
        head -n 20 "$BENCH_DIR/push.diff" >&2
        die "dig @named does not find the $N_PUSH records ilot pushed"
    fi
fi
grep -v 'hickory_' "$DAEMON_LOG" >"$RAW_PREFIX-daemon.log" || true
cp -- "$NAMED_LOG" "$RAW_PREFIX-named.log"
cp -- "$NAMED_CONF" "$RAW_PREFIX-named.conf"
cp -- "$CONFIG" "$RAW_PREFIX-ilot.toml"
cp -- "$QFILE" "$RAW_PREFIX-queries.txt"
cp -- "$NAMED_DIR/$ZONE.zone" "$RAW_PREFIX-$ZONE.zone"

# ---------------------------------------------------------------------------- summary
declare -A M_QPS=() M_LAT=() M_CPU=()
# shellcheck disable=SC2034  # M_LAT, M_CPU are read through row's nameref
for t in "${TARGETS[@]}"; do
    M_QPS[$t]=$(med "${QPS[$t]}")
    M_LAT[$t]=$(med "${LAT[$t]}")
    M_CPU[$t]=$(med "${CPU[$t]}")
done
# fv FORMAT VALUE: the value formatted (f1, f3, or "as is"), "-" when there is none.
fv() {
    if [[ -z $2 ]]; then echo "-"; elif [[ $1 == as-is ]]; then echo "$2"; else "$1" "$2"; fi
}
ILOT_VERSION=$("$BIN" --version 2>/dev/null | head -n 1 || echo "?")
LOADAVG=$(cut -d' ' -f1-3 /proc/loadavg)
SUMMARY=$RAW_PREFIX-summary.txt
{
    printf '\n==== summary: ilot DNS server vs BIND named (%s)\n' "$(date -u '+%Y-%m-%d %H:%M UTC')"
    printf 'host: %s, %s CPU(s), %s MiB RAM, kernel %s, load average at the end %s\n' \
        "$(hostname)" "$(nproc)" "$(awk '/^MemTotal:/ { print int($2 / 1024) }' /proc/meminfo)" "$(uname -r)" "$LOADAVG"
    printf '%s; %s; dnsperf %s\n' "$ILOT_VERSION" "$NAMED_VERSION" "${DNSPERF_VERSION:-?}"
    printf 'zones (ilot): %s; named: the same records (%s.zone: %s lines)\n' "$ZONES_INFO" "$ZONE" "$ZONE_RECORDS"
    printf 'queries: %s per cycle (%s); answers: %s\n' "$(wc -l <"$QFILE")" "$Q_MIX" "${ANSWERS_CHECK%; }"
    printf 'threads: ilot daemon 2 tokio workers; named -n 2; dnsperf -c %s -T %s, no rate limit; all on the same %s CPU(s)\n' \
        "$CLIENTS" "$THREADS" "$(nproc)"
    printf '"ilot" = the daemon as shipped (default log filter, ILOT_LOG unset, stderr to a file)\n\n'
    fmt='%-42s %-10s %-10s %s\n'
    # row LABEL FORMAT KEY-ILOT KEY-NAMED ARRAY: one metric, with its ratio to named.
    row() {
        local label=$1 f=$2 ki=$3 kn=$4 arr=$5 vi vn
        local -n a=$arr
        vi=${a[$ki]:-} vn=${a[$kn]:-}
        # shellcheck disable=SC2059
        printf "$fmt" "$label" "$(fv "$f" "$vi")" "$(fv "$f" "$vn")" "$(ratio "$vi" "$vn")"
    }
    # shellcheck disable=SC2059
    printf "$fmt" "metric (median of $ROUNDS)" "ilot" "named" "ilot/named"
    for z in plain sig; do
        sfx=""
        [[ $z == sig ]] && sfx=-sig
        [[ $z == sig ]] && ! ((RUN_DNSSEC)) && continue
        if [[ $z == plain ]]; then
            row "queries/s, $ZONE unsigned" f1 ilot named M_QPS
        else
            row "queries/s, $SZONE signed, DO bit (-D)" f1 ilot-sig named-sig M_QPS
        fi
        row "  average latency (ms)" f3 "ilot$sfx" "named$sfx" M_LAT
        row "  server CPU per 1000 queries (ms)" as-is "ilot$sfx" "named$sfx" M_CPU
        row "  daemon log written per query (bytes)" as-is "ilot$sfx" "named$sfx" LOGB
        row "  average response size (bytes)" as-is "ilot$sfx" "named$sfx" RESP
        row "  queries lost (all rounds)" as-is "ilot$sfx" "named$sfx" LOST
    done
    if ((RUN_DNSSEC)); then
        M_QPS[named-unsigned]=${M_QPS[named]}
        row "ilot signed+DO vs named UNSIGNED (q/s)" f1 ilot-sig named-unsigned M_QPS
    fi
    printf '\nrounds, queries/s:'
    for t in "${TARGETS[@]}"; do printf ' %s %s;' "$t" "$(f0list "${QPS[$t]}")"; done
    printf '\nrounds, CPU ms per 1000 queries:'
    for t in "${TARGETS[@]}"; do printf ' %s %s;' "$t" "${CPU[$t]% }"; done
    printf '\nresponse codes (last round):'
    for t in "${TARGETS[@]}"; do printf ' %s: %s;' "$t" "${RCODES[$t]:-?}"; done
    printf '\ndaemon log (default filter): %s KiB by the end of the load, %s lines from hickory\n' "$LOG_KB" "$HICKORY_LINES"
    if ((RUN_PUSH)); then
        P_I=$(med "${PUSH_MS[ilot]}")
        P_N=$(med "${PUSH_MS[nsupdate]}")
        P_0=$(med "$PUSH_NOCHANGE_MS")
        printf '\nRFC 2136 push of %d records (%d A, %d TXT) to named, zone %s, TSIG hmac-sha256, TCP (median of %d)\n' \
            "$N_PUSH" "$N_PUSH_A" "$N_PUSH_TXT" "$PZONE" "$ROUNDS"
        fmt='%-42s %-14s %-14s %s\n'
        # shellcheck disable=SC2059
        {
            printf "$fmt" "" "ilot" "nsupdate" "ratio ilot/nsupdate"
            printf "$fmt" "add $N_PUSH records, wall time (ms)" "$(f1 "$P_I")" "$(f1 "$P_N")" "$(ratio "$P_I" "$P_N")"
            printf "$fmt" "ilot dns apply, nothing to change (ms)" "$(f1 "$P_0")" "-" "-"
        }
        printf 'rounds (ms): ilot dns apply %s| nsupdate %s| nothing to change %s\n' "${PUSH_MS[ilot]}" "${PUSH_MS[nsupdate]}" "$PUSH_NOCHANGE_MS"
        printf 'check: %s\n' "$PUSH_VERIFIED"
    fi
    printf '\ncommand line: %s\n' "$INVOCATION"
    for t in "${TARGETS[@]}"; do printf '  %-16s %s\n' "$t:" "$(dnsperf_line "$t" "$DURATION")"; done
    printf '  named started as: %s (config kept as %s)\n' "$(show_cmd "${NAMED_CMD[@]}")" "$RAW_PREFIX-named.conf"
    if ((RUN_PUSH)); then
        printf '  push, ilot:       ilot --socket SOCK dns apply --json\n'
        printf '  push, nsupdate:   %s FILE (server, zone, %d "update add" lines, send: one UPDATE)\n' "$(show_cmd "${NSU_CMD[@]}")" "$N_PUSH"
    fi
    printf 'raw results: %s-*.txt (dnsperf outputs), -push-ilot-*.json, -daemon.log (without any hickory lines), -named.log, -named.conf, -ilot.toml (the last config), -queries.txt, -%s.zone, %s\n' \
        "$RAW_PREFIX" "$ZONE" "$SUMMARY"
} | tee "$SUMMARY"
