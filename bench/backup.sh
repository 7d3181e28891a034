#!/usr/bin/env bash
# bench/backup.sh: ilot's backups (rustic_core) next to restic and tar+gzip, on the same data,
# in one run.
#
#   bench/backup.sh
#
# 1. A daemon of its own installs the demo app (hello) and fills its data volume with
#    ILOT_BENCH_GIB GiB (default 2) of files: 1 MiB files, half of them random bytes (which no
#    tool compresses), half text-like (repetitive lines, which all of them compress).
# 2. First backup: `ilot backup run NAME` into an empty repository (ilot's timing includes the
#    pause of the container and its dump-free snapshot); then `restic backup` of the same
#    directory (the volume's directory on the host) into an empty repository of its own; then
#    `tar -czf` of it. Time (wall) and repository or archive size (du -sb).
# 3. 1 % of the files are rewritten (new random bytes), then the second backup with each tool:
#    incremental for ilot and restic, a full archive again for tar+gzip. Time, and what the
#    repository grew by.
# 4. A summary: the ratios restic / ilot and tar / ilot. restic and tar see warm page caches as
#    ilot does: each tool reads the same data right after the other.
#
# It is a benchmark, not a test: it exits non-zero only when it cannot measure. It needs root,
# a Docker engine (started if none answers, stopped at the end), restic (apt-get install
# restic), jq, and about 3 x ILOT_BENCH_GIB GiB free under /tmp. It removes everything it made.
#
# Environment:
#   ILOT_BIN          the binary (default target/release/ilot; built if missing)
#   ILOT_BENCH_GIB    the volume's size in GiB (default 2)
#   ILOT_BENCH_TARGET local (default) or sftp: both repositories on an OpenSSH sshd on loopback
#                     started for the run (ilot through its SFTP backend, restic through ssh's
#                     sftp subsystem; tar+gzip stays local). Needs /usr/sbin/sshd.
#   ILOT_BENCH_OUT    where results are kept (default target/bench)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
# shellcheck source=tests/lib/common.sh
source "$ROOT/tests/lib/common.sh"

bench_args "$@"

GIB=${ILOT_BENCH_GIB:-2}
OUT_DIR=${ILOT_BENCH_OUT:-$ROOT/target/bench}
BIN=${ILOT_BIN:-$ROOT/target/release/ilot}
[[ -d $HOME/.cargo/bin ]] && PATH=$HOME/.cargo/bin:$PATH
export PATH
for c in docker jq restic tar gzip du; do
    command -v "$c" >/dev/null 2>&1 || die "$c is required (apt-get install ${c/docker/docker.io})"
done

