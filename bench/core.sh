#!/usr/bin/env bash
# bench/core.sh: ilot's core figures next to the Docker CLI, measured in one run.
#
#   bench/core.sh
#
# 1. CLI latency: `ilot status` and `ilot app list --json` with 10 hello instances installed,
#    against `docker ps --filter label=ilot.owner=... --format '{{json .}}'` (what a tool built
#    on the docker CLI must call to list its apps). hyperfine, median of 100 runs (target < 10 ms).
# 2. Daemon idle RSS (VmRSS) with those 10 instances, after 5 s idle (target < 20 MiB).
# 3. Install time of hello, which waits for the app's health check, against `docker run -d` of
#    the same image polled with `docker exec C wget .../health` until healthy, and against plain
#    `docker run -d`. 5 rounds, alternating, medians (target: ilot - docker within 1 s).
#
# It is a benchmark, not a test: it exits non-zero only when it cannot measure.
# It starts its own daemon (temp config, owner test-bench-XXXXXX) and removes everything it made.
#
# Environment:
#   ILOT_BIN               the binary (default target/release/ilot; built if missing)
#   ILOT_BENCH_INSTANCES   instances installed for 1-2 (default 10)
#   ILOT_BENCH_RUNS        hyperfine runs per command (default 100)
#   ILOT_BENCH_ROUNDS      install rounds (default 5)
#   ILOT_BENCH_OUT         where results are kept (default target/bench)
#   ILOT_BENCH_HYPERFINE   the hyperfine command (default hyperfine; none: time with a bash loop)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
# shellcheck source=tests/lib/common.sh
source "$ROOT/tests/lib/common.sh"

bench_args "$@"

INSTANCES=${ILOT_BENCH_INSTANCES:-10}
RUNS=${ILOT_BENCH_RUNS:-100}
WARMUP=5
ROUNDS=${ILOT_BENCH_ROUNDS:-5}
IDLE_SECS=5
IMAGE=ilot/hello:1.0
HEALTH_URL=http://127.0.0.1:8080/health
HEALTH_TIMEOUT_S=60
OUT_DIR=${ILOT_BENCH_OUT:-$ROOT/target/bench}
BIN=${ILOT_BIN:-$ROOT/target/release/ilot}
INVOCATION="bench/core.sh (ILOT_BENCH_INSTANCES=$INSTANCES ILOT_BENCH_RUNS=$RUNS ILOT_BENCH_ROUNDS=$ROUNDS)"
[[ -d $HOME/.cargo/bin ]] && PATH=$HOME/.cargo/bin:$PATH
export PATH

for c in docker jq awk; do
    command -v "$c" >/dev/null 2>&1 || die "$c is required (apt-get install ${c/docker/docker.io})"
done

