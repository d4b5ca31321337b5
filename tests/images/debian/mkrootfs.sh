#!/usr/bin/env bash
# Make a slim Debian root file system tarball, the way Debian's official images are made
# (debuerreotype): debootstrap --variant=minbase, then dpkg path excludes for docs/man/locales,
# apt "clean after install", no apt lists, caches or logs, an empty /etc/machine-id.
#
#   tests/images/debian/mkrootfs.sh OUT.tar [SUITE] [ARCH] [MIRROR]
#
# Needs root and debootstrap (for a foreign ARCH: qemu-user-static and binfmt_misc for it).
set -Eeuo pipefail

out="${1:?usage: mkrootfs.sh OUT.tar [SUITE] [ARCH] [MIRROR]}"
suite="${2:-bookworm}"
arch="${3:-$(dpkg --print-architecture)}"
mirror="${4:-http://deb.debian.org/debian}"
security_mirror="${mirror%/debian}/debian-security"

rootfs="$(mktemp -d "${TMPDIR:-/tmp}/rootfs.XXXXXX")"
cleanup() { rm -rf "$rootfs"; }
trap cleanup EXIT

debootstrap --variant=minbase --arch="$arch" "$suite" "$rootfs" "$mirror" >"$rootfs.log" 2>&1 || {
	tail -n 30 "$rootfs.log" >&2
	exit 1
}
rm -f "$rootfs.log"

# dpkg: never install documentation, manuals or translations (copyright files stay).
cat >"$rootfs/etc/dpkg/dpkg.cfg.d/docker" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/linda/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
EOF
find "$rootfs/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
find "$rootfs/usr/share/doc" -mindepth 1 -type d -empty -delete
rm -rf "$rootfs"/usr/share/{man,groff,info,lintian,linda}/*
find "$rootfs/usr/share/locale" -mindepth 1 -maxdepth 1 -not -name locale.alias -exec rm -rf {} +

# apt: clean after every install, no translations, gzipped indexes, no suggests kept.
cat >"$rootfs/etc/apt/apt.conf.d/docker-clean" <<'EOF'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
EOF
printf 'Acquire::Languages "none";\n' >"$rootfs/etc/apt/apt.conf.d/docker-no-languages"
printf 'Acquire::GzipIndexes "true";\n' >"$rootfs/etc/apt/apt.conf.d/docker-gzip-indexes"
printf 'Apt::AutoRemove::SuggestsImportant "false";\n' >"$rootfs/etc/apt/apt.conf.d/docker-autoremove-suggests"
# Services never start inside an image build (postgresql's postinst would try).
printf '#!/bin/sh\nexit 101\n' >"$rootfs/usr/sbin/policy-rc.d"
chmod 0755 "$rootfs/usr/sbin/policy-rc.d"

rm -f "$rootfs/etc/apt/sources.list"
cat >"$rootfs/etc/apt/sources.list.d/debian.sources" <<EOF
Types: deb
URIs: $mirror
Suites: $suite $suite-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: $security_mirror
Suites: $suite-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF

rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/* "$rootfs"/var/cache/debconf/*-old \
	"$rootfs"/var/lib/dpkg/*-old "$rootfs"/tmp/* "$rootfs"/var/tmp/*
find "$rootfs/var/log" -type f -delete
: >"$rootfs/etc/machine-id"
printf 'localhost\n' >"$rootfs/etc/hostname"
rm -f "$rootfs/etc/resolv.conf"

# Device nodes and kernel file systems are the engine's business, not the image's.
tar --numeric-owner --xattrs -C "$rootfs" \
	--exclude='./dev/*' --exclude='./proc/*' --exclude='./sys/*' -cf "$out.partial" .
mv "$out.partial" "$out"
