#!/usr/bin/env bash
# images/mail/selftest.sh — end-to-end check of ilot/mail:1.0, by hand (not part of tests/run.sh).
#
#   images/mail/selftest.sh [--no-build] [--keep] [--count N] [--dead-dns] [-- DOCKER_RUN_ARGS...]
#
# Builds the image (images/build.sh mail), renders a sample /etc/ilot-mail (domain example.org,
# users bob and ann with ARGON2ID hashes, an alias, a catch-all, a DKIM key, a relay host that
# refuses connections so outbound mail stays queued) and a self-signed certificate, runs the
# container with them and three named volumes, ports published on 127.0.0.1 (random ports), then
# checks SMTP, submission, IMAPS, DKIM, reloads, logs, memory and throughput. Everything it made
# (container, volumes, temporary files) is removed at exit, also on failure or Ctrl-C; --keep
# leaves them for a look and prints how to remove them.
#
#   --no-build   use the existing ilot/mail:1.0
#   --keep       keep the container, volumes and files
#   --count N    messages in the throughput run (default 100)
#   --dead-dns   also time N messages with DNS replies dropped in the container's network
#                namespace (a resolver that never answers; needs nsenter and nft)
#   -- ARGS      more `docker run` arguments, e.g. the restrictions ilot applies:
#                -- --cap-drop ALL --cap-add CHOWN --cap-add SETUID ... --memory 384m
#
# Needs root (secret files owned 0:10025), docker, swaks, curl, openssl and argon2:
#   apt-get install swaks curl openssl argon2
set -euo pipefail

prog=images/mail/selftest.sh
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
image=ilot/mail:1.0
build=yes keep="" count=100 dead_dns=""
run_args=()

die() { printf '%s: error: %s\n' "$prog" "$*" >&2; exit 1; }
while [ $# -gt 0 ]; do
	case $1 in
	--no-build) build="" ;;
	--keep) keep=yes ;;
	--count)
		[[ ${2:-} =~ ^[0-9]+$ ]] || die "--count needs a number"
		count=$2
		shift
		;;
	--dead-dns) dead_dns=yes ;;
	--)
		shift
		run_args=("$@")
		break
		;;
	-h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
	*) die "unknown argument '$1' (see --help)" ;;
	esac
	shift
done

[ "$(id -u)" -eq 0 ] || die "run as root: the secret files must be owned 0:10025 like ilot makes them"
for tool in docker swaks curl openssl argon2 timeout; do
	command -v "$tool" >/dev/null 2>&1 || die "$tool is missing: apt-get install swaks curl openssl argon2"
done
if [ -n "$dead_dns" ]; then
	for tool in nsenter nft; do
		command -v "$tool" >/dev/null 2>&1 || die "--dead-dns needs nsenter and nft: apt-get install util-linux nftables"
	done
fi
docker version >/dev/null 2>&1 || die "the Docker engine does not answer (start dockerd)"

# --- what this run creates, and its cleanup -------------------------------------------------------