# ---------------------------------------------------------------------------- state + cleanup
# /tmp rather than $TMPDIR: the socket path must stay short (108 bytes).
BENCH_DIR=$(mktemp -d /tmp/ilot-bench-XXXXXX)
SUFFIX=${BENCH_DIR##*-}
OWNER=test-bench-$(printf %s "$SUFFIX" | tr "[:upper:]" "[:lower:]")
SOCK=$BENCH_DIR/ilot.sock
CONFIG=$BENCH_DIR/ilot.toml
DAEMON_LOG=$BENCH_DIR/daemon.log
DAEMON_PID=""
declare -A INSTALLED=() # ilot instances to remove at exit
declare -A PEERS=()     # docker containers to remove at exit

ilot_cli() { "$BIN" --socket "$SOCK" "$@"; }

# shellcheck disable=SC2317  # invoked by the EXIT trap
cleanup() {
    local rc=$? n
    trap - EXIT INT TERM
    set +e
    printf '\n==== cleanup\n'
    if ((rc != 0)) && [[ -s $DAEMON_LOG ]]; then
        printf -- '---- last lines of the daemon log (%s)\n' "$DAEMON_LOG"
        tail -n 20 "$DAEMON_LOG"
    fi
    if [[ -n $DAEMON_PID ]] && kill -0 "$DAEMON_PID" 2>/dev/null; then
        for n in $(printf '%s\n' "${!INSTALLED[@]}" | sort -V); do
            info "removing instance $n"
            timeout 120 "$BIN" --socket "$SOCK" app remove "$n" --purge >/dev/null 2>&1 ||
                warn "ilot app remove $n failed; its Docker objects are removed by label below"
        done
        info "stopping the daemon (pid $DAEMON_PID)"
        stop_pid "$DAEMON_PID" 10
    fi
    for n in "${!PEERS[@]}"; do docker rm -f -v "$n" >/dev/null 2>&1; done
    docker_cleanup_owned exact "$OWNER"
    rm -rf -- "$BENCH_DIR"
    stop_started_dockerd
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------------------- set-up
printf '==== set-up\n'
if [[ ! -x $BIN ]]; then
    [[ -z ${ILOT_BIN:-} ]] || die "ILOT_BIN=$ILOT_BIN is not an executable"
    info "target/release/ilot missing: cargo build --release"
    locked=()
    [[ -f Cargo.lock ]] && locked=(--locked)
    cargo build --release "${locked[@]}"
fi
ensure_docker "$BENCH_DIR"
info "building $IMAGE (images/build.sh hello)"
bash images/build.sh hello
docker image inspect "$IMAGE" >/dev/null 2>&1 || die "images/build.sh hello did not produce $IMAGE"

bench_write_config ""
bench_start_daemon
sleep 0.2
daemon_alive() {
    kill -0 "$DAEMON_PID" 2>/dev/null || die "the daemon (pid $DAEMON_PID) has exited; $1"
}
daemon_alive "is $BIN an ilot build with a daemon?"

# ---------------------------------------------------------------------------- helpers
# install_ilot NAME: install hello as NAME (the CLI returns once the health check passes).
install_ilot() {
    INSTALLED[$1]=1
    ilot_cli app install hello --name "$1" >>"$BENCH_DIR/install.log" 2>&1 || {
        tail -n 20 "$BENCH_DIR/install.log" >&2
        die "ilot app install hello --name $1 failed"
    }
}
remove_ilot() {
    ilot_cli app remove "$1" --purge >>"$BENCH_DIR/install.log" 2>&1 || {
        tail -n 20 "$BENCH_DIR/install.log" >&2
        die "ilot app remove $1 --purge failed"
    }
    unset "INSTALLED[$1]"
}

PROBE=(wget -q -O /dev/null "$HEALTH_URL")
# docker_run NAME: docker run -d, returns once the container is started.
docker_run() {
    PEERS[$1]=1
    docker run -d --name "$1" --label "ilot.owner=$OWNER" "$IMAGE" >/dev/null
}
# docker_wait_healthy NAME: poll the health URL inside the container until it answers.
docker_wait_healthy() {
    local name=$1 start rc tries=0 state
    start=$(now_ms)
    while true; do
        rc=0
        docker exec "$name" "${PROBE[@]}" >/dev/null 2>&1 || rc=$?
        ((rc == 0)) && return 0
        # 126/127: no `wget` in PATH in the image: use busybox's applet.
        if ((rc == 126 || rc == 127)) && [[ ${PROBE[0]} == wget ]]; then
            PROBE=(busybox "${PROBE[@]}")
            continue
        fi
        tries=$((tries + 1))
        if ((tries % 20 == 0)); then
            state=$(docker inspect -f '{{.State.Status}}' "$name" 2>/dev/null || echo gone)
            [[ $state == running ]] || { docker logs "$name" 2>&1 | tail -n 20 >&2; die "container $name is $state"; }
        fi
        (($(now_ms) - start < HEALTH_TIMEOUT_S * 1000)) || die "$name not healthy after ${HEALTH_TIMEOUT_S} s (probe: ${PROBE[*]})"
        sleep 0.05
    done
}
docker_rm() { docker rm -f -v "$1" >/dev/null; unset "PEERS[$1]"; }

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
ms_to_s() { awk -v v="$1" 'BEGIN { printf "%.2f", v / 1000 }'; }

# ---------------------------------------------------------------------------- 1-2. instances, RSS
printf '\n==== installing %d hello instances\n' "$INSTANCES"
declare -a FIRST_INSTALLS=()
for ((i = 1; i <= INSTANCES; i++)); do
    t0=$(now_ms)
    install_ilot "bench-$i"
    FIRST_INSTALLS+=("$(($(now_ms) - t0))")
    info "bench-$i installed in $(ms_to_s "${FIRST_INSTALLS[-1]}") s"
done
n_containers=$(docker ps -q --filter "label=ilot.owner=$OWNER" | wc -l)
info "$n_containers running containers labelled ilot.owner=$OWNER"
((n_containers >= INSTANCES)) ||
    die "$INSTANCES installs reported success but only $n_containers containers labelled ilot.owner=$OWNER run"

info "idle ${IDLE_SECS} s, then reading the daemon's memory"
sleep "$IDLE_SECS"
daemon_alive "during the idle wait"
RSS_KB=$(awk '/^VmRSS:/ { print $2 }' "/proc/$DAEMON_PID/status")
HWM_KB=$(awk '/^VmHWM:/ { print $2 }' "/proc/$DAEMON_PID/status")
RSS_MIB=$(awk -v k="$RSS_KB" 'BEGIN { printf "%.1f", k / 1024 }')
HWM_MIB=$(awk -v k="$HWM_KB" 'BEGIN { printf "%.1f", k / 1024 }')
info "daemon VmRSS $RSS_MIB MiB (peak VmHWM $HWM_MIB MiB)"

# ---------------------------------------------------------------------------- 1. CLI latency
printf '\n==== CLI latency (%d runs, %d warm-up)\n' "$RUNS" "$WARMUP"
mkdir -p "$OUT_DIR"
STAMP=$(date +%Y%m%d-%H%M%S)
LAT_JSON=$OUT_DIR/core-$STAMP-latency.json
CMD_STATUS=$(printf '%q ' "$BIN" --socket "$SOCK" status)
CMD_LIST=$(printf '%q ' "$BIN" --socket "$SOCK" app list --json)
CMD_DOCKER="docker ps --filter label=ilot.owner=$OWNER --format '{{json .}}'"
# Check each command once (hyperfine would only say "non-zero exit code").
ilot_cli status >/dev/null || die "ilot status failed"
ilot_cli app list --json | jq -e . >/dev/null || die "ilot app list --json did not print JSON"
docker ps --filter "label=ilot.owner=$OWNER" --format '{{json .}}' >/dev/null || die "docker ps failed"

HF=()
HYPERFINE=${ILOT_BENCH_HYPERFINE:-hyperfine}
if [[ $HYPERFINE != none ]] && command -v "$HYPERFINE" >/dev/null 2>&1; then
    HF=("$HYPERFINE" --warmup "$WARMUP" --runs "$RUNS" --export-json "$LAT_JSON")
    # -N: run without an intermediate shell (hyperfine >= 1.13); else hyperfine subtracts it.
    "$HYPERFINE" -N --runs 1 true >/dev/null 2>&1 && HF+=(-N)
    [[ -t 1 ]] || HF+=(--style basic)
    HF+=(-n "ilot status" "$CMD_STATUS" -n "ilot app list --json" "$CMD_LIST" -n "docker ps" "$CMD_DOCKER")
    LAT_METHOD="hyperfine $("$HYPERFINE" --version | awk '{ print $2 }')"
    printf '+ %s\n' "$(show_cmd "${HF[@]}")"
    "${HF[@]}"
    LAT_STATUS_MS=$(jq -r '.results[0].median * 1000' "$LAT_JSON")
    LAT_LIST_MS=$(jq -r '.results[1].median * 1000' "$LAT_JSON")
    LAT_DOCKER_MS=$(jq -r '.results[2].median * 1000' "$LAT_JSON")
else
    LAT_METHOD="bash loop (no hyperfine)"
    # loop_median_ms CMD...: median wall time of RUNS runs after WARMUP runs, in ms.
    loop_median_ms() {
        local i t0 t1 f=$BENCH_DIR/loop-times
        : >"$f"
        for ((i = 0; i < WARMUP; i++)); do "$@" >/dev/null 2>&1; done
        for ((i = 0; i < RUNS; i++)); do
            t0=$(now_us)
            "$@" >/dev/null 2>&1 || die "failed: $*"
            t1=$(now_us)
            printf '%s\n' "$((t1 - t0))" >>"$f"
        done
        median <"$f" | awk '{ printf "%.3f", $1 / 1000 }'
    }
    warn "no hyperfine (or ILOT_BENCH_HYPERFINE=none): timing with a bash loop (apt-get install hyperfine for better figures)"
    LAT_STATUS_MS=$(loop_median_ms ilot_cli status)
    LAT_LIST_MS=$(loop_median_ms ilot_cli app list --json)
    LAT_DOCKER_MS=$(loop_median_ms docker ps --filter "label=ilot.owner=$OWNER" --format '{{json .}}')
    printf '{"method":"bash loop","status_ms":%s,"list_ms":%s,"docker_ps_ms":%s}\n' \
        "$LAT_STATUS_MS" "$LAT_LIST_MS" "$LAT_DOCKER_MS" >"$LAT_JSON"
fi

# ---------------------------------------------------------------------------- 3. install time
printf '\n==== install time: %d rounds, alternating (ilot | docker run + health | docker run)\n' "$ROUNDS"
declare -a T_ILOT=() T_DOCKER_H=() T_DOCKER=()
KINDS=(ilot docker_health docker_run)
for ((r = 1; r <= ROUNDS; r++)); do
    line="round $r:"
    for ((k = 0; k < 3; k++)); do
        kind=${KINDS[$(((k + r - 1) % 3))]} # rotate the order from round to round
        case $kind in
            ilot)
                t0=$(now_ms)
                install_ilot "bench-x$r"
                dt=$(($(now_ms) - t0))
                T_ILOT+=("$dt")
                remove_ilot "bench-x$r"
                ;;
            docker_health)
                name=ilot-bench-$SUFFIX-h$r
                t0=$(now_ms)
                docker_run "$name"
                docker_wait_healthy "$name"
                dt=$(($(now_ms) - t0))
                T_DOCKER_H+=("$dt")
                docker_rm "$name"
                ;;
            docker_run)
                name=ilot-bench-$SUFFIX-r$r
                t0=$(now_ms)
                docker_run "$name"
                dt=$(($(now_ms) - t0))
                T_DOCKER+=("$dt")
                docker_rm "$name"
                ;;
        esac
        line+=" $kind $(ms_to_s "$dt") s;"
    done
    info "$line"
