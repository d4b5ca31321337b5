#!/usr/bin/env bash
# One base image name for linux/amd64 AND linux/arm64 where no container registry answers.
#
#   tests/lib/arm64-base.sh               make what is missing, print the multi-arch base name
#   tests/lib/arm64-base.sh --print-env   the same, printed as `export MULTIARCH_BASE_IMAGE=...`
#   source tests/lib/arm64-base.sh        define the functions only
#
# Steps, each skipped when its result is already there (all cached: a few seconds):
#   1. emulation: binfmt_misc mounted, qemu-aarch64 registered (qemu-user-static, binfmt-support);
#   2. an arm64 stand-in of python:3.11-slim from the SAME recipes as the amd64 one
#      (tests/images/: debian/mkrootfs.sh with ARCH arm64 -> a slim debootstrap'ed bookworm, run
#      under qemu and cached as a tarball in $AIO_CACHE_DIR; imported by debian/Dockerfile with
#      `docker buildx build --platform linux/arm64 --load` (`docker import --platform` does not
#      set the architecture on Engine 20.10); python/Dockerfile on top), tagged
#      $ARM64_DEBIAN_LOCAL and $ARM64_BASE_LOCAL (aio-local/python:3.11-slim-arm64), cached by
#      a recipe-hash label;
#   3. a registry on loopback (tests/lib/local-registry.sh, port $BASE_REGISTRY_PORT, default 5000,
#      storage in $AIO_CACHE_DIR so it survives runs);
#   4. both architectures pushed as <name>-amd64 / <name>-arm64 and joined by
#      `docker buildx imagetools create` into one manifest list, default
#      127.0.0.1:5000/python:3.11-slim: a `FROM` on it resolves the right architecture for each
#      `--platform` build, so a single BASE_IMAGE serves both.
# The amd64 half is $AMD64_BASE_LOCAL, else $BASE_IMAGE when it is a local amd64 image, else what
# `tests/lib/base-images.sh --print-env` gives (aio-local/python:3.11-slim offline).
# Needs root (debootstrap, binfmt_misc). Exit codes: 0 ok, 69 a step failed, 77 not root.

_ARM64_LIB_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=tests/lib/local-registry.sh
source "$_ARM64_LIB_DIR/local-registry.sh"
# shellcheck source=tests/lib/debian-mirror.sh
source "$_ARM64_LIB_DIR/debian-mirror.sh"

AIO_CACHE_DIR="${AIO_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/aio-federation}"
IMAGES_DIR="$(cd "$_ARM64_LIB_DIR/../images" && pwd)"
ARM64_DEBIAN_LOCAL="${ARM64_DEBIAN_LOCAL:-aio-local/debian:bookworm-slim-arm64}"
ARM64_BASE_LOCAL="${ARM64_BASE_LOCAL:-aio-local/python:3.11-slim-arm64}"
ARM64_RECIPE_LABEL=org.aio-local.recipe
BASE_REGISTRY_PORT="${BASE_REGISTRY_PORT:-5000}"
BASE_REGISTRY_DIR="${BASE_REGISTRY_DIR:-$AIO_CACHE_DIR/registry-$BASE_REGISTRY_PORT}"
MULTIARCH_BASE_NAME="${MULTIARCH_BASE_NAME:-python:3.11-slim}"
ARM64_SUITE=bookworm

arm64_log() { printf '[arm64-base] %s\n' "$*" >&2; }
arm64_die() {
	local code="$1"
	shift
	printf '[arm64-base] error: %s\n' "$*" >&2
	exit "$code"
}

_ms_since() { echo $((($(date +%s%N) - $1) / 1000000)); }

_arm64_need_root() {
	[ "$(id -u)" -eq 0 ] || arm64_die 77 "$1 needs root (run: sudo $0)"
}

_arm64_apt_install() {
	_arm64_need_root "installing $*"
	arm64_log "installing $*"
	DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq \
		--no-install-recommends "$@" >/dev/null || arm64_die 69 "apt-get install $* failed"
}


# Hash of recipe directories' files (names and contents) plus extra words.
_arm64_hash() {
	local dirs=() dir
	while [ "$#" -gt 0 ] && [ -d "$1" ]; do
		dirs+=("$1")
		shift
	done
	{
		for dir in "${dirs[@]}"; do
			(cd "$dir" && find . -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum)
		done
		printf '%s\n' "$@"
	} | sha256sum | cut -c1-16
}

arm64_debian_recipe() { _arm64_hash "$IMAGES_DIR/debian" arch=arm64; }
arm64_python_recipe() { _arm64_hash "$IMAGES_DIR/debian" "$IMAGES_DIR/python" arch=arm64; }

_arm64_image_recipe() {
	docker image inspect -f "{{index .Config.Labels \"$ARM64_RECIPE_LABEL\"}}" "$1" 2>/dev/null || true
}