TARGET=${ILOT_BENCH_TARGET:-local}
[[ $TARGET == local || $TARGET == sftp ]] || die "ILOT_BENCH_TARGET must be local or sftp (got '$TARGET')"
[[ $TARGET == local ]] || [[ -x /usr/sbin/sshd ]] || die "ILOT_BENCH_TARGET=sftp needs /usr/sbin/sshd (apt-get install openssh-server)"
BENCH_DIR=$(mktemp -d /tmp/ilot-bench-XXXXXX)
SSHD_PID=""
SUFFIX=${BENCH_DIR##*-}
OWNER=test-bench-$(printf %s "$SUFFIX" | tr "[:upper:]" "[:lower:]")
SOCK=$BENCH_DIR/ilot.sock
CONFIG=$BENCH_DIR/ilot.toml
DAEMON_LOG=$BENCH_DIR/daemon.log
DAEMON_PID=""
NAME=bkb$(printf %s "$SUFFIX" | tr "[:upper:]" "[:lower:]")
ilot_cli() { "$BIN" --socket "$SOCK" "$@"; }

# shellcheck disable=SC2317  # invoked by the EXIT trap
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    set +e
    printf '\n==== cleanup\n'
    if [[ -n $DAEMON_PID ]] && kill -0 "$DAEMON_PID" 2>/dev/null; then
        timeout 120 "$BIN" --socket "$SOCK" app remove "$NAME" --purge >/dev/null 2>&1
        stop_pid "$DAEMON_PID" 10
    fi
    [[ -n $SSHD_PID ]] && stop_pid "$SSHD_PID" 5
    docker_cleanup_owned exact "$OWNER"
    rm -rf -- "$BENCH_DIR"
    stop_started_dockerd
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

printf '==== set-up\n'
if [[ ! -x $BIN ]]; then
    cargo build --release --locked
fi
ensure_docker "$BENCH_DIR"
bash images/build.sh hello >/dev/null
# Where the two repositories live; sizes are read in that directory either way.
SRV=$BENCH_DIR/srv
mkdir -p "$SRV"
if [[ $TARGET == sftp ]]; then
    mkdir -p /run/sshd
    ssh-keygen -q -t ed25519 -N "" -f "$BENCH_DIR/host_key"
    ssh-keygen -q -t ed25519 -N "" -f "$BENCH_DIR/client_key"
    cp "$BENCH_DIR/client_key.pub" "$BENCH_DIR/authorized_keys"
    SSH_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    cat >"$BENCH_DIR/sshd_config" <<SSHD
ListenAddress 127.0.0.1:$SSH_PORT
HostKey $BENCH_DIR/host_key
PidFile $BENCH_DIR/sshd.pid
AuthorizedKeysFile $BENCH_DIR/authorized_keys
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
Subsystem sftp internal-sftp
SSHD
    /usr/sbin/sshd -D -e -f "$BENCH_DIR/sshd_config" 2>"$BENCH_DIR/sshd.log" &
    SSHD_PID=$!
    HOST_KEY=$(cut -d' ' -f1,2 "$BENCH_DIR/host_key.pub")
    printf '[127.0.0.1]:%s %s\n' "$SSH_PORT" "$HOST_KEY" >"$BENCH_DIR/known_hosts"
    SSH_CMD="ssh -F /dev/null -i $BENCH_DIR/client_key -o UserKnownHostsFile=$BENCH_DIR/known_hosts -o StrictHostKeyChecking=yes -o BatchMode=yes -p $SSH_PORT root@127.0.0.1"
    for _ in $(seq 50); do $SSH_CMD true 2>/dev/null && break; sleep 0.2; done
    $SSH_CMD true || die "sshd did not start: $(cat "$BENCH_DIR/sshd.log")"
    ILOT_REPO="sftp://root@127.0.0.1:$SSH_PORT/$SRV/ilot-repo"
    RESTIC_REPO="sftp://root@127.0.0.1:$SSH_PORT/$SRV/restic-repo"
    RESTIC_OPTS=(-o "sftp.command=$SSH_CMD -s sftp")
    REPO_CONFIG="sftp_key = \"$BENCH_DIR/client_key\"
sftp_host_key = \"$HOST_KEY\""
else
    ILOT_REPO=$SRV/ilot-repo
    RESTIC_REPO=$SRV/restic-repo
    RESTIC_OPTS=()
    REPO_CONFIG=""
fi
bench_write_config "[backup]
repository = \"$ILOT_REPO\"
at = \"off\"
$REPO_CONFIG"
bench_start_daemon
ilot_cli app install hello --name "$NAME" >/dev/null
VOL=$(docker volume inspect "ilot-$NAME-data" --format '{{.Mountpoint}}')
FILES=$((GIB * 1024))
info "filling the volume ($VOL) with $FILES files of 1 MiB, half random, half text-like"
mkdir -p "$VOL/files"
python3 - "$VOL/files" "$FILES" <<'PY'
import os, sys
d, n = sys.argv[1], int(sys.argv[2])
line = b"2026-12-01 03:30:00 INFO the family photo album was synchronised, nothing to report\n"
text = (line * (1048576 // len(line) + 1))[:1048576]
for i in range(n):
    with open(os.path.join(d, f"f{i:05d}"), "wb") as f:
        f.write(os.urandom(1048576) if i % 2 == 0 else text)
PY
chown -R 10001:10001 "$VOL/files"
sync
ilot_cli backup init --json >/dev/null
export RESTIC_PASSWORD_FILE=$BENCH_DIR/state/backup/password
restic -r "$RESTIC_REPO" "${RESTIC_OPTS[@]}" init >/dev/null

size() { du -sb "$1" | cut -f1; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", (b - a) / 1000 }'; }
mib() { awk -v b="$1" 'BEGIN { printf "%.0f MiB", b / 1048576 }'; }
declare -A T S

run_round() { # run_round ROUND
    local r=$1 t0
    t0=$(now_ms)
    ilot_cli backup run "$NAME" --json >"$BENCH_DIR/ilot-$r.json"
    T[ilot$r]=$(secs "$t0" "$(now_ms)")
    S[ilot$r]=$(size "$SRV/ilot-repo")
    t0=$(now_ms)
    restic -r "$RESTIC_REPO" "${RESTIC_OPTS[@]}" backup -q "$VOL" >/dev/null
    T[restic$r]=$(secs "$t0" "$(now_ms)")
    S[restic$r]=$(size "$SRV/restic-repo")
    t0=$(now_ms)
    tar -C "$VOL" -czf "$BENCH_DIR/tar-$r.tar.gz" .
    T[tar$r]=$(secs "$t0" "$(now_ms)")
    S[tar$r]=$(size "$BENCH_DIR/tar-$r.tar.gz")
    info "round $r: ilot ${T[ilot$r]} s, restic ${T[restic$r]} s, tar+gzip ${T[tar$r]} s"
}

printf '\n==== first backup (%s GiB)\n' "$GIB"
run_round 1
CHANGED=$((FILES / 100))
info "rewriting $CHANGED files (1 %)"
python3 - "$VOL/files" "$FILES" "$CHANGED" <<'PY'
import os, sys
d, n, k = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
for i in range(0, n, n // k)[:k]:
    with open(os.path.join(d, f"f{i:05d}"), "wb") as f:
        f.write(os.urandom(1048576))
PY
sync
printf '\n==== second backup (1 %% changed)\n'
run_round 2
grew() { echo $(($2 - $1)); }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2fx", a / b }'; }

mkdir -p "$OUT_DIR"
{
    printf '\n==== results: bench/backup.sh (ILOT_BENCH_GIB=%s, ILOT_BENCH_TARGET=%s), %s, %s\n' "$GIB" "$TARGET" "$(date -u +%Y-%m-%dT%H:%MZ)" "$(restic version | head -1)"
    printf '%-26s %12s %12s %12s\n' "" "ilot" "restic" "tar+gzip"
    printf '%-26s %11ss %11ss %11ss\n' "first backup, time" "${T[ilot1]}" "${T[restic1]}" "${T[tar1]}"
    printf '%-26s %12s %12s %12s\n' "first backup, size" "$(mib "${S[ilot1]}")" "$(mib "${S[restic1]}")" "$(mib "${S[tar1]}")"
    printf '%-26s %11ss %11ss %11ss\n' "second backup, time" "${T[ilot2]}" "${T[restic2]}" "${T[tar2]}"
    printf '%-26s %12s %12s %12s\n' "second backup, added" "$(mib "$(grew "${S[ilot1]}" "${S[ilot2]}")")" "$(mib "$(grew "${S[restic1]}" "${S[restic2]}")")" "$(mib "${S[tar2]}")"
    printf 'ratios (time, other / ilot): first: restic %s, tar %s; second: restic %s, tar %s\n' \
        "$(ratio "${T[restic1]}" "${T[ilot1]}")" "$(ratio "${T[tar1]}" "${T[ilot1]}")" \
        "$(ratio "${T[restic2]}" "${T[ilot2]}")" "$(ratio "${T[tar2]}" "${T[ilot2]}")"
} | tee "$OUT_DIR/backup-$TARGET.txt"
