# shellcheck shell=bash
# Shared helpers for tests/run.sh and bench/*.sh. Source it; it defines functions only
# (plus a few globals prefixed ILOT_LIB_), and changes no shell options.

# ---------------------------------------------------------------------------- output
ilot_lib_ts() { date +%H:%M:%S; }
info() { printf '[%s] %s\n' "$(ilot_lib_ts)" "$*"; }
warn() { printf '[%s] WARNING: %s\n' "$(ilot_lib_ts)" "$*" >&2; }
die() { printf '[%s] ERROR: %s\n' "$(ilot_lib_ts)" "$*" >&2; exit 1; }

# Microseconds since the epoch: bash 5's $EPOCHREALTIME (no fork), else GNU date.
now_us() {
    if [[ -n ${EPOCHREALTIME:-} ]]; then
        local t=${EPOCHREALTIME//[.,]/}
        printf '%s\n' "$((10#$t))"
    else
        local ns
        ns=$(date +%s%N)
        printf '%s\n' "$((ns / 1000))"
    fi
}
# Milliseconds since the epoch.
now_ms() { local us; us=$(now_us); printf '%s\n' "$((us / 1000))"; }

# median: reads one number per line on stdin, prints the median (mean of the two middle
# values for an even count). Prints nothing for empty input.
median() {
    sort -g | awk '{ v[NR] = $1 } END {
        if (NR == 0) exit;
        if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

# ---------------------------------------------------------------------------- docker engine
# ensure_docker LOGDIR: make sure a Docker engine answers. If none does, start `dockerd` in the
# background (log: LOGDIR/dockerd.log) and wait up to 60 s. Sets ILOT_LIB_STARTED_DOCKERD to the
# pid of the dockerd we started (empty if one was already running).
ILOT_LIB_STARTED_DOCKERD=""
ensure_docker() {
    local logdir=$1 log pid i
    if docker info >/dev/null 2>&1; then
        return 0
    fi
    command -v dockerd >/dev/null 2>&1 || die "no Docker engine answers and dockerd is not installed (apt-get install docker.io)"
    mkdir -p "$logdir"
    log=$logdir/dockerd.log
    info "no Docker engine answers: starting dockerd (log: $log)"
    # setsid: a Ctrl-C in the terminal must not stop the engine before cleanup has used it.
    setsid dockerd >>"$log" 2>&1 </dev/null &
    pid=$!
    for ((i = 0; i < 120; i++)); do
        if docker info >/dev/null 2>&1; then
            # dockerd writes its own pid file; prefer it (setsid may have forked).
            if [[ -s /var/run/docker.pid ]]; then pid=$(</var/run/docker.pid); fi
            ILOT_LIB_STARTED_DOCKERD=$pid
            info "dockerd is up (pid $pid)"
            return 0
        fi
        if ! kill -0 "$pid" 2>/dev/null && [[ ! -s /var/run/docker.pid ]]; then
            tail -n 30 "$log" >&2 || true
            die "dockerd exited at start; see $log"
        fi
        sleep 0.5
    done
    tail -n 30 "$log" >&2 || true
    die "dockerd did not answer within 60 s; see $log"
}

# stop_started_dockerd: stop the dockerd that ensure_docker started, if any.
stop_started_dockerd() {
    local pid=$ILOT_LIB_STARTED_DOCKERD i
    [[ -n $pid ]] || return 0
    ILOT_LIB_STARTED_DOCKERD=""
    kill -0 "$pid" 2>/dev/null || return 0
    info "stopping the dockerd this run started (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || return 0
    for ((i = 0; i < 60; i++)); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.5
    done
    warn "dockerd (pid $pid) still running after 30 s; sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
}

# docker_owned_ids KIND MODE VALUE: print the ids (names for volumes) of Docker objects of KIND
# (container|network|volume) whose label ilot.owner equals VALUE (MODE=exact) or starts with VALUE
# (MODE=prefix). Objects without the label, or with another owner, are never listed.
docker_owned_ids() {
    local kind=$1 mode=$2 value=$3 id owner
    local -a cmd
    case $kind in
        container) cmd=(docker ps -a --no-trunc --format '{{.ID}} {{.Label "ilot.owner"}}') ;;
        network) cmd=(docker network ls --no-trunc --format '{{.ID}} {{.Label "ilot.owner"}}') ;;
        volume) cmd=(docker volume ls --format '{{.Name}} {{.Label "ilot.owner"}}') ;;
        *) die "docker_owned_ids: unknown kind $kind" ;;
    esac
    if [[ $mode == exact ]]; then
        cmd+=(--filter "label=ilot.owner=$value")
    else
        cmd+=(--filter "label=ilot.owner")
    fi
    "${cmd[@]}" 2>/dev/null | while read -r id owner; do
        [[ -n $id && -n $owner ]] || continue
        case $mode in
            exact) [[ $owner == "$value" ]] && printf '%s\n' "$id" ;;
            prefix) [[ $owner == "$value"* ]] && printf '%s\n' "$id" ;;
        esac
    done
    return 0
}

