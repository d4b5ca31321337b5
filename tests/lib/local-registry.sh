#!/usr/bin/env bash
# A container registry on loopback for tests: Debian's docker-registry (distribution 2.8) with a
# config, storage and log of its own, listening on 127.0.0.1 only (no auth unless --htpasswd;
# 127.0.0.0/8 is an insecure registry for the Docker engine by default: no daemon.json change).
#
#   tests/lib/local-registry.sh start [--port N|auto] [--dir DIR] [--htpasswd FILE]
#                                                     prints HOST:PORT on stdout; --htpasswd: ask
#                                                     for credentials (bcrypt htpasswd file)
#   tests/lib/local-registry.sh stop  [--port N] [--dir DIR] [--purge]
#   tests/lib/local-registry.sh status [--port N] [--dir DIR]
#   source tests/lib/local-registry.sh   defines local_registry_start/stop/status/catalog/tags
#
# DIR (default ${TMPDIR:-/tmp}/aio-registry-PORT) holds config.yml, storage/, registry.log and
# registry.pid; storage survives stop/start unless --purge. `start` on a port this DIR's registry
# already serves reuses it. Installs docker-registry with apt-get when missing (root).
# Exit codes: 0 ok, 64 usage, 69 the registry could not be started or the port is taken.

LOCAL_REGISTRY_WAIT_S="${LOCAL_REGISTRY_WAIT_S:-15}"

registry_log() { printf '[local-registry] %s\n' "$*" >&2; }
registry_fail() {
	local code="$1"
	shift
	printf '[local-registry] error: %s\n' "$*" >&2
	return "$code"
}

local_registry_dir() { printf '%s\n' "${2:-${TMPDIR:-/tmp}/aio-registry-$1}"; }

# Something answers the registry API (/v2/) on 127.0.0.1:PORT (200, or 401: credentials needed).
local_registry_answers() {
	local code
	code="$(curl -sS -o /dev/null -w '%{http_code}' --max-time 2 "http://127.0.0.1:$1/v2/" 2>/dev/null)"
	[ "$code" = 200 ] || [ "$code" = 401 ]
}

_port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# First port from $1 (default 5050) on which nothing listens.
local_registry_free_port() {
	local port="${1:-5050}"
	while _port_in_use "$port"; do
		port=$((port + 1))
		[ "$port" -lt 65535 ] || registry_fail 69 "no free port" || return
	done
	printf '%s\n' "$port"
}

_registry_binary() {
	if command -v docker-registry >/dev/null 2>&1; then
		command -v docker-registry
		return 0
	fi
	[ "$(id -u)" -eq 0 ] ||
		registry_fail 69 "docker-registry missing; install it: sudo apt-get install docker-registry" || return
	registry_log "installing Debian's docker-registry"
	DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq \
		--no-install-recommends docker-registry >/dev/null ||
		registry_fail 69 "apt-get install docker-registry failed" || return
	command -v docker-registry
}

_registry_pid_alive() {
	local pidfile="$1/registry.pid" pid
	[ -s "$pidfile" ] || return 1
	pid="$(cat "$pidfile")"
	kill -0 "$pid" 2>/dev/null
}

# local_registry_start PORT [DIR] [HTPASSWD]: start (or reuse) the registry; prints 127.0.0.1:PORT.
local_registry_start() {
	local port="$1" dir binary htpasswd="${3:-}" auth=""
	dir="$(local_registry_dir "$port" "${2:-}")"
	if [ -n "$htpasswd" ]; then
		[ -r "$htpasswd" ] || registry_fail 64 "htpasswd file $htpasswd is not readable" || return
		auth="$(printf 'auth:\n  htpasswd:\n    realm: aio-test-registry\n    path: %s' "$(cd "$(dirname "$htpasswd")" && pwd)/$(basename "$htpasswd")")"
	fi
	if _registry_pid_alive "$dir" && local_registry_answers "$port"; then
		registry_log "reusing the registry on 127.0.0.1:$port (pid $(cat "$dir/registry.pid"), storage $dir/storage)"
		printf '127.0.0.1:%s\n' "$port"
		return 0
	fi
	if _port_in_use "$port"; then
		registry_fail 69 "127.0.0.1:$port is taken by another process; pick another: --port auto" || return
	fi
	binary="$(_registry_binary)" || return
	mkdir -p "$dir/storage"
	cat >"$dir/config.yml.tmp" <<-EOF
		# Written by tests/lib/local-registry.sh: loopback only, no auth, storage of its own.
		version: 0.1
		log:
		  level: warn
		  accesslog:
		    disabled: true
		  fields:
		    service: registry
		storage:
		  filesystem:
		    rootdirectory: $dir/storage
		  delete:
		    enabled: true
		  cache:
		    blobdescriptor: inmemory
		http:
		  addr: 127.0.0.1:$port
		  headers:
		    X-Content-Type-Options: [nosniff]
		$auth
	EOF
	mv "$dir/config.yml.tmp" "$dir/config.yml"
	setsid "$binary" serve "$dir/config.yml" >>"$dir/registry.log" 2>&1 </dev/null &
	printf '%s\n' "$!" >"$dir/registry.pid"
	local deadline=$((SECONDS + LOCAL_REGISTRY_WAIT_S))
	until local_registry_answers "$port"; do
		if ! _registry_pid_alive "$dir" || [ "$SECONDS" -ge "$deadline" ]; then
			tail -n 20 "$dir/registry.log" >&2 || true
			registry_fail 69 "the registry did not answer on 127.0.0.1:$port (log: $dir/registry.log)" || return
		fi
		sleep 0.1
	done
	registry_log "started on 127.0.0.1:$port (pid $(cat "$dir/registry.pid"), storage $dir/storage)"
	printf '127.0.0.1:%s\n' "$port"
}

