#!/usr/bin/env bash
# Build the AIO Federation agent image for linux/amd64 + linux/arm64, tag it from git, push it
# and say exactly what was pushed.
#
# Usage: ./build-and-push.sh [dev|staging|prod|vX.Y.Z] [options]
#
#   dev|staging|prod   tags sha-<sha>, <channel>, <channel>-<sha>                 (default: dev)
#   vX.Y.Z             tags sha-<sha>, X.Y.Z, X.Y, X, latest; a pre-release such as v1.2.0-rc.1
#                      gets only sha-<sha> and 1.2.0-rc.1 (no floating tags, no latest)
#   --platforms LIST   comma-separated, default linux/amd64,linux/arm64
#   --registry REG     default $REGISTRY, else ghcr.io/<owner> with owner from $GITHUB_OWNER,
#                      $GITHUB_REPOSITORY_OWNER or the github.com `origin` remote
#   --image NAME       default $IMAGE_NAME, else aio-federation-agent
#   --no-push          build only (the result stays in the build cache)
#   --load             build into the local Docker engine, no push (default platform: this
#                      machine's; the classic image store holds one platform per tag)
#   --dry-run          run the pre-flight checks, print the plan, build and push nothing
#   --allow-dirty      build a tree with uncommitted changes; every tag then ends in -dirty
#   --force            overwrite an existing release tag (X.Y.Z) in the registry
#   --json             the report (or the failure) as one JSON document on stdout; the human
#                      report and the build log go to stderr
#   -h, --help         this text
#
# Environment: BASE_IMAGE (default python:3.11-slim; passed as --build-arg BASE_IMAGE),
# PIP_CA_FILE (CA bundle for pip inside the build, default /etc/ssl/certs/ca-certificates.crt when
# present; passed as the BuildKit secret `pip_ca`, never as a build argument), DOCKERFILE (default
# aio-base.Dockerfile), BUILDX_BUILDER (which buildx builder to use).
#
# Pre-flight, before anything is built: the Docker engine answers; buildx is present; the git tree
# is clean (or --allow-dirty); when pushing, the registry answers and we are logged in, and a
# release tag is not already there (or --force); the builder can build every platform (QEMU
# emulation for foreign ones). Every problem is listed at once, each with what to do.
#
# Multi-arch: a builder that can build several platforms at once (docker-container driver,
# containerd image store) gets ONE `buildx build --platform a,b --push` with SBOM and provenance
# attestations. The plain docker driver (Docker Engine < 24) builds and pushes each platform to
# <tag>-<arch> and joins them with `docker buildx imagetools create`: the same tags and manifest
# list, without attestations (the report says so).
#
# Exit codes: 0 ok · 64 usage (bad option or version) · 69 a dependency is unavailable (engine,
# buildx, registry, emulation) · 70 the build, push or manifest step failed · 77 not logged in to
# the registry · 78 refused (dirty tree, existing release tag, no registry configured)
set -Eeuo pipefail

readonly EX_USAGE=64 EX_UNAVAILABLE=69 EX_SOFTWARE=70 EX_NOPERM=77 EX_CONFIG=78

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

# --- options (set by parse_args) ---------------------------------------------------------------
TARGET=dev
PLATFORMS=linux/amd64,linux/arm64
PLATFORMS_GIVEN=0
REGISTRY_OPT=""
IMAGE="${IMAGE_NAME:-aio-federation-agent}"
MODE=push # push | load | none
DRY_RUN=0
ALLOW_DIRTY=0
FORCE=0
JSON=0

# --- state (set by the steps) ------------------------------------------------------------------
STEP=arguments
PROBLEMS=()      # "code|step|message|fix"
REPO_REF=""      # registry/image
TAGS=()          # tag names (no repository)
RELEASE_TAG=""   # X.Y.Z[-pre] for versions
VERSION_LABEL="" # org.opencontainers.image.version
SHA="" SHORT_SHA="" DIRTY=0 COMMIT_EPOCH="" CREATED="" SOURCE_URL=""
BUILDER_NAME="" BUILDER_DRIVER="" BUILDER_PLATFORMS="" MULTI_PLATFORM=0 ATTESTATIONS=0
ATTESTATION_NOTE=""
PIP_CA=""
DIGEST=""
PLATFORM_LIST=()
declare -A PLATFORM_DIGEST=() PLATFORM_SIZE=() PLATFORM_SECONDS=()
HELPER_TAGS=()

# --- output ------------------------------------------------------------------------------------
say() { printf '%s\n' "$*" >&2; }
info() { say "build-and-push: $*"; }

# problem CODE STEP MESSAGE FIX: remember a pre-flight failure (all are reported together).
problem() { PROBLEMS+=("$1|$2|$3|$4"); }

json_str() {
	local s="$1"
	s="${s//\\/\\\\}"
	s="${s//\"/\\\"}"
	s="${s//$'\n'/\\n}"
	s="${s//$'\t'/\\t}"
	s="${s//[$'\001'-$'\037']/}"
	printf '"%s"' "$s"
}

