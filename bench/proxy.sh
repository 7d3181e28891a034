#!/usr/bin/env bash
# bench/proxy.sh: ilot's built-in HTTPS reverse proxy next to nginx, measured in one run.
#
#   bench/proxy.sh
#
# Both proxies terminate TLS on 127.0.0.1 and forward to the same backend: the container of an
# `ilot app install hello --name pbench --domain bench.example.test` (busybox httpd on :8080).
# 1. Throughput and latency: wrk -t2 -c32 -d10s --latency -H 'Host: bench.example.test'
#    https://127.0.0.1:PORT/health against ilot and nginx, alternating (ilot, nginx) for 3 rounds
#    after a 2 s warm-up of each; medians of requests/s and of the 99th percentile (targets:
#    ilot's throughput at least nginx's, ilot's p99 no worse). The proxies' CPU time per request
#    (from /proc) is printed for reference, and the backend is measured directly once (plain
#    HTTP, the ceiling that both proxies are bounded by).
# 2. TLS configuration of ilot's HTTPS port with testssl.sh (protocols, standard cipher
#    categories, RC4, SWEET32): prints the offered protocols and whether anything weak is offered.
#    Findings are printed, never fatal.
#
# nginx (Debian's package) runs with its own config in the temp dir: `listen ... ssl http2`, a
# self-signed ECDSA P-256 certificate (ilot's self-signed ones are P-256 too), TLS 1.2/1.3,
# proxy_http_version 1.1 with an upstream keepalive pool, the same forwarding headers and HSTS
# as ilot, 2 worker processes (ilot's daemon has 2 worker threads), an access log (ilot writes
# one too). The distribution's nginx service is never started.
#
# busybox httpd answers every request with "Connection: close", so each proxied request opens a
# new upstream TCP connection, and the proxy, closing first, keeps it in TIME_WAIT for 60 s. At
# ~2000 requests/s that exhausts the ephemeral ports towards the backend within ~10 s, and then
# every connect() crawls (throughput falls ~10x for whoever runs next). So the run sets
# net.ipv4.tcp_tw_reuse=1 (reuse TIME_WAIT ports for new outgoing connections; Linux's default 2
# does so only on loopback) and puts the old value back at exit. ILOT_BENCH_TW_REUSE=0 leaves it.
# The same backend listens with a backlog of 9 (busybox httpd) and forks per connection: under
# this load some SYNs are dropped and retried after 1 s, so both proxies' p99 sits near 1 s.
#
# It is a benchmark, not a test: it exits non-zero only when it cannot measure.
# It installs what is missing (apt-get: nginx wrk testssl.sh jq curl openssl), starts its own
# daemon (temp config, owner test-pbench-XXXXXX, ACME disabled) and its own nginx, and removes
# everything it made.
#
# Environment:
#   ILOT_BIN                  the binary (default target/release/ilot; built if missing)
#   ILOT_BENCH_ROUNDS         rounds of (ilot, nginx) (default 3)
#   ILOT_BENCH_DURATION       seconds per measured wrk run (default 10)
#   ILOT_BENCH_CONNECTIONS    wrk connections (default 32)
#   ILOT_BENCH_THREADS        wrk threads (default 2)
#   ILOT_BENCH_TESTSSL        0 skips testssl.sh (default 1)
#   ILOT_BENCH_TW_REUSE       0 leaves net.ipv4.tcp_tw_reuse as it is (default 1: set it to 1)
#   ILOT_BENCH_OUT            where results are kept (default target/bench)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
# shellcheck source=tests/lib/common.sh
source "$ROOT/tests/lib/common.sh"

bench_args "$@"

ROUNDS=${ILOT_BENCH_ROUNDS:-3}
DURATION=${ILOT_BENCH_DURATION:-10}
CONNS=${ILOT_BENCH_CONNECTIONS:-32}
THREADS=${ILOT_BENCH_THREADS:-2}
WARMUP_S=2
RUN_TESTSSL=${ILOT_BENCH_TESTSSL:-1}
TW_REUSE=${ILOT_BENCH_TW_REUSE:-1}
TW_SYSCTL=/proc/sys/net/ipv4/tcp_tw_reuse
TESTSSL_TIMEOUT_S=180
IMAGE=ilot/hello:1.0
DOMAIN=bench.example.test
INSTANCE=pbench
BACKEND_CONTAINER=ilot-$INSTANCE-web
BACKEND_PORT=8080
PATH_Q=/health
OUT_DIR=${ILOT_BENCH_OUT:-$ROOT/target/bench}
BIN_SRC=${ILOT_BIN:-$ROOT/target/release/ilot}
INVOCATION="bench/proxy.sh (ILOT_BENCH_ROUNDS=$ROUNDS ILOT_BENCH_DURATION=$DURATION ILOT_BENCH_CONNECTIONS=$CONNS ILOT_BENCH_THREADS=$THREADS)"
[[ -d $HOME/.cargo/bin ]] && PATH=$HOME/.cargo/bin:$PATH
export PATH