run_id=ilot-mail-selftest-$$
ctr=$run_id
vols=("$run_id-mail" "$run_id-spool" "$run_id-rspamd")
work=$(mktemp -d "${TMPDIR:-/tmp}/ilot-mail-selftest.XXXXXX")
conf=$work/conf
tls=$work/tls
cleanup() {
	local rc=$?
	if [ -n "$keep" ]; then
		printf '\nkept: container %s, volumes %s, files %s\nremove with: docker rm -f %s; docker volume rm %s; rm -rf %s\n' \
			"$ctr" "${vols[*]}" "$work" "$ctr" "${vols[*]}" "$work" >&2
		return "$rc"
	fi
	docker rm -f "$ctr" >/dev/null 2>&1 || true
	docker volume rm "${vols[@]}" >/dev/null 2>&1 || true
	rm -rf -- "$work"
	return "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- reporting -----------------------------------------------------------------------------------

passed=0 failed=0
step() { printf '\n== %s\n' "$*"; }
ok() { passed=$((passed + 1)); printf 'ok    %s\n' "$*"; }
fail() { failed=$((failed + 1)); printf 'FAIL  %s\n' "$*"; }
# check DESCRIPTION COMMAND...: ok when the command succeeds.
check() {
	local what=$1
	shift
	if "$@" >"$work/last.out" 2>&1; then ok "$what"; else
		fail "$what"
		sed 's/^/      | /' "$work/last.out" | tail -n 15
	fi
}
in_ctr() { docker exec "$ctr" "$@"; }
now() { date +%s.%N; }
lacks() { ! grep -q "$1" <<<"$2"; }                                  # PATTERN TEXT
queued() { in_ctr postqueue -j | grep -q "\"queue_id\": *\"$1\""; }   # QUEUE_ID
signed_with() { tr -d '\n\t ' <<<"$1" | grep -q "d=example.org;s=$2;"; } # HEADERS SELECTOR
postconf_is() { [ "$(in_ctr postconf -h "$1")" = "$2" ]; }           # KEY VALUE
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.2f", b - a }'; } # seconds since START

# --- build ---------------------------------------------------------------------------------------

if [ -n "$build" ]; then
	step "build"
	t0=$(now)
	"$repo/images/build.sh" mail
	echo "build: $(since "$t0") s"
	t0=$(now)
	"$repo/images/build.sh" mail
	echo "second build (up to date): $(since "$t0") s"
fi
docker image inspect "$image" >/dev/null 2>&1 || die "$image is missing (run without --no-build)"

# --- the files ilot would render -----------------------------------------------------------------

step "sample /etc/ilot-mail and TLS files in $work"
mkdir -p "$conf/dkim" "$tls"
# The hash ilot's argon2 crate makes by default: Argon2id v19, m=19456 KiB, t=2, p=1, 16-byte salt.
argon() { printf '%s' "$1" | argon2 "$(openssl rand -hex 8)" -id -v 13 -k 19456 -t 2 -p 1 -l 32 -e; }
bob_pw=bob-$$-pw ann_pw=ann-$$-pw carol_pw=carol-$$-pw
# Writes a file like ilot does: a temporary file in the same directory, then rename.
put() { # PATH MODE GROUP (content on stdin)
	local tmp
	tmp=$(mktemp "$1.XXXXXX")
	cat >"$tmp"
	chown "0:$3" "$tmp"
	chmod "$2" "$tmp"
	mv -f "$tmp" "$1"
}
postfix_cf_with_relay() {
	cat <<-EOF
		myhostname = mail.example.org
		relayhost = [127.0.0.1]:2
		smtp_sasl_auth_enable = yes
		smtp_sasl_password_maps = texthash:/etc/ilot-mail/relay_password
		smtp_sasl_security_options = noanonymous
		smtp_tls_security_level = encrypt
	EOF
}
postfix_cf_with_relay | put "$conf/postfix.cf" 0644 0
echo "example.org OK" | put "$conf/domains" 0644 0
printf '%s\n' "bob@example.org example.org/bob/" "ann@example.org example.org/ann/" | put "$conf/mailboxes" 0644 0
printf '%s\n' "bob@example.org bob@example.org" "ann@example.org ann@example.org" \
	"info@example.org bob@example.org,ann@example.org" "@example.org bob@example.org" | put "$conf/aliases" 0644 0
printf '%s\n' "bob@example.org bob@example.org" "ann@example.org ann@example.org" | put "$conf/senders" 0644 0
echo "[127.0.0.1]:2 relayuser:relaypass" | put "$conf/relay_password" 0640 10025
printf '%s\n' "bob@example.org:{ARGON2ID}$(argon "$bob_pw")::::::userdb_quota_rule=*:bytes=2147483648" \
	"ann@example.org:{ARGON2ID}$(argon "$ann_pw")::::::" | put "$conf/users" 0640 10025
openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 2>/dev/null | put "$conf/dkim/example.org.ilot1.key" 0640 10025
echo "example.org ilot1" | put "$conf/dkim/selectors.map" 0644 0
openssl req -x509 -newkey rsa:2048 -nodes -days 30 -subj /CN=mail.example.org \
	-keyout "$tls/privkey.pem" -out "$tls/fullchain.pem" 2>/dev/null
chown 0:10025 "$tls/privkey.pem"
chmod 0640 "$tls/privkey.pem"
sed -n 1p "$conf/users" | cut -c1-120
echo "(passwords: bob $bob_pw, ann $ann_pw)"

# --- run -----------------------------------------------------------------------------------------

start_container() {
	docker run -d --name "$ctr" --init --hostname mail.example.org \
		-v "$conf:/etc/ilot-mail:ro" \
		-v "$tls:/etc/ssl/ilot:ro" \
		-v "${vols[0]}:/var/mail" -v "${vols[1]}:/var/spool/postfix" -v "${vols[2]}:/var/lib/rspamd" \
		-p 127.0.0.1::25 -p 127.0.0.1::587 -p 127.0.0.1::465 -p 127.0.0.1::993 \
		"${run_args[@]}" "$image" >/dev/null
	p25=$(docker port "$ctr" 25/tcp | head -n1)
	p587=$(docker port "$ctr" 587/tcp | head -n1)
	p465=$(docker port "$ctr" 465/tcp | head -n1)
	p993=$(docker port "$ctr" 993/tcp | head -n1)
	local t0=$SECONDS
	until in_ctr ilot-mail health >/dev/null 2>&1; do
		if [ "$(docker inspect -f '{{.State.Running}}' "$ctr")" != true ]; then
			docker logs "$ctr" 2>&1 | tail -n 30
			die "the container stopped during start-up (logs above)"
		fi
		[ $((SECONDS - t0)) -lt 90 ] || { docker logs "$ctr" 2>&1 | tail -n 30; die "not healthy after 90 s (logs above)"; }
		sleep 0.5
	done
	echo "healthy after $((SECONDS - t0)) s; 25 -> $p25, 587 -> $p587, 465 -> $p465, 993 -> $p993"
}

mem() { docker stats --no-stream --format '{{.MemUsage}}' "$ctr" | cut -d/ -f1 | tr -d ' '; }
# What the cgroup holds: anonymous memory (the processes' own) and page cache (files).
mem_detail() {
	in_ctr sh -c 'cat /sys/fs/cgroup/memory.stat 2>/dev/null || cat /sys/fs/cgroup/memory/memory.stat' |
		awk '$1 == "anon" || $1 == "total_rss" { a = $2 } $1 == "file" || $1 == "total_cache" { f = $2 }
			END { printf "anonymous %.0f MiB, page cache %.0f MiB", a / 1048576, f / 1048576 }'
}
mib() { # "63.5MiB" -> 63 (integer MiB)
	local v=$1
	case $v in
	*GiB) echo "${v%GiB}" | awk '{printf "%d", $1 * 1024}' ;;
	*MiB) echo "${v%MiB}" | awk '{printf "%d", $1}' ;;
	*KiB) echo 0 ;;
	*) echo 99999 ;;
	esac
}

