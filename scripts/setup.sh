#!/usr/bin/env bash
# Installs what RainForest needs on a Debian 12 machine: Debian packages for
# building the guest image and for the nested test layer, and Go modules.
# Idempotent; run as root.
set -euo pipefail
cd "$(dirname "$0")/.."

# Extra packages may be named as arguments (make bench adds lxc, its baseline,
# and iperf3 and sockperf, which bench/net runs on the host's end).
# The virtio-fs back end: Debian's virtiofsd package (/usr/libexec/virtiofsd)
# where the release has it (13 and later, bookworm-backports); on Debian 12
# QEMU's own virtiofsd (/usr/lib/qemu/virtiofsd, in qemu-system-common,
# which qemu-system-x86 pulls in) serves instead. mmdebstrap (with gpg and
# the archive keys) builds the Debian system image; openssh-client is what
# rfm ssh runs (and the end-to-end tests copy into the nested layer); fio is
# bench/fs's host row (copied into the nested L1 guest with its libraries).
pkgs=(qemu-system-x86 qemu-system-common busybox-static e2fsprogs cpio lz4 ca-certificates mmdebstrap gpg debian-archive-keyring openssh-client fio "$@")
if apt-cache policy virtiofsd 2>/dev/null | grep 'Candidate: [0-9]' >/dev/null; then
	pkgs+=(virtiofsd)
fi
missing=()
for p in "${pkgs[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
	if [ "$(id -u)" -ne 0 ]; then
		echo "setup: need root to install: ${missing[*]}" >&2
		exit 1
	fi
	echo "setup: installing ${missing[*]}"
	DEBIAN_FRONTEND=noninteractive apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

export PATH="$PATH:/usr/local/go/bin"
if ! command -v go >/dev/null; then
	echo "setup: Go 1.26 or newer is needed (https://go.dev/dl); not found on PATH or in /usr/local/go" >&2
	exit 1
fi
go mod download