for v in ROUNDS DURATION CONNS THREADS; do
    [[ ${!v} =~ ^[1-9][0-9]*$ ]] || die "$v must be a positive integer (got '${!v}')"
done

# ---------------------------------------------------------------------------- state + cleanup
# /tmp rather than $TMPDIR: the socket path must stay short (108 bytes).
BENCH_DIR=$(mktemp -d /tmp/ilot-pbench-XXXXXX)
SUFFIX=${BENCH_DIR##*-}
OWNER=test-pbench-$(printf %s "$SUFFIX" | tr "[:upper:]" "[:lower:]")
SOCK=$BENCH_DIR/ilot.sock
CONFIG=$BENCH_DIR/ilot.toml
DAEMON_LOG=$BENCH_DIR/daemon.log
NGX_DIR=$BENCH_DIR/nginx
DAEMON_PID=""
NGINX_PID=""
INSTALLED=""      # the ilot instance to remove at exit
TW_OLD=""         # net.ipv4.tcp_tw_reuse before this run changed it
POLICY_RC_D=""    # a policy-rc.d this run wrote (so apt does not start nginx), removed at exit
BIN=$BENCH_DIR/ilot

ilot_cli() { "$BIN" --socket "$SOCK" "$@"; }

# shellcheck disable=SC2317  # invoked by the EXIT trap
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    set +e
    printf '\n==== cleanup\n'
    if [[ -n $POLICY_RC_D ]]; then rm -f -- "$POLICY_RC_D"; fi
    if [[ -n $TW_OLD ]]; then
        info "net.ipv4.tcp_tw_reuse back to $TW_OLD"
        printf '%s\n' "$TW_OLD" >"$TW_SYSCTL" || warn "could not put net.ipv4.tcp_tw_reuse back to $TW_OLD"
    fi
    if ((rc != 0)) && [[ -s $DAEMON_LOG ]]; then
        printf -- '---- last lines of the daemon log (%s)\n' "$DAEMON_LOG"
        tail -n 20 "$DAEMON_LOG"
    fi
    if ((rc != 0)) && [[ -s $NGX_DIR/error.log ]]; then
        printf -- '---- last lines of the nginx error log\n'
        tail -n 10 "$NGX_DIR/error.log"
    fi
    if [[ -n $NGINX_PID ]]; then
        info "stopping nginx (pid $NGINX_PID)"
        stop_pid "$NGINX_PID" 10
    fi
    if [[ -n $DAEMON_PID ]] && kill -0 "$DAEMON_PID" 2>/dev/null; then
        if [[ -n $INSTALLED ]]; then
            info "removing instance $INSTALLED"
            timeout 120 "$BIN" --socket "$SOCK" app remove "$INSTALLED" --purge >/dev/null 2>&1 ||
                warn "ilot app remove $INSTALLED failed; its Docker objects are removed by label below"
        fi
        info "stopping the daemon (pid $DAEMON_PID)"
        stop_pid "$DAEMON_PID" 10
    fi
    docker_cleanup_owned exact "$OWNER"
    rm -rf -- "$BENCH_DIR"
    stop_started_dockerd
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------------------- tools
printf '==== set-up\n'
# testssl.sh is /usr/bin/testssl in Debian's package, testssl.sh upstream.
find_testssl() { command -v testssl 2>/dev/null || command -v testssl.sh 2>/dev/null || true; }
missing=()
for pair in nginx:nginx wrk:wrk jq:jq curl:curl openssl:openssl docker:docker.io; do
    command -v "${pair%%:*}" >/dev/null 2>&1 || [[ -x /usr/sbin/${pair%%:*} ]] || missing+=("${pair#*:}")
done
if ((RUN_TESTSSL)) && [[ -z $(find_testssl) ]]; then missing+=(testssl.sh); fi
if ((${#missing[@]})); then
    ((EUID == 0)) || die "missing: ${missing[*]} (apt-get install ${missing[*]}, as root)"
    # Debian's nginx package starts its service on install unless policy-rc.d forbids it.
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        POLICY_RC_D=/usr/sbin/policy-rc.d
        printf '#!/bin/sh\nexit 101\n' >"$POLICY_RC_D"
        chmod 755 "$POLICY_RC_D"
    fi
    info "installing: ${missing[*]} (apt-get)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y --no-install-recommends "${missing[@]}" >"$BENCH_DIR/apt.log" 2>&1 ||
        { apt-get update >>"$BENCH_DIR/apt.log" 2>&1 &&
            apt-get install -y --no-install-recommends "${missing[@]}" >>"$BENCH_DIR/apt.log" 2>&1; } ||
        { tail -n 20 "$BENCH_DIR/apt.log" >&2; die "apt-get install ${missing[*]} failed"; }
    if [[ -n $POLICY_RC_D ]]; then rm -f -- "$POLICY_RC_D"; POLICY_RC_D=""; fi
fi
PATH=$PATH:/usr/sbin:/sbin
NGINX=$(command -v nginx) || die "nginx is not installed"
TESTSSL=$(find_testssl)
if ((RUN_TESTSSL)) && [[ -z $TESTSSL ]]; then die "testssl.sh is not installed"; fi

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

ensure_docker "$BENCH_DIR"
if ! docker image inspect "$IMAGE" >/dev/null 2>&1; then
    info "building $IMAGE (images/build.sh hello)"
    bash images/build.sh hello
    docker image inspect "$IMAGE" >/dev/null 2>&1 || die "images/build.sh hello did not produce $IMAGE"
fi

# ---------------------------------------------------------------------------- ilot daemon
bench_write_config ""
bench_start_daemon
STATUS_JSON=$(ilot_cli status --json) || die "ilot status --json failed"
ILOT_HTTPS=$(jq -r '.proxy.https // empty' <<<"$STATUS_JSON")
ILOT_HTTP=$(jq -r '.proxy.http // empty' <<<"$STATUS_JSON")
[[ -n $ILOT_HTTPS ]] || die "the proxy is not running: $(jq -c '.proxy' <<<"$STATUS_JSON")"
ILOT_PORT=${ILOT_HTTPS##*:}
info "ilot's proxy: https $ILOT_HTTPS, http $ILOT_HTTP"

info "ilot app install hello --name $INSTANCE --domain $DOMAIN"
INSTALLED=$INSTANCE
t0=$(now_ms)
ilot_cli app install hello --name "$INSTANCE" --domain "$DOMAIN" >"$BENCH_DIR/install.log" 2>&1 || {
    tail -n 20 "$BENCH_DIR/install.log" >&2
    die "ilot app install hello --name $INSTANCE --domain $DOMAIN failed"
}
info "installed and healthy in $(($(now_ms) - t0)) ms"
read -r BACKEND_IP _ < <(docker inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}' "$BACKEND_CONTAINER")
[[ -n ${BACKEND_IP:-} ]] || die "no IP address for $BACKEND_CONTAINER"
BACKEND=$BACKEND_IP:$BACKEND_PORT
info "backend: $BACKEND_CONTAINER at $BACKEND"

# ---------------------------------------------------------------------------- nginx
# free_port: a TCP port nothing listens on (nginx cannot bind port 0 and report it).
free_port() {
    local p i
    for ((i = 0; i < 100; i++)); do
        p=$((20000 + RANDOM % 40000))
        [[ -z $(ss -Hltn "sport = :$p" 2>/dev/null) ]] && { echo "$p"; return 0; }
    done
    die "no free TCP port found"
}
mkdir -p "$NGX_DIR/tmp"
# The workers run as nobody and must reach their temp dirs (created by the master).
chmod 711 "$BENCH_DIR"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
    -subj "/CN=$DOMAIN" -addext "subjectAltName=DNS:$DOMAIN" \
    -keyout "$NGX_DIR/key.pem" -out "$NGX_DIR/cert.pem" >"$NGX_DIR/openssl.log" 2>&1 ||
    { cat "$NGX_DIR/openssl.log" >&2; die "openssl could not make the self-signed certificate"; }
NGINX_PORT=$(free_port)
NGX_CONF=$NGX_DIR/nginx.conf
cat >"$NGX_CONF" <<EOF
# bench/proxy.sh: nginx configured like ilot's proxy for $DOMAIN
worker_processes 2;
pid $NGX_DIR/nginx.pid;
error_log $NGX_DIR/error.log warn;
events { worker_connections 1024; }
http {
    access_log $NGX_DIR/access.log;
    client_body_temp_path $NGX_DIR/tmp/body;
    proxy_temp_path $NGX_DIR/tmp/proxy;
    fastcgi_temp_path $NGX_DIR/tmp/fastcgi;
    uwsgi_temp_path $NGX_DIR/tmp/uwsgi;
    scgi_temp_path $NGX_DIR/tmp/scgi;
    # Clients keep their connection (nginx's default closes one after 1000 requests; ilot does not).
    keepalive_requests 1000000;
    upstream backend {
        server $BACKEND;
        keepalive 32;
    }
    server {
        listen 127.0.0.1:$NGINX_PORT ssl http2;
        server_name $DOMAIN;
        ssl_certificate $NGX_DIR/cert.pem;
        ssl_certificate_key $NGX_DIR/key.pem;
        ssl_protocols TLSv1.2 TLSv1.3;
        add_header Strict-Transport-Security "max-age=31536000" always;
        location / {
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host \$host;
            proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto https;
            proxy_set_header X-Forwarded-Host \$host;
        }
    }
}
EOF
NGX_ARGS=(-p "$NGX_DIR" -e "$NGX_DIR/error.log" -c "$NGX_CONF")
"$NGINX" -t "${NGX_ARGS[@]}" >"$NGX_DIR/check.log" 2>&1 || { cat "$NGX_DIR/check.log" >&2; die "nginx -t rejected $NGX_CONF"; }
info "starting: $NGINX ${NGX_ARGS[*]} -g 'daemon off;' (port $NGINX_PORT)"
"$NGINX" "${NGX_ARGS[@]}" -g 'daemon off;' >"$NGX_DIR/stdout.log" 2>&1 </dev/null &
NGINX_PID=$!
t0=$(now_ms)
until [[ -n $(ss -Hltn "sport = :$NGINX_PORT" 2>/dev/null) ]]; do
    kill -0 "$NGINX_PID" 2>/dev/null || { cat "$NGX_DIR/error.log" >&2 || true; die "nginx exited at start"; }
    (($(now_ms) - t0 < 10000)) || die "nginx does not listen on $NGINX_PORT after 10 s"
    sleep 0.05
done
NGINX_VERSION=$("$NGINX" -v 2>&1 | sed 's/^nginx version: //')

# ---------------------------------------------------------------------------- checks
# check_proxy NAME PORT VAR: GET /health must answer 200 "ok", both the way curl normally asks
# (SNI bench.example.test) and the way wrk asks (no SNI, Host header). Sets VAR to the TLS
# version and cipher negotiated the way wrk asks.
check_proxy() {
    local name=$1 port=$2 var=$3 code body tls
    code=$(curl -sk --max-time 10 -o "$BENCH_DIR/body" -w '%{http_code}' \
        --resolve "$DOMAIN:$port:127.0.0.1" "https://$DOMAIN:$port$PATH_Q") || code="curl failed ($?)"
    body=$(cat "$BENCH_DIR/body" 2>/dev/null || true)
    [[ $code == 200 && $body == ok ]] ||
        die "$name: curl -k --resolve $DOMAIN:$port:127.0.0.1 https://$DOMAIN:$port$PATH_Q gave $code '${body:0:80}', not 200 'ok'"
    code=$(curl -sk --http1.1 --max-time 10 -o "$BENCH_DIR/body" -w '%{http_code}' -v \
        -H "Host: $DOMAIN" "https://127.0.0.1:$port$PATH_Q" 2>"$BENCH_DIR/curl.err") || code="curl failed ($?)"
    body=$(cat "$BENCH_DIR/body" 2>/dev/null || true)
    [[ $code == 200 && $body == ok ]] ||
        die "$name: curl -k -H 'Host: $DOMAIN' https://127.0.0.1:$port$PATH_Q (as wrk asks) gave $code '${body:0:80}', not 200 'ok'"
    tls=$(sed -n 's/^\* SSL connection using //p' "$BENCH_DIR/curl.err" | head -n 1)
    printf -v "$var" '%s' "${tls:-?}"
    info "$name answers 200 ok on port $port (the way wrk asks: ${tls:-TLS version not shown by curl})"
}
printf '\n==== checks\n'
TLS_ILOT=""
TLS_NGINX=""
check_proxy ilot "$ILOT_PORT" TLS_ILOT
check_proxy nginx "$NGINX_PORT" TLS_NGINX
code=$(curl -s --max-time 10 -o "$BENCH_DIR/body" -w '%{http_code}' "http://$BACKEND$PATH_Q") || code="curl failed"
[[ $code == 200 && $(cat "$BENCH_DIR/body") == ok ]] || die "backend: http://$BACKEND$PATH_Q gave $code, not 200 'ok'"
info "backend answers 200 ok at http://$BACKEND$PATH_Q"

# ---------------------------------------------------------------------------- helpers
CLK_TCK=$(getconf CLK_TCK)
# cpu_ticks PID...: user+system CPU ticks of the processes (all their threads).
cpu_ticks() {
    local pid sum=0 t
    for pid in "$@"; do
        # Fields after "(comm) ": state is 1, utime 12, stime 13.
        t=$(sed 's/^.*) //' "/proc/$pid/stat" 2>/dev/null | awk '{ print $12 + $13 }') || t=0
        sum=$((sum + ${t:-0}))
    done
    printf '%s\n' "$sum"
}
proxy_pids() { # proxy_pids ilot|nginx: the processes doing the proxy's work
    case $1 in
        ilot) printf '%s\n' "$DAEMON_PID" ;;
        nginx) printf '%s\n' "$NGINX_PID"; pgrep -P "$NGINX_PID" || true ;;
    esac
}
# wrk_field FILE rps|p50|p99|requests|non2xx|sockerr: a figure from wrk's --latency output
# (latencies in ms).
wrk_field() {
    local f=$1 what=$2
    case $what in
        rps) awk '/^Requests\/sec:/ { print $2 }' "$f" ;;
        requests) awk '/ requests in / { print $1 }' "$f" ;;
        non2xx) awk -F': *' '/Non-2xx or 3xx responses/ { n = $2 } END { print n + 0 }' "$f" ;;
        sockerr) awk '/Socket errors:/ { gsub(/,/, ""); n = $4 + $6 + $8 + $10 } END { print n + 0 }' "$f" ;;
        p50 | p99)
            awk -v q="${what#p}%" '$1 == q {
                v = $2
                if (v ~ /us$/) { sub(/us$/, "", v); v = v / 1000 }
                else if (v ~ /ms$/) { sub(/ms$/, "", v); v = v + 0 }
                else if (v ~ /m$/) { sub(/m$/, "", v); v = v * 60000 }
                else if (v ~ /s$/) { sub(/s$/, "", v); v = v * 1000 }
                printf "%.3f\n", v; exit }' "$f"
            ;;
    esac
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