# Print every collected problem and exit with the first one's code.
fail_with_problems() {
	local entry code step message fix first_code="" first_step="" n="${#PROBLEMS[@]}"
	say ""
	local consequence=""
	case "$STEP" in
	arguments | pre-flight) consequence="; nothing was built or pushed" ;;
	esac
	say "build-and-push: FAILED in $STEP ($n problem$([ "$n" -eq 1 ] || echo s))$consequence:"
	for entry in "${PROBLEMS[@]}"; do
		IFS='|' read -r code step message fix <<<"$entry"
		[ -n "$first_code" ] || first_code="$code" first_step="$step"
		say "  - [$step] $message"
		say "      fix: $fix"
	done
	if [ "$JSON" -eq 1 ]; then
		local sep=""
		printf '{"ok": false, "failed_step": %s, "exit_code": %s, "problems": [' "$(json_str "$first_step")" "$first_code"
		for entry in "${PROBLEMS[@]}"; do
			IFS='|' read -r code step message fix <<<"$entry"
			printf '%s{"step": %s, "message": %s, "fix": %s}' "$sep" "$(json_str "$step")" \
				"$(json_str "$message")" "$(json_str "$fix")"
			sep=", "
		done
		printf ']}\n'
	fi
	exit "$first_code"
}

# die CODE STEP MESSAGE FIX: one failure after pre-flight (build, push, manifest).
die() {
	problem "$@"
	STEP="$2"
	fail_with_problems
}

on_error() {
	local rc=$? line="$1"
	trap - ERR
	say "build-and-push: unexpected failure in step '$STEP' (line $line, exit $rc)"
	exit "$EX_SOFTWARE"
}
trap 'on_error $LINENO' ERR

usage() { sed -n '2,/^set -Eeuo/p' "${BASH_SOURCE[0]}" | sed '$d' | sed 's/^# \{0,1\}//'; }

# --- 1. arguments ------------------------------------------------------------------------------
parse_args() {
	local positional=()
	while [ "$#" -gt 0 ]; do
		case "$1" in
		-h | --help)
			usage
			exit 0
			;;
		--platforms | --registry | --image)
			[ "$#" -ge 2 ] && [ -n "$2" ] && [ "${2#-}" = "$2" ] ||
				usage_error "$1 needs a value" "e.g. $1 $(example_for "$1")"
			case "$1" in
			--platforms) PLATFORMS="$2" PLATFORMS_GIVEN=1 ;;
			--registry) REGISTRY_OPT="$2" ;;
			--image) IMAGE="$2" ;;
			esac
			shift
			;;
		--platforms=* | --registry=* | --image=*)
			local name="${1%%=*}" value="${1#*=}"
			[ -n "$value" ] || usage_error "$name needs a value" "e.g. $name $(example_for "$name")"
			case "$name" in
			--platforms) PLATFORMS="$value" PLATFORMS_GIVEN=1 ;;
			--registry) REGISTRY_OPT="$value" ;;
			--image) IMAGE="$value" ;;
			esac
			;;
		--no-push) set_mode none "$1" ;;
		--load) set_mode load "$1" ;;
		--dry-run) DRY_RUN=1 ;;
		--allow-dirty) ALLOW_DIRTY=1 ;;
		--force) FORCE=1 ;;
		--json) JSON=1 ;;
		-*) usage_error "unknown option $1" "see ./build-and-push.sh --help" ;;
		*) positional+=("$1") ;;
		esac
		shift
	done
	if [ "${#positional[@]}" -gt 1 ]; then
		usage_error "one version or channel expected, got: ${positional[*]}" \
			"give one of dev, staging, prod or vX.Y.Z"
	fi
	[ "${#positional[@]}" -eq 0 ] || TARGET="${positional[0]}"
	if [ "$MODE" = load ] && [ "$PLATFORMS_GIVEN" -eq 0 ]; then
		PLATFORMS="linux/$(native_arch)" # --load without --platforms: this machine's platform
	fi
	validate_target
	validate_platforms
	validate_image
}

example_for() {
	case "$1" in
	--platforms) echo linux/amd64,linux/arm64 ;;
	--registry) echo ghcr.io/my-org ;;
	--image) echo aio-federation-agent ;;
	esac
}

set_mode() {
	if [ "$MODE" != push ] && [ "$MODE" != "$1" ]; then
		usage_error "--no-push and --load exclude each other" "give only one of them"
	fi
	MODE="$1"
}

usage_error() { die "$EX_USAGE" arguments "$1" "$2"; }

# Semantic version 2.0.0 with a leading v; build metadata (+...) cannot be a Docker tag.
readonly SEMVER_RE='^v(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)(-((0|[1-9][0-9]*|[0-9]*[A-Za-z-][0-9A-Za-z-]*)(\.(0|[1-9][0-9]*|[0-9]*[A-Za-z-][0-9A-Za-z-]*))*))?$'

validate_target() {
	case "$TARGET" in
	dev | staging | prod) return 0 ;;
	esac
	if [[ "$TARGET" =~ $SEMVER_RE ]]; then
		return 0
	fi
	local hint="give dev, staging, prod or a version like v1.2.3 (pre-release: v1.2.3-rc.1)"
	case "$TARGET" in
	*+*) hint="drop the build metadata (+...): Docker tags cannot hold '+'; e.g. ${TARGET%%+*}" ;;
	[0-9]*) hint="versions start with v: v$TARGET" ;;
	esac
	usage_error "'$TARGET' is not dev, staging, prod or a semantic version vX.Y.Z" "$hint"
}

