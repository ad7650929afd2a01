#!/usr/bin/env bash
# Makes sure the 2 MiB hugepage pool has at least N free pages (default 600,
# 1.2 GiB: the default subOS layout plus the KVM-tier tests).
set -euo pipefail
want=${1:-600}
pool=/sys/kernel/mm/hugepages/hugepages-2048kB
[ -d "$pool" ] || { echo "hugepages: this kernel has no 2 MiB hugepage pool" >&2; exit 1; }
free=$(cat "$pool/free_hugepages")
total=$(cat "$pool/nr_hugepages")
if [ "$free" -lt "$want" ]; then
	echo $((total + want - free)) > "$pool/nr_hugepages"
	free=$(cat "$pool/free_hugepages")
	[ "$free" -ge "$want" ] || { echo "hugepages: asked for $want free 2 MiB pages, the kernel gave $free" >&2; exit 1; }
fi
