#!/usr/bin/env bash
# bench/mail-tls.sh: what an independent TLS scanner (testssl.sh, Debian's package) finds on each
# TLS port of the mail app, as ilot installs it.
#
#   bench/mail-tls.sh [--fast]
#
#   --fast   testssl.sh --fast (fewer cipher checks; for a quick look, not for the record)
#
# 1. A daemon of its own (temp config, owner test-mltls-XXXXXX, proxy on 127.0.0.1:0, ACME,
#    firewall and guard off) installs the mail app, as tests/common/mail.rs does:
#      ilot app install mail --name mltXXXXXX --domain mail.example.org --set smtp_port=0 \
#        --set submission_port=0 --set submissions_port=0 --set imaps_port=0 --set managesieve_port=0
#    (the engine picks free host ports; the certificate is ilot's own self-signed one, as before
#    ACME has run) and reads the host ports from `ilot app show NAME --json`.
# 2. testssl.sh on each port, from 127.0.0.1:
#      testssl --quiet --color 0 --warnings off -oj FILE -t smtp 127.0.0.1:PORT   (25, 587)
#      testssl --quiet --color 0 --warnings off -oj FILE 127.0.0.1:PORT           (465, 993)
#    4190 (ManageSieve, STARTTLS) is not scanned: testssl.sh 3.0 has no `-t sieve`; Dovecot
#    serves it with the settings of 993 (tests/mail.rs checks it with openssl s_client).
# 3. Per port: every finding of severity LOW, MEDIUM, HIGH or CRITICAL, in two groups: the TLS
#    configuration (protocols, ciphers, key exchange, vulnerabilities...: the image's doing, must
#    be empty) and the certificate (cert_*, OCSP, CAA: expected with a self-signed test
#    certificate and no DNS; a Let's Encrypt certificate has none of them but CAA, which is
#    DNS). Also the protocols and the cipher order testssl.sh saw.
#
# It exits 1 when a port has a configuration finding, 0 otherwise (certificate findings are
# reported, not counted). Needs root, a Docker engine (dockerd is started if none answers), the
# image ilot/mail:1.0 (images/build.sh mail), jq and testssl (apt-get install testssl.sh). The
# raw JSON of each port is kept in $ILOT_BENCH_OUT (default target/bench). On exit, also on
# failure or Ctrl-C, it removes the instance, stops the daemon and deletes its temp dir.
#
# Environment:
#   ILOT_BIN         the binary (default target/release/ilot)
#   ILOT_BENCH_OUT   where results are kept (default target/bench)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
# shellcheck source=tests/lib/common.sh
source "$ROOT/tests/lib/common.sh"

FAST=""
case ${1:-} in
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'; exit 0 ;;
    --fast) FAST=--fast ;;
    "") ;;
    *) die "unknown argument '$1' (see bench/mail-tls.sh --help)" ;;
esac

IMAGE=ilot/mail:1.0
OUT_DIR=${ILOT_BENCH_OUT:-$ROOT/target/bench}
BIN=${ILOT_BIN:-$ROOT/target/release/ilot}
((EUID == 0)) || die "run it as root (it starts a daemon that manages containers)"
for c in docker jq; do
    command -v "$c" >/dev/null 2>&1 || die "$c is required (apt-get install ${c/docker/docker.io})"
done
command -v testssl >/dev/null 2>&1 || die "testssl is required (apt-get install testssl.sh)"
[[ -x $BIN ]] || die "$BIN is missing: build it with cargo build --release (or set ILOT_BIN)"

# ---------------------------------------------------------------------------- state + cleanup
# /tmp rather than $TMPDIR: the socket path must stay short (108 bytes).
BENCH_DIR=$(mktemp -d /tmp/ilot-mltls-XXXXXX)
SUFFIX=$(printf %s "${BENCH_DIR##*-}" | tr "[:upper:]" "[:lower:]")
OWNER=test-mltls-$SUFFIX
NAME=mlt$SUFFIX
SOCK=$BENCH_DIR/ilot.sock
CONFIG=$BENCH_DIR/ilot.toml
DAEMON_LOG=$BENCH_DIR/daemon.log
DAEMON_PID=""
INSTALLED=""
SCAN_PID=""
STAMP=$(date +%Y%m%d-%H%M%S)
RAW_PREFIX=$OUT_DIR/mail-tls-$STAMP
mkdir -p "$OUT_DIR"

ilot_cli() { "$BIN" --socket "$SOCK" "$@"; }

# shellcheck disable=SC2317  # invoked by the EXIT trap
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    set +e
    printf '\n==== cleanup\n'
    if [[ -n $SCAN_PID ]]; then kill "$SCAN_PID" 2>/dev/null; wait "$SCAN_PID" 2>/dev/null; fi
    if ((rc > 1)) && [[ -s $DAEMON_LOG ]]; then
        printf -- '---- last lines of the daemon log (%s)\n' "$DAEMON_LOG"
        tail -n 20 "$DAEMON_LOG"
    fi
    if [[ -n $INSTALLED && -n $DAEMON_PID ]] && kill -0 "$DAEMON_PID" 2>/dev/null; then
        info "removing instance $INSTALLED"
        timeout 180 "$BIN" --socket "$SOCK" app remove "$INSTALLED" --purge >>"$BENCH_DIR/install.log" 2>&1 ||
            warn "ilot app remove $INSTALLED --purge failed; its Docker objects are removed by label below"
    fi
    if [[ -n $DAEMON_PID ]] && kill -0 "$DAEMON_PID" 2>/dev/null; then
        info "stopping the daemon (pid $DAEMON_PID)"
        stop_pid "$DAEMON_PID" 30
    fi
    docker_cleanup_owned exact "$OWNER"
    rm -rf -- "$BENCH_DIR"
    stop_started_dockerd
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------------------- set-up
ensure_docker "$BENCH_DIR"
docker image inspect "$IMAGE" >/dev/null 2>&1 ||
    die "the image $IMAGE is missing: build it with images/build.sh mail"