step "start"
for v in "${vols[@]}"; do docker volume create "$v" >/dev/null; done
start_container
sleep 5
mem_idle=$(mem)
echo "memory after start: $mem_idle ($(mem_detail))"

smtp() { swaks --server "$@" 2>&1 || true; } # swaks exits non-zero on a refusal: the checks read its output
imap() { # USER PASS PATH [curl args]
	local user=$1 pass=$2 path=$3
	shift 3
	curl -sS -k --max-time 20 "imaps://${p993}/$path" -u "$user:$pass" "$@"
}
# The UID of the newest message in MAILBOX whose Subject contains TEXT, or nothing.
find_uid() { # USER PASS MAILBOX TEXT
	imap "$1" "$2" "$3" -X "UID SEARCH SUBJECT \"$4\"" | tr -d '\r' | sed -n 's/^\* SEARCH *//p' | awk '{print $NF}'
}
# Waits for a message (up to 20 s); prints "MAILBOX UID".
wait_mail() { # USER PASS TEXT
	local t0=$SECONDS uid box
	while [ $((SECONDS - t0)) -lt 20 ]; do
		for box in INBOX Junk; do
			uid=$(find_uid "$1" "$2" "$box" "$3")
			[ -z "$uid" ] || { echo "$box $uid"; return 0; }
		done
		sleep 0.5
	done
	return 1
}
queue_id() { sed -n 's/.*queued as \([0-9A-Za-z]*\).*/\1/p' | tail -n1; }