# local_registry_stop PORT [DIR] [purge]: stop this DIR's registry; "purge" also deletes DIR.
local_registry_stop() {
	local port="$1" dir pid i
	dir="$(local_registry_dir "$port" "${2:-}")"
	if _registry_pid_alive "$dir"; then
		pid="$(cat "$dir/registry.pid")"
		kill -TERM "$pid" 2>/dev/null || true
		for i in $(seq 1 50); do
			kill -0 "$pid" 2>/dev/null || break
			[ "$i" -lt 50 ] || kill -KILL "$pid" 2>/dev/null || true
			sleep 0.1
		done
		registry_log "stopped the registry on 127.0.0.1:$port (pid $pid)"
	fi
	rm -f "$dir/registry.pid"
	if [ "${3:-}" = purge ]; then
		rm -rf "$dir"
	fi
}

local_registry_status() {
	local port="$1" dir
	dir="$(local_registry_dir "$port" "${2:-}")"
	if _registry_pid_alive "$dir" && local_registry_answers "$port"; then
		printf 'running on 127.0.0.1:%s (pid %s, storage %s)\n' "$port" "$(cat "$dir/registry.pid")" "$dir/storage"
		return 0
	fi
	printf 'not running (127.0.0.1:%s, dir %s)\n' "$port" "$dir"
	return 1
}

# Repository names in the registry, one a line.
local_registry_catalog() {
	curl -fsS --max-time 5 "http://$1/v2/_catalog?n=1000" | tr -d ' \n' |
		sed -n 's/.*"repositories":\[\(.*\)\].*/\1/p' | tr ',' '\n' | tr -d '"' | sed '/^$/d' | sort
}

# Tags of one repository, one a line (nothing when the repository does not exist).
local_registry_tags() {
	curl -fsS --max-time 5 "http://$1/v2/$2/tags/list?n=1000" 2>/dev/null | tr -d ' \n' |
		sed -n 's/.*"tags":\[\(.*\)\].*/\1/p' | tr ',' '\n' | tr -d '"' | sed '/^$/d' | sort
}

_is_sourced() {
	[ "${#FUNCNAME[@]}" -ge 2 ] && [ "${FUNCNAME[0]}" = '_is_sourced' ] && [ "${FUNCNAME[1]}" = 'source' ]
}

_main() {
	set -Eeuo pipefail
	local cmd="${1:-}" port="${LOCAL_REGISTRY_PORT:-5000}" dir="" purge="" htpasswd=""
	[ "$#" -gt 0 ] && shift
	while [ "$#" -gt 0 ]; do
		case "$1" in
		--port)
			port="${2:?--port needs a number or auto}"
			shift
			;;
		--dir)
			dir="${2:?--dir needs a directory}"
			shift
			;;
		--htpasswd)
			htpasswd="${2:?--htpasswd needs a file}"
			shift
			;;
		--purge) purge=purge ;;
		*)
			printf 'unknown argument: %s (see --help)\n' "$1" >&2
			return 64
			;;
		esac
		shift
	done
	if [ "$port" = auto ]; then
		port="$(local_registry_free_port)"
	fi
	case "$cmd" in
	start) local_registry_start "$port" "$dir" "$htpasswd" ;;
	stop) local_registry_stop "$port" "$dir" "$purge" ;;
	status) local_registry_status "$port" "$dir" ;;
	-h | --help | "")
		sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'
		[ -n "$cmd" ]
		;;
	*)
		printf 'unknown command: %s (start, stop, status)\n' "$cmd" >&2
		return 64
		;;
	esac
}

if ! _is_sourced; then
	_main "$@"
fi
