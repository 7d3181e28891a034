#!/usr/bin/env bash
# bench/monitor.sh: what ilot's monitor costs the daemon, next to Netdata, in one run.
#
#   bench/monitor.sh
#
# 1. A daemon of its own (temp config, owner test-mbench-XXXXXX, proxy on 127.0.0.1:0, ACME,
#    firewall and guard off, [monitor] at its defaults: enabled, interval 30 s) installs 20
#    instances of hello (`ilot app install hello --name b01` ... b20): 20 containers.
# 2. After 30 s of settling, for ILOT_BENCH_SECS (180 s): the daemon's CPU time (utime + stime,
#    plus cutime + cstime of any child it reaped, from /proc/PID/stat, in clock ticks of
#    `getconf CLK_TCK`) as percent of one core over the window, and its VmRSS (mean and max,
#    sampled every 5 s). Targets: under 1 % of one core, under 25 MiB. After the window, the
#    monitor must have worked: `ilot metrics --json` lists one `up:` series per container, and
#    `ilot metrics cpu --since 10m --json` has points inside the window (one per 30 s).
# 2b. For context, the same daemon again with [monitor] enabled = false, same containers, same
#    settling and window: what the daemon costs without the monitor (while it settles, the
#    containers' engine events are counted: each Docker health check makes three).
# 3. The reference, Netdata (Debian 12's package, installed with apt-get if missing; its service
#    is never started: a temporary policy-rc.d, and no systemd here): the ilot daemon is stopped
#    (the containers keep running), then a netdata of the script's own runs in the foreground
#    with its default config except that it listens on one free port of 127.0.0.1 and keeps its
#    database, cache and logs in the temp dir. Same settling, same window, same figures, summed
#    over its process tree (netdata, apps.plugin and the other plugins; CPU of reaped short-lived
#    children such as cgroup-network and cgroup-name.sh counts through cutime/cstime). Its
#    /api/v1/charts must show the containers. If it cannot be installed or run, the table shows
#    Netdata's published figures instead, labelled as such.
# 4. The daemon is started again and the 20 instances are removed (`app remove --purge`).
# After each window the 20 containers must still run (tests/run.sh, for one, removes every
# container of an owner test-* when it starts); if not, the summary says INVALID RUN.
#
# Also recorded for each window, for context only: the Docker engine's CPU (dockerd +
# containerd; both tools cause some of it), the whole machine's busy CPU (noise), and a per-thread
# (ilot) or per-process (netdata) breakdown of the CPU time.
#
# It is a benchmark, not a test: it exits non-zero only when it cannot measure ilot.
# It needs root, a Docker engine (dockerd is started if none answers, and stopped at the end),
# python3, jq and curl. On exit, including on failure or Ctrl-C, it stops netdata and its
# plugins, removes the instances (or at least every Docker object labelled with its owner),
# stops the daemon, deletes its temp dir and the policy-rc.d it wrote, if any.
#
# Environment:
#   ILOT_BIN                the binary (default target/release/ilot; built if missing)
#   ILOT_BENCH_INSTANCES    hello instances (default 20)
#   ILOT_BENCH_SECS         the measured window, seconds (default 180)
#   ILOT_BENCH_SETTLE       seconds of settling before each window (default 30)
#   ILOT_BENCH_STEP         seconds between RSS samples (default 5)
#   ILOT_BENCH_NETDATA      0: skip Netdata (the published figures are shown) (default 1)
#   ILOT_BENCH_MONITOR_OFF  0: skip step 2b, the daemon with the monitor off (default 1)
#   ILOT_BENCH_OUT          where results are kept (default target/bench)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
# shellcheck source=tests/lib/common.sh
source "$ROOT/tests/lib/common.sh"

bench_args "$@"

INSTANCES=${ILOT_BENCH_INSTANCES:-20}
DURATION=${ILOT_BENCH_SECS:-180}
SETTLE=${ILOT_BENCH_SETTLE:-30}
STEP=${ILOT_BENCH_STEP:-5}
WITH_NETDATA=${ILOT_BENCH_NETDATA:-1}
WITH_OFF=${ILOT_BENCH_MONITOR_OFF:-1}
IMAGE=ilot/hello:1.0
INTERVAL_S=30 # [monitor] interval, the default
OUT_DIR=${ILOT_BENCH_OUT:-$ROOT/target/bench}
BIN=${ILOT_BIN:-$ROOT/target/release/ilot}
INVOCATION="bench/monitor.sh (ILOT_BENCH_INSTANCES=$INSTANCES ILOT_BENCH_SECS=$DURATION ILOT_BENCH_SETTLE=$SETTLE ILOT_BENCH_STEP=$STEP ILOT_BENCH_NETDATA=$WITH_NETDATA ILOT_BENCH_MONITOR_OFF=$WITH_OFF)"
# Netdata's own figures, for when it cannot run here (and as context when it does).
ND_PUBLISHED_CPU="1-5 % of a single core with default settings"
ND_PUBLISHED_RAM="100-200 MB on an empty system"
ND_PUBLISHED_SRC="https://learn.netdata.cloud/docs/netdata-agent/resource-utilization/"
[[ -d $HOME/.cargo/bin ]] && PATH=$HOME/.cargo/bin:$PATH
export PATH

for v in INSTANCES DURATION SETTLE STEP; do
    [[ ${!v} =~ ^[1-9][0-9]*$ ]] || die "$v must be a positive integer (got '${!v}')"
done
((INSTANCES <= 99)) || die "ILOT_BENCH_INSTANCES must be at most 99"
((EUID == 0)) || die "run it as root (it reads other users' /proc entries, installs and runs netdata)"
for c in docker jq awk python3 curl; do
    command -v "$c" >/dev/null 2>&1 || die "$c is required (apt-get install ${c/docker/docker.io})"
done