mkdir -p "$OUT_DIR"
STAMP=$(date +%Y%m%d-%H%M%S)
RAW_PREFIX=$OUT_DIR/proxy-$STAMP
wrk_cmd() { # wrk_cmd TARGET SECONDS: the wrk command line for ilot|nginx|backend
    local secs=$2
    case $1 in
        ilot) printf '%s\0' wrk "-t$THREADS" "-c$CONNS" "-d${secs}s" --latency -H "Host: $DOMAIN" "https://127.0.0.1:$ILOT_PORT$PATH_Q" ;;
        nginx) printf '%s\0' wrk "-t$THREADS" "-c$CONNS" "-d${secs}s" --latency -H "Host: $DOMAIN" "https://127.0.0.1:$NGINX_PORT$PATH_Q" ;;
        backend) printf '%s\0' wrk "-t$THREADS" "-c$CONNS" "-d${secs}s" --latency "http://$BACKEND$PATH_Q" ;;
    esac
}
wrk_line() { # wrk_line TARGET SECONDS: the wrk command line, printable
    local -a cmd
    mapfile -d '' -t cmd < <(wrk_cmd "$1" "$2")
    show_cmd "${cmd[@]}"
}
declare -A RPS=() P50=() P99=() CPU=() NON2XX=() SOCKERR=()
# run_wrk TARGET LABEL SECONDS: run wrk, keep its output as RAW_PREFIX-LABEL.txt, record figures
# (keys TARGET) unless LABEL is a warm-up.
run_wrk() {
    local target=$1 label=$2 secs=$3 out c0 c1 rps p50 p99 req n2 se cpu_ms tw
    local -a cmd pids
    mapfile -d '' -t cmd < <(wrk_cmd "$target" "$secs")
    mapfile -t pids < <(proxy_pids "$target")
    out=$RAW_PREFIX-$label.txt
    if [[ $target != backend ]]; then c0=$(cpu_ticks "${pids[@]}"); fi
    "${cmd[@]}" >"$out" 2>&1 || { cat "$out" >&2; die "wrk failed: $(show_cmd "${cmd[@]}")"; }
    if [[ $target != backend ]]; then c1=$(cpu_ticks "${pids[@]}"); fi
    rps=$(wrk_field "$out" rps)
    p50=$(wrk_field "$out" p50)
    p99=$(wrk_field "$out" p99)
    req=$(wrk_field "$out" requests)
    n2=$(wrk_field "$out" non2xx)
    se=$(wrk_field "$out" sockerr)
    [[ -n $rps && -n $p99 && -n $req ]] || { cat "$out" >&2; die "could not read wrk's output ($out)"; }
    ((req > 0)) || { cat "$out" >&2; die "wrk made no request against $target"; }
    cpu_ms="-"
    if [[ $target != backend ]]; then
        # CPU milliseconds the proxy spent per 1000 requests.
        cpu_ms=$(awk -v d="$((c1 - c0))" -v hz="$CLK_TCK" -v n="$req" 'BEGIN { printf "%.1f", d / hz * 1000 / (n / 1000) }')
    fi
    tw=$(ss -Htan state time-wait "dst $BACKEND" 2>/dev/null | wc -l)
    info "$(printf '%-14s %9.1f req/s  p50 %8.2f ms  p99 %8.2f ms  cpu %6s ms/1k req  non-2xx %s  socket errors %s  TIME_WAIT to backend %s' \
        "$label" "$rps" "$p50" "$p99" "$cpu_ms" "$n2" "$se" "$tw")"
    ((n2 == 0 && se == 0)) || warn "$label: $n2 non-2xx/3xx responses, $se socket errors (see $out)"
    [[ $label == *warmup* ]] && return 0
    RPS[$target]+="$rps "
    P50[$target]+="$p50 "
    P99[$target]+="$p99 "
    CPU[$target]+="$cpu_ms "
    NON2XX[$target]=$((${NON2XX[$target]:-0} + n2))
    SOCKERR[$target]=$((${SOCKERR[$target]:-0} + se))
}
# shellcheck disable=SC2086  # med "V1 V2 ...": median of a list (split on purpose)
med() { printf '%s\n' $1 | median; }