# --- inbound on 25 -------------------------------------------------------------------------------

step "inbound mail on port 25"
out=$(smtp "$p25" --from alice@example.net --to bob@example.org --h-Subject "selftest-inbound-$$" --body "Hello Bob")
check "25: mail for bob@example.org accepted" grep -q "250 2.0.0 Ok: queued" <<<"$out"
if where=$(wait_mail bob@example.org "$bob_pw" "selftest-inbound-$$"); then
	box=${where% *} uid=${where#* }
	ok "imaps: bob reads it in $box (UID $uid)$([ "$box" = Junk ] && echo ': rspamd marked it as spam (no DNS: no rDNS, SPF...)')"
	msg=$(imap bob@example.org "$bob_pw" "$box;UID=$uid")
	check "imaps: fetch ;UID=$uid returns the body" grep -q "Hello Bob" <<<"$msg"
	check "inbound mail has an Authentication-Results header from rspamd" grep -q "^Authentication-Results: mail.example.org" <<<"$msg"
else
	fail "imaps: bob does not see the message within 20 s"
fi
if imap bob@example.org "$bob_pw" "INBOX;UID=1" >/dev/null 2>&1 || imap bob@example.org "$bob_pw" "Junk;UID=1" >/dev/null 2>&1; then
	ok "imaps: fetch ;UID=1 works"
else
	fail "imaps: fetch ;UID=1"
fi

out=$(smtp "$p25" --from alice@example.net --to info@example.org --h-Subject "selftest-alias-$$" --body "to all")
check "25: alias info@ accepted" grep -q "queued as" <<<"$out"
check "alias: bob got it" wait_mail bob@example.org "$bob_pw" "selftest-alias-$$"
check "alias: ann got it" wait_mail ann@example.org "$ann_pw" "selftest-alias-$$"
out=$(smtp "$p25" --from alice@example.net --to whoever-$$@example.org --h-Subject "selftest-catchall-$$" --body "catch")
check "25: catch-all address accepted" grep -q "queued as" <<<"$out"
check "catch-all: lands in bob's box" wait_mail bob@example.org "$bob_pw" "selftest-catchall-$$"

out=$(smtp "$p25" --from alice@example.net --to someone@example.net)
check "25: relay to example.net refused (554 Relay access denied)" grep -q "554 5.7.1 .*Relay access denied" <<<"$out"
out=$(smtp "$p25" --from alice@example.net --to someone@example.org.invalid)
check "25: other domains refused" grep -q "Relay access denied" <<<"$out"
out=$(smtp "$p25" --quit-after EHLO)
check "25: no AUTH offered" lacks "AUTH" "$out"

# --- submission ----------------------------------------------------------------------------------

step "submission (587 STARTTLS, 465 implicit TLS)"
out=$(smtp "$p587" --quit-after EHLO)
check "587: no AUTH before STARTTLS" lacks "AUTH" "$out"
out=$(smtp "$p587" -tls --from bob@example.org --to someone@example.net)
check "587: no relay without AUTH" grep -q "<~\* 554 5.7.1" <<<"$out"
out=$(smtp "$p587" -tls --auth PLAIN --auth-user bob@example.org --auth-password "$bob_pw" \
	--from bob@example.org --to someone@example.net --h-From "Bob <bob@example.org>" --h-Subject "selftest-out-$$" --body "signed")
check "587: bob's mail to someone@example.net accepted" grep -q "queued as" <<<"$out"
qid=$(queue_id <<<"$out")
sleep 2
check "587: it waits in the queue (the relay host refuses)" queued "$qid"
headers=$(in_ctr postcat -hq "$qid" 2>&1 || true)
check "587: queued mail is DKIM-signed d=example.org s=ilot1" signed_with "$headers" ilot1
check "587: deferred by the relay host [127.0.0.1]:2" grep -q "127.0.0.1.*:2" <<<"$(in_ctr postqueue -j)"
out=$(smtp "$p465" --tls-on-connect --auth LOGIN --auth-user ann@example.org --auth-password "$ann_pw" \
	--from ann@example.org --to bob@example.org --h-Subject "selftest-465-$$" --body "via 465")
check "465: ann's mail accepted (implicit TLS + AUTH)" grep -q "queued as" <<<"$out"
check "465: bob gets ann's mail" wait_mail bob@example.org "$bob_pw" "selftest-465-$$"
out=$(smtp "$p587" -tls --auth PLAIN --auth-user bob@example.org --auth-password "$bob_pw" --from ann@example.org --to someone@example.net)
check "587: MAIL FROM not owned by the login refused (553)" grep -q "553 5.7.1 .*not owned by user bob@example.org" <<<"$out"

# --- failed logins and the ban filters -----------------------------------------------------------

step "wrong passwords and the guard filters"
out=$(smtp "$p587" -tls --auth PLAIN --auth-user bob@example.org --auth-password wrong --from bob@example.org --to x@example.net)
check "587: wrong password refused (535)" grep -q "535 5.7.8" <<<"$out"
out=$(smtp "$p465" --tls-on-connect --auth LOGIN --auth-user nobody@example.org --auth-password wrong --from bob@example.org --to x@example.net)
check "465: unknown user refused (535)" grep -q "535 5.7.8" <<<"$out"
if imap bob@example.org wrong INBOX >/dev/null 2>&1; then fail "imaps: wrong password accepted"; else ok "imaps: wrong password refused"; fi
sleep 3 # Dovecot's auth failure delay, then the login process logs
docker logs "$ctr" >"$work/container.log" 2>&1
ilot=$repo/target/release/ilot
if [ -x "$ilot" ]; then
	for filter in postfix dovecot; do
		"$ilot" guard test --json --filters-dir "$repo/filters" "$filter" "$work/container.log" >"$work/$filter.json" 2>&1 || true
		matched=$(sed -n 's/^ *"matched": *\([0-9]*\).*/\1/p' "$work/$filter.json" | head -n1)
		check "guard filter $filter matches the failures (${matched:-0} lines)" test "${matched:-0}" -ge 2
	done
	"$ilot" guard test --filters-dir "$repo/filters" postfix "$work/container.log" | grep -E ' match ' | cut -c1-200 | head -n 4
	"$ilot" guard test --filters-dir "$repo/filters" dovecot "$work/container.log" | grep -E ' match ' | cut -c1-200 | head -n 4
else
	echo "skip  guard filters: $ilot is not built; the lines are:"
	grep -E 'SASL .* authentication failed|auth failed|Password mismatch|unknown user' "$work/container.log" | head -n 6
fi

# --- live changes: users, keys, postfix.cf, reload -----------------------------------------------

step "changes without restart"
{
	cat "$conf/users"
	echo "carol@example.org:{ARGON2ID}$(argon "$carol_pw")::::::"
} | put "$conf/users" 0640 10025
check "users: a new user logs in at once (no reload)" imap carol@example.org "$carol_pw" INBOX -X "EXAMINE INBOX"

# A long IMAP session and a long SMTP session, open across the reload.
(sleep 1; printf 'a LOGIN bob@example.org %s\r\n' "$bob_pw"; sleep 5; printf 'b NOOP\r\n'; sleep 1; printf 'c LOGOUT\r\n'; sleep 1) |
	timeout 20 openssl s_client -quiet -no_ign_eof -connect "$p993" >"$work/imap-session.out" 2>/dev/null &
imap_session=$!
# (fd 4: a background job of a non-interactive shell gets /dev/null as its stdin otherwise)
(sleep 1; printf 'EHLO selftest\r\n'; sleep 5; printf 'NOOP\r\n'; sleep 1; printf 'QUIT\r\n'; sleep 1) |
	timeout 20 bash -c "exec 3<>/dev/tcp/${p25%:*}/${p25#*:} 4<&0; cat <&4 >&3 & cat <&3" >"$work/smtp-session.out" 2>/dev/null &
smtp_session=$!

openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 2>/dev/null | put "$conf/dkim/example.org.ilot2.key" 0640 10025
echo "example.org ilot2" | put "$conf/dkim/selectors.map" 0644 0
# The relay removed; outbound mail held in the queue instead (no DNS here to deliver it).
{ grep -v '^relayhost\|^smtp_' "$conf/postfix.cf"; echo "defer_transports = smtp"; } | put "$conf/postfix.cf" 0644 0
sleep 2
t0=$(now)
check "ilot-mail reload exits 0" in_ctr ilot-mail reload
echo "reload took $(since "$t0") s"
wait "$imap_session" "$smtp_session" || true
check "reload: the open IMAP session survived (NOOP answered after it)" grep -q "^b OK" "$work/imap-session.out"
check "reload: the open SMTP session survived (NOOP answered after it)" grep -q "^250 2.0.0 Ok" "$work/smtp-session.out"
check "postfix.cf: relayhost removed -> back to the image default (none)" postconf_is relayhost ""
check "postfix.cf: smtp_tls_security_level back to the image default (may)" postconf_is smtp_tls_security_level may
check "postfix.cf: myhostname still applied" postconf_is myhostname mail.example.org
out=$(smtp "$p587" -tls --auth PLAIN --auth-user bob@example.org --auth-password "$bob_pw" \
	--from bob@example.org --to someone@example.net --h-From "bob@example.org" --h-Subject "selftest-rotated-$$" --body "new key")
qid2=$(queue_id <<<"$out")
headers=$(in_ctr postcat -hq "$qid2" 2>&1 || true)
check "key rotation: after reload, mail is signed with s=ilot2" signed_with "$headers" ilot2
check "health: exit 0" in_ctr ilot-mail health
check "quota: bob's limit is 2 GiB (userdb_quota_rule)" grep -q "STORAGE *[0-9]* *2097152 " <<<"$(in_ctr doveadm quota get -u bob@example.org)"
check "quota: ann has none" grep -q "STORAGE *[0-9]* *- " <<<"$(in_ctr doveadm quota get -u ann@example.org)"
check "milter_default_action = accept (inbound mail flows when rspamd is down)" postconf_is milter_default_action accept
check "submission: the milter tempfails when rspamd is down (never sent unsigned)" \
	grep -q "default_action=tempfail" <<<"$(in_ctr postconf -Phx submission/inet/smtpd_milters)"

# --- throughput and memory -----------------------------------------------------------------------

# Sends $count messages one after another, one connection each; prints the seconds taken.
load() { # TAG
	local i t0
	t0=$(now)
	for i in $(seq "$count"); do
		swaks --server "$p25" --from "sender$i@example.net" --to bob@example.org \
			--h-Subject "selftest-load-$1-$i" --body "message $i" --silent 2 >&2 || echo "message $i failed" >&2
	done
	since "$t0"
}
delivered() { # TAG: how many load messages bob has
	local n=0 box c
	for box in INBOX Junk; do
		c=$(imap bob@example.org "$bob_pw" "$box" -X "SEARCH SUBJECT \"selftest-load-$1-\"" | tr -d '\r' | sed -n 's/^\* SEARCH *//p' | wc -w)
		n=$((n + c))
	done
	echo "$n"
}
wait_delivered() { # TAG
	local t0=$SECONDS n=0
	while [ $((SECONDS - t0)) -lt 60 ]; do
		n=$(delivered "$1")
		[ "$n" -lt "$count" ] || break
		sleep 1
	done
	echo "$n"
}

step "throughput: $count messages with swaks, one after another"
secs=$(load nodns)
n=$(wait_delivered nodns)
awk -v c="$count" -v s="$secs" -v n="$n" 'BEGIN { printf "%d messages in %.1f s (%.0f ms each); %d delivered\n", c, s, s * 1000 / c, n }'
check "all $count delivered" test "$n" -ge "$count"
sleep 3
mem_after=$(mem)
echo "memory: after start $mem_idle, after $count messages $mem_after ($(mem_detail))"
check "memory after start under 200 MiB ($mem_idle)" test "$(mib "$mem_idle")" -lt 200
check "memory after $count messages under 200 MiB ($mem_after)" test "$(mib "$mem_after")" -lt 200

# --- volumes survive a new container; clean stop -------------------------------------------------

step "stop, and a new container on the same volumes"
t0=$(now)
docker stop "$ctr" >/dev/null
stop_secs=$(since "$t0")
code=$(docker inspect -f '{{.State.ExitCode}}' "$ctr")
echo "docker stop took $stop_secs s, exit code $code"
check "SIGTERM: stopped within 5 s" awk -v s="$stop_secs" 'BEGIN { exit !(s < 5) }'
check "SIGTERM: exit code 0" test "$code" = 0
docker logs "$ctr" >"$work/container.log" 2>&1
docker rm "$ctr" >/dev/null
start_container
check "volumes: bob's mail is still there" wait_mail bob@example.org "$bob_pw" "selftest-inbound-$$"
check "volumes: the queued message is still queued" queued "$qid"

if [ -n "$dead_dns" ]; then
	step "throughput with a dead resolver (DNS replies dropped in the container's netns)"
	pid=$(docker inspect -f '{{.State.Pid}}' "$ctr")
	nsenter -t "$pid" -n nft -f - <<-'EOF'
		table inet ilot_selftest_dns {
			chain in {
				type filter hook input priority 0;
				udp sport 53 drop
				tcp sport 53 drop
			}
		}
	EOF
	secs=$(load deaddns)
	n=$(wait_delivered deaddns)
	awk -v c="$count" -v s="$secs" -v n="$n" 'BEGIN { printf "%d messages in %.1f s (%.0f ms each) with a dead resolver; %d delivered\n", c, s, s * 1000 / c, n }'
	check "dead DNS: all $count delivered" test "$n" -ge "$count"
	nsenter -t "$pid" -n nft delete table inet ilot_selftest_dns
fi

# --- a daemon that dies stops the container ------------------------------------------------------

step "a daemon dies"
in_ctr sh -c "kill -KILL \$(cat /run/dovecot/master.pid)"
t0=$SECONDS
while [ "$(docker inspect -f '{{.State.Running}}' "$ctr")" = true ] && [ $((SECONDS - t0)) -lt 15 ]; do sleep 0.5; done
running=$(docker inspect -f '{{.State.Running}}' "$ctr")
code=$(docker inspect -f '{{.State.ExitCode}}' "$ctr")
docker logs "$ctr" 2>&1 | grep 'ilot-mail' | tail -n 3
check "dovecot killed: the container exits non-zero (running=$running, exit code $code)" test "$running" = false -a "$code" != 0

# --- summary -------------------------------------------------------------------------------------

printf '\n%d passed, %d failed\n' "$passed" "$failed"
[ "$failed" -eq 0 ]