# ---------------------------------------------------------------------------- state + cleanup
# /tmp rather than $TMPDIR: the socket path must stay short (108 bytes).
BENCH_DIR=$(mktemp -d /tmp/ilot-mbench-XXXXXX)
SUFFIX=${BENCH_DIR##*-}
OWNER=test-mbench-$(printf %s "$SUFFIX" | tr "[:upper:]" "[:lower:]")
SOCK=$BENCH_DIR/ilot.sock
CONFIG=$BENCH_DIR/ilot.toml
DAEMON_LOG=$BENCH_DIR/daemon.log
ND_DIR=$BENCH_DIR/netdata # netdata's config, database, cache, logs (owned by user netdata)
DAEMON_PID=""
ND_PID=""
SAMPLER_PID=""
POLICY_RC_D="" # a policy-rc.d this run wrote (apt must not start netdata), removed at exit
declare -A INSTALLED=() # ilot instances to remove at exit
STAMP=$(date +%Y%m%d-%H%M%S)
RAW_PREFIX=$OUT_DIR/monitor-$STAMP
mkdir -p "$OUT_DIR"

ilot_cli() { "$BIN" --socket "$SOCK" "$@"; }

# tree_pids PID: PID and all its descendants, one a line (from /proc/*/stat).
tree_pids() {
    python3 - "$1" <<'PY'
import os, sys
root = int(sys.argv[1])
kids = {}
for d in os.listdir("/proc"):
    if d.isdigit():
        try:
            s = open("/proc/%s/stat" % d).read()
        except OSError:
            continue
        ppid = int(s[s.rfind(")") + 2:].split()[1])
        kids.setdefault(ppid, []).append(int(d))
todo, seen = [root], []
while todo:
    p = todo.pop()
    if os.path.exists("/proc/%d" % p):
        seen.append(p)
        todo.extend(kids.get(p, []))
print("\n".join(map(str, seen)))
PY
}

# stop_netdata: SIGTERM to netdata (it stops its plugins), then SIGKILL to whatever of its
# tree is left.
stop_netdata() {
    local pid=$ND_PID left p
    [[ -n $pid ]] || return 0
    ND_PID=""
    kill -0 "$pid" 2>/dev/null || return 0
    left=$(tree_pids "$pid" | tr '\n' ' ')
    info "stopping netdata (pid $pid) and its plugins"
    kill -TERM "$pid" 2>/dev/null || true
    wait_gone "$pid" 30 || { warn "netdata ignored SIGTERM for 30 s; sending SIGKILL"; kill -KILL "$pid" 2>/dev/null || true; }
    for p in $left; do
        [[ $p == "$pid" ]] && continue
        wait_gone "$p" 5 && continue
        info "netdata's child $p ($(cat "/proc/$p/comm" 2>/dev/null)) still runs 5 s after netdata: SIGKILL"
        kill -KILL "$p" 2>/dev/null || true
    done
    return 0
}

# shellcheck disable=SC2317  # invoked by the EXIT trap
cleanup() {
    local rc=$? n
    trap - EXIT INT TERM
    set +e
    printf '\n==== cleanup\n'
    if [[ -n $POLICY_RC_D ]]; then rm -f -- "$POLICY_RC_D"; fi
    if [[ -n $SAMPLER_PID ]]; then kill "$SAMPLER_PID" 2>/dev/null; fi
    stop_netdata
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

# ---------------------------------------------------------------------------- helpers
f1() { awk -v v="$1" 'BEGIN { printf "%.1f", v }'; }
f2() { awk -v v="$1" 'BEGIN { printf "%.2f", v }'; }
f3() { awk -v v="$1" 'BEGIN { printf "%.3f", v }'; }
mib() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }
verdict() { # verdict AWK-EXPR: "met" if true
    if awk "BEGIN { exit !($1) }"; then echo "met"; else echo "MISSED"; fi
}
ratio() { # ratio ILOT REF: "0.05x" (ilot / reference)
    awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.3fx", a / b; else print "-" }'
}
daemon_alive() {
    kill -0 "$DAEMON_PID" 2>/dev/null || die "the daemon (pid $DAEMON_PID) has exited; $1"
}
owned_running() { docker ps -q --filter "label=ilot.owner=$OWNER" | wc -l; }
# still_running WINDOW: the containers must have run through the window (tests/run.sh, for one,
# removes every container of an owner test-*); else the window is marked invalid.
INVALID=""
still_running() {
    local n
    n=$(owned_running)
    ((n >= INSTANCES)) && return 0
    warn "only $n of the $INSTANCES containers run at the end of the $1 window: its figures are INVALID"
    INVALID+="$1 window: $n of $INSTANCES containers running at its end; "
    return 1
}
engine_pids() { pgrep -x dockerd; pgrep -x containerd; true; }

# The sampler: CPU of a process tree over a window, its memory every STEP s, and a breakdown.
cat >"$BENCH_DIR/sampler.py" <<'PY'
"""sampler.py ROOT DURATION STEP OUT_JSON [ENGINE_PID ...]

CPU of ROOT's process tree over DURATION seconds: the sum over the tree of
utime + stime + cutime + cstime (children that exited during the window and were reaped by a
process of the tree count through their parent's cutime/cstime), end minus start. Memory
(VmRSS, and Pss from smaps_rollup) summed over the tree every STEP seconds. Also the CPU of
ENGINE_PIDs (self + reaped children), the machine's busy CPU, and a breakdown per thread (per
process name and thread name)."""
import json, os, sys, time

root, duration, step, out = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
engine = [int(p) for p in sys.argv[5:]]
CLK = os.sysconf("SC_CLK_TCK")


def stat(path):
    s = open(path).read()
    r = s.rfind(")")
    f = s[r + 2:].split()  # f[0] is field 3 (state)
    return {"comm": s[s.find("(") + 1:r], "ppid": int(f[1]), "self": int(f[11]) + int(f[12]),
            "children": int(f[13]) + int(f[14]), "start": int(f[19])}


def tree():
    kids = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                st = stat("/proc/%s/stat" % d)
            except (OSError, ValueError, IndexError):
                continue
            kids.setdefault(st["ppid"], []).append(int(d))
    todo, seen = [root], []
    while todo:
        p = todo.pop()
        seen.append(p)
        todo.extend(kids.get(p, []))
    return seen


def snapshot():
    procs = {}
    for pid in tree():
        try:
            st = stat("/proc/%d/stat" % pid)
            threads = {}
            for tid in os.listdir("/proc/%d/task" % pid):
                try:
                    t = stat("/proc/%d/task/%s/stat" % (pid, tid))
                    threads[tid] = (t["comm"], t["self"])
                except (OSError, ValueError, IndexError):
                    pass
        except (OSError, ValueError, IndexError):
            continue
        st["threads"] = threads
        try:
            argv = open("/proc/%d/cmdline" % pid, "rb").read().split(b"\0")
            st["cmd"] = " ".join(a.decode(errors="replace") for a in argv[:3] if a)[:80]
        except OSError:
            st["cmd"] = ""
        procs[pid] = st
    return procs


def total(procs):
    return sum(p["self"] + p["children"] for p in procs.values())


def engine_ticks():
    n = 0
    for pid in engine:
        try:
            st = stat("/proc/%d/stat" % pid)
            n += st["self"] + st["children"]
        except (OSError, ValueError, IndexError):
            pass
    return n


def host():
    f = open("/proc/stat").readline().split()[1:]
    v = [int(x) for x in f]
    idle = v[3] + v[4]
    return sum(v[:8]), idle


def status_kb(pid, key):
    try:
        for line in open("/proc/%d/status" % pid):
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def pss_kb(pid):
    try:
        for line in open("/proc/%d/smaps_rollup" % pid):
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def memory():
    pids = tree()
    rss = sum(status_kb(p, "VmRSS") for p in pids)
    pss = sum(pss_kb(p) for p in pids)
    threads = sum(status_kb(p, "Threads") for p in pids)
    return rss, pss, len(pids), threads


if not os.path.exists("/proc/%d" % root):
    sys.exit("sampler: pid %d is not running" % root)
t0 = time.monotonic()
s0, e0, h0 = snapshot(), engine_ticks(), host()
samples = []
k = 0
while True:
    now = time.monotonic() - t0
    if not os.path.exists("/proc/%d" % root):
        sys.exit("sampler: pid %d exited during the window" % root)
    rss, pss, nproc, nthr = memory()
    samples.append({"t": round(now, 2), "rss_kb": rss, "pss_kb": pss, "procs": nproc, "threads": nthr,
                    "cpu_ticks": total(snapshot()) - total(s0)})
    k += 1
    nxt = k * step
    if nxt > duration + 1e-6:
        break
    time.sleep(max(0.0, t0 + nxt - time.monotonic()))
# The end of the window, exactly DURATION after the start.
time.sleep(max(0.0, t0 + duration - time.monotonic()))
s1, e1, h1 = snapshot(), engine_ticks(), host()
wall = time.monotonic() - t0
ticks = total(s1) - total(s0)

# Breakdown: per process name (self time of processes alive at the end, minus their start value
# if they were there at the start; plus reaped children), and per (process, thread) name.
per_proc, per_thread = {}, {}
for pid, p in s1.items():
    b = s0.get(pid) if s0.get(pid, {}).get("start") == p["start"] else None
    d_self = p["self"] - (b["self"] if b else 0)
    d_kids = p["children"] - (b["children"] if b else 0)
    per_proc[p["comm"]] = per_proc.get(p["comm"], 0) + d_self
    if d_kids:
        key = "reaped children of " + p["comm"]
        per_proc[key] = per_proc.get(key, 0) + d_kids
    in_threads = 0
    for tid, (tcomm, tt) in p["threads"].items():
        bt = b["threads"].get(tid) if b else None
        d = tt - (bt[1] if bt else 0)
        in_threads += d
        if d:
            key = p["comm"] + " / " + tcomm
            per_thread[key] = per_thread.get(key, 0) + d
    # Threads that exited during the window (e.g. tokio's blocking pool) left their time to
    # the process.
    if d_self - in_threads > 0:
        key = p["comm"] + " / (threads that exited)"
        per_thread[key] = per_thread.get(key, 0) + d_self - in_threads
gone = [s0[p]["comm"] for p in s0 if p not in s1 or s1[p]["start"] != s0[p]["start"]]
n = len(samples)
res = {
    "root": root, "clk_tck": CLK, "wall_s": round(wall, 3), "cpu_ticks": ticks,
    "cpu_pct_one_core": ticks / CLK / wall * 100.0,
    "rss_kb_mean": sum(s["rss_kb"] for s in samples) / n, "rss_kb_max": max(s["rss_kb"] for s in samples),
    "pss_kb_mean": sum(s["pss_kb"] for s in samples) / n, "pss_kb_max": max(s["pss_kb"] for s in samples),
    "procs_max": max(s["procs"] for s in samples), "threads_max": max(s["threads"] for s in samples),
    "procs_end": sorted("%s [%s]" % (p["comm"], p["cmd"]) for p in s1.values()), "gone_during_window": gone,
    "engine_ticks": e1 - e0, "engine_pct_one_core": (e1 - e0) / CLK / wall * 100.0,
    "host_busy_pct_all_cores": 100.0 * (1 - (h1[1] - h0[1]) / max(1, h1[0] - h0[0])),
    "per_process_ticks": dict(sorted(per_proc.items(), key=lambda kv: -kv[1])),
    "per_thread_ticks": dict(sorted(per_thread.items(), key=lambda kv: -kv[1])),
    "samples": samples,
}
json.dump(res, open(out, "w"), indent=1)
PY

# measure LABEL ROOT_PID: run the sampler over the window; the JSON goes to $RAW_PREFIX-LABEL.json.
measure() {
    local label=$1 pid=$2 out=$RAW_PREFIX-$1.json
    local -a eng
    mapfile -t eng < <(engine_pids)
    info "measuring $label (pid $pid) for $DURATION s, memory every $STEP s (engine pids: ${eng[*]:-none})"
    # In the background, so that a signal to this script is handled at once (bash runs traps
    # only between foreground commands, but interrupts `wait`).
    python3 "$BENCH_DIR/sampler.py" "$pid" "$DURATION" "$STEP" "$out" "${eng[@]}" &
    SAMPLER_PID=$!
    local rc=0
    wait "$SAMPLER_PID" || rc=$?
    SAMPLER_PID=""
    ((rc == 0)) || return 1
    jq -r '"  CPU \(.cpu_ticks) ticks in \(.wall_s) s = \(.cpu_pct_one_core * 1000 | round / 1000) % of one core; " +
        "VmRSS mean \(.rss_kb_mean / 1024 * 10 | round / 10) MiB, max \(.rss_kb_max / 1024 * 10 | round / 10) MiB; " +
        "\(.procs_max) process(es), \(.threads_max) threads; engine \(.engine_pct_one_core * 100 | round / 100) %, " +
        "machine busy \(.host_busy_pct_all_cores * 10 | round / 10) % of all cores"' "$out"
    printf '  top CPU by thread (ticks):'
    jq -r '.per_thread_ticks | to_entries | .[:6] | map(" \(.key) \(.value)") | join(";")' "$out"
}

# write_config [MONITOR]: MONITOR "off" writes [monitor] enabled = false (step 2b); else the
# monitor is left at its defaults (enabled, interval 30 s).
write_config() {
    if [[ ${1:-on} == off ]]; then
        bench_write_config $'[monitor]\nenabled = false'
    else
        bench_write_config ""
    fi
}

# ---------------------------------------------------------------------------- set-up
printf '==== set-up\n'
if [[ ! -x $BIN ]]; then
    [[ -z ${ILOT_BIN:-} ]] || die "ILOT_BIN=$ILOT_BIN is not an executable"
    info "target/release/ilot missing: cargo build --release"
    locked=()
    [[ -f Cargo.lock ]] && locked=(--locked)
    cargo build --release "${locked[@]}"
fi
"$BIN" metrics --help >/dev/null 2>&1 || die "$BIN has no \`metrics\` command: a build without the monitor?"
ILOT_VERSION=$("$BIN" --version 2>/dev/null | head -n 1 || echo "?")
if GIT_HEAD=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null); then
    git -C "$ROOT" diff --quiet HEAD -- src Cargo.toml Cargo.lock 2>/dev/null || GIT_HEAD+=" + uncommitted changes"
    # The binary may predate the last commit that changed the code.
    SRC_COMMIT=$(git -C "$ROOT" log -1 --format='%h %ct' -- src Cargo.toml Cargo.lock 2>/dev/null || true)
    if [[ -n $SRC_COMMIT ]] && ((${SRC_COMMIT#* } > $(stat -c %Y "$BIN"))); then
        GIT_HEAD+="; the binary is older than ${SRC_COMMIT% *}, the last commit that changed src/"
    fi
    ILOT_VERSION+=" (binary of $(date -r "$BIN" '+%Y-%m-%d %H:%M'), tree at $GIT_HEAD)"
fi
ensure_docker "$BENCH_DIR"
if ! docker image inspect "$IMAGE" >/dev/null 2>&1; then
    info "building $IMAGE (images/build.sh hello)"
    bash images/build.sh hello
    docker image inspect "$IMAGE" >/dev/null 2>&1 || die "images/build.sh hello did not produce $IMAGE"
fi
CLK_TCK=$(getconf CLK_TCK)
OTHER_CONTAINERS=$(docker ps -q | wc -l)
((OTHER_CONTAINERS == 0)) || warn "$OTHER_CONTAINERS container(s) already run on this engine; Netdata monitors them too"

write_config
cp -- "$CONFIG" "$RAW_PREFIX-ilot.toml"
bench_start_daemon

# ---------------------------------------------------------------------------- 1. instances
printf '\n==== 1. installing %d hello instances\n' "$INSTANCES"
t_inst=$(now_ms)
for ((i = 1; i <= INSTANCES; i++)); do
    n=$(printf 'b%02d' "$i")
    INSTALLED[$n]=1
    ilot_cli app install hello --name "$n" >>"$BENCH_DIR/install.log" 2>&1 || {
        tail -n 20 "$BENCH_DIR/install.log" >&2
        die "ilot app install hello --name $n failed"
    }
    ((i % 5 == 0)) && info "$i installed"
done
info "$INSTANCES installs in $(awk -v v="$(($(now_ms) - t_inst))" 'BEGIN { printf "%.1f", v / 1000 }') s"
N_CONTAINERS=$(owned_running)
((N_CONTAINERS >= INSTANCES)) ||
    die "$INSTANCES installs reported success but only $N_CONTAINERS containers labelled ilot.owner=$OWNER run"
info "$N_CONTAINERS running containers labelled ilot.owner=$OWNER"

# ---------------------------------------------------------------------------- 2. ilot
printf '\n==== 2. ilot daemon: %d s settling, then %d s measured\n' "$SETTLE" "$DURATION"
sleep "$SETTLE"
daemon_alive "while settling"
W_START=$(date +%s)
measure ilot "$DAEMON_PID" || die "could not measure the daemon"
W_END=$(date +%s)
daemon_alive "during the window"
still_running ilot || true
# The monitor's own view, after the window (CLI calls cost the daemon a little).
ilot_cli metrics --json >"$RAW_PREFIX-metrics.json" 2>"$BENCH_DIR/metrics.err" ||
    { cat "$BENCH_DIR/metrics.err" >&2; die "ilot metrics --json failed"; }
ilot_cli metrics cpu --since 10m --json >"$RAW_PREFIX-metrics-cpu.json" 2>"$BENCH_DIR/metrics.err" ||
    { cat "$BENCH_DIR/metrics.err" >&2; echo '{"series":[]}' >"$RAW_PREFIX-metrics-cpu.json"; warn "ilot metrics cpu failed"; }
N_SERIES=$(jq '.series | length' "$RAW_PREFIX-metrics.json")
N_UP=$(jq '[.series[] | select(.name | startswith("up:"))] | length' "$RAW_PREFIX-metrics.json")
N_UP1=$(jq '[.series[] | select((.name | startswith("up:")) and .value == 1)] | length' "$RAW_PREFIX-metrics.json")
N_CCPU=$(jq '[.series[] | select(.name | startswith("ccpu:"))] | length' "$RAW_PREFIX-metrics.json")
N_PROBE=$(jq '[.series[] | select(.name | startswith("probe:"))] | length' "$RAW_PREFIX-metrics.json")
N_CPU_PTS=$(jq '[.series[] | select(.name == "cpu") | .points[]] | length' "$RAW_PREFIX-metrics-cpu.json")
N_CPU_WIN=$(jq --argjson a "$W_START" --argjson b "$W_END" \
    '[.series[] | select(.name == "cpu") | .points[] | select(.t >= $a and .t <= $b)] | length' "$RAW_PREFIX-metrics-cpu.json")
EXPECT_PTS=$((DURATION / INTERVAL_S))
info "ilot metrics: $N_SERIES series, $N_UP up: ($N_UP1 at 1), $N_CCPU ccpu:, $N_PROBE probe:; cpu: $N_CPU_PTS points in 10 min, $N_CPU_WIN in the window (expected about $EXPECT_PTS)"
MON_OK=1
((N_UP >= INSTANCES && N_UP1 >= INSTANCES)) || { MON_OK=0; warn "expected $INSTANCES up: series at 1, got $N_UP ($N_UP1 at 1)"; }
((N_CPU_WIN >= EXPECT_PTS - 1)) || { MON_OK=0; warn "expected about $EXPECT_PTS cpu points in the window, got $N_CPU_WIN"; }

info "stopping the daemon (pid $DAEMON_PID); the containers keep running"
stop_pid "$DAEMON_PID" 30
DAEMON_PID=""
sleep 1
N_AFTER_STOP=$(owned_running)
((N_AFTER_STOP >= INSTANCES)) || warn "only $N_AFTER_STOP of the containers still run with the daemon stopped"

# ---------------------------------------------------------------------------- 2b. monitor off
# The same daemon with [monitor] enabled = false, same containers: what the rest of the daemon
# costs (the observer relists the containers on every engine event of theirs, and each
# health check is three: exec_create, exec_start, exec_die).
OFF_OK=0
N_EVENTS=""
if [[ $WITH_OFF == 1 ]]; then
    printf '\n==== 2b. the same daemon with [monitor] enabled = false: %d s settling, then %d s measured\n' "$SETTLE" "$DURATION"
    write_config off
    bench_start_daemon
    # While it settles: the engine events of the containers (what wakes the observer).
    timeout "$SETTLE" docker events --filter "label=ilot.owner=$OWNER" --filter type=container \
        --format '{{.Action}}' >"$BENCH_DIR/events.txt" 2>/dev/null || true
    N_EVENTS=$(wc -l <"$BENCH_DIR/events.txt")
    EVENTS_BY=$(sed 's/:.*//' "$BENCH_DIR/events.txt" | sort | uniq -c | awk '{ printf "%s%s %s", (NR > 1 ? ", " : ""), $1, $2 }')
    info "engine events of the containers in $SETTLE s: $N_EVENTS (${EVENTS_BY:-none})"
    daemon_alive "while settling (monitor off)"
    if measure ilot-monitor-off "$DAEMON_PID"; then OFF_OK=1; else warn "could not measure the daemon with the monitor off"; fi
    still_running "monitor-off" || true
    info "stopping the daemon (pid $DAEMON_PID)"
    stop_pid "$DAEMON_PID" 30
    DAEMON_PID=""
    write_config
    sleep 1
fi

# ---------------------------------------------------------------------------- 3. netdata
REF_STATUS="" # empty: measured; else why not
ND_VERSION=""
ND_CONTAINERS=0
ND_BY_NAME=0
ND_CHARTS=0
ND_NAME_RUNS=0
ND_NET_RUNS=0
run_netdata() {
    if [[ $WITH_NETDATA == 0 ]]; then
        REF_STATUS="skipped (ILOT_BENCH_NETDATA=0)"
        return 1
    fi
    if ! command -v netdata >/dev/null 2>&1; then
        if [[ ! -e /usr/sbin/policy-rc.d ]]; then
            POLICY_RC_D=/usr/sbin/policy-rc.d
            printf '#!/bin/sh\nexit 101\n' >"$POLICY_RC_D"
            chmod 755 "$POLICY_RC_D"
        fi
        info "installing: netdata (apt-get --no-install-recommends; its service is not started)"
        export DEBIAN_FRONTEND=noninteractive
        if ! { apt-get install -y --no-install-recommends netdata >"$BENCH_DIR/apt.log" 2>&1 ||
            { apt-get update >>"$BENCH_DIR/apt.log" 2>&1 &&
                apt-get install -y --no-install-recommends netdata >>"$BENCH_DIR/apt.log" 2>&1; }; }; then
            tail -n 20 "$BENCH_DIR/apt.log" >&2
            REF_STATUS="apt-get install netdata failed"
            return 1
        fi
        if [[ -n $POLICY_RC_D ]]; then rm -f -- "$POLICY_RC_D"; POLICY_RC_D=""; fi
        # No systemd here, and policy-rc.d refused the start; should one have started anyway:
        if pgrep -x netdata >/dev/null; then
            REF_STATUS="a netdata service runs on this machine (pid $(pgrep -x netdata | head -n 1)); not measured"
            return 1
        fi
    fi
    ND_VERSION=$(netdata -v 2>/dev/null | head -n 1 | sed 's/^netdata //' || echo "?")
    ND_ML=$(netdata -W buildinfo 2>/dev/null | awk -F: '/Machine Learning/ { gsub(/ /, "", $2); print $2; exit }' || true)
    id netdata >/dev/null 2>&1 || { REF_STATUS="no user netdata"; return 1; }
    local port
    port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    # The temp dir is 0700; netdata runs as user netdata and must reach its own directory.
    chmod 711 "$BENCH_DIR"
    mkdir -p "$ND_DIR"/{cache,lib,log,lock}
    # The distribution's /etc/netdata/netdata.conf, plus: our port and directories.
    cat >"$ND_DIR/netdata.conf" <<CONF
# bench/monitor.sh: Debian's /etc/netdata/netdata.conf with the port and directories changed.
[global]
	run as user = netdata
	web files owner = root
	web files group = root

[web]
	bind to = 127.0.0.1:$port

[directories]
	cache = $ND_DIR/cache
	lib = $ND_DIR/lib
	log = $ND_DIR/log
	lock = $ND_DIR/lock
CONF
    chown -R netdata: "$ND_DIR"
    info "starting: netdata -D -c $ND_DIR/netdata.conf -P $ND_DIR/netdata.pid (http://127.0.0.1:$port)"
    setsid netdata -D -c "$ND_DIR/netdata.conf" -P "$ND_DIR/netdata.pid" >"$BENCH_DIR/netdata.out" 2>&1 </dev/null &
    ND_PID=$!
    local t0
    t0=$(now_ms)
    until curl -fsS -o /dev/null "http://127.0.0.1:$port/api/v1/info" 2>/dev/null; do
        if ! kill -0 "$ND_PID" 2>/dev/null; then
            tail -n 20 "$BENCH_DIR/netdata.out" >&2
            REF_STATUS="netdata exited at start (see the raw netdata.out)"
            cp -- "$BENCH_DIR/netdata.out" "$RAW_PREFIX-netdata.out"
            ND_PID=""
            return 1
        fi
        if (($(now_ms) - t0 > 60000)); then
            REF_STATUS="netdata did not answer on 127.0.0.1:$port within 60 s"
            return 1
        fi
        sleep 0.2
    done
    info "netdata answers after $(($(now_ms) - t0)) ms (pid $ND_PID)"
    printf '\n==== 3. netdata: %d s settling, then %d s measured\n' "$SETTLE" "$DURATION"
    sleep "$SETTLE"
    kill -0 "$ND_PID" 2>/dev/null || { REF_STATUS="netdata exited while settling"; return 1; }
    ND_W_START=$(date '+%F %T')
    measure netdata "$ND_PID" || { REF_STATUS="netdata exited during the window"; return 1; }
    ND_W_END=$(date '+%F %T')
    still_running netdata || true
    # Did it monitor the containers? Its cgroup charts are named after them (cgroup_NAME.cpu),
    # or after their short id when it cannot ask the engine for the name (user netdata is not
    # in group docker on Debian).
    curl -fsS "http://127.0.0.1:$port/api/v1/charts" >"$BENCH_DIR/nd-charts.json" || echo '{"charts":{}}' >"$BENCH_DIR/nd-charts.json"
    ND_CHARTS=$(jq '.charts | length' "$BENCH_DIR/nd-charts.json")
    local c short name
    ND_CONTAINERS=0
    ND_BY_NAME=0
    while read -r c name; do
        short=${c:0:12}
        name=${name#/}
        if jq -e --arg n "cgroup_$name." '.charts | keys | any(startswith($n))' "$BENCH_DIR/nd-charts.json" >/dev/null; then
            ND_CONTAINERS=$((ND_CONTAINERS + 1))
            ND_BY_NAME=$((ND_BY_NAME + 1))
        elif jq -e --arg n "cgroup_$short." '.charts | keys | any(startswith($n))' "$BENCH_DIR/nd-charts.json" >/dev/null; then
            ND_CONTAINERS=$((ND_CONTAINERS + 1))
        fi
    done < <(docker ps --no-trunc --filter "label=ilot.owner=$OWNER" --format '{{.ID}} {{.Names}}')
    info "netdata: $ND_CHARTS charts; $ND_CONTAINERS of the $INSTANCES containers have cgroup charts ($ND_BY_NAME under their name, the others under their short id)"
    curl -fsS "http://127.0.0.1:$port/netdata.conf" >"$RAW_PREFIX-netdata.conf" 2>/dev/null || true
    ND_MODE=$(awk -F' = ' '/^\[db\]/ { s = 1; next } /^\[/ { s = 0 } s && $1 ~ /^[ \t#]*mode$/ { print $2; exit }' "$RAW_PREFIX-netdata.conf" 2>/dev/null || true)
    # Helper runs in the window: cgroup-name.sh (names a cgroup) and cgroup-network (finds its
    # interfaces), from netdata's log (local time).
    ND_NAME_RUNS=$(awk -v a="$ND_W_START" -v b="$ND_W_END" 'substr($0, 1, 19) >= a && substr($0, 1, 19) <= b && /cgroup-name.sh: INFO: Running command/' "$ND_DIR/log/error.log" 2>/dev/null | wc -l)
    ND_NET_RUNS=$(awk -v a="$ND_W_START" -v b="$ND_W_END" 'substr($0, 1, 19) >= a && substr($0, 1, 19) <= b && /cgroup-network-helper.sh: INFO: searching/' "$ND_DIR/log/error.log" 2>/dev/null | wc -l)
    info "netdata's log, in the window: $ND_NAME_RUNS cgroup-name.sh runs, $ND_NET_RUNS cgroup-network-helper.sh runs"
    stop_netdata
    head -c 1000000 "$ND_DIR/log/error.log" >"$RAW_PREFIX-netdata-error.log" 2>/dev/null || true
    return 0
}
printf '\n==== 3. reference: netdata\n'
if [[ $(owned_running) -lt $INSTANCES ]]; then
    REF_STATUS="the containers did not keep running with the daemon stopped"
    ND_OK=0
elif run_netdata; then
    ND_OK=1
else
    ND_OK=0
    stop_netdata
    warn "netdata not measured: $REF_STATUS"
fi

# ---------------------------------------------------------------------------- 4. removal
printf '\n==== 4. removing the instances\n'
bench_start_daemon
for n in $(printf '%s\n' "${!INSTALLED[@]}" | sort -V); do
    if ilot_cli app remove "$n" --purge >>"$BENCH_DIR/install.log" 2>&1; then
        unset "INSTALLED[$n]"
    else
        warn "ilot app remove $n --purge failed (removed by label at exit)"
    fi
done
info "stopping the daemon (pid $DAEMON_PID)"
stop_pid "$DAEMON_PID" 30
DAEMON_PID=""
sed 's/\x1b\[[0-9;]*m//g' "$DAEMON_LOG" >"$RAW_PREFIX-daemon.log"

# ---------------------------------------------------------------------------- summary
J=$RAW_PREFIX-ilot.json
I_CPU=$(jq .cpu_pct_one_core "$J")
I_RSS_MEAN=$(jq .rss_kb_mean "$J")
I_RSS_MAX=$(jq .rss_kb_max "$J")
I_PSS=$(jq .pss_kb_mean "$J")
I_ENG=$(jq .engine_pct_one_core "$J")
I_HOST=$(jq .host_busy_pct_all_cores "$J")
I_THR=$(jq .threads_max "$J")
I_TICKS=$(jq .cpu_ticks "$J")
if ((OFF_OK)); then
    O=$RAW_PREFIX-ilot-monitor-off.json
    O_CPU=$(jq .cpu_pct_one_core "$O")
    O_RSS_MEAN=$(jq .rss_kb_mean "$O")
    O_ENG=$(jq .engine_pct_one_core "$O")
    O_TICKS=$(jq .cpu_ticks "$O")
fi
if ((ND_OK)); then
    K=$RAW_PREFIX-netdata.json
    N_CPU=$(jq .cpu_pct_one_core "$K")
    N_RSS_MEAN=$(jq .rss_kb_mean "$K")
    N_RSS_MAX=$(jq .rss_kb_max "$K")
    N_PSS=$(jq .pss_kb_mean "$K")
    N_ENG=$(jq .engine_pct_one_core "$K")
    N_HOST=$(jq .host_busy_pct_all_cores "$K")
    N_PROCS=$(jq .procs_max "$K")
    N_THR=$(jq .threads_max "$K")
    N_TICKS=$(jq .cpu_ticks "$K")
fi
V_CPU=$(verdict "$I_CPU < 1")
V_RSS=$(verdict "$I_RSS_MAX < 25 * 1024")
V_MON=$([[ $MON_OK == 1 ]] && echo "ok" || echo "FAILED")
V_ND_MON=$( ((ND_CONTAINERS >= INSTANCES)) && echo "ok" || echo "FAILED")
SUMMARY=$RAW_PREFIX-summary.txt
{
    printf '\n==== summary: ilot monitor vs %s (%s)\n' "$( ((ND_OK)) && echo "netdata" || echo "published figures")" "$(date -u '+%Y-%m-%d %H:%M UTC')"
    printf 'host: %s, %s CPU(s), %s MiB RAM, kernel %s; docker engine %s; load average at the end %s\n' \
        "$(hostname)" "$(nproc)" "$(awk '/^MemTotal:/ { print int($2 / 1024) }' /proc/meminfo)" "$(uname -r)" \
        "$(docker version --format '{{.Server.Version}}' 2>/dev/null || echo "?")" "$(cut -d' ' -f1-3 /proc/loadavg)"
    printf '%s; %s\n' "$ILOT_VERSION" "$( ((ND_OK)) && echo "netdata $ND_VERSION (Debian package, default config; db mode ${ND_MODE:-?}; machine learning built in: ${ND_ML:-?})" || echo "netdata not measured: $REF_STATUS")"
    [[ -z $INVALID ]] || printf '*** INVALID RUN: %s\n' "$INVALID"
    printf '%d hello containers (owner %s) running in every window; %d s settling, %d s window each, memory every %d s; CLK_TCK %s\n\n' \
        "$N_CONTAINERS" "$OWNER" "$SETTLE" "$DURATION" "$STEP" "$CLK_TCK"
    fmt='%-44s %-14s %-26s %-10s %-10s %s\n'
    # shellcheck disable=SC2059
    {
        if ((ND_OK)); then
            printf "$fmt" "metric" "ilot daemon" "netdata (process tree)" "ilot/ref" "target" "verdict"
            printf "$fmt" "CPU, % of one core (window mean)" "$(f3 "$I_CPU") %" "$(f3 "$N_CPU") %" "$(ratio "$I_CPU" "$N_CPU")" "< 1 %" "$V_CPU"
            printf "$fmt" "VmRSS, mean (MiB)" "$(mib "$I_RSS_MEAN")" "$(mib "$N_RSS_MEAN") (sum of $N_PROCS)" "$(ratio "$I_RSS_MEAN" "$N_RSS_MEAN")" "-" "-"
            printf "$fmt" "VmRSS, max (MiB)" "$(mib "$I_RSS_MAX")" "$(mib "$N_RSS_MAX")" "$(ratio "$I_RSS_MAX" "$N_RSS_MAX")" "< 25 MiB" "$V_RSS"
            printf "$fmt" "Pss, mean (MiB)" "$(mib "$I_PSS")" "$(mib "$N_PSS")" "$(ratio "$I_PSS" "$N_PSS")" "-" "-"
            printf "$fmt" "threads (max)" "$I_THR" "$N_THR" "-" "-" "-"
            printf "$fmt" "containers seen" "$N_UP up: series" "$ND_CONTAINERS with cgroup charts" "-" "$INSTANCES" "$V_MON / $V_ND_MON"
            printf "$fmt" "context: engine CPU (dockerd+containerd)" "$(f2 "$I_ENG") %" "$(f2 "$N_ENG") %" "-" "-" "-"
            printf "$fmt" "context: machine busy, % of all cores" "$(f1 "$I_HOST") %" "$(f1 "$N_HOST") %" "-" "-" "-"
            ((OFF_OK)) && printf "$fmt" "context: ilot with [monitor] off: CPU" "$(f3 "$O_CPU") %" "-" "-" "-" "-"
            ((OFF_OK)) && printf "$fmt" "  VmRSS mean (MiB); engine CPU" "$(mib "$O_RSS_MEAN"); $(f2 "$O_ENG") %" "-" "-" "-" "-"
        else
            printf "$fmt" "metric" "ilot daemon" "netdata: PUBLISHED" "ilot/ref" "target" "verdict"
            printf "$fmt" "CPU, % of one core (window mean)" "$(f3 "$I_CPU") %" "1-5 % of one core" "-" "< 1 %" "$V_CPU"
            printf "$fmt" "VmRSS, mean (MiB)" "$(mib "$I_RSS_MEAN")" "-" "-" "-" "-"
            printf "$fmt" "VmRSS, max (MiB)" "$(mib "$I_RSS_MAX")" "100-200 MB, empty system" "-" "< 25 MiB" "$V_RSS"
            printf "$fmt" "Pss, mean (MiB)" "$(mib "$I_PSS")" "-" "-" "-" "-"
            printf "$fmt" "containers seen" "$N_UP up: series" "-" "-" "$INSTANCES" "$V_MON"
            printf "$fmt" "context: engine CPU (dockerd+containerd)" "$(f2 "$I_ENG") %" "-" "-" "-" "-"
            printf "$fmt" "context: machine busy, % of all cores" "$(f1 "$I_HOST") %" "-" "-" "-" "-"
            ((OFF_OK)) && printf "$fmt" "context: ilot with [monitor] off: CPU" "$(f3 "$O_CPU") %" "-" "-" "-" "-"
            ((OFF_OK)) && printf "$fmt" "  VmRSS mean (MiB); engine CPU" "$(mib "$O_RSS_MEAN"); $(f2 "$O_ENG") %" "-" "-" "-" "-"
            printf '(published by Netdata: "%s", "%s", for current versions: %s)\n' "$ND_PUBLISHED_CPU" "$ND_PUBLISHED_RAM" "$ND_PUBLISHED_SRC"
        fi
    }
    printf '\nilot: %s CPU ticks in the window; %s series, %s up: (%s at 1), %s ccpu:, %s probe:; cpu points: %s in the window (expected about %s), %s in the last 10 min\n' \
        "$I_TICKS" "$N_SERIES" "$N_UP" "$N_UP1" "$N_CCPU" "$N_PROBE" "$N_CPU_WIN" "$EXPECT_PTS" "$N_CPU_PTS"
    printf 'ilot CPU by thread (ticks): %s\n' "$(jq -r '.per_thread_ticks | to_entries | map("\(.key) \(.value)") | join(", ")' "$J")"
    if ((OFF_OK)); then
        printf 'ilot with [monitor] off: %s CPU ticks in the window; by thread: %s\n' "$O_TICKS" \
            "$(jq -r '.per_thread_ticks | to_entries | map("\(.key) \(.value)") | join(", ")' "$O")"
        printf 'engine events of the %s containers in %s s (before that window): %s (%s)\n' "$N_CONTAINERS" "$SETTLE" "$N_EVENTS" "$EVENTS_BY"
    fi
    if ((ND_OK)); then
        printf 'netdata: %s CPU ticks in the window, %s charts; %s containers charted (%s by name); in the window %s cgroup-name.sh and %s cgroup-network-helper.sh runs\n' \
            "$N_TICKS" "$ND_CHARTS" "$ND_CONTAINERS" "$ND_BY_NAME" "$ND_NAME_RUNS" "$ND_NET_RUNS"
        printf 'netdata CPU by process (ticks): %s\n' \
            "$(jq -r '.per_process_ticks | to_entries | map("\(.key) \(.value)") | join(", ")' "$K")"
        printf 'netdata CPU by thread (ticks, top 12): %s\n' \
            "$(jq -r '.per_thread_ticks | to_entries | .[:12] | map("\(.key) \(.value)") | join(", ")' "$K")"
        printf 'netdata processes at the end: %s\n' "$(jq -r '.procs_end | join(", ")' "$K")"
        printf 'published, for reference: netdata %s; %s (%s)\n' "$ND_PUBLISHED_CPU" "$ND_PUBLISHED_RAM" "$ND_PUBLISHED_SRC"
    fi
    printf '\ncommand line: %s\n' "$INVOCATION"
    printf '  ilot:    %s daemon --config CONFIG (kept as %s-ilot.toml)\n' "$BIN" "$RAW_PREFIX"
    ((ND_OK)) && printf '  netdata: netdata -D -c DIR/netdata.conf -P DIR/netdata.pid (its running config kept as %s-netdata.conf)\n' "$RAW_PREFIX"
    printf 'raw results: %s-ilot.json%s%s, -metrics.json, -metrics-cpu.json, -daemon.log, %s\n' "$RAW_PREFIX" \
        "$( ((OFF_OK)) && echo ", -ilot-monitor-off.json")" \
        "$( ((ND_OK)) && echo ", -netdata.json, -netdata.conf, -netdata-error.log")" "$SUMMARY"
} | tee "$SUMMARY"