# ---------------------------------------------------------------------------- load
TW_NOW=$(cat "$TW_SYSCTL" 2>/dev/null || echo "?")
if [[ $TW_REUSE == 1 && $TW_NOW != 1 ]]; then
    if printf '1\n' >"$TW_SYSCTL" 2>/dev/null; then
        TW_OLD=$TW_NOW
        info "net.ipv4.tcp_tw_reuse: $TW_NOW -> 1 for this run (put back at exit)"
    else
        warn "cannot set net.ipv4.tcp_tw_reuse=1: expect ephemeral port exhaustion towards the backend"
    fi
fi
TW_USED=$(cat "$TW_SYSCTL" 2>/dev/null || echo "?")
printf '\n==== load: %d s warm-up each, then %d rounds of (ilot, nginx), %d s each\n' "$WARMUP_S" "$ROUNDS" "$DURATION"
run_wrk ilot ilot-warmup "$WARMUP_S"
run_wrk nginx nginx-warmup "$WARMUP_S"
for ((r = 1; r <= ROUNDS; r++)); do
    run_wrk ilot "ilot-$r" "$DURATION"
    run_wrk nginx "nginx-$r" "$DURATION"
done
printf '\n==== backend directly (plain HTTP, reference ceiling)\n'
run_wrk backend backend "$DURATION"
kill -0 "$DAEMON_PID" 2>/dev/null || die "the daemon exited during the load"
kill -0 "$NGINX_PID" 2>/dev/null || die "nginx exited during the load"
# status_counts LOG: "200 x N, 502 x M" from an access log (the status follows the quoted request
# line in both ilot's and nginx's format).
status_counts() {
    awk -F'"' 'NF >= 3 { split($3, a, " "); n[a[1]]++ } END { for (s in n) printf "%s %s\n", s, n[s] }' "$1" 2>/dev/null |
        sort -n | awk '{ printf "%s%s x %s", (NR > 1 ? ", " : ""), $1, $2 }'
}
ILOT_STATUSES=$(status_counts "$BENCH_DIR/access.log")
NGINX_STATUSES=$(status_counts "$NGX_DIR/access.log")
info "responses by status (access logs, warm-ups included): ilot ${ILOT_STATUSES:-none}; nginx ${NGINX_STATUSES:-none}"
cp -- "$DAEMON_LOG" "$RAW_PREFIX-daemon.log"
cp -- "$NGX_DIR/error.log" "$RAW_PREFIX-nginx-error.log" 2>/dev/null || true