printf '==== set-up: daemon, mail app %s\n' "$NAME"
bench_write_config ""
bench_start_daemon
info "installing: ilot app install mail --name $NAME --domain mail.example.org (ports 0: chosen by the engine)"
INSTALLED=$NAME
if ! ilot_cli app install mail --name "$NAME" --domain mail.example.org --set smtp_port=0 \
    --set submission_port=0 --set submissions_port=0 --set imaps_port=0 \
    --set managesieve_port=0 >"$BENCH_DIR/install.log" 2>&1; then
    tail -n 20 "$BENCH_DIR/install.log" >&2
    die "ilot app install mail failed"
fi
SHOW=$(ilot_cli app show "$NAME" --json) || die "ilot app show $NAME --json failed"
host_port() {
    jq -r --argjson c "$1" '[.services[0].ports[] | select(.container == $c) | .host][0] // empty | split(":") | last' <<<"$SHOW"
}
TESTSSL_VERSION=$(testssl --version 2>/dev/null | grep -o 'testssl *[0-9][^ ]*' | tr -s ' ' | head -1 || true)
info "installed; scanning with ${TESTSSL_VERSION:-testssl} (OpenSSL $(openssl version | cut -d' ' -f2))"

# ---------------------------------------------------------------------------- scans
# A finding about the certificate, not about the TLS configuration.
CERT_IDS='^(cert_|cert$|OCSP|DNS_CAArecord|intermediate_cert)'
BAD=0
declare -a SUMMARY=()
for spec in "25:-t smtp" "587:-t smtp" "465:" "993:"; do
    container=${spec%%:*}
    how=${spec#*:}
    port=$(host_port "$container")
    [[ $port =~ ^[0-9]+$ ]] || die "no host port for $container in 'ilot app show $NAME --json'"
    json=$RAW_PREFIX-$container.json
    printf '\n==== port %s (127.0.0.1:%s): testssl --quiet --color 0 --warnings off %s%s\n' \
        "$container" "$port" "${FAST:+$FAST }" "${how:+$how }127.0.0.1:$port"
    # shellcheck disable=SC2086  # $how is "-t smtp" or empty, on purpose
    testssl --quiet --color 0 --warnings off --openssl-timeout 10 ${FAST} -oj "$json" $how \
        "127.0.0.1:$port" >"$BENCH_DIR/testssl-$container.txt" 2>&1 &
    SCAN_PID=$!
    wait "$SCAN_PID" || true
    SCAN_PID=""
    [[ -s $json ]] || { tail -n 20 "$BENCH_DIR/testssl-$container.txt" >&2; die "testssl wrote no result for port $container"; }
    jq -r '[.[] | select(.id | test("^(SSLv2|SSLv3|TLS1|TLS1_1|TLS1_2|TLS1_3)$")) | "\(.id) \(.finding)"] | join("; ")' "$json" |
        sed 's/^/  protocols: /'
    jq -r '[.[] | select(.id | test("^cipherorder_TLSv1")) | "\(.id | sub("cipherorder_"; "")): \(.finding)"] | .[]' "$json" |
        sed 's/^/  cipher order /'
    jq -r '[.[] | select(.id == "DH_groups" or .id == "PFS_ECDHE_curves" or .id == "FS_ECDHE_curves") | "\(.id): \(.finding)"] | .[]' "$json" | sed 's/^/  /'
    config=$(jq -r --arg cert "$CERT_IDS" '.[] | select(.severity | test("^(LOW|MEDIUM|HIGH|CRITICAL)$"))
        | select(.id | test($cert) | not) | "    \(.severity) \(.id): \(.finding)"' "$json")
    cert=$(jq -r --arg cert "$CERT_IDS" '.[] | select(.severity | test("^(LOW|MEDIUM|HIGH|CRITICAL)$"))
        | select(.id | test($cert)) | "    \(.severity) \(.id): \(.finding)"' "$json")
    if [[ -n $config ]]; then
        printf '  weak findings of the TLS configuration:\n%s\n' "$config"
        BAD=1
        SUMMARY+=("$(printf '  %-4s %s configuration finding(s)' "$container" "$(wc -l <<<"$config")")")
    else
        printf '  weak findings of the TLS configuration: none\n'
        SUMMARY+=("$(printf '  %-4s no configuration finding; %s certificate finding(s)' "$container" "$(grep -c . <<<"$cert" || true)")")
    fi
    printf '  certificate findings (expected: a self-signed test certificate, no DNS):\n%s\n' "${cert:-    none}"
done

printf '\n==== summary (raw JSON: %s-PORT.json)\n' "$RAW_PREFIX"
printf '%s\n' "${SUMMARY[@]}"
printf '  4190 not scanned (testssl.sh %s has no ManageSieve STARTTLS)\n' "${TESTSSL_VERSION#testssl }"
exit "$BAD"