# 1. Run arm64 binaries: binfmt_misc + qemu-aarch64 with the F flag (works inside chroots and
#    containers without copying qemu into them).
arm64_emulation_ensure() {
	if [ -r /proc/sys/fs/binfmt_misc/qemu-aarch64 ] &&
		grep -q '^enabled' /proc/sys/fs/binfmt_misc/qemu-aarch64; then
		return 0
	fi
	_arm64_need_root "registering qemu-aarch64 with binfmt_misc"
	if [ ! -e /proc/sys/fs/binfmt_misc/register ]; then
		mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc ||
			arm64_die 69 "cannot mount binfmt_misc (a container without CAP_SYS_ADMIN?)"
	fi
	if [ ! -e /usr/share/binfmts/qemu-aarch64 ] || ! command -v update-binfmts >/dev/null 2>&1; then
		_arm64_apt_install qemu-user-static binfmt-support
	fi
	update-binfmts --enable qemu-aarch64 >/dev/null 2>&1 || true
	grep -q '^enabled' /proc/sys/fs/binfmt_misc/qemu-aarch64 2>/dev/null ||
		arm64_die 69 "qemu-aarch64 is not registered with binfmt_misc (update-binfmts --enable qemu-aarch64)"
	arm64_log "qemu-aarch64 registered with binfmt_misc"
	if docker info >/dev/null 2>&1 &&
		! docker buildx inspect 2>/dev/null | grep -q 'linux/arm64'; then
		arm64_log "note: the Docker engine started before emulation was registered; restart dockerd so BuildKit lists linux/arm64"
	fi
}

# 2a. The arm64 Debian root file system (tests/images/debian/mkrootfs.sh), cached as a tarball.
arm64_rootfs_ensure() {
	local tarball start
	tarball="$AIO_CACHE_DIR/debian-$ARM64_SUITE-arm64-$(arm64_debian_recipe).tar"
	if [ -s "$tarball" ]; then
		printf '%s\n' "$tarball"
		return 0
	fi
	_arm64_need_root "debootstrap"
	command -v debootstrap >/dev/null 2>&1 || _arm64_apt_install debootstrap
	mkdir -p "$AIO_CACHE_DIR"
	start=$(date +%s%N)
	arm64_log "debootstrap --arch=arm64 --variant=minbase $ARM64_SUITE (under qemu, a few minutes)"
	"$IMAGES_DIR/debian/mkrootfs.sh" "$tarball.partial" "$ARM64_SUITE" arm64 "$(debian_mirror_uri)" ||
		arm64_die 69 "tests/images/debian/mkrootfs.sh for arm64 failed (log above; is qemu-aarch64 registered?)"
	mv "$tarball.partial" "$tarball"
	arm64_log "arm64 root file system in $(_ms_since "$start") ms: $tarball ($(du -h "$tarball" | cut -f1))"
	printf '%s\n' "$tarball"
}

# 2b. aio-local/debian:bookworm-slim-arm64, then the python stand-in on it (same recipes as the
#     amd64 stand-ins, built with --platform linux/arm64); skipped when the recipe label matches.
arm64_image_ensure() {
	local recipe start ctx tarball
	recipe="$(arm64_python_recipe)"
	if [ "$(_arm64_image_recipe "$ARM64_BASE_LOCAL")" = "$recipe" ]; then
		return 0
	fi
	if [ "$(_arm64_image_recipe "$ARM64_DEBIAN_LOCAL")" != "$(arm64_debian_recipe)" ]; then
		tarball="$(arm64_rootfs_ensure)"
		ctx="$(mktemp -d)"
		ln "$tarball" "$ctx/rootfs.tar" 2>/dev/null || cp "$tarball" "$ctx/rootfs.tar"
		cp "$IMAGES_DIR/debian/Dockerfile" "$ctx/Dockerfile"
		start=$(date +%s%N)
		docker buildx build --platform linux/arm64 --load --quiet -t "$ARM64_DEBIAN_LOCAL" \
			--label "$ARM64_RECIPE_LABEL=$(arm64_debian_recipe)" "$ctx" >/dev/null ||
			arm64_die 69 "importing the arm64 root file system failed"
		rm -rf "$ctx"
		arm64_log "imported $ARM64_DEBIAN_LOCAL in $(_ms_since "$start") ms"
	fi
	start=$(date +%s%N)
	arm64_log "building $ARM64_BASE_LOCAL (apt-get under qemu)"
	docker buildx build --platform linux/arm64 --load --quiet -t "$ARM64_BASE_LOCAL" \
		--label "$ARM64_RECIPE_LABEL=$recipe" --build-arg "DEBIAN_IMAGE=$ARM64_DEBIAN_LOCAL" \
		"$IMAGES_DIR/python" >/dev/null || arm64_die 69 "building $ARM64_BASE_LOCAL failed"
	local arch
	arch="$(docker image inspect -f '{{.Os}}/{{.Architecture}}' "$ARM64_BASE_LOCAL")"
	[ "$arch" = linux/arm64 ] || arm64_die 69 "$ARM64_BASE_LOCAL is $arch, not linux/arm64"
	[ "$(docker run --rm --platform linux/arm64 "$ARM64_BASE_LOCAL" python -c 'import platform; print(platform.machine())')" = aarch64 ] ||
		arm64_die 69 "$ARM64_BASE_LOCAL does not run python under emulation"
	arm64_log "built $ARM64_BASE_LOCAL ($arch) in $(_ms_since "$start") ms"
}