# ---------------------------------------------------------------------------- testssl.sh
TLS_TXT=$RAW_PREFIX-testssl.txt
TLS_JSON=$RAW_PREFIX-testssl.json
TLS_VERDICT="not run (ILOT_BENCH_TESTSSL=0)"
TLS_PROTOCOLS="-"
TLS_WEAK="-"
TESTSSL_CMD=()
if ((RUN_TESTSSL)); then
    printf '\n==== testssl.sh against ilot (%s:%s)\n' "$DOMAIN" "$ILOT_PORT"
    rm -f -- "$TLS_JSON"
    # -p protocols, -s standard cipher categories (NULL, aNULL, EXPORT, LOW, 3DES/IDEA, ...),
    # -4 RC4, -W SWEET32 (64-bit block ciphers). --ip: no DNS for the test domain.
    TESTSSL_CMD=("$TESTSSL" --quiet --color 0 --warnings off --nodns none --ip 127.0.0.1
        --connect-timeout 10 --openssl-timeout 10 --jsonfile "$TLS_JSON" -p -s -4 -W "$DOMAIN:$ILOT_PORT")
    info "+ $(show_cmd "${TESTSSL_CMD[@]}")"
    t0=$(now_ms)
    rc=0
    # From the temp dir: testssl looks for a git checkout in its working directory.
    (cd "$BENCH_DIR" && timeout "$TESTSSL_TIMEOUT_S" "${TESTSSL_CMD[@]}") >"$TLS_TXT" 2>&1 || rc=$?
    info "testssl.sh took $(($(now_ms) - t0)) ms (exit $rc); full output: $TLS_TXT"
    if [[ -s $TLS_JSON ]] && jq -e 'type == "array" and length > 0' "$TLS_JSON" >/dev/null 2>&1; then
        # Protocols: ids SSLv2 SSLv3 TLS1 TLS1_1 TLS1_2 TLS1_3, finding "offered..." or "not offered".
        TLS_PROTOCOLS=$(jq -r '[.[] | select(.id | test("^(SSLv2|SSLv3|TLS1|TLS1_1|TLS1_2|TLS1_3)$"))
            | select(.finding | test("^offered")) | .id] | map(sub("TLS1_"; "TLS 1.") | sub("^TLS1$"; "TLS 1.0")) | join(", ")' "$TLS_JSON")
        WEAK_PROTOS=$(jq -r '[.[] | select(.id | test("^(SSLv2|SSLv3|TLS1|TLS1_1)$"))
            | select(.finding | test("^offered")) | .id] | join(", ")' "$TLS_JSON")
        # Cipher categories: cipherlist_NULL, _aNULL, _EXPORT, _LOW, _3DES_IDEA, plus RC4, SWEET32.
        WEAK_CIPHERS=$(jq -r '[.[] | select(
                ((.id | test("^cipherlist_(NULL|aNULL|EXPORT|LOW|3DES_IDEA)$")) and (.finding | test("^offered")))
                or ((.id == "RC4" or .id == "SWEET32") and (.severity | test("^(LOW|MEDIUM|HIGH|CRITICAL)$"))))
            | "\(.id): \(.finding)"] | join("; ")' "$TLS_JSON")
        CAT_OK=$(jq -r '[.[] | select(.id | test("^cipherlist_")) | "\(.id | sub("cipherlist_"; "")) \(.finding)"] | join("; ")' "$TLS_JSON")
        CBC=$(jq -r '[.[] | select(.id == "cipherlist_AVERAGE") | .finding] | first // "?"' "$TLS_JSON")
        TLS_WEAK="protocols: ${WEAK_PROTOS:-none}; ciphers: ${WEAK_CIPHERS:-none}"
        info "offered protocols: ${TLS_PROTOCOLS:-none found}"
        info "cipher categories: $CAT_OK"
        info "weak: $TLS_WEAK"
        if [[ -z $TLS_PROTOCOLS ]]; then
            TLS_VERDICT="UNKNOWN: testssl.sh reported no offered protocol (see $TLS_TXT)"
        elif [[ -z $WEAK_PROTOS && -z $WEAK_CIPHERS ]]; then
            TLS_VERDICT="PASS: only $TLS_PROTOCOLS offered, no weak protocol (SSLv2/3, TLS 1.0/1.1), no NULL/aNULL/export/LOW/RC4/3DES cipher (obsolete CBC ciphers: $CBC)"
        else
            TLS_VERDICT="WEAK: $TLS_WEAK"
        fi
    else
        TLS_VERDICT="UNKNOWN: testssl.sh produced no findings (exit $rc; see $TLS_TXT)"
        tail -n 15 "$TLS_TXT" >&2 || true
    fi
    info "verdict: $TLS_VERDICT"