validate_platforms() {
	local p seen=","
	IFS=, read -r -a PLATFORM_LIST <<<"$PLATFORMS"
	[ "${#PLATFORM_LIST[@]}" -gt 0 ] || usage_error "--platforms is empty" "e.g. --platforms linux/amd64"
	for p in "${PLATFORM_LIST[@]}"; do
		[[ "$p" =~ ^[a-z0-9]+/[a-z0-9]+(/[a-z0-9]+)?$ ]] ||
			usage_error "'$p' is not a platform (os/arch[/variant])" "e.g. --platforms linux/amd64,linux/arm64"
		[[ "$seen" != *",$p,"* ]] || usage_error "platform $p given twice" "list each platform once"
		seen+="$p,"
	done
	if [ "$MODE" = load ] && [ "${#PLATFORM_LIST[@]}" -gt 1 ]; then
		LOAD_MULTI=1
	fi
}
LOAD_MULTI=0
BUILDX_OK=0

validate_image() {
	[[ "$IMAGE" =~ ^[a-z0-9]+([._-][a-z0-9]+)*(/[a-z0-9]+([._-][a-z0-9]+)*)*$ ]] ||
		usage_error "image name '$IMAGE' is not a valid repository name" "lower-case letters, digits and . _ - / only"
}

# --- 2. pre-flight -----------------------------------------------------------------------------
preflight() {
	STEP="pre-flight"
	local engine_ok=0 buildx_ok=0
	if check_engine; then engine_ok=1; fi
	if [ "$engine_ok" -eq 1 ] && check_buildx; then buildx_ok=1; fi
	BUILDX_OK="$buildx_ok"
	check_git
	resolve_repository
	[ "$buildx_ok" -eq 0 ] || check_builder
	check_pip_ca
	check_dockerfile
	if [ "$MODE" = push ] && [ -n "$REPO_REF" ]; then
		check_registry
	fi
	[ "${#PROBLEMS[@]}" -eq 0 ] || fail_with_problems
}

check_engine() {
	local err
	if err="$(docker info --format '{{.ServerVersion}}' 2>&1)" && [ -n "$err" ]; then
		ENGINE_VERSION="$err"
		return 0
	fi
	if ! command -v docker >/dev/null 2>&1; then
		problem "$EX_UNAVAILABLE" engine "the docker command is not installed" \
			"install Docker (https://docs.docker.com/engine/install/; Debian: sudo apt-get install docker.io)"
		return 1
	fi
	local where="${DOCKER_HOST:-the default socket}"
	[ -z "${DOCKER_CONTEXT:-}" ] || where="context $DOCKER_CONTEXT"
	problem "$EX_UNAVAILABLE" engine "the Docker engine does not answer at $where: $(printf '%s' "$err" | tail -n1)" \
		"start the engine (Docker Desktop, or: sudo systemctl start docker) or point DOCKER_HOST at a running one; check with: docker info"
	return 1
}
ENGINE_VERSION=""

check_buildx() {
	if docker buildx version >/dev/null 2>&1; then
		return 0
	fi
	problem "$EX_UNAVAILABLE" buildx "the docker buildx plugin is missing (looked in ${DOCKER_CONFIG:-~/.docker}/cli-plugins and the system plugin directories)" \
		"install it: Debian/Ubuntu 'sudo apt-get install docker-buildx' (or docker-buildx-plugin from Docker's repository); elsewhere download docker-buildx from https://github.com/docker/buildx/releases to ~/.docker/cli-plugins/docker-buildx and chmod +x it; check with: docker buildx version"
	return 1
}

check_git() {
	if ! git -C "$SCRIPT_DIR" rev-parse --verify -q HEAD >/dev/null 2>&1; then
		problem "$EX_CONFIG" git "$SCRIPT_DIR is not a git checkout with a commit: tags and labels come from git" \
			"build from a clone of the repository (git clone ...), with at least one commit"
		return 0
	fi
	SHA="$(git -C "$SCRIPT_DIR" rev-parse HEAD)"
	SHORT_SHA="$(git -C "$SCRIPT_DIR" rev-parse --short=7 HEAD)"
	COMMIT_EPOCH="$(git -C "$SCRIPT_DIR" log -1 --format=%ct HEAD)"
	CREATED="$(TZ=UTC git -C "$SCRIPT_DIR" log -1 --date=format-local:%Y-%m-%dT%H:%M:%SZ --format=%cd HEAD)"
	SOURCE_URL="$(source_url "$(git -C "$SCRIPT_DIR" remote get-url origin 2>/dev/null || true)")"
	local changes
	changes="$(git -C "$SCRIPT_DIR" status --porcelain --untracked-files=normal)"
	if [ -n "$changes" ]; then
		if [ "$ALLOW_DIRTY" -eq 1 ]; then
			DIRTY=1
		else
			local count first
			count="$(printf '%s\n' "$changes" | wc -l | tr -d ' ')"
			first="$(printf '%s\n' "$changes" | head -n 3 | sed 's/^...//' | paste -sd, -)"
			problem "$EX_CONFIG" git-tree "the git tree has $count uncommitted change(s) ($first$([ "$count" -le 3 ] || echo ', ...')): the image would not match sha-$SHORT_SHA" \
				"commit or stash them (git status), or pass --allow-dirty to build anyway with tags ending in -dirty"
		fi
	fi
	compute_tags
}