# docker_cleanup_owned MODE VALUE: remove the containers (with their anonymous volumes), then the
# networks, then the volumes labelled ilot.owner=VALUE (MODE=exact) or ilot.owner=VALUE* (prefix).
# Prints what it removed; never fails.
docker_cleanup_owned() {
    local mode=$1 value=$2 kind
    local -a ids
    docker info >/dev/null 2>&1 || { warn "no Docker engine answers: cannot clean up Docker objects of owner $value"; return 0; }
    for kind in container network volume; do
        mapfile -t ids < <(docker_owned_ids "$kind" "$mode" "$value")
        ((${#ids[@]})) || continue
        info "removing ${#ids[@]} ${kind}(s) labelled ilot.owner=${value}$([[ $mode == prefix ]] && echo '*')"
        case $kind in
            container) docker rm -f -v "${ids[@]}" >/dev/null 2>&1 || warn "could not remove some containers: ${ids[*]}" ;;
            network) docker network rm "${ids[@]}" >/dev/null 2>&1 || warn "could not remove some networks: ${ids[*]}" ;;
            volume) docker volume rm -f "${ids[@]}" >/dev/null 2>&1 || warn "could not remove some volumes: ${ids[*]}" ;;
        esac
    done
    return 0
}

# ---------------------------------------------------------------------------- processes
# wait_gone PID SECONDS: wait until PID has exited; returns 1 if it is still there.
wait_gone() {
    local pid=$1 secs=$2 i
    for ((i = 0; i < secs * 10; i++)); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.1
    done
    return 1
}

# stop_pid PID [SECONDS]: SIGTERM, wait (default 10 s), then SIGKILL.
stop_pid() {
    local pid=$1 secs=${2:-10}
    kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null || return 0
    wait_gone "$pid" "$secs" && return 0
    warn "pid $pid ignored SIGTERM for ${secs} s; sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    wait_gone "$pid" 5 || true
}

# bench_args "$@": a bench script takes no arguments but -h/--help, which prints its header
# comment (from line 2 to `set -euo pipefail`).
bench_args() {
    case ${1:-} in
        -h | --help) sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'; exit 0 ;;
        "") ;;
        *) die "${0#"$ROOT"/} takes no arguments (see --help)" ;;
    esac
}

# bench_write_config [EXTRA]: writes $CONFIG for a daemon of its own (socket $SOCK, state and
# access log in $BENCH_DIR, owner $OWNER, proxy on free loopback ports, ACME off: benches make
# no traffic beyond loopback; firewall and guard off: nftables of the host stay untouched),
# then the TOML in EXTRA (e.g. $'[monitor]\nenabled = false').
# shellcheck disable=SC2153  # OWNER, SOCK... are the calling script's
bench_write_config() {
    cat >"$CONFIG" <<CONF
[daemon]
socket = "$SOCK"
state_dir = "$BENCH_DIR/state"
owner = "$OWNER"

[proxy]
http = "127.0.0.1:0"
https = "127.0.0.1:0"
access_log = "$BENCH_DIR/access.log"

[acme]
enabled = false

[firewall]
enabled = false

[guard]
enabled = false

${1:-}
CONF
}

# bench_start_daemon: starts "$BIN daemon --config $CONFIG" (written by bench_write_config),
# its log appended to $DAEMON_LOG, and waits until it is ready: `ilot status` answers as soon as
# the socket is up, but an install fails until the engine is reached and the journal recovered.
# Sets DAEMON_PID. The caller defines BIN, SOCK, CONFIG, DAEMON_LOG, BENCH_DIR, OWNER and
# ilot_cli.
# shellcheck disable=SC2153  # OWNER, BIN, SOCK... are the calling script's
bench_start_daemon() {
    info "starting: $BIN daemon --config $CONFIG (owner $OWNER)"
    "$BIN" daemon --config "$CONFIG" >>"$DAEMON_LOG" 2>&1 </dev/null &
    DAEMON_PID=$!
    local t0
    t0=$(now_ms)
    until ilot_cli status --json 2>/dev/null | jq -e '.engine.reachable and .ready' >/dev/null 2>&1; do
        kill -0 "$DAEMON_PID" 2>/dev/null || die "the daemon exited at start (see $DAEMON_LOG)"
        (($(now_ms) - t0 < 30000)) || die "the daemon was not ready within 30 s (see $DAEMON_LOG)"
        sleep 0.05
    done
    info "daemon ready after $(($(now_ms) - t0)) ms (pid $DAEMON_PID)"
}
