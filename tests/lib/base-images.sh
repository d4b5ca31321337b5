#!/usr/bin/env bash
# Base images for the build and the local stack: the real ones when a registry answers, otherwise
# stand-ins built from Debian packages (recipes in tests/images/), cached by a recipe-hash label.
#
#   eval "$(tests/lib/base-images.sh --print-env)"   sets BASE_IMAGE, POSTGRES_IMAGE, N8N_IMAGE
#   tests/lib/base-images.sh                         same, human-readable
#   source tests/lib/base-images.sh; base_images_ensure
#
# Per image (skipped when the variable is already set by the caller):
#   BASE_IMAGE      python:3.11-slim if `docker pull` works, else aio-local/python:3.11-slim
#                   (Debian bookworm's python3.11 on a debootstrap'ed slim Debian, ~125 MB)
#   POSTGRES_IMAGE  postgres:16 if `docker pull` works, else aio-local/postgres:15
#                   (Debian bookworm's postgresql-15: one major version BELOW postgres:16)
#   N8N_IMAGE       n8nio/n8n:2.40.7 if `docker pull` works, else aio-local/n8n:2.40.7 (the host
#                   installation of tests/lib/n8n-install.sh on the slim Debian stand-in;
#                   tests/images/n8n; 4.5 min once that installation exists, 2.3 GB)
# AIO_OFFLINE=1 skips the registry checks; AIO_REBUILD_BASES=1 rebuilds the stand-ins.
# Needs a running engine (tests/lib/docker-engine.sh); building stand-ins needs root + debootstrap.

BASE_IMAGES_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/../images" && pwd)"
# shellcheck source=tests/lib/debian-mirror.sh
source "$(dirname "$BASE_IMAGES_DIR")/lib/debian-mirror.sh"
AIO_LOCAL_DEBIAN="${AIO_LOCAL_DEBIAN:-aio-local/debian:bookworm-slim}"
AIO_LOCAL_PYTHON="${AIO_LOCAL_PYTHON:-aio-local/python:3.11-slim}"
AIO_LOCAL_POSTGRES="${AIO_LOCAL_POSTGRES:-aio-local/postgres:15}"
AIO_LOCAL_N8N="${AIO_LOCAL_N8N:-aio-local/n8n:2.40.7}"
N8N_OFFICIAL_IMAGE="${N8N_OFFICIAL_IMAGE:-n8nio/n8n:2.40.7}"
PIP_CA_FILE="${PIP_CA_FILE:-/etc/ssl/certs/ca-certificates.crt}"
RECIPE_LABEL="org.aio-local.recipe"
REGISTRY_PULL_TIMEOUT_S="${REGISTRY_PULL_TIMEOUT_S:-60}"

bi_log() { printf '[base-images] %s\n' "$*" >&2; }

_now_ms() { date +%s%3N; }

# Hash of a recipe directory's files (names and contents) plus any extra words (parents' hashes).
_recipe_hash() {
	local dir="$1"
	shift
	{
		(cd "$dir" && find . -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum)
		printf '%s\n' "$@"
	} | sha256sum | cut -c1-16
}

_image_recipe() {
	docker image inspect --format "{{ index .Config.Labels \"$RECIPE_LABEL\" }}" "$1" 2>/dev/null || true
}

# True when the registry serves IMAGE (pulls it: the build needs it anyway).
_registry_serves() {
	[ "${AIO_OFFLINE:-0}" = 1 ] && return 1
	timeout "$REGISTRY_PULL_TIMEOUT_S" docker pull -q "$1" >/dev/null 2>&1
}

# Build TAG from recipe DIR unless an image with the same recipe hash exists. Extra args go to build.
_build_cached() {
	local tag="$1" dir="$2" hash="$3"
	shift 3
	if [ "${AIO_REBUILD_BASES:-0}" != 1 ] && [ "$(_image_recipe "$tag")" = "$hash" ]; then
		bi_log "$tag: cached (recipe $hash)"
		return 0
	fi
	local t0
	t0=$(_now_ms)
	bi_log "$tag: building (recipe $hash)"
	docker buildx build --load --quiet --label "$RECIPE_LABEL=$hash" -t "$tag" "$@" "$dir" >/dev/null
	bi_log "$tag: built in $(($(_now_ms) - t0)) ms, $(_image_size_mb "$tag") MB"
}

_image_size_mb() {
	docker image inspect --format '{{.Size}}' "$1" | awk '{printf "%.1f", $1 / 1000000}'
}

_debian_hash() { _recipe_hash "$BASE_IMAGES_DIR/debian" "arch=$(dpkg --print-architecture)"; }