fi

# ---------------------------------------------------------------------------- summary
verdict() { # verdict AWK-EXPR: "met" if true
    if awk "BEGIN { exit !($1) }"; then echo "met"; else echo "MISSED"; fi
}
RPS_I=$(med "${RPS[ilot]}")
RPS_N=$(med "${RPS[nginx]}")
P99_I=$(med "${P99[ilot]}")
P99_N=$(med "${P99[nginx]}")
P50_I=$(med "${P50[ilot]}")
P50_N=$(med "${P50[nginx]}")
CPU_I=$(med "${CPU[ilot]}")
CPU_N=$(med "${CPU[nginx]}")
RPS_B=$(med "${RPS[backend]}")
P99_B=$(med "${P99[backend]}")
P50_B=$(med "${P50[backend]}")
f1() { awk -v v="$1" 'BEGIN { printf "%.1f", v }'; }
f2() { awk -v v="$1" 'BEGIN { printf "%.2f", v }'; }
# ratio A B: A/B as "0.93x (-7 %)"
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b <= 0) { print "-"; exit } r = a / b; printf "%.2fx (%+.0f %%)", r, (r - 1) * 100 }'; }
V_RPS=$(verdict "$RPS_I >= $RPS_N")
V_P99=$(verdict "$P99_I <= $P99_N")