# git remote URL -> https URL for the OCI source label (credentials stripped).
source_url() {
	local url="$1"
	case "$url" in
	git@*:*) url="${url#git@}" url="https://${url/://}" ;;
	ssh://*) url="https://${url#ssh://}" url="${url#https://git@}" url="https://${url#https://}" ;;
	http://* | https://*) ;;
	*) return 0 ;; # no remote, or a local path: nothing a user could open
	esac
	url="$(printf '%s' "$url" | sed -E 's#^(https?://)[^@/]*@#\1#; s#\.git$##')"
	printf '%s\n' "$url"
}

compute_tags() {
	local suffix=""
	[ "$DIRTY" -eq 0 ] || suffix="-dirty"
	TAGS=("sha-$SHORT_SHA$suffix")
	case "$TARGET" in
	dev | staging | prod)
		TAGS+=("$TARGET$suffix" "$TARGET-$SHORT_SHA$suffix")
		VERSION_LABEL="$TARGET-$SHORT_SHA$suffix"
		;;
	*)
		[[ "$TARGET" =~ $SEMVER_RE ]]
		local major="${BASH_REMATCH[1]}" minor="${BASH_REMATCH[2]}" patch="${BASH_REMATCH[3]}" pre="${BASH_REMATCH[5]}"
		if [ -n "$pre" ]; then
			RELEASE_TAG="$major.$minor.$patch-$pre$suffix"
			TAGS+=("$RELEASE_TAG")
		else
			RELEASE_TAG="$major.$minor.$patch$suffix"
			TAGS+=("$RELEASE_TAG" "$major.$minor$suffix" "$major$suffix" "latest$suffix")
		fi
		VERSION_LABEL="$RELEASE_TAG"
		;;
	esac
}

# Registry/owner: --registry, $REGISTRY, ghcr.io/<owner> from GITHUB_OWNER, GITHUB_REPOSITORY_OWNER
# or a github.com origin remote.
resolve_repository() {
	local registry="${REGISTRY_OPT:-${REGISTRY:-}}" owner="${GITHUB_OWNER:-${GITHUB_REPOSITORY_OWNER:-}}"
	if [ -z "$registry" ] && [ -z "$owner" ]; then
		local remote
		remote="$(git -C "$SCRIPT_DIR" remote get-url origin 2>/dev/null || true)"
		if [[ "$remote" =~ github\.com[:/]+([^/]+)/ ]]; then
			owner="${BASH_REMATCH[1]}"
		fi
	fi
	if [ -z "$registry" ] && [ -n "$owner" ]; then
		registry="ghcr.io/$(printf '%s' "$owner" | tr '[:upper:]' '[:lower:]')"
	fi
	registry="${registry%/}"
	if [ -z "$registry" ]; then
		if [ "$MODE" = push ]; then
			problem "$EX_CONFIG" registry "no registry to push to: neither --registry, REGISTRY, GITHUB_OWNER nor a github.com origin remote is set" \
				"pass --registry ghcr.io/<owner> (or export REGISTRY=ghcr.io/<owner>, or GITHUB_OWNER=<owner>)"
			return 0
		fi
		REPO_REF="$IMAGE"
		return 0
	fi
	[[ "$registry" =~ ^[A-Za-z0-9.-]+(:[0-9]+)?(/[a-z0-9]+([._-][a-z0-9]+)*)*$ ]] ||
		{
			problem "$EX_USAGE" registry "'$registry' is not a registry (host[:port][/namespace])" \
				"e.g. --registry ghcr.io/my-org or --registry 127.0.0.1:5000"
			return 0
		}
	REPO_REF="$registry/$IMAGE"
}

registry_host() {
	local first="${REPO_REF%%/*}"
	if [[ "$first" == *.* || "$first" == *:* || "$first" == localhost ]]; then
		printf '%s\n' "$first"
	else
		printf 'docker.io\n' # a Docker Hub namespace
	fi
}

is_loopback() {
	case "$1" in
	localhost | localhost:* | 127.* | "[::1]" | "[::1]:"*) return 0 ;;
	esac
	return 1
}