done
INST_ILOT_MS=$(printf '%s\n' "${T_ILOT[@]}" | median)
INST_DOCKER_H_MS=$(printf '%s\n' "${T_DOCKER_H[@]}" | median)
INST_DOCKER_MS=$(printf '%s\n' "${T_DOCKER[@]}" | median)
FIRST_MS=$(printf '%s\n' "${FIRST_INSTALLS[@]}" | median)

# ---------------------------------------------------------------------------- summary
verdict() { # verdict AWK-EXPR: "met" if true
    if awk "BEGIN { exit !($1) }"; then echo "met"; else echo "MISSED"; fi
}
f1() { awk -v v="$1" 'BEGIN { printf "%.1f", v }'; }
f2() { awk -v v="$1" 'BEGIN { printf "%.2f", v }'; }
ratio() { # ratio PEER_MS ILOT_MS
    awk -v a="$1" -v b="$2" 'BEGIN { if (a >= b) printf "%.1fx faster", a / b; else printf "%.1fx slower", b / a }'
}

V_STATUS=$(verdict "$LAT_STATUS_MS < 10")
V_LIST=$(verdict "$LAT_LIST_MS < 10")
V_RSS=$(verdict "$RSS_KB < 20 * 1024")
DIFF_MS=$(awk -v a="$INST_ILOT_MS" -v b="$INST_DOCKER_H_MS" 'BEGIN { print a - b }')
V_INST=$(verdict "$DIFF_MS <= 1000")
DIFF_PLAIN_MS=$(awk -v a="$INST_ILOT_MS" -v b="$INST_DOCKER_MS" 'BEGIN { print a - b }')
signed_s() { awk -v v="$1" 'BEGIN { v = v / 1000; if (v > -0.005 && v < 0.005) v = 0; printf "%+.2f s", v }'; }