ILOT_VERSION=$("$BIN" --version 2>/dev/null | head -n 1 || echo "?")
DOCKER_VERSION=$(docker version --format '{{.Server.Version}}' 2>/dev/null || echo "?")
WRK_VERSION=$(wrk -v 2>&1 | awk 'NR == 1 { print $1, $2 }' || true)
TESTSSL_VERSION="-"
if [[ -n $TESTSSL ]]; then TESTSSL_VERSION=$("$TESTSSL" --version 2>/dev/null | tr -d '\033' | sed -n 's/.*testssl[^0-9]*\([0-9][0-9.a-z-]*\).*/\1/p' | head -n 1); fi
LOADAVG=$(cut -d' ' -f1-3 /proc/loadavg)
SUMMARY=$RAW_PREFIX-summary.txt
{
    printf '\n==== summary: ilot HTTPS proxy vs nginx (%s)\n' "$(date -u '+%Y-%m-%d %H:%M UTC')"
    printf 'host: %s, %s CPU(s), %s MiB RAM, kernel %s, load average at the end %s\n' \
        "$(hostname)" "$(nproc)" "$(awk '/^MemTotal:/ { print int($2 / 1024) }' /proc/meminfo)" "$(uname -r)" "$LOADAVG"
    printf '%s; nginx %s; %s; testssl.sh %s; docker engine %s\n' \
        "$ILOT_VERSION" "$NGINX_VERSION" "${WRK_VERSION:-wrk}" "$TESTSSL_VERSION" "$DOCKER_VERSION"
    printf 'net.ipv4.tcp_tw_reuse=%s during the run (see --help); ' "$TW_USED"
    printf 'backend: %s (%s, busybox httpd) at %s; wrk -> proxy over TLS (ilot: %s; nginx: %s)\n\n' \
        "$BACKEND_CONTAINER" "$IMAGE" "$BACKEND" "$TLS_ILOT" "$TLS_NGINX"
    fmt='%-34s %-12s %-12s %-20s %-22s %s\n'
    # shellcheck disable=SC2059
    {
        printf "$fmt" "metric (median of $ROUNDS)" "ilot" "nginx" "ratio ilot/nginx" "target" "verdict"
        printf "$fmt" "throughput (requests/s)" "$(f1 "$RPS_I")" "$(f1 "$RPS_N")" "$(ratio "$RPS_I" "$RPS_N")" ">= nginx (>= 1.00x)" "$V_RPS"
        printf "$fmt" "latency p99 (ms)" "$(f2 "$P99_I")" "$(f2 "$P99_N")" "$(ratio "$P99_I" "$P99_N")" "<= nginx (<= 1.00x)" "$V_P99"
        printf "$fmt" "latency p50 (ms)" "$(f2 "$P50_I")" "$(f2 "$P50_N")" "$(ratio "$P50_I" "$P50_N")" "-" "(for reference)"
        printf "$fmt" "proxy CPU per 1000 requests (ms)" "$CPU_I" "$CPU_N" "$(ratio "$CPU_I" "$CPU_N")" "-" "(for reference)"
        printf "$fmt" "non-2xx responses (all rounds)" "${NON2XX[ilot]:-0}" "${NON2XX[nginx]:-0}" "-" "0" \
            "$( ((${NON2XX[ilot]:-0} == 0)) && echo met || echo MISSED)"
        printf "$fmt" "wrk socket errors (all rounds)" "${SOCKERR[ilot]:-0}" "${SOCKERR[nginx]:-0}" "-" "-" "(for reference)"
        printf "$fmt" "backend directly (plain HTTP)" "$(f1 "$RPS_B") req/s" "p99 $(f2 "$P99_B") ms" "p50 $(f2 "$P50_B") ms" "-" "(ceiling)"
    }
    printf '\nrounds: requests/s ilot %s| nginx %s\n' "${RPS[ilot]}" "${RPS[nginx]}"
    printf '        p99 ms     ilot %s| nginx %s\n' "${P99[ilot]}" "${P99[nginx]}"
    printf '        CPU ms/1k  ilot %s| nginx %s\n' "${CPU[ilot]}" "${CPU[nginx]}"
    printf 'ilot / backend directly: %s of the throughput\n' "$(ratio "$RPS_I" "$RPS_B")"
    printf 'responses by status (access logs, warm-ups included): ilot %s; nginx %s\n' "${ILOT_STATUSES:-none}" "${NGINX_STATUSES:-none}"
    printf '\nTLS (testssl.sh on ilot'\''s port): offered %s; weak %s\n' "${TLS_PROTOCOLS:--}" "$TLS_WEAK"
    printf 'TLS verdict: %s\n' "$TLS_VERDICT"
    printf '\ncommand line: %s\n' "$INVOCATION"
    printf '  ilot:    %s\n' "$(wrk_line ilot "$DURATION")"
    printf '  nginx:   %s\n' "$(wrk_line nginx "$DURATION")"
    printf '  backend: %s\n' "$(wrk_line backend "$DURATION")"
    printf '  nginx started as: %s %s -g '\''daemon off;'\'' (config kept as %s)\n' "$NGINX" "${NGX_ARGS[*]}" "$RAW_PREFIX-nginx.conf"
    if ((${#TESTSSL_CMD[@]})); then printf '  testssl: %s\n' "$(show_cmd "${TESTSSL_CMD[@]}")"; fi
    printf 'raw results: %s-*.txt (wrk outputs, testssl), -daemon.log, -nginx-error.log, %s\n' "$RAW_PREFIX" "$SUMMARY"
} | tee "$SUMMARY"
cp -- "$NGX_CONF" "$RAW_PREFIX-nginx.conf"