check_builder() {
	local inspect
	if ! inspect="$(docker buildx inspect --bootstrap 2>&1)"; then
		problem "$EX_UNAVAILABLE" builder "buildx builder '${BUILDX_BUILDER:-default}' does not start: $(printf '%s' "$inspect" | tail -n1)" \
			"check it with: docker buildx inspect --bootstrap (or choose another: docker buildx use default)"
		return 0
	fi
	BUILDER_NAME="$(printf '%s\n' "$inspect" | awk -F': *' '/^Name:/ {print $2; exit}')"
	BUILDER_DRIVER="$(printf '%s\n' "$inspect" | awk -F': *' '/^Driver:/ {print $2; exit}')"
	BUILDER_PLATFORMS="$(printf '%s\n' "$inspect" | awk -F': *' '/^Platforms:/ {print $2}' | tr ',' '\n' |
		sed 's/[* ]//g' | sed '/^$/d' | sort -u | paste -sd, -)"
	local containerd_store=0
	if docker info --format '{{range .DriverStatus}}{{index . 1}} {{end}}' 2>/dev/null | grep -q 'io.containerd.snapshotter'; then
		containerd_store=1
	fi
	case "$BUILDER_DRIVER" in
	docker-container | kubernetes | remote)
		MULTI_PLATFORM=1 ATTESTATIONS=1
		;;
	docker)
		if [ "$containerd_store" -eq 1 ]; then
			MULTI_PLATFORM=1 ATTESTATIONS=1
		else
			ATTESTATION_NOTE="builder '$BUILDER_NAME' uses the docker driver of Engine $ENGINE_VERSION without the containerd image store: no SBOM or provenance can be attached (for them: docker buildx create --use --driver docker-container)"
		fi
		;;
	*) ATTESTATION_NOTE="builder driver '$BUILDER_DRIVER' is unknown to this script: attestations not requested" ;;
	esac
	if [ "$LOAD_MULTI" -eq 1 ] && ! { [ "$BUILDER_DRIVER" = docker ] && [ "$containerd_store" -eq 1 ]; }; then
		problem "$EX_USAGE" load "--load can put only one platform into this engine's image store" \
			"add --platforms linux/$(native_arch) (or push instead of --load)"
	fi
	local p arch
	for p in "${PLATFORM_LIST[@]}"; do
		if [[ ",$BUILDER_PLATFORMS," == *",$p,"* ]]; then
			continue
		fi
		arch="${p#*/}"
		arch="${arch%%/*}"
		problem "$EX_UNAVAILABLE" platforms "builder '$BUILDER_NAME' cannot build $p (it builds: ${BUILDER_PLATFORMS:-nothing listed}); a foreign architecture needs QEMU emulation" \
			"register QEMU: docker run --privileged --rm tonistiigi/binfmt --install $arch (Debian: sudo apt-get install qemu-user-static binfmt-support), then restart the engine or builder; check with: docker buildx inspect --bootstrap"
	done
}

native_arch() {
	case "$(uname -m)" in
	x86_64) echo amd64 ;;
	aarch64 | arm64) echo arm64 ;;
	*) uname -m ;;
	esac
}

check_pip_ca() {
	if [ -n "${PIP_CA_FILE:-}" ]; then
		if [ -r "$PIP_CA_FILE" ]; then
			PIP_CA="$PIP_CA_FILE"
		else
			problem "$EX_CONFIG" pip-ca "PIP_CA_FILE=$PIP_CA_FILE is not a readable file" \
				"point PIP_CA_FILE at a PEM CA bundle, or unset it"
		fi
	elif [ -r /etc/ssl/certs/ca-certificates.crt ]; then
		PIP_CA=/etc/ssl/certs/ca-certificates.crt
	fi
}

check_dockerfile() {
	DOCKERFILE_PATH="$SCRIPT_DIR/${DOCKERFILE:-aio-base.Dockerfile}"
	[ -r "$DOCKERFILE_PATH" ] ||
		problem "$EX_CONFIG" dockerfile "$DOCKERFILE_PATH does not exist" \
			"run from the repository root checkout, or set DOCKERFILE to the Dockerfile's path relative to it"
}
DOCKERFILE_PATH=""

# Reachable, logged in, and (for releases) the release tag not already there.
check_registry() {
	local host scheme code
	host="$(registry_host)"
	local api="$host"
	[ "$host" != docker.io ] || api="registry-1.docker.io"
	if command -v curl >/dev/null 2>&1; then
		code=000
		for scheme in https http; do
			if [ "$scheme" = http ] && ! is_loopback "$host"; then
				break
			fi
			code="$(curl -sS -o /dev/null -w '%{http_code}' --max-time 10 "$scheme://$api/v2/" 2>/dev/null || true)"
			[ "$code" = 000 ] || break
		done
		if [ "$code" = 000 ]; then
			problem "$EX_UNAVAILABLE" registry "registry $host does not answer (no HTTP reply from $api/v2/)" \
				"check the name and the network (curl -v $([ "$scheme" = http ] && echo http || echo https)://$api/v2/), or choose another with --registry"
			return 0
		fi
		if [ "$code" = 401 ] && ! logged_in "$host"; then
			problem "$EX_NOPERM" login "not logged in to $host (it asks for credentials)" \
				"docker login $host$([ "$host" != ghcr.io ] || echo ' -u <github-user> (password: a token with write:packages)')"
			return 0
		fi
	fi
	if [ -n "$RELEASE_TAG" ] && [ "$BUILDX_OK" -eq 1 ]; then
		local out
		if out="$(docker buildx imagetools inspect "$REPO_REF:$RELEASE_TAG" 2>&1)"; then
			if [ "$FORCE" -eq 1 ]; then
				info "warning: $REPO_REF:$RELEASE_TAG exists and will be overwritten (--force)"
			else
				problem "$EX_CONFIG" release-tag "$REPO_REF:$RELEASE_TAG already exists ($(printf '%s\n' "$out" | awk '/^Digest:/ {print $2; exit}')): releases are not overwritten" \
					"release a new version (e.g. v$(next_patch)), or pass --force to overwrite $RELEASE_TAG"
			fi
		elif ! printf '%s' "$out" | grep -qi 'not found'; then
			problem "$EX_UNAVAILABLE" registry "cannot tell whether $REPO_REF:$RELEASE_TAG exists: $(printf '%s' "$out" | tail -n1)" \
				"check access to the registry: docker buildx imagetools inspect $REPO_REF:$RELEASE_TAG"
		fi
	fi
}

next_patch() {
	[[ "$TARGET" =~ $SEMVER_RE ]]
	printf '%s.%s.%s\n' "${BASH_REMATCH[1]}" "${BASH_REMATCH[2]}" "$((BASH_REMATCH[3] + 1))"
}

