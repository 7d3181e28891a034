#!/bin/sh
# ilot/standin-mysql: the official mysql image's entrypoint, reduced to what tests need, on
# MariaDB. First start (no mysql/ in the datadir): mariadb-install-db, then a temporary server
# with --skip-networking (so nothing answers on TCP until the real start) sets the root password
# (root@localhost and root@'%'), creates MYSQL_DATABASE and MYSQL_USER@'%' with all privileges on
# it, and stops. Then exec the server, listening on 0.0.0.0:3306.
set -eu

log() { printf 'standin-mysql: %s\n' "$*" >&2; }

case ${1:-mysqld} in -*) set -- mysqld "$@" ;; esac
case ${1:-mysqld} in
mysqld | mariadbd) [ $# -gt 0 ] && shift ;;
*) exec "$@" ;;
esac

datadir=/var/lib/mysql
sock=/run/mysqld/mysqld-init.sock

# SQL string literal contents: backslashes and single quotes escaped.
sqlstr() { printf '%s' "$1" | sed -e 's/\\/\\\\/g' -e "s/'/\\\\'/g"; }
# dash's echo would interpret the backslashes sqlstr doubled: printf instead.
say() { printf '%s\n' "$*"; }
# SQL identifier contents (inside backticks): backticks doubled.
sqlid() { printf '%s' "$1" | sed -e 's/`/``/g'; }

if [ ! -d "$datadir/mysql" ]; then
	if [ -z "${MYSQL_ROOT_PASSWORD:-}" ] && [ -z "${MYSQL_ALLOW_EMPTY_PASSWORD:-}" ] &&
		[ -z "${MYSQL_RANDOM_ROOT_PASSWORD:-}" ]; then
		log "database is uninitialized and none of MYSQL_ROOT_PASSWORD, MYSQL_ALLOW_EMPTY_PASSWORD, MYSQL_RANDOM_ROOT_PASSWORD is set"
		exit 1
	fi
	root_pw=${MYSQL_ROOT_PASSWORD:-}
	if [ -n "${MYSQL_RANDOM_ROOT_PASSWORD:-}" ] && [ -z "$root_pw" ]; then
		root_pw=$(head -c 18 /dev/urandom | base64)
		log "GENERATED ROOT PASSWORD: $root_pw"
	fi
	log "initialising $datadir"
	mariadb-install-db --datadir="$datadir" --auth-root-authentication-method=normal \
		--skip-test-db --skip-name-resolve >/dev/null
	mariadbd --datadir="$datadir" --skip-networking --socket="$sock" \
		--pid-file=/run/mysqld/mysqld-init.pid &
	pid=$!
	i=0
	until mysqladmin --socket="$sock" -uroot --silent ping >/dev/null 2>&1; do
		kill -0 "$pid" 2>/dev/null || { log "the temporary server exited"; exit 1; }
		i=$((i + 1))
		[ "$i" -lt 600 ] || { log "the temporary server did not answer within 60 s"; exit 1; }
		sleep 0.1
	done
	{
		# No anonymous users, and root only at localhost (socket) and '%', with the password.
		say "DELETE FROM mysql.global_priv WHERE User = '' OR (User = 'root' AND Host NOT IN ('localhost', '%'));"
		say "ALTER USER 'root'@'localhost' IDENTIFIED BY '$(sqlstr "$root_pw")';"
		say "CREATE USER 'root'@'%' IDENTIFIED BY '$(sqlstr "$root_pw")';"
		say "GRANT ALL ON *.* TO 'root'@'%' WITH GRANT OPTION;"
		if [ -n "${MYSQL_DATABASE:-}" ]; then
			say "CREATE DATABASE IF NOT EXISTS \`$(sqlid "$MYSQL_DATABASE")\`;"
		fi
		if [ -n "${MYSQL_USER:-}" ] && [ -n "${MYSQL_PASSWORD:-}" ]; then
			say "CREATE USER '$(sqlstr "$MYSQL_USER")'@'%' IDENTIFIED BY '$(sqlstr "$MYSQL_PASSWORD")';"
			if [ -n "${MYSQL_DATABASE:-}" ]; then
				say "GRANT ALL ON \`$(sqlid "$MYSQL_DATABASE")\`.* TO '$(sqlstr "$MYSQL_USER")'@'%';"
			fi
		fi
		say "FLUSH PRIVILEGES;"
	} | mysql --protocol=socket --socket="$sock" -uroot
	kill -TERM "$pid"
	wait "$pid" || true
	log "initialised"
fi

exec mariadbd "$@"
