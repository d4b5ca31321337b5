#!/usr/bin/env bash
# debian_mirror_uri: the Debian archive this machine's apt uses (its deb822 sources), else
# deb.debian.org. Sourced by docker-engine.sh (trixie plugins) and arm64-base.sh (debootstrap).

debian_mirror_uri() {
	local uri=""
	if [ -r /etc/apt/sources.list.d/debian.sources ]; then
		uri="$(awk '/^URIs:/ && /debian\/?$/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources)"
	fi
	printf '%s\n' "${uri:-http://deb.debian.org/debian}"
}
