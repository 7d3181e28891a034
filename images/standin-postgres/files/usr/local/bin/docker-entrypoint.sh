#!/bin/sh
# ilot/standin-postgres: the official postgres image's entrypoint, reduced to what tests need.
# First start (no PG_VERSION in $PGDATA): initdb with POSTGRES_USER as the superuser (password
# POSTGRES_PASSWORD), `local all all trust` and `host all all all scram-sha-256`, then
# POSTGRES_DB created owned by it (single-user mode: nothing listens meanwhile). Then
# exec postgres, listening on 0.0.0.0:5432 and /var/run/postgresql.
set -eu

log() { printf 'standin-postgres: %s\n' "$*" >&2; }

# A first argument starting with '-' is a postgres option, like upstream.
case ${1:-postgres} in -*) set -- postgres "$@" ;; esac
if [ "${1:-postgres}" != postgres ]; then
	exec "$@"
fi
[ $# -gt 0 ] && shift

PGDATA=${PGDATA:-/var/lib/postgresql/data}
export PGDATA
user=${POSTGRES_USER:-postgres}
db=${POSTGRES_DB:-$user}

if [ ! -s "$PGDATA/PG_VERSION" ]; then
	if [ -z "${POSTGRES_PASSWORD:-}" ]; then
		log "database is uninitialized and POSTGRES_PASSWORD is not set; refusing to start"
		exit 1
	fi
	if [ "$(id -u)" = 0 ]; then
		log "run as 999:999 (--user 999:999), not root"
		exit 1
	fi
	log "initialising $PGDATA (superuser $user, database $db)"
	pwfile=$(mktemp)
	printf '%s\n' "$POSTGRES_PASSWORD" >"$pwfile"
	initdb --pgdata="$PGDATA" --username="$user" --pwfile="$pwfile" \
		--auth-local=trust --auth-host=scram-sha-256 \
		--encoding=UTF8 --locale=C.UTF-8 >/dev/null
	rm -f "$pwfile"
	cat >"$PGDATA/pg_hba.conf" <<-'HBA'
		# written by ilot/standin-postgres at initialisation
		local all all trust
		local replication all trust
		host all all all scram-sha-256
		host replication all all scram-sha-256
	HBA
	cat >>"$PGDATA/postgresql.conf" <<-'CONF'
		# ilot/standin-postgres
		listen_addresses = '*'
		unix_socket_directories = '/var/run/postgresql'
		password_encryption = scram-sha-256
		# no LLVM in the image (see standin-base)
		jit = off
	CONF
	if [ "$db" != postgres ]; then
		# An identifier in double quotes, embedded quotes doubled.
		qdb=$(printf '%s' "$db" | sed 's/"/""/g')
		quser=$(printf '%s' "$user" | sed 's/"/""/g')
		printf 'CREATE DATABASE "%s" OWNER "%s";\n' "$qdb" "$quser" |
			postgres --single -D "$PGDATA" postgres >/dev/null
	fi
	log "initialised"
fi

exec postgres "$@"