# Credentials for HOST in the docker config (auths, a credential helper or the credential store).
logged_in() {
	local host="$1" config="${DOCKER_CONFIG:-$HOME/.docker}/config.json" key="$1" store
	[ "$host" != docker.io ] || key="https://index.docker.io/v1/"
	[ -r "$config" ] || return 1
	local flat
	flat="$(tr -d ' \n\t' <"$config")"
	if [[ "$flat" == *"\"credHelpers\":{"*"\"$key\":"* ]]; then
		return 0
	fi
	if [[ "$flat" =~ \"credsStore\":\"([^\"]+)\" ]]; then
		store="${BASH_REMATCH[1]}"
		if command -v "docker-credential-$store" >/dev/null 2>&1 &&
			printf '%s' "$key" | "docker-credential-$store" get >/dev/null 2>&1; then
			return 0
		fi
	fi
	[[ "$flat" == *"\"auths\":{"*"\"$key\":{"*"\"auth\":\""* ]]
}

# --- 3. plan -----------------------------------------------------------------------------------
BUILD_PATH=""
plan() {
	STEP=plan
	if [ "$MULTI_PLATFORM" -eq 1 ] || [ "${#PLATFORM_LIST[@]}" -eq 1 ]; then
		BUILD_PATH=single
	else
		BUILD_PATH=per-arch
	fi
	local what
	case "$MODE" in
	push) what="build and push" ;;
	load) what="build and load into the local engine" ;;
	none) what="build only (no push)" ;;
	esac
	[ "$DRY_RUN" -eq 0 ] || what="DRY RUN, would $what"
	say "build-and-push: $what $REPO_REF"
	say "  version     $VERSION_LABEL (git $SHORT_SHA$([ "$DIRTY" -eq 0 ] || echo ' + uncommitted changes'), created $CREATED)"
	say "  tags        ${TAGS[*]}"
	say "  platforms   ${PLATFORM_LIST[*]}"
	say "  builder     ${BUILDER_NAME:-?} (driver ${BUILDER_DRIVER:-?}): $(describe_path)"
	say "  base        ${BASE_IMAGE:-python:3.11-slim}"
	say "  pip CA      ${PIP_CA:-none} $([ -z "$PIP_CA" ] || echo '(BuildKit secret pip_ca)')"
	say "  attest      $(attestation_text)"
}

describe_path() {
	if [ "$BUILD_PATH" = single ]; then
		echo "one buildx build for ${PLATFORMS}"
	else
		echo "one build per platform, pushed to <tag>-<arch>, joined by docker buildx imagetools create"
	fi
}

attestation_text() {
	if [ "$ATTESTATIONS" -eq 1 ]; then
		if [ "$MODE" = push ]; then echo "SBOM + provenance (mode=max)"; else echo "none (only attached when pushing)"; fi
	else
		echo "none: ${ATTESTATION_NOTE:-not supported by this builder}"
	fi
}

# --- 4. build ----------------------------------------------------------------------------------
common_build_args() {
	BUILD_ARGS=(
		-f "$DOCKERFILE_PATH"
		--build-arg "BASE_IMAGE=${BASE_IMAGE:-python:3.11-slim}"
		# The Dockerfile's own LABEL reads these (declared after the last build step: cache-neutral);
		# --label below sets the same keys for any Dockerfile.
		--build-arg "VERSION=$VERSION_LABEL"
		--build-arg "REVISION=$SHA"
		--build-arg "CREATED=$CREATED"
		--build-arg "SOURCE=${SOURCE_URL:-unknown}"
		--label "org.opencontainers.image.title=$IMAGE"
		--label "org.opencontainers.image.version=$VERSION_LABEL"
		--label "org.opencontainers.image.revision=$SHA"
		--label "org.opencontainers.image.created=$CREATED"
		--label "org.opencontainers.image.base.name=${BASE_IMAGE:-python:3.11-slim}"
	)
	if [ -n "$SOURCE_URL" ]; then
		BUILD_ARGS+=(--label "org.opencontainers.image.source=$SOURCE_URL" --label "org.opencontainers.image.url=$SOURCE_URL")
	fi
	if [ -n "$PIP_CA" ]; then
		BUILD_ARGS+=(--secret "id=pip_ca,src=$PIP_CA")
	fi
	if [ "$ATTESTATIONS" -eq 1 ] && [ "$MODE" = push ]; then
		BUILD_ARGS+=(--sbom=true --provenance=mode=max)
	else
		BUILD_ARGS+=(--provenance=false)
	fi
}

now_ns() { date +%s%N; }
seconds_since() { awk -v a="$1" -v b="$(now_ns)" 'BEGIN { printf "%.1f", (b - a) / 1e9 }'; }

build() {
	common_build_args
	# SOURCE_DATE_EPOCH: BuildKit >= 0.11 clamps file and image timestamps to the commit time.
	export SOURCE_DATE_EPOCH="$COMMIT_EPOCH"
	if [ "$BUILD_PATH" = single ]; then
		build_single
	else
		build_per_arch
	fi
}

output_args() {
	# $@: tags (full references) for this invocation
	local ref
	OUT_ARGS=()
	for ref in "$@"; do OUT_ARGS+=(-t "$ref"); done
	case "$MODE" in
	push) OUT_ARGS+=(--push) ;;
	load) OUT_ARGS+=(--load) ;;
	none) ;;
	esac
}

