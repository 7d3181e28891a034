#!/usr/bin/env bash
# bench/mail.sh: what the mail app (Postfix, Dovecot and rspamd in one container) costs in
# memory, idle and after mail, and how many messages per second it accepts over SMTP.
#
#   bench/mail.sh [--messages N] [--concurrency LIST] [--settle S] [--swaks N] [--starttls]
#
#   --messages N       messages sent by the generator in each round (default 1000)
#   --concurrency L    the rounds: SMTP connections held open at once, comma-separated
#                      (default 1,4)
#   --settle S         seconds of quiet before each memory measurement (default 30)
#   --swaks N          messages sent one swaks process each (a new connection per message), for
#                      reference, before the generator (default 20; 0 skips)
#   --starttls         the generator's connections use STARTTLS (default: plain SMTP)
#
# 1. A daemon of its own (temp config, owner test-mlbench-XXXXXX, proxy on 127.0.0.1:0, ACME,
#    firewall and guard off) installs the mail app:
#      ilot app install mail --name mlbXXXXXX --domain mail.example.org \
#        --set smtp_port=0 --set submission_port=0 --set submissions_port=0 --set imaps_port=0 \
#        --set managesieve_port=0
#    (it returns when the health check passes), adds the mailbox bob@example.org (password from
#    stdin), and reads the host port of 25 from `ilot app show NAME --json`.
# 2. Idle memory, after S seconds of settling: the container's cgroup (memory.usage_in_bytes, or
#    memory.current on cgroup v2: everything charged, page cache included; and from memory.stat
#    the anonymous memory and the page cache), what `docker stats --no-stream` shows as MEM USAGE
#    (usage minus inactive page cache), and the sum of VmRSS and of Pss (smaps_rollup) over the
#    container's processes (its cgroup.procs, read from the host's /proc), also per program
#    (Postfix, Dovecot, rspamd, other, by /proc/PID/exe).
# 3. Throughput to bob@example.org over port 25, from 127.0.0.1 (through Docker's published
#    port). First N messages with swaks, one process and connection each. Then, for each entry
#    of the concurrency list, a python3 generator (smtplib, one thread per connection) holds that
#    many connections open and sends --messages messages over them: MAIL, RCPT, DATA, 250 on
#    each. It reports messages per second accepted (the 250 after DATA), the latency of each
#    transaction, and messages per second delivered: until all of them are files in bob's
#    Maildir (INBOX and Junk, counted on the host in the maildirs volume). Also the container's
#    CPU time per message (cgroup cpuacct.usage, or cpu.stat usage_usec on v2). A round starts
#    only when the previous one is delivered.
# 4. Memory again, after all messages are delivered and S seconds of settling (with more than
#    one round, also after the first round: after --messages messages), and the peak during the
#    mail (cgroup v1: memory.max_usage_in_bytes, reset after step 2; v2: memory.peak, since the
#    container started), how often the cgroup hit its limit, and OOM kills.
# 5. Checks: `doveadm search -u bob@example.org all` (per mailbox INBOX and Junk) must count
#    every accepted message, Postfix's queue must be empty, and its log must show one
#    `status=sent` per message. A summary compares the memory with what mailcow-dockerized and
#    docker-mailserver publish as their minimum.
#
# It is a benchmark, not a test: it exits non-zero only when it cannot measure (a lost message
# makes the summary say so, and the exit code 1). It needs root (it reads /proc of the
# container's processes and the volume on the host), a Docker engine (dockerd is started if none
# answers, and stopped at the end), the image ilot/mail:1.0 (images/build.sh mail), python3, jq
# and swaks (only with --swaks > 0). On exit, including on failure or Ctrl-C, it stops the
# generator, removes the instance (`ilot app remove NAME --purge`, then any Docker object
# labelled with its owner), stops the daemon and deletes its temp dir.
#
# Environment:
#   ILOT_BIN         the binary (default target/release/ilot)
#   ILOT_BENCH_OUT   where results are kept (default target/bench)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
# shellcheck source=tests/lib/common.sh
source "$ROOT/tests/lib/common.sh"