ILOT_VERSION=$("$BIN" --version 2>/dev/null | head -n 1 || echo "?")
DOCKER_VERSION=$(docker version --format '{{.Server.Version}}' 2>/dev/null || echo "?")
SUMMARY=$OUT_DIR/core-$STAMP-summary.txt
{
    printf '\n==== summary: ilot core benchmark (%s)\n' "$(date -u '+%Y-%m-%d %H:%M UTC')"
    printf 'host: %s, %s CPU(s), %s MiB RAM, kernel %s; %s; docker engine %s; latency by %s\n' \
        "$(hostname)" "$(nproc)" "$(awk '/^MemTotal:/ { print int($2 / 1024) }' /proc/meminfo)" \
        "$(uname -r)" "$ILOT_VERSION" "$DOCKER_VERSION" "$LAT_METHOD"
    printf 'with %d hello instances installed (%d containers of owner %s)\n\n' "$INSTANCES" "$n_containers" "$OWNER"
    printf '%-40s %-11s %-32s %-14s %-12s %s\n' "metric (median)" "ilot" "peer: docker CLI" "ratio / diff" "target" "verdict"
    printf '%-40s %-11s %-32s %-14s %-12s %s\n' "CLI: ilot status" "$(f2 "$LAT_STATUS_MS") ms" \
        "docker ps --filter: $(f2 "$LAT_DOCKER_MS") ms" "$(ratio "$LAT_DOCKER_MS" "$LAT_STATUS_MS")" "< 10 ms" "$V_STATUS"
    printf '%-40s %-11s %-32s %-14s %-12s %s\n' "CLI: ilot app list --json" "$(f2 "$LAT_LIST_MS") ms" \
        "docker ps --filter: $(f2 "$LAT_DOCKER_MS") ms" "$(ratio "$LAT_DOCKER_MS" "$LAT_LIST_MS")" "< 10 ms" "$V_LIST"
    printf '%-40s %-11s %-32s %-14s %-12s %s\n' "daemon idle RSS (VmRSS, after ${IDLE_SECS} s)" "$RSS_MIB MiB" \
        "(peak VmHWM $HWM_MIB MiB)" "-" "< 20 MiB" "$V_RSS"
    printf '%-40s %-11s %-32s %-14s %-12s %s\n' "install hello until healthy" "$(ms_to_s "$INST_ILOT_MS") s" \
        "docker run -d + health: $(ms_to_s "$INST_DOCKER_H_MS") s" "$(signed_s "$DIFF_MS")" "within 1 s" "$V_INST"
    printf '%-40s %-11s %-32s %-14s %-12s %s\n' "install hello vs container started" "$(ms_to_s "$INST_ILOT_MS") s" \
        "docker run -d: $(ms_to_s "$INST_DOCKER_MS") s" "$(signed_s "$DIFF_PLAIN_MS")" "-" "(for reference)"
    printf '%-40s %-11s %-32s %-14s %-12s %s\n' "first $INSTANCES installs (median)" "$(ms_to_s "$FIRST_MS") s" "" "" "" ""
    printf '\ninstall rounds (ms): ilot %s | docker run+health %s | docker run %s\n' \
        "${T_ILOT[*]}" "${T_DOCKER_H[*]}" "${T_DOCKER[*]}"
    printf '\nYunoHost is not run here (it needs a whole Debian system of its own). Its CLI is\n'
    printf 'documented by its developers to take seconds per command: "yunohost domain list" about\n'
    printf '3 s (github.com/YunoHost/yunohost/pull/958), "yunohost app setting" 6-7 s on a Raspberry\n'
    printf 'Pi 2 (github.com/YunoHost/yunohost/pull/663).\n'
    printf 'The peer that runs here is the docker CLI that a docker-based tool has to call.\n'
    printf '\ncommand line: %s\n' "$INVOCATION"
    if ((${#HF[@]})); then
        printf '  latency: %s\n' "$(show_cmd "${HF[@]}")"
    else
        printf '  latency: bash loop of %d runs (%d warm-up) per command: %s | %s | %s\n' \
            "$RUNS" "$WARMUP" "$CMD_STATUS" "$CMD_LIST" "$CMD_DOCKER"
    fi
    printf '  install: %s app install hello --name bench-xN  (then app remove bench-xN --purge)\n' "$BIN --socket $SOCK"
    printf '  peer:    docker run -d --name C --label ilot.owner=%s %s; docker exec C %s (until it succeeds); docker rm -f C\n' \
        "$OWNER" "$IMAGE" "${PROBE[*]}"
    printf 'raw results: %s, %s\n' "$LAT_JSON" "$SUMMARY"
} | tee "$SUMMARY"