build_single() {
	local refs=() tag start seconds p
	if [ "$MODE" != none ]; then
		for tag in "${TAGS[@]}"; do refs+=("$REPO_REF:$tag"); done
	fi
	output_args "${refs[@]}"
	STEP="build ($PLATFORMS)"
	info "building $PLATFORMS"
	start="$(now_ns)"
	docker buildx build --platform "$PLATFORMS" "${BUILD_ARGS[@]}" "${OUT_ARGS[@]}" "$SCRIPT_DIR" >&2 ||
		die "$EX_SOFTWARE" "$STEP" "docker buildx build for $PLATFORMS failed (build log above)" \
			"fix the error shown in the log; a failed push: check 'docker login' and the registry; re-run with the same arguments"
	seconds="$(seconds_since "$start")"
	for p in "${PLATFORM_LIST[@]}"; do PLATFORM_SECONDS[$p]="$seconds"; done
}

build_per_arch() {
	local p arch ref start sources=()
	for p in "${PLATFORM_LIST[@]}"; do
		arch="${p#*/}"
		ref="$REPO_REF:${TAGS[0]}-${arch//\//-}"
		if [ "$MODE" = push ]; then
			output_args "$ref"
			HELPER_TAGS+=("${ref##*:}")
			sources+=("$ref")
		else
			output_args
		fi
		STEP="build ($p)"
		info "building $p$([ "$MODE" != push ] || echo " -> $ref")"
		start="$(now_ns)"
		docker buildx build --platform "$p" "${BUILD_ARGS[@]}" "${OUT_ARGS[@]}" "$SCRIPT_DIR" >&2 ||
			die "$EX_SOFTWARE" "$STEP" "docker buildx build --platform $p failed (build log above)" \
				"fix the error shown in the log (for a foreign platform also check QEMU: docker buildx inspect); re-run with the same arguments"
		PLATFORM_SECONDS[$p]="$(seconds_since "$start")"
	done
	[ "$MODE" = push ] || return 0
	STEP=manifest
	local tag targets=()
	for tag in "${TAGS[@]}"; do targets+=(-t "$REPO_REF:$tag"); done
	info "joining ${sources[*]} as ${TAGS[*]}"
	docker buildx imagetools create "${targets[@]}" "${sources[@]}" >&2 ||
		die "$EX_SOFTWARE" manifest "docker buildx imagetools create failed: the per-platform images are pushed as ${HELPER_TAGS[*]} but the tags ${TAGS[*]} were not (all) updated" \
			"check the registry (docker buildx imagetools inspect ${sources[0]}) and re-run with the same arguments"
}

# --- 5. report ---------------------------------------------------------------------------------
collect_results() {
	STEP=report
	local p
	case "$MODE" in
	push) collect_pushed ;;
	load)
		for p in "${PLATFORM_LIST[@]}"; do
			PLATFORM_SIZE[$p]="$(docker image inspect -f '{{.Size}}' "$REPO_REF:${TAGS[0]}" 2>/dev/null || echo "")"
			PLATFORM_DIGEST[$p]="$(docker image inspect -f '{{.Id}}' "$REPO_REF:${TAGS[0]}" 2>/dev/null || echo "")"
		done
		;;
	esac
}

collect_pushed() {
	local ref="$REPO_REF:${TAGS[0]}" listing platform digest raw size
	listing="$(docker buildx imagetools inspect "$ref" 2>&1)" ||
		die "$EX_SOFTWARE" verify "the pushed image $ref cannot be read back: $(printf '%s' "$listing" | tail -n1)" \
			"check the registry: docker buildx imagetools inspect $ref"
	DIGEST="$(printf '%s\n' "$listing" | awk '/^Digest:/ {print $2; exit}')"
	while read -r platform digest; do
		[ -n "$platform" ] || continue
		[ "$platform" != unknown/unknown ] || continue # attestation manifests
		raw="$(docker buildx imagetools inspect --raw "$REPO_REF@$digest" 2>/dev/null || true)"
		size=0
		while read -r n; do size=$((size + n)); done < <(printf '%s' "$raw" | tr -d ' \n\t' | grep -o '"size":[0-9]*' | cut -d: -f2)
		PLATFORM_DIGEST[$platform]="$digest"
		PLATFORM_SIZE[$platform]="$size"
	done < <(docker buildx imagetools inspect "$ref" --format \
		'{{range .Manifest.Manifests}}{{.Platform.OS}}/{{.Platform.Architecture}}{{with .Platform.Variant}}/{{.}}{{end}} {{.Digest}}{{"\n"}}{{end}}' 2>/dev/null || true)
	if [ "${#PLATFORM_DIGEST[@]}" -eq 0 ]; then # a single-platform image: no list
		PLATFORM_DIGEST[${PLATFORM_LIST[0]}]="$DIGEST"
		raw="$(docker buildx imagetools inspect --raw "$ref" 2>/dev/null || true)"
		size=0
		while read -r n; do size=$((size + n)); done < <(printf '%s' "$raw" | tr -d ' \n\t' | grep -o '"size":[0-9]*' | cut -d: -f2)
		PLATFORM_SIZE[${PLATFORM_LIST[0]}]="$size"
	fi
	local missing=() p
	for p in "${PLATFORM_LIST[@]}"; do
		[ -n "${PLATFORM_DIGEST[$p]:-}" ] || missing+=("$p")
	done
	[ "${#missing[@]}" -eq 0 ] ||
		die "$EX_SOFTWARE" verify "$ref was pushed without ${missing[*]}" \
			"inspect it (docker buildx imagetools inspect $ref) and re-run with the same arguments"
}