MESSAGES=1000
CONCURRENCY=1,4
SETTLE=30
SWAKS_N=20
STARTTLS=0
usage() { sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'; }
while (($#)); do
    case $1 in
        -h | --help) usage; exit 0 ;;
        --messages) (($# >= 2)) || die "--messages needs a value"; MESSAGES=$2; shift 2 ;;
        --messages=*) MESSAGES=${1#*=}; shift ;;
        --concurrency) (($# >= 2)) || die "--concurrency needs a value"; CONCURRENCY=$2; shift 2 ;;
        --concurrency=*) CONCURRENCY=${1#*=}; shift ;;
        --settle) (($# >= 2)) || die "--settle needs a value"; SETTLE=$2; shift 2 ;;
        --settle=*) SETTLE=${1#*=}; shift ;;
        --swaks) (($# >= 2)) || die "--swaks needs a value"; SWAKS_N=$2; shift 2 ;;
        --swaks=*) SWAKS_N=${1#*=}; shift ;;
        --starttls) STARTTLS=1; shift ;;
        *) die "unknown argument '$1' (see bench/mail.sh --help)" ;;
    esac
done
[[ $MESSAGES =~ ^[1-9][0-9]*$ ]] || die "--messages must be a positive integer (got '$MESSAGES')"
[[ $SETTLE =~ ^[0-9]+$ ]] || die "--settle must be a number of seconds (got '$SETTLE')"
[[ $SWAKS_N =~ ^[0-9]+$ ]] || die "--swaks must be a number (got '$SWAKS_N')"
[[ $CONCURRENCY =~ ^[1-9][0-9]*(,[1-9][0-9]*)*$ ]] ||
    die "--concurrency must be a comma-separated list of positive integers (got '$CONCURRENCY')"
IFS=, read -r -a CONNS <<<"$CONCURRENCY"
for c in "${CONNS[@]}"; do
    ((c <= 50)) || die "--concurrency: at most 50 connections (Postfix's smtpd_client_connection_count_limit)"
    ((c <= MESSAGES)) || die "--concurrency: $c connections for $MESSAGES messages"
done

IMAGE=ilot/mail:1.0
DOMAIN=example.org
RCPT=bob@$DOMAIN
SENDER=alice@example.net
OUT_DIR=${ILOT_BENCH_OUT:-$ROOT/target/bench}
BIN=${ILOT_BIN:-$ROOT/target/release/ilot}
TLS_FLAG=""
((STARTTLS == 0)) || TLS_FLAG=" --starttls"
INVOCATION="bench/mail.sh --messages $MESSAGES --concurrency $CONCURRENCY --settle $SETTLE --swaks $SWAKS_N$TLS_FLAG"
# The published minimums (see docs/benchmarks.md, "Mail").
MAILCOW_MIB=6144 # "Minimum 6 GiB + 1 GiB swap (default config)"
MAILCOW_SRC="https://docs.mailcow.email/getstarted/prerequisite-system/"
DMS_MIN_MIB=512 # "Minimum: 1 vCore, 512MB RAM" (ClamAV off); "Recommended: 1 vCore, 2GB RAM"
DMS_REC_MIB=2048
DMS_SRC="https://docker-mailserver.github.io/docker-mailserver/latest/faq/#what-are-the-system-requirements"

((EUID == 0)) || die "run it as root (it reads the container's /proc entries and its volume on the host)"
for c in docker jq awk python3; do
    command -v "$c" >/dev/null 2>&1 || die "$c is required (apt-get install ${c/docker/docker.io})"
done
if ((SWAKS_N > 0)) && ! command -v swaks >/dev/null 2>&1; then
    die "swaks is required for the reference run (apt-get install swaks), or pass --swaks 0"
fi
[[ -x $BIN ]] || die "$BIN is missing: build it with cargo build --release (or set ILOT_BIN)"

# ---------------------------------------------------------------------------- state + cleanup
# /tmp rather than $TMPDIR: the socket path must stay short (108 bytes).
BENCH_DIR=$(mktemp -d /tmp/ilot-mlbench-XXXXXX)
SUFFIX=$(printf %s "${BENCH_DIR##*-}" | tr "[:upper:]" "[:lower:]")
OWNER=test-mlbench-$SUFFIX
NAME=mlb$SUFFIX
SOCK=$BENCH_DIR/ilot.sock
CONFIG=$BENCH_DIR/ilot.toml
DAEMON_LOG=$BENCH_DIR/daemon.log
DAEMON_PID=""
CHILD_PID="" # the generator or another long child, stopped on exit
INSTALLED=""
STAMP=$(date +%Y%m%d-%H%M%S)
RAW_PREFIX=$OUT_DIR/mail-$STAMP
mkdir -p "$OUT_DIR"

ilot_cli() { "$BIN" --socket "$SOCK" "$@"; }

# shellcheck disable=SC2317  # used by cleanup
remove_instance() { timeout 180 "$BIN" --socket "$SOCK" app remove "$INSTALLED" --purge >>"$BENCH_DIR/install.log" 2>&1; }
# restart_daemon: once the daemon has exited (up to 15 s), start it again and wait until ready.
# shellcheck disable=SC2317  # used by cleanup
restart_daemon() {
    local i
    wait_gone "$DAEMON_PID" 15 || return 1
    info "the daemon has stopped: starting it again"
    "$BIN" daemon --config "$CONFIG" >>"$DAEMON_LOG" 2>&1 </dev/null &
    DAEMON_PID=$!
    for ((i = 0; i < 300; i++)); do
        ilot_cli status --json 2>/dev/null | jq -e '.engine.reachable and .ready' >/dev/null 2>&1 && return 0
        kill -0 "$DAEMON_PID" 2>/dev/null || return 1
        sleep 0.1
    done
    return 1
}
# shellcheck disable=SC2317  # invoked by the EXIT trap
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    set +e
    printf '\n==== cleanup\n'
    if [[ -n $CHILD_PID ]]; then kill "$CHILD_PID" 2>/dev/null; wait "$CHILD_PID" 2>/dev/null; fi
    if ((rc != 0)) && [[ -s $DAEMON_LOG ]]; then
        printf -- '---- last lines of the daemon log (%s)\n' "$DAEMON_LOG"
        tail -n 20 "$DAEMON_LOG"
    fi
    if [[ -n $INSTALLED && -n $DAEMON_PID ]]; then
        info "removing instance $INSTALLED"
        if ! kill -0 "$DAEMON_PID" 2>/dev/null || ! remove_instance; then
            # A Ctrl-C reaches the daemon too (same process group), and it shuts down: start it
            # again so that it removes its instance itself.
            if restart_daemon && remove_instance; then
                info "removed $INSTALLED"
            else
                warn "ilot app remove $INSTALLED --purge failed; its Docker objects are removed by label below"
            fi
        fi
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

# run_child CMD...: runs CMD in the background and waits for it, so that a signal to this
# script is handled at once (bash runs traps only between foreground commands, but interrupts
# `wait`), and the EXIT trap can stop it.
run_child() {
    local rc=0
    "$@" &
    CHILD_PID=$!
    wait "$CHILD_PID" || rc=$?
    CHILD_PID=""
    return "$rc"
}

# ---------------------------------------------------------------------------- helpers
f1() { awk -v v="$1" 'BEGIN { printf "%.1f", v }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.3f", a / b; else print "-" }'; }
times_less() { awk -v a="$1" -v b="$2" 'BEGIN { if (a > 0) printf "%.1f", b / a; else print "-" }'; }

# The memory snapshot: the container's cgroup (v1 or v2), docker stats, and its processes.
cat >"$BENCH_DIR/mem.py" <<'PY'
"""mem.py CONTAINER INIT_PID OUT_JSON [DAEMON_PID] [reset-peak]

Memory of the container whose first process (on the host) is INIT_PID: its cgroup's charge
(v1 memory.usage_in_bytes, v2 memory.current), memory.stat (anon, page cache, inactive page
cache, shmem), the peak and the limit; what `docker stats --no-stream` shows as MEM USAGE; and,
over the processes in its cgroup.procs, the sum of VmRSS and of Pss, also per program. With
reset-peak (v1 only), memory.max_usage_in_bytes is reset afterwards. Sizes in KiB."""
import json, os, re, subprocess, sys

container, init_pid, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
daemon = int(sys.argv[4]) if len(sys.argv) > 4 and sys.argv[4] else 0
reset = len(sys.argv) > 5 and sys.argv[5] == "reset-peak"


def cgroup_dirs(pid):
    """(version, memory dir, cpu usage file) of PID's cgroup, as the host sees it."""
    v1_mem = v1_cpu = v2 = None
    for line in open("/proc/%d/cgroup" % pid):
        hid, ctrls, path = line.rstrip("\n").split(":", 2)
        names = ctrls.split(",")
        if "memory" in names:
            v1_mem = "/sys/fs/cgroup/memory" + path
        if "cpuacct" in names:
            v1_cpu = "/sys/fs/cgroup/cpuacct" + path + "/cpuacct.usage"
        if hid == "0" and ctrls == "":
            base = "/sys/fs/cgroup" if os.path.exists("/sys/fs/cgroup/cgroup.controllers") else "/sys/fs/cgroup/unified"
            v2 = base + path
    if v1_mem and os.path.isdir(v1_mem):
        return 1, v1_mem, v1_cpu
    if v2 and os.path.exists(v2 + "/memory.current"):
        return 2, v2, v2 + "/cpu.stat"
    sys.exit("mem.py: no memory cgroup found for pid %d" % pid)


def read_int(path):
    try:
        s = open(path).read().strip()
    except OSError:
        return None
    return None if s == "max" else int(s)


def stat_kv(path):
    d = {}
    for line in open(path):
        k, v = line.split()
        d[k] = int(v)
    return d


def kb(v):
    return None if v is None else v / 1024.0


def status_kb(pid, key):
    try:
        for line in open("/proc/%d/status" % pid):
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def rollup(pid):
    d = {}
    try:
        for line in open("/proc/%d/smaps_rollup" % pid):
            m = re.match(r"^(\w+):\s+(\d+) kB", line)
            if m:
                d[m.group(1)] = int(m.group(2))
    except OSError:
        pass
    return d


def program(pid):
    try:
        exe = os.readlink("/proc/%d/exe" % pid)
    except OSError:
        exe = ""
    if "/postfix/" in exe or exe.endswith("/postfix"):
        return "postfix", exe
    if "dovecot" in exe or exe.endswith("/doveadm"):
        return "dovecot", exe
    if "rspamd" in exe:
        return "rspamd", exe
    return "other", exe


ver, mdir, cpu_file = cgroup_dirs(init_pid)
res = {"cgroup_version": ver, "cgroup_dir": mdir, "cpu_file": cpu_file}
if ver == 1:
    st = stat_kv(mdir + "/memory.stat")
    res.update({
        "usage_kb": kb(read_int(mdir + "/memory.usage_in_bytes")),
        "peak_kb": kb(read_int(mdir + "/memory.max_usage_in_bytes")),
        "limit_kb": kb(read_int(mdir + "/memory.limit_in_bytes")),
        "anon_kb": kb(st.get("total_rss", 0)),
        "file_kb": kb(st.get("total_cache", 0)),
        "inactive_file_kb": kb(st.get("total_inactive_file", 0)),
        "shmem_kb": kb(st.get("total_shmem", 0)),
        "limit_hits": read_int(mdir + "/memory.failcnt"),
        "kernel_note": "cgroup v1: usage_in_bytes = rss + cache (+ kernel memory if accounted)",
    })
    try:
        res["oom_kills"] = stat_kv(mdir + "/memory.oom_control").get("oom_kill")
    except (OSError, ValueError):
        res["oom_kills"] = None
else:
    st = stat_kv(mdir + "/memory.stat")
    res.update({
        "usage_kb": kb(read_int(mdir + "/memory.current")),
        "peak_kb": kb(read_int(mdir + "/memory.peak")),
        "limit_kb": kb(read_int(mdir + "/memory.max")),
        "anon_kb": kb(st.get("anon", 0)),
        "file_kb": kb(st.get("file", 0)),
        "inactive_file_kb": kb(st.get("inactive_file", 0)),
        "shmem_kb": kb(st.get("shmem", 0)),
        "kernel_note": "cgroup v2: memory.current includes kernel memory (slab, sockets...)",
    })
    try:
        ev = stat_kv(mdir + "/memory.events")
        res["limit_hits"], res["oom_kills"] = ev.get("max"), ev.get("oom_kill")
    except (OSError, ValueError):
        res["limit_hits"] = res["oom_kills"] = None
# What docker stats shows: "45.2MiB / 384MiB".
try:
    ds = subprocess.run(["docker", "stats", "--no-stream", "--format", "{{.MemUsage}}", container],
                        capture_output=True, text=True, timeout=60).stdout.strip()
except (OSError, subprocess.TimeoutExpired):
    ds = ""
res["docker_stats_mem_usage"] = ds
m = re.match(r"^\s*([\d.]+)\s*([KMGT]?i?B)", ds)
units = {"B": 1 / 1024.0, "KiB": 1, "kB": 1000 / 1024.0, "KB": 1000 / 1024.0, "MiB": 1024, "MB": 1e6 / 1024,
         "GiB": 1024 ** 2, "GB": 1e9 / 1024, "TiB": 1024 ** 3}
res["docker_stats_kb"] = float(m.group(1)) * units.get(m.group(2), 0) if m else None

procs = []
for line in open(mdir + "/cgroup.procs"):
    pid = int(line)
    try:
        comm = open("/proc/%d/comm" % pid).read().strip()
    except OSError:
        continue
    prog, exe = program(pid)
    r = rollup(pid)
    procs.append({"pid": pid, "comm": comm, "program": prog, "exe": exe,
                  "rss_kb": status_kb(pid, "VmRSS"), "rss_anon_kb": status_kb(pid, "RssAnon"),
                  "pss_kb": r.get("Pss", 0), "pss_anon_kb": r.get("Pss_Anon", 0)})
res["procs"] = sorted(procs, key=lambda p: -p["pss_kb"])
res["nprocs"] = len(procs)
res["rss_sum_kb"] = sum(p["rss_kb"] for p in procs)
res["pss_sum_kb"] = sum(p["pss_kb"] for p in procs)
res["rss_anon_sum_kb"] = sum(p["rss_anon_kb"] for p in procs)
by = {}
for p in procs:
    b = by.setdefault(p["program"], {"procs": 0, "rss_kb": 0, "pss_kb": 0})
    b["procs"] += 1
    b["rss_kb"] += p["rss_kb"]
    b["pss_kb"] += p["pss_kb"]
res["by_program"] = by
if daemon:
    res["daemon_rss_kb"] = status_kb(daemon, "VmRSS")
    res["daemon_pss_kb"] = rollup(daemon).get("Pss", 0)
if reset and ver == 1:
    try:
        open(mdir + "/memory.max_usage_in_bytes", "w").write("0")
        res["peak_reset"] = True
    except OSError:
        res["peak_reset"] = False
json.dump(res, open(out, "w"), indent=1)
PY

# The generator: N connections, many messages each.
cat >"$BENCH_DIR/gen.py" <<'PY'
"""gen.py --port P --messages N --connections C --out JSON --maildir DIR --before K [...]

C threads, each holding one SMTP connection to 127.0.0.1:P (EHLO once, STARTTLS with
--starttls), send N messages in all (message i on connection i % C) to --to: MAIL, RCPT, DATA.
A message is accepted when DATA gets 250. A refused message (4xx/5xx) is counted, not retried;
a dropped connection is opened again. Then the Maildir DIR (INBOX and its .folders, new/ and
cur/) is counted every 0.1 s until it holds K + accepted messages (or --timeout): the time
until then gives the delivery rate. Also the container's CPU (--cpu-file: cgroup v1
cpuacct.usage in ns, or v2 cpu.stat), the generator's own CPU, and how busy the machine was."""
import argparse, email.utils, json, os, resource, smtplib, socket, ssl, threading, time

ap = argparse.ArgumentParser()
ap.add_argument("--port", type=int, required=True)
ap.add_argument("--messages", type=int, required=True)
ap.add_argument("--connections", type=int, required=True)
ap.add_argument("--out", required=True)
ap.add_argument("--maildir", required=True)
ap.add_argument("--before", type=int, required=True)
ap.add_argument("--timeout", type=float, default=600)
ap.add_argument("--to", default="bob@example.org")
ap.add_argument("--sender", default="alice@example.net")
ap.add_argument("--tag", default="bench")
ap.add_argument("--cpu-file", default="")
ap.add_argument("--starttls", action="store_true")
a = ap.parse_args()

BODY = (
    "Hello Bob,\r\n\r\n"
    "here are the photos from Sunday, as promised. The children loved the walk along the river,\r\n"
    "and the picnic was a success despite the wind. We should do it again before the autumn.\r\n"
    "Anna asks whether you still have the recipe for the apple cake; she would like to bake it\r\n"
    "for her school fair next Saturday.\r\n\r\n"
) * 4 + "See you soon,\r\nAlice\r\n"


def message(i):
    return (
        "From: Alice <%s>\r\nTo: Bob <%s>\r\nSubject: Sunday photos %s %d\r\nDate: %s\r\n"
        "Message-ID: <%s.%d@example.net>\r\nMIME-Version: 1.0\r\n"
        "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n%s"
        % (a.sender, a.to, a.tag, i, email.utils.formatdate(localtime=True), a.tag, i, BODY)
    ).encode()


def maildir_count(root):
    n = 0
    try:
        dirs = [root] + [e.path for e in os.scandir(root) if e.is_dir() and e.name.startswith(".")]
    except FileNotFoundError:
        return 0
    for d in dirs:
        for sub in ("new", "cur"):
            try:
                n += sum(1 for _ in os.scandir(os.path.join(d, sub)))
            except FileNotFoundError:
                pass
    return n


def cpu_ns():
    if not a.cpu_file:
        return None
    try:
        if a.cpu_file.endswith("cpu.stat"):
            for line in open(a.cpu_file):
                k, v = line.split()
                if k == "usage_usec":
                    return int(v) * 1000
            return None
        return int(open(a.cpu_file).read())
    except OSError:
        return None


def host():
    v = [int(x) for x in open("/proc/stat").readline().split()[1:9]]
    return sum(v), v[3] + v[4]


lock = threading.Lock()
lat, refused, errors, first_errors = [], 0, 0, []
ends = []
barrier = threading.Barrier(a.connections + 1)


def connect():
    s = smtplib.SMTP("127.0.0.1", a.port, local_hostname="sender.example.net", timeout=120)
    s.ehlo()
    if a.starttls:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        s.starttls(context=ctx)
        s.ehlo()
    return s


def worker(k):
    global refused, errors
    mine = list(range(k, a.messages, a.connections))
    msgs = [message(i) for i in mine]
    barrier.wait()
    s = None
    my_lat = []
    for body in msgs:
        for attempt in range(3):
            try:
                if s is None:
                    s = connect()
                t0 = time.monotonic()
                s.sendmail(a.sender, [a.to], body)
                my_lat.append(time.monotonic() - t0)
                break
            except (smtplib.SMTPRecipientsRefused, smtplib.SMTPSenderRefused, smtplib.SMTPDataError) as e:
                with lock:
                    refused += 1
                    if len(first_errors) < 5:
                        first_errors.append(repr(e)[:300])
                try:
                    s.rset()
                except Exception:
                    s = None
                break
            except (smtplib.SMTPException, OSError) as e:
                with lock:
                    errors += 1
                    if len(first_errors) < 5:
                        first_errors.append(repr(e)[:300])
                try:
                    s.close()
                except Exception:
                    pass
                s = None
    t_end = time.monotonic()
    if s is not None:
        try:
            s.quit()
        except Exception:
            pass
    with lock:
        lat.extend(my_lat)
        ends.append(t_end)


threads = [threading.Thread(target=worker, args=(k,)) for k in range(a.connections)]
for t in threads:
    t.start()
c0, h0 = cpu_ns(), host()
r0 = resource.getrusage(resource.RUSAGE_SELF)
t0 = time.monotonic()
barrier.wait()
for t in threads:
    t.join()
t_acc = max(ends) - t0
c_acc = cpu_ns()
accepted = len(lat)
want = a.before + accepted
n = maildir_count(a.maildir)
while n < want and time.monotonic() - t0 < a.timeout:
    time.sleep(0.1)
    n = maildir_count(a.maildir)
t_del = time.monotonic() - t0
c1, h1 = cpu_ns(), host()
r1 = resource.getrusage(resource.RUSAGE_SELF)
lat.sort()


def pct(p):
    return round(lat[min(len(lat) - 1, int(p / 100.0 * len(lat)))] * 1000, 2) if lat else None


res = {
    "connections": a.connections, "messages": a.messages, "starttls": a.starttls,
    "message_bytes": len(message(0)),
    "accepted": accepted, "refused": refused, "errors": errors, "first_errors": first_errors,
    "accept_s": round(t_acc, 3), "accepted_per_s": accepted / t_acc if t_acc > 0 else None,
    "delivered": n - a.before, "all_delivered": n >= want,
    "deliver_s": round(t_del, 3), "delivered_per_s": (n - a.before) / t_del if t_del > 0 else None,
    "latency_ms": {"p50": pct(50), "p90": pct(90), "p99": pct(99), "max": pct(100)},
    "slow_over_500ms": sum(1 for x in lat if x > 0.5),
    "container_cpu_s_accept": (c_acc - c0) / 1e9 if c0 is not None and c_acc is not None else None,
    "container_cpu_s": (c1 - c0) / 1e9 if c0 is not None and c1 is not None else None,
    "generator_cpu_s": (r1.ru_utime + r1.ru_stime) - (r0.ru_utime + r0.ru_stime),
    "host_busy_pct_all_cores": 100.0 * (1 - (h1[1] - h0[1]) / max(1, h1[0] - h0[0])),
}
if res["container_cpu_s"] is not None and res["delivered"] > 0:
    res["container_cpu_ms_per_msg"] = res["container_cpu_s"] * 1000 / res["delivered"]
json.dump(res, open(a.out, "w"), indent=1)
all_ok = res["all_delivered"] and refused == 0 and errors == 0
print("  %d connection(s): %d accepted in %.2f s = %.1f msg/s; all %d in the Maildir after %.2f s = %.1f msg/s%s"
      % (a.connections, accepted, t_acc, res["accepted_per_s"] or 0, n - a.before, t_del,
         res["delivered_per_s"] or 0, "" if all_ok else "  (refused %d, errors %d, all delivered: %s)"
         % (refused, errors, res["all_delivered"])))
print("  latency per message (MAIL..250 after DATA) p50 %s ms, p99 %s ms, max %s ms, %d over 0.5 s; "
      "container CPU %s ms/msg; generator CPU %.1f s; machine busy %.0f %% of all cores"
      % (res["latency_ms"]["p50"], res["latency_ms"]["p99"], res["latency_ms"]["max"], res["slow_over_500ms"],
         "%.1f" % res["container_cpu_ms_per_msg"] if "container_cpu_ms_per_msg" in res else "?",
         res["generator_cpu_s"], res["host_busy_pct_all_cores"]))
PY

# container_id: the id of the instance's mail container (empty if none runs).
container_id() {
    docker ps -q --no-trunc --filter "label=ilot.owner=$OWNER" --filter "label=ilot.instance=$NAME" \
        --filter "label=ilot.service=mail" | head -n 1
}
# check_same_container WHEN: the container must be the one measured at the start (tests/run.sh,
# for one, removes every container of an owner test-* when it starts; the daemon would then
# make a new one).
INVALID=""
check_same_container() {
    local now
    now=$(container_id)
    [[ $now == "$CID" ]] && return 0
    warn "$1: the mail container is ${now:-gone} (was $CID): the figures are INVALID"
    INVALID+="$1: container ${now:-gone}, not $CID; "
    return 1
}
# maildir_count: messages in bob's Maildir, counted on the host.
maildir_count() {
    python3 -c '
import os, sys
root, n = sys.argv[1], 0
try:
    dirs = [root] + [e.path for e in os.scandir(root) if e.is_dir() and e.name.startswith(".")]
except FileNotFoundError:
    dirs = []
for d in dirs:
    for sub in ("new", "cur"):
        try:
            n += sum(1 for _ in os.scandir(os.path.join(d, sub)))
        except FileNotFoundError:
            pass
print(n)' "$MAILDIR"
}
# mem_snapshot LABEL [reset-peak]: the memory snapshot to $RAW_PREFIX-mem-LABEL.json.
mem_snapshot() {
    local out=$RAW_PREFIX-mem-$1.json
    python3 "$BENCH_DIR/mem.py" "$CID" "$INIT_PID" "$out" "$DAEMON_PID" "${2:-}" ||
        die "could not read the container's memory (mem.py)"
    jq -r '"  cgroup v\(.cgroup_version): usage \(.usage_kb / 1024 * 10 | round / 10) MiB " +
        "(anon \(.anon_kb / 1024 * 10 | round / 10), page cache \(.file_kb / 1024 * 10 | round / 10), " +
        "of it inactive \(.inactive_file_kb / 1024 * 10 | round / 10)); docker stats: \(.docker_stats_mem_usage); " +
        "peak \(if .peak_kb then (.peak_kb / 1024 * 10 | round / 10 | tostring) + " MiB" else "n/a" end)\n" +
        "  \(.nprocs) processes: VmRSS sum \(.rss_sum_kb / 1024 * 10 | round / 10) MiB, Pss sum \(.pss_sum_kb / 1024 * 10 | round / 10) MiB; " +
        "Pss by program: " + ([.by_program | to_entries[] | "\(.key) \(.value.pss_kb / 1024 * 10 | round / 10) (\(.value.procs))"] | join(", ")) +
        "; ilot daemon VmRSS \(.daemon_rss_kb / 1024 * 10 | round / 10) MiB"' "$out"
}
sent_count() { docker logs "$CID" 2>&1 | grep -c 'status=sent' || true; }

# ---------------------------------------------------------------------------- set-up
ensure_docker "$BENCH_DIR"
docker image inspect "$IMAGE" >/dev/null 2>&1 ||
    die "the image $IMAGE is missing: build it with images/build.sh mail"
PASSWORD=$(python3 -c 'import secrets; print(secrets.token_urlsafe(18))')

printf '==== set-up: daemon, mail app %s, mailbox %s\n' "$NAME" "$RCPT"
bench_write_config ""
bench_start_daemon
info "installing: ilot app install mail --name $NAME --domain mail.$DOMAIN (ports 0: chosen by the engine)"
INSTALLED=$NAME
t_inst=$(now_ms)
if ! ilot_cli app install mail --name "$NAME" --domain "mail.$DOMAIN" --set smtp_port=0 \
    --set submission_port=0 --set submissions_port=0 --set imaps_port=0 --set managesieve_port=0 >"$BENCH_DIR/install.log" 2>&1; then
    tail -n 20 "$BENCH_DIR/install.log" >&2
    die "ilot app install mail failed"
fi
INSTALL_S=$(awk -v v="$(($(now_ms) - t_inst))" 'BEGIN { printf "%.1f", v / 1000 }')
info "installed and healthy after $INSTALL_S s"
printf '%s\n' "$PASSWORD" | ilot_cli mail user add "$RCPT" >>"$BENCH_DIR/install.log" 2>&1 || {
    tail -n 20 "$BENCH_DIR/install.log" >&2
    die "ilot mail user add $RCPT failed"
}
SHOW=$(ilot_cli app show "$NAME" --json) || die "ilot app show $NAME --json failed"
printf '%s\n' "$SHOW" >"$RAW_PREFIX-app-show.json"
SMTP_PORT=$(jq -r '[.services[0].ports[] | select(.container == 25) | .host][0] // empty | split(":") | last' <<<"$SHOW")
[[ $SMTP_PORT =~ ^[0-9]+$ ]] || die "no host port for 25 in 'ilot app show $NAME --json' (see $RAW_PREFIX-app-show.json)"
CID=$(container_id)
[[ -n $CID ]] || die "no running container labelled ilot.owner=$OWNER ilot.instance=$NAME"
CNAME=$(docker inspect -f '{{.Name}}' "$CID")
CNAME=${CNAME#/}
INIT_PID=$(docker inspect -f '{{.State.Pid}}' "$CID")
VOLUME_DIR=$(docker inspect -f '{{range .Mounts}}{{if eq .Destination "/var/mail"}}{{.Source}}{{end}}{{end}}' "$CID")
[[ -n $VOLUME_DIR && -d $VOLUME_DIR ]] ||
    die "the maildirs volume of $CNAME (/var/mail) is not readable on this host (${VOLUME_DIR:-no mount})"
MAILDIR=$VOLUME_DIR/vhosts/$DOMAIN/${RCPT%@*}/Maildir
info "container $CNAME (${CID:0:12}, init pid $INIT_PID), SMTP on 127.0.0.1:$SMTP_PORT, Maildir $MAILDIR"
# The mailbox takes mail (the reload after `user add` is done) before anything is measured.
for ((i = 0; i < 60; i++)); do
    python3 - "$SMTP_PORT" "$RCPT" <<'PY' && break
import smtplib, sys
s = smtplib.SMTP("127.0.0.1", int(sys.argv[1]), local_hostname="sender.example.net", timeout=10)
s.ehlo()
s.mail("alice@example.net")
code, _ = s.rcpt(sys.argv[2])
s.rset()
s.quit()
sys.exit(0 if code == 250 else 1)
PY
    sleep 1
done
((i < 60)) || die "$RCPT is still refused at RCPT TO after 60 s"

# ---------------------------------------------------------------------------- 2. idle memory
printf '\n==== 2. idle memory (after %s s of settling)\n' "$SETTLE"
run_child sleep "$SETTLE"
check_same_container "idle" || true
mem_snapshot idle reset-peak

# ---------------------------------------------------------------------------- 3. throughput
printf '\n==== 3. throughput to %s over port 25\n' "$RCPT"
TOTAL=0
SWAKS_RATE=""
if ((SWAKS_N > 0)); then
    info "swaks: $SWAKS_N messages, one process and connection each"
    before=$(maildir_count)
    t0=$(now_ms)
    for ((i = 1; i <= SWAKS_N; i++)); do
        swaks --server "127.0.0.1:$SMTP_PORT" --helo sender.example.net --from "$SENDER" --to "$RCPT" \
            --header "Subject: swaks reference $i" --body "Sent by swaks, message $i of $SWAKS_N." \
            --timeout 60 --silent 2 >>"$BENCH_DIR/swaks.log" 2>&1 || die "swaks message $i was refused (see $BENCH_DIR/swaks.log)"
    done
    SWAKS_MS=$(($(now_ms) - t0))
    SWAKS_RATE=$(awk -v n="$SWAKS_N" -v ms="$SWAKS_MS" 'BEGIN { printf "%.1f", n / (ms / 1000) }')
    TOTAL=$((TOTAL + SWAKS_N))
    for ((i = 0; i < 600; i++)); do
        (($(maildir_count) >= before + SWAKS_N)) && break
        sleep 0.1
    done
    info "swaks: $SWAKS_N accepted in $(f1 "$(awk -v v="$SWAKS_MS" 'BEGIN { print v / 1000 }')") s = $SWAKS_RATE msg/s ($(($(maildir_count) - before)) in the Maildir)"
fi
ROUND_FILES=()
FIRST_TOTAL=""
for k in "${!CONNS[@]}"; do
    c=${CONNS[$k]}
    if ((k == 1)); then
        # Memory after the first round too: after --messages messages (plus swaks's).
        printf '\n==== 3b. memory after the first round, %d messages (after %s s of settling)\n' "$TOTAL" "$SETTLE"
        run_child sleep "$SETTLE"
        check_same_container "after the first round" || true
        mem_snapshot first
        FIRST_TOTAL=$TOTAL
        printf '\n'
    fi
    info "generator: $MESSAGES messages over $c connection(s)${TLS_FLAG:+, STARTTLS}"
    before=$(maildir_count)
    out=$RAW_PREFIX-gen-r$((k + 1))-c$c.json
    cpu_file=$(jq -r '.cpu_file // empty' "$RAW_PREFIX-mem-idle.json")
    gen=(python3 "$BENCH_DIR/gen.py" --port "$SMTP_PORT" --messages "$MESSAGES" --connections "$c"
        --out "$out" --maildir "$MAILDIR" --before "$before" --timeout $((120 + MESSAGES / 2))
        --to "$RCPT" --sender "$SENDER" --tag "c$c-$STAMP" --cpu-file "$cpu_file")
    [[ -z $TLS_FLAG ]] || gen+=(--starttls)
    run_child "${gen[@]}" || die "the generator failed (round of $c connections)"
    ROUND_FILES+=("$out")
    TOTAL=$((TOTAL + $(jq -r .accepted "$out")))
    check_same_container "round c=$c" || true
done

# ---------------------------------------------------------------------------- 4. memory after
printf '\n==== 4. memory after %d messages (after %s s of settling)\n' "$TOTAL" "$SETTLE"
run_child sleep "$SETTLE"
check_same_container "after" || true
mem_snapshot after

# ---------------------------------------------------------------------------- 5. checks
printf '\n==== 5. checks\n'
dove() { docker exec "$CID" doveadm search -u "$RCPT" "$@" 2>/dev/null | wc -l; }
N_ALL=$(dove all)
N_INBOX=$(dove mailbox INBOX all)
N_JUNK=$(dove mailbox Junk all)
N_FILES=$(maildir_count)
QUEUE=$(docker exec "$CID" postqueue -j 2>/dev/null | wc -l)
SENT=$(sent_count)
# rspamd logs some of the DNS lookups that got no answer within its timeout (1 s): each one
# holds a message that long. A lower bound: not every module logs its failed lookups.
DNS_TIMEOUTS=$(docker logs "$CID" 2>&1 | grep -c 'query timed out' || true)
info "doveadm search: $N_ALL messages ($N_INBOX in INBOX, $N_JUNK in Junk); $N_FILES files in the Maildir; Postfix queue $QUEUE; status=sent $SENT; accepted $TOTAL"
info "rspamd log lines 'query timed out' (DNS): $DNS_TIMEOUTS"
LOST=""
((N_ALL == TOTAL)) || LOST+="doveadm counts $N_ALL messages, $TOTAL were accepted; "
((N_FILES == TOTAL)) || LOST+="$N_FILES files in the Maildir, $TOTAL accepted; "
((QUEUE == 0)) || LOST+="$QUEUE message(s) still in Postfix's queue; "
((SENT == TOTAL)) || LOST+="$SENT status=sent lines in Postfix's log, $TOTAL accepted; "

# ---------------------------------------------------------------------------- summary
IDLE=$RAW_PREFIX-mem-idle.json
AFTER=$RAW_PREFIX-mem-after.json
SNAPS=("$IDLE")
SNAP_HEADS=("idle")
if [[ -n $FIRST_TOTAL ]]; then
    SNAPS+=("$RAW_PREFIX-mem-first.json")
    SNAP_HEADS+=("after $FIRST_TOTAL")
fi
SNAPS+=("$AFTER")
SNAP_HEADS+=("after $TOTAL")
mib_of() { jq -r --arg k "$2" '(.[$k] // 0) / 1024 * 10 | round / 10' "$1"; }
prog_of() { jq -r --arg p "$2" '((.by_program[$p].pss_kb // 0) / 1024 * 10 | round / 10 | tostring) + " (" + ((.by_program[$p].procs // 0) | tostring) + ")"' "$1"; }
{
    printf '\n==== summary (%s)\n' "$INVOCATION"
    printf 'date %s; %s; kernel %s; %s CPUs; Docker %s; cgroup v%s; image %s (%s)\n' \
        "$(date -u '+%Y-%m-%d %H:%M UTC')" "$("$BIN" --version 2>/dev/null)" "$(uname -r)" "$(nproc)" \
        "$(docker version --format '{{.Server.Version}}' 2>/dev/null)" "$(jq -r .cgroup_version "$IDLE")" \
        "$IMAGE" "$(docker image inspect -f '{{.Id}}' "$IMAGE" | cut -c8-19)"
    printf 'container %s, memory limit %s MiB; install (until healthy) %s s\n\n' "$CNAME" \
        "$(mib_of "$IDLE" limit_kb)" "$INSTALL_S"
    # One column per snapshot: idle, after the first round (with more than one round), after all.
    memrow() { # memrow LABEL KIND [ARG]: KIND mib (a key), prog (a program), jq (an expression)
        local label=$1 kind=$2 arg=${3:-} f v line
        line=$(printf '%-52s' "$label")
        for f in "${SNAPS[@]}"; do
            case $kind in
                mib) v=$(mib_of "$f" "$arg") ;;
                prog) v=$(prog_of "$f" "$arg") ;;
                jq) v=$(jq -r "$arg" "$f") ;;
            esac
            line+=$(printf ' | %12s' "$v")
        done
        printf '%s\n' "$line"
    }
    head=$(printf '%-52s' "memory, MiB")
    for h in "${SNAP_HEADS[@]}"; do head+=$(printf ' | %12s' "$h"); done
    printf '%s\n' "$head"
    memrow "cgroup usage (incl. page cache)" mib usage_kb
    memrow "docker stats MEM USAGE (usage - inactive file)" mib docker_stats_kb
    memrow "cgroup anon (memory.stat rss / anon)" mib anon_kb
    memrow "cgroup page cache (memory.stat cache / file)" mib file_kb
    memrow "processes" jq .nprocs
    memrow "sum of VmRSS" mib rss_sum_kb
    memrow "sum of Pss" mib pss_sum_kb
    for p in rspamd postfix dovecot other; do
        memrow "  Pss of $p (processes)" prog "$p"
    done
    if [[ $(jq -r '.peak_reset // false' "$IDLE") == true ]]; then
        memrow "cgroup peak (max_usage_in_bytes; reset after idle)" mib peak_kb
    else
        memrow "cgroup peak since the container started" mib peak_kb
    fi
    memrow "times the cgroup hit its limit; OOM kills" jq '"\(.limit_hits // "?"); \(.oom_kills // "?")"'
    memrow "(context) ilot daemon VmRSS" mib daemon_rss_kb
    printf '\n%-26s | %5s | %8s | %8s | %9s | %9s | %18s | %6s | %10s | %6s\n' "throughput (port 25)" "conns" "accepted" "refused" "accept/s" "deliver/s" "latency p50/p99 ms" ">0.5 s" "CPU ms/msg" "busy"
    if [[ -n $SWAKS_RATE ]]; then
        printf '%-26s | %5s | %8s | %8s | %9s | %9s | %18s | %6s | %10s | %6s\n' "swaks, 1 process/message" 1 "$SWAKS_N" 0 "$SWAKS_RATE" - - - - -
    fi
    for f in "${ROUND_FILES[@]}"; do
        jq -r '[("generator, " + (.message_bytes | tostring) + " B msgs" + (if .starttls then ", TLS" else "" end)),
            (.connections | tostring), (.accepted | tostring), ((.refused + .errors) | tostring),
            (.accepted_per_s * 10 | round / 10 | tostring), (.delivered_per_s * 10 | round / 10 | tostring),
            ((.latency_ms.p50 | tostring) + " / " + (.latency_ms.p99 | tostring)), (.slow_over_500ms | tostring),
            (if .container_cpu_ms_per_msg then (.container_cpu_ms_per_msg * 10 | round / 10 | tostring) else "-" end),
            ((.host_busy_pct_all_cores | round | tostring) + " %")] | @tsv' "$f" |
            awk -F'\t' '{ printf "%-26s | %5s | %8s | %8s | %9s | %9s | %18s | %6s | %10s | %6s\n", $1, $2, $3, $4, $5, $6, $7, $8, $9, $10 }'
    done
    DS_AFTER=$(mib_of "$AFTER" docker_stats_kb)
    USE_AFTER=$(mib_of "$AFTER" usage_kb)
    LIMIT=$(mib_of "$IDLE" limit_kb)
    printf '\n%-58s | %10s | %-30s\n' "published minimum RAM (their docs)" "MiB" "ilot's mail container / it"
    printf '%-58s | %10s | %s (docker stats), %s (cgroup usage), %s (limit)\n' "mailcow-dockerized: 6 GiB + 1 GiB swap" "$MAILCOW_MIB" \
        "$(ratio "$DS_AFTER" "$MAILCOW_MIB")" "$(ratio "$USE_AFTER" "$MAILCOW_MIB")" "$(ratio "$LIMIT" "$MAILCOW_MIB")"
    printf '%-58s | %10s | %s (docker stats), %s (cgroup usage), %s (limit)\n' "docker-mailserver: minimum 512MB (ClamAV off)" "$DMS_MIN_MIB" \
        "$(ratio "$DS_AFTER" "$DMS_MIN_MIB")" "$(ratio "$USE_AFTER" "$DMS_MIN_MIB")" "$(ratio "$LIMIT" "$DMS_MIN_MIB")"
    printf '%-58s | %10s | %s (docker stats), %s (cgroup usage), %s (limit)\n' "docker-mailserver: recommended 2GB" "$DMS_REC_MIB" \
        "$(ratio "$DS_AFTER" "$DMS_REC_MIB")" "$(ratio "$USE_AFTER" "$DMS_REC_MIB")" "$(ratio "$LIMIT" "$DMS_REC_MIB")"
    printf '(mailcow needs %sx the memory ilot'"'"'s mail stack used after the mail, by docker stats; sources: %s, %s)\n' \
        "$(times_less "$DS_AFTER" "$MAILCOW_MIB")" "$MAILCOW_SRC" "$DMS_SRC"
    printf '\ndelivery: %s messages accepted, doveadm %s (INBOX %s, Junk %s), %s files, queue %s, status=sent %s\n' \
        "$TOTAL" "$N_ALL" "$N_INBOX" "$N_JUNK" "$N_FILES" "$QUEUE" "$SENT"
    printf "rspamd log lines 'query timed out' (a DNS lookup without answer in 1 s; not every module logs): %s\n" "$DNS_TIMEOUTS"
    if [[ -n $LOST ]]; then printf 'MESSAGES MISSING: %s\n' "$LOST"; fi
    if [[ -n $INVALID ]]; then printf 'INVALID RUN: %s\n' "$INVALID"; fi
    printf 'raw results: %s-*\n' "$RAW_PREFIX"
} | tee "$RAW_PREFIX-summary.txt"
cp "$DAEMON_LOG" "$RAW_PREFIX-daemon.log" 2>/dev/null || true
docker logs "$CID" >"$RAW_PREFIX-container.log" 2>&1 || true

[[ -z $LOST ]] || exit 1