# The amd64 half: whatever tests/lib/base-images.sh made.
_amd64_base_local() {
	if [ -n "${AMD64_BASE_LOCAL:-}" ]; then
		printf '%s\n' "$AMD64_BASE_LOCAL"
		return 0
	fi
	local name="${BASE_IMAGE:-}"
	if [ -n "$name" ] && [ "$(docker image inspect -f '{{.Architecture}}' "$name" 2>/dev/null)" = amd64 ]; then
		printf '%s\n' "$name"
		return 0
	fi
	name=""
	if [ -r "$_ARM64_LIB_DIR/base-images.sh" ]; then
		name="$(bash "$_ARM64_LIB_DIR/base-images.sh" --print-env |
			sed -n 's/^export BASE_IMAGE=//p' | tr -d "'\"" | tail -n1)"
	fi
	printf '%s\n' "${name:-aio-local/python:3.11-slim}"
}

# 3 + 4. Push both halves to the loopback registry and join them under one name (printed).
multiarch_base_ensure() {
	local amd64 registry ref stamp want start
	amd64="$(_amd64_base_local)"
	[ "$(docker image inspect -f '{{.Architecture}}' "$amd64" 2>/dev/null)" = amd64 ] ||
		arm64_die 69 "no local amd64 base image $amd64 (make it with: bash tests/lib/base-images.sh)"
	arm64_image_ensure
	registry="$(local_registry_start "$BASE_REGISTRY_PORT" "$BASE_REGISTRY_DIR")" ||
		arm64_die 69 "the base registry did not start (tests/lib/local-registry.sh)"
	ref="$registry/$MULTIARCH_BASE_NAME"
	stamp="$BASE_REGISTRY_DIR/multiarch-$(printf '%s' "$MULTIARCH_BASE_NAME" | tr '/:' '__').stamp"
	want="$(docker image inspect -f '{{.Id}}' "$amd64" "$ARM64_BASE_LOCAL" | tr '\n' ' ')"
	if [ "$(cat "$stamp" 2>/dev/null)" = "$want" ] &&
		docker buildx imagetools inspect "$ref" >/dev/null 2>&1; then
		printf '%s\n' "$ref"
		return 0
	fi
	start=$(date +%s%N)
	local arch src
	for arch in amd64 arm64; do
		src="$amd64"
		[ "$arch" = arm64 ] && src="$ARM64_BASE_LOCAL"
		docker tag "$src" "$ref-$arch"
		docker push --quiet "$ref-$arch" >/dev/null || arm64_die 69 "docker push $ref-$arch failed"
	done
	docker buildx imagetools create -t "$ref" "$ref-amd64" "$ref-arm64" >/dev/null 2>&1 ||
		arm64_die 69 "docker buildx imagetools create -t $ref failed"
	printf '%s' "$want" >"$stamp"
	arm64_log "pushed $ref-amd64 and $ref-arm64, joined as $ref in $(_ms_since "$start") ms"
	printf '%s\n' "$ref"
}

_is_sourced() {
	[ "${#FUNCNAME[@]}" -ge 2 ] && [ "${FUNCNAME[0]}" = '_is_sourced' ] && [ "${FUNCNAME[1]}" = 'source' ]
}

_main() {
	set -Eeuo pipefail
	case "${1:-}" in
	-h | --help)
		sed -n '2,24p' "$0" | sed 's/^# \{0,1\}//'
		return 0
		;;
	"" | --print-env) ;;
	*)
		printf 'unknown argument: %s (see --help)\n' "$1" >&2
		return 64
		;;
	esac
	docker info >/dev/null 2>&1 || bash "$_ARM64_LIB_DIR/docker-engine.sh" >&2
	arm64_emulation_ensure
	local ref
	ref="$(multiarch_base_ensure)"
	if [ "${1:-}" = --print-env ]; then
		printf 'export MULTIARCH_BASE_IMAGE=%q\n' "$ref"
	else
		printf '%s\n' "$ref"
	fi
}

if ! _is_sourced; then
	_main "$@"
fi
