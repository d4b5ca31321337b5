#!/usr/bin/env bash
# Make `docker info`, `docker buildx version` and `docker compose version` answer on a Debian 12
# machine (root) that may have no Docker engine, no plugins and no container registry.
#
#   tests/lib/docker-engine.sh            do what is missing, print what was done
#   source tests/lib/docker-engine.sh     define the functions only; call docker_engine_ensure
#
# Steps, each skipped when its check already passes (all present: well under 1 s):
#   1. dockerd missing          -> apt-get install docker.io (Debian bookworm: Engine 20.10)
#   2. engine does not answer   -> start dockerd in the background (log: $DOCKERD_LOG), poll <= 30 s
#   3. buildx / compose missing -> Debian trixie's docker-buildx / docker-compose packages, fetched
#      with `apt-get download` from an apt state of their own (the machine's sources and pins are not
#      touched, so nothing else is upgraded), unpacked with `dpkg -x` into ~/.docker/cli-plugins.
#   4. report the client and engine API versions (a newer CLI negotiates down to the engine's API).
# Exit codes: 0 ok, 69 the engine or a plugin could not be made to answer, 77 not root when
# something has to be installed or started.

# shellcheck source=tests/lib/debian-mirror.sh
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/debian-mirror.sh"

DOCKERD_LOG="${DOCKERD_LOG:-/var/log/dockerd.log}"
DOCKER_ENGINE_WAIT_S="${DOCKER_ENGINE_WAIT_S:-30}"
CLI_PLUGINS_DIR="${DOCKER_CONFIG:-$HOME/.docker}/cli-plugins"
APT_GET=(apt-get -o DPkg::Lock::Timeout=600 -o Acquire::Retries=3)
APT_OWN_SANDBOX=(-o APT::Sandbox::User=root)
_APT_UPDATED=""

engine_log() { printf '[docker-engine] %s\n' "$*" >&2; }
engine_die() {
	local code="$1"
	shift
	printf '[docker-engine] error: %s\n' "$*" >&2
	exit "$code"
}

_need_root() {
	[ "$(id -u)" -eq 0 ] || engine_die 77 "$1 needs root (run: sudo $0)"
}

_apt_update_once() {
	[ -n "$_APT_UPDATED" ] && return 0
	DEBIAN_FRONTEND=noninteractive "${APT_GET[@]}" update -qq
	_APT_UPDATED=1
}

# 1. The engine binary.
docker_engine_install() {
	if command -v dockerd >/dev/null 2>&1; then
		return 0
	fi
	_need_root "installing docker.io"
	local t0=$SECONDS
	engine_log "dockerd missing: installing Debian's docker.io"
	_apt_update_once
	DEBIAN_FRONTEND=noninteractive "${APT_GET[@]}" install -y -qq --no-install-recommends \
		docker.io >/dev/null
	engine_log "installed docker.io $(dpkg-query -W -f '${Version}' docker.io) in $((SECONDS - t0)) s"
}

_engine_answers() { docker info >/dev/null 2>&1; }

# A dockerd that was killed (the end of a session kills what it left running) leaves its pid
# file behind, and a new dockerd refuses to start while it exists.
_clear_stale_pidfile() {
	local pidfile=/var/run/docker.pid pid
	[ -f "$pidfile" ] || return 0
	pid="$(cat "$pidfile" 2>/dev/null || true)"
	if [ -n "$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null || true)" = dockerd ]; then
		return 0
	fi
	engine_log "removing stale $pidfile (pid ${pid:-?} is not a running dockerd)"
	rm -f "$pidfile"
}

# 2. A running engine.
docker_engine_start() {
	if _engine_answers; then
		return 0
	fi
	_need_root "starting dockerd"
	local dockerd
	dockerd="$(command -v dockerd)" || engine_die 69 "dockerd not found after installation"
	engine_log "engine not answering: starting $dockerd (log: $DOCKERD_LOG)"
	_clear_stale_pidfile
	mkdir -p "$(dirname "$DOCKERD_LOG")"
	setsid "$dockerd" >>"$DOCKERD_LOG" 2>&1 </dev/null &
	local start deadline
	start=$(date +%s%N)
	deadline=$((SECONDS + DOCKER_ENGINE_WAIT_S))
	until _engine_answers; do
		if [ "$SECONDS" -ge "$deadline" ]; then
			tail -n 20 "$DOCKERD_LOG" >&2 || true
			engine_die 69 "dockerd did not answer within ${DOCKER_ENGINE_WAIT_S} s (see $DOCKERD_LOG)"
		fi
		sleep 0.2
	done
	engine_log "engine ready in $((($(date +%s%N) - start) / 1000000)) ms"
}