human_size() {
	[ -n "$1" ] || {
		echo "-"
		return 0
	}
	awk -v b="$1" 'BEGIN { printf "%.1f MB", b / 1e6 }'
}

report() {
	local tag p verb size_kind="compressed"
	case "$MODE" in
	push) verb="pushed" ;;
	load) verb="loaded into the local engine" size_kind="uncompressed" ;;
	none) verb="built (not pushed)" ;;
	esac
	[ "$DRY_RUN" -eq 0 ] || verb="planned (dry run: nothing built or pushed)"
	say ""
	say "build-and-push: $verb $REPO_REF ($VERSION_LABEL, git $SHA)"
	if [ "$MODE" != none ]; then
		printf '  %-60s %s\n' TAG DIGEST >&2
		for tag in "${TAGS[@]}"; do
			printf '  %-60s %s\n' "$REPO_REF:$tag" "${DIGEST:--}" >&2
		done
	fi
	printf '  %-14s %-73s %10s %10s\n' PLATFORM DIGEST SIZE "BUILD TIME" >&2
	for p in "${PLATFORM_LIST[@]}"; do
		local t="${PLATFORM_SECONDS[$p]:-}"
		[ -z "$t" ] || t="$t s"
		[ "$BUILD_PATH" != single ] || [ "${#PLATFORM_LIST[@]}" -eq 1 ] || [ -z "$t" ] || t="$t (all)"
		printf '  %-14s %-73s %10s %10s\n' "$p" "${PLATFORM_DIGEST[$p]:--}" "$(human_size "${PLATFORM_SIZE[$p]:-}")" "${t:--}" >&2
	done
	[ "$MODE" = none ] || [ "$DRY_RUN" -eq 1 ] || say "  sizes: $size_kind$([ "$MODE" != push ] || echo ', as stored in the registry')"
	[ "${#HELPER_TAGS[@]}" -eq 0 ] || say "  per-platform tags (inputs of the manifest list): ${HELPER_TAGS[*]}"
	say "  attestations: $(attestation_text)"
	[ "$JSON" -eq 0 ] || report_json
}

report_json() {
	local sep="" tag p
	printf '{"ok": true, "dry_run": %s, "mode": %s, "repository": %s, "version": %s, ' \
		"$([ "$DRY_RUN" -eq 1 ] && echo true || echo false)" "$(json_str "$MODE")" "$(json_str "$REPO_REF")" "$(json_str "$VERSION_LABEL")"
	printf '"revision": %s, "dirty": %s, "created": %s, "source": %s, ' "$(json_str "$SHA")" \
		"$([ "$DIRTY" -eq 1 ] && echo true || echo false)" "$(json_str "$CREATED")" "$(json_str "$SOURCE_URL")"
	printf '"builder": {"name": %s, "driver": %s, "path": %s}, ' "$(json_str "$BUILDER_NAME")" \
		"$(json_str "$BUILDER_DRIVER")" "$(json_str "$BUILD_PATH")"
	printf '"digest": %s, "tags": [' "$([ -n "$DIGEST" ] && json_str "$DIGEST" || echo null)"
	for tag in "${TAGS[@]}"; do
		printf '%s%s' "$sep" "$(json_str "$REPO_REF:$tag")"
		sep=", "
	done
	sep=""
	printf '], "helper_tags": ['
	for tag in "${HELPER_TAGS[@]}"; do
		printf '%s%s' "$sep" "$(json_str "$REPO_REF:$tag")"
		sep=", "
	done
	sep=""
	printf '], "platforms": ['
	for p in "${PLATFORM_LIST[@]}"; do
		printf '%s{"platform": %s, "digest": %s, "size_bytes": %s, "build_seconds": %s}' "$sep" "$(json_str "$p")" \
			"$([ -n "${PLATFORM_DIGEST[$p]:-}" ] && json_str "${PLATFORM_DIGEST[$p]}" || echo null)" \
			"${PLATFORM_SIZE[$p]:-null}" "${PLATFORM_SECONDS[$p]:-null}"
		sep=", "
	done
	printf '], "attestations": {"sbom": %s, "provenance": %s, "note": %s}}\n' \
		"$([ "$ATTESTATIONS" -eq 1 ] && [ "$MODE" = push ] && echo true || echo false)" \
		"$([ "$ATTESTATIONS" -eq 1 ] && [ "$MODE" = push ] && echo true || echo false)" \
		"$(json_str "${ATTESTATION_NOTE:-}")"
}

# --- main --------------------------------------------------------------------------------------
_is_sourced() {
	[ "${#FUNCNAME[@]}" -ge 2 ] && [ "${FUNCNAME[0]}" = '_is_sourced' ] && [ "${FUNCNAME[1]}" = 'source' ]
}

_main() {
	parse_args "$@"
	preflight
	plan
	if [ "$DRY_RUN" -eq 1 ]; then
		report
		return 0
	fi
	build
	collect_results
	report
}

if ! _is_sourced; then
	_main "$@"
fi