build_debian_standin() {
	local hash
	hash="$(_debian_hash)"
	if [ "${AIO_REBUILD_BASES:-0}" != 1 ] && [ "$(_image_recipe "$AIO_LOCAL_DEBIAN")" = "$hash" ]; then
		bi_log "$AIO_LOCAL_DEBIAN: cached (recipe $hash)"
		return 0
	fi
	if ! command -v debootstrap >/dev/null 2>&1; then
		bi_log "installing debootstrap"
		DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq \
			--no-install-recommends debootstrap >/dev/null 2>&1 || {
			DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 update -qq
			DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq \
				--no-install-recommends debootstrap >/dev/null
		}
	fi
	local ctx t0 mirror
	ctx="$(mktemp -d)"
	mirror="$(debian_mirror_uri)"
	t0=$(_now_ms)
	bi_log "$AIO_LOCAL_DEBIAN: debootstrap --variant=minbase bookworm"
	"$BASE_IMAGES_DIR/debian/mkrootfs.sh" "$ctx/rootfs.tar" bookworm "$(dpkg --print-architecture)" \
		"$mirror"
	bi_log "$AIO_LOCAL_DEBIAN: root file system in $(($(_now_ms) - t0)) ms"
	cp "$BASE_IMAGES_DIR/debian/Dockerfile" "$ctx/Dockerfile"
	_build_cached "$AIO_LOCAL_DEBIAN" "$ctx" "$hash"
	rm -rf "$ctx"
}

build_python_standin() {
	build_debian_standin
	_build_cached "$AIO_LOCAL_PYTHON" "$BASE_IMAGES_DIR/python" \
		"$(_recipe_hash "$BASE_IMAGES_DIR/python" "$(_debian_hash)")" \
		--build-arg "DEBIAN_IMAGE=$AIO_LOCAL_DEBIAN"
}

build_postgres_standin() {
	build_debian_standin
	_build_cached "$AIO_LOCAL_POSTGRES" "$BASE_IMAGES_DIR/postgres" \
		"$(_recipe_hash "$BASE_IMAGES_DIR/postgres" "$(_debian_hash)")" \
		--build-arg "DEBIAN_IMAGE=$AIO_LOCAL_DEBIAN"
}

# n8n: the image is made from the host installation of tests/lib/n8n-install.sh (installed here
# when missing: PyPI and npm through the host's CA bundle), so n8n is fetched and built once per
# machine for the n8n tests and for this image. The recipe hash covers the Dockerfile, the Debian
# base and the installation's version marker.
build_n8n_standin() {
	build_debian_standin
	local launcher prefix
	launcher="$(bash "$(dirname "$BASE_IMAGES_DIR")/lib/n8n-install.sh")"
	prefix="$(cd "$(dirname "$launcher")/.." && pwd)"
	_build_cached "$AIO_LOCAL_N8N" "$prefix" \
		"$(_recipe_hash "$BASE_IMAGES_DIR/n8n" "$(_debian_hash)" "$(cat "$prefix/.complete")")" \
		-f "$BASE_IMAGES_DIR/n8n/Dockerfile" --build-arg "N8N_BASE_IMAGE=$AIO_LOCAL_DEBIAN"
}

base_images_ensure() {
	local t0
	if [ -z "${BASE_IMAGE:-}" ]; then
		t0=$(_now_ms)
		if _registry_serves python:3.11-slim; then
			BASE_IMAGE=python:3.11-slim
			bi_log "BASE_IMAGE: python:3.11-slim pulled from the registry"
		else
			bi_log "BASE_IMAGE: no registry serves python:3.11-slim -> local stand-in"
			build_python_standin
			BASE_IMAGE="$AIO_LOCAL_PYTHON"
		fi
		bi_log "BASE_IMAGE=$BASE_IMAGE ready in $(($(_now_ms) - t0)) ms"
	fi
	if [ -z "${POSTGRES_IMAGE:-}" ]; then
		t0=$(_now_ms)
		if _registry_serves postgres:16; then
			POSTGRES_IMAGE=postgres:16
			bi_log "POSTGRES_IMAGE: postgres:16 pulled from the registry"
		else
			bi_log "POSTGRES_IMAGE: no registry serves postgres:16 -> stand-in with Debian's PostgreSQL 15"
			build_postgres_standin
			POSTGRES_IMAGE="$AIO_LOCAL_POSTGRES"
		fi
		bi_log "POSTGRES_IMAGE=$POSTGRES_IMAGE ready in $(($(_now_ms) - t0)) ms"
	fi
	if [ -z "${N8N_IMAGE:-}" ]; then
		t0=$(_now_ms)
		if _registry_serves "$N8N_OFFICIAL_IMAGE"; then
			N8N_IMAGE="$N8N_OFFICIAL_IMAGE"
			bi_log "N8N_IMAGE: $N8N_OFFICIAL_IMAGE pulled from the registry"
		else
			bi_log "N8N_IMAGE: no registry serves $N8N_OFFICIAL_IMAGE -> stand-in built from npm"
			build_n8n_standin
			N8N_IMAGE="$AIO_LOCAL_N8N"
		fi
		bi_log "N8N_IMAGE=$N8N_IMAGE ready in $(($(_now_ms) - t0)) ms"
	fi
	export BASE_IMAGE POSTGRES_IMAGE N8N_IMAGE
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
	esac
	base_images_ensure
	if [ "${1:-}" = --print-env ]; then
		printf 'export BASE_IMAGE=%q\nexport POSTGRES_IMAGE=%q\nexport N8N_IMAGE=%q\n' \
			"$BASE_IMAGE" "$POSTGRES_IMAGE" "$N8N_IMAGE"
	else
		printf 'BASE_IMAGE=%s\nPOSTGRES_IMAGE=%s\nN8N_IMAGE=%s\n' "$BASE_IMAGE" "$POSTGRES_IMAGE" "$N8N_IMAGE"
	fi
}

if ! _is_sourced; then
	_main "$@"
fi