# 3. CLI plugins from Debian trixie, without touching the machine's apt sources or pins.

docker_plugins_install() {
	local missing=()
	docker buildx version >/dev/null 2>&1 || missing+=(docker-buildx)
	docker compose version >/dev/null 2>&1 || missing+=(docker-compose)
	if [ "${#missing[@]}" -eq 0 ]; then
		return 0
	fi
	local t0=$SECONDS
	engine_log "missing CLI plugins: ${missing[*]} -> from Debian trixie into $CLI_PLUGINS_DIR"
	local work
	work="$(mktemp -d)"
	mkdir -p "$work/lists/partial" "$work/cache/archives/partial" "$work/prefs.d" "$work/parts"
	cat >"$work/trixie.sources" <<-EOF
		Types: deb
		URIs: $(debian_mirror_uri)
		Suites: trixie
		Components: main
		Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
	EOF
	cat >"$work/prefs.d/trixie" <<-'EOF'
		Package: *
		Pin: release n=trixie
		Pin-Priority: 100
	EOF
	local apt_own=(
		-o Dir::Etc::SourceList=/dev/null
		-o "Dir::Etc::SourceParts=$work/parts"
		-o "Dir::Etc::PreferencesParts=$work/prefs.d"
		-o "Dir::State::Lists=$work/lists"
		-o "Dir::Cache=$work/cache"
		-o Debug::NoLocking=1
		"${APT_OWN_SANDBOX[@]}"
	)
	cp "$work/trixie.sources" "$work/parts/trixie.sources"
	"${APT_GET[@]}" "${apt_own[@]}" update -qq
	(cd "$work" && "${APT_GET[@]}" "${apt_own[@]}" download -qq -t trixie "${missing[@]}")
	mkdir -p "$CLI_PLUGINS_DIR"
	local deb
	for deb in "$work"/*.deb; do
		dpkg -x "$deb" "$work/root"
		engine_log "unpacked $(basename "$deb")"
	done
	install -m 0755 "$work"/root/usr/libexec/docker/cli-plugins/* "$CLI_PLUGINS_DIR/"
	rm -rf "$work"
	docker buildx version >/dev/null 2>&1 || engine_die 69 "docker buildx still missing"
	docker compose version >/dev/null 2>&1 || engine_die 69 "docker compose still missing"
	engine_log "plugins installed in $((SECONDS - t0)) s"
}

# 4. What talks to what: the CLI (28.x, API 1.50) negotiates down to the engine's API (20.10: 1.41).
docker_engine_report() {
	local client server
	client="$(docker version --format '{{.Client.Version}} (API {{.Client.APIVersion}})' 2>/dev/null)"
	server="$(docker version --format '{{.Server.Version}} (API {{.Server.APIVersion}}, min {{.Server.MinAPIVersion}})' 2>/dev/null)"
	engine_log "client $client; engine $server"
	engine_log "$(docker buildx version 2>/dev/null | head -n1); compose $(docker compose version --short 2>/dev/null)"
}

docker_engine_ensure() {
	docker_engine_install
	docker_engine_start
	docker_plugins_install
}

_is_sourced() {
	[ "${#FUNCNAME[@]}" -ge 2 ] && [ "${FUNCNAME[0]}" = '_is_sourced' ] && [ "${FUNCNAME[1]}" = 'source' ]
}

_main() {
	set -Eeuo pipefail
	case "${1:-}" in
	-h | --help)
		sed -n '2,18p' "$0"
		return 0
		;;
	--report)
		docker_engine_ensure
		docker_engine_report
		return 0
		;;
	esac
	docker_engine_ensure
	if [ "${1:-}" = "--verbose" ] || [ -n "${DOCKER_ENGINE_VERBOSE:-}" ]; then
		docker_engine_report
	fi
	engine_log "ok: docker info, buildx and compose answer"
}

if ! _is_sourced; then
	_main "$@"
fi
