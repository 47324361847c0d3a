#!/usr/bin/env bash
# Build the callgate-cni plugin: one static binary with no dependency on the
# host (kubelet/containerd run it outside any container). Output: $1, default
# build/callgate-cni. Never committed; the Dockerfile builds it the same way.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-build/callgate-cni}
mkdir -p "$(dirname "$out")"
gcc -static -Os -Wall -Wextra -Werror -o "$out" cni-plugin/callgate-cni.c
strip "$out"
