#!/usr/bin/env bash
# A small docker-library-like entrypoint for the PostgreSQL stand-in image: on an empty $PGDATA it
# runs initdb with POSTGRES_USER / POSTGRES_PASSWORD, creates POSTGRES_DB, runs
# /docker-entrypoint-initdb.d/*.sql and *.sh against a temporary server listening on the unix socket
# only, then execs the real server (as postgres, via setpriv, so it receives the signals).
set -Eeuo pipefail

log() { printf '%s [entrypoint] %s\n' "$(date -u +%FT%TZ)" "$*" >&2; }

docker_setup_env() {
	export POSTGRES_USER="${POSTGRES_USER:-postgres}"
	export POSTGRES_DB="${POSTGRES_DB:-$POSTGRES_USER}"
	export PGDATA="${PGDATA:-/var/lib/postgresql/data}"
}

docker_verify_minimum_env() {
	if [ -z "${POSTGRES_PASSWORD:-}" ] && [ "${POSTGRES_HOST_AUTH_METHOD:-}" != trust ]; then
		cat >&2 <<-'EOM'
			error: database is uninitialized and POSTGRES_PASSWORD is not set.
			       Set it, e.g. -e POSTGRES_PASSWORD=change-me (or POSTGRES_HOST_AUTH_METHOD=trust
			       to allow every connection without a password: never on a reachable network).
		EOM
		exit 1
	fi
}

docker_init_database_dir() {
	local pwfile
	pwfile="$(mktemp)"
	printf '%s\n' "${POSTGRES_PASSWORD:-}" >"$pwfile"
	initdb --username="$POSTGRES_USER" --pwfile="$pwfile" --auth-local=trust \
		--auth-host=scram-sha-256 -D "$PGDATA" >/dev/null
	rm -f "$pwfile"
	local method="${POSTGRES_HOST_AUTH_METHOD:-scram-sha-256}"
	printf 'host all all all %s\n' "$method" >>"$PGDATA/pg_hba.conf"
	printf "listen_addresses = '*'\n" >>"$PGDATA/postgresql.auto.conf"
}

docker_temp_server() {
	pg_ctl -D "$PGDATA" -w -o "-c listen_addresses='' -p 5432" "$1" >/dev/null
}

docker_process_init_files() {
	local f
	for f in /docker-entrypoint-initdb.d/*; do
		case "$f" in
		*.sh)
			log "running $f"
			# shellcheck disable=SC1090 # the init scripts are the user's
			. "$f"
			;;
		*.sql)
			log "running $f"
			psql -v ON_ERROR_STOP=1 --no-psqlrc --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" -q -f "$f"
			;;
		*) if [ -e "$f" ]; then log "ignoring $f"; fi ;;
		esac
	done
}

_main() {
	if [ "${1:0:1}" = '-' ]; then
		set -- postgres "$@"
	fi
	if [ "$1" = postgres ] && [ "$(id -u)" = 0 ]; then
		mkdir -p "${PGDATA:-/var/lib/postgresql/data}"
		chown postgres:postgres "${PGDATA:-/var/lib/postgresql/data}"
		chmod 0700 "${PGDATA:-/var/lib/postgresql/data}"
		exec setpriv --reuid=postgres --regid=postgres --init-groups "$0" "$@"
	fi
	if [ "$1" = postgres ]; then
		docker_setup_env
		if [ ! -s "$PGDATA/PG_VERSION" ]; then
			docker_verify_minimum_env
			docker_init_database_dir
			docker_temp_server start
			if [ "$POSTGRES_DB" != postgres ]; then
				psql -v ON_ERROR_STOP=1 --no-psqlrc --username "$POSTGRES_USER" --dbname postgres -q \
					--set db="$POSTGRES_DB" <<<'CREATE DATABASE :"db";'
			fi
			docker_process_init_files
			docker_temp_server stop
			log "init complete; ready for start up"
		fi
	fi
	exec "$@"
}

_main "$@"
