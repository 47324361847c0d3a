#!/usr/bin/env bash
# Install everything callgate needs on a Debian machine, as root, idempotently:
# system packages (nftables with its Python bindings, iproute2, iptables, ipset)
# and a virtualenv at .venv with callgate and its dev tools.
#
# Why Debian's python3-nftables and not PyPI's pip-nftables: the bindings are a
# thin ctypes wrapper around libnftables.so, and the JSON schema they speak must
# match the host's library and kernel. Debian's package is built from the same
# source as the installed libnftables; pip-nftables is an older, separately
# versioned copy. The venv is therefore built from the system python3 and the
# Debian module is linked into it (only that module, not all of dist-packages).
set -euo pipefail
cd "$(dirname "$0")/.."

# docker.io and busybox-static: the Docker source's end-to-end tests start their
# own dockerd inside a lab network namespace and build their image from busybox.
need_apt=()
for pkg in nftables python3-nftables python3-venv iproute2 iptables ipset conntrack libcairo2 containernetworking-plugins gcc libc6-dev docker.io busybox-static; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need_apt+=("$pkg")
done
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "setup: installing ${need_apt[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  # Installing docker.io must not start a dockerd in this (the host's) network
  # namespace: it would put its bridge and iptables rules there. policy-rc.d
  # forbids service starts during the install, unless the machine has its own.
  guard=""
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    guard=/usr/sbin/policy-rc.d
    printf '#!/bin/sh\nexit 101\n' >"$guard" && chmod 755 "$guard"
  fi
  apt-get update -qq
  apt-get install -y -qq "${need_apt[@]}" >/dev/null || { rc=$?; [ -z "$guard" ] || rm -f "$guard"; exit $rc; }
  [ -z "$guard" ] || rm -f "$guard"
fi

PY=/usr/bin/python3
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
site=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
sys_nft=$("$PY" -c 'import nftables, os; print(os.path.dirname(nftables.__file__))')
ln -sfn "$sys_nft" "$site/nftables"

stamp=.venv/.callgate-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  .venv/bin/pip install -q --upgrade pip >/dev/null
  .venv/bin/pip install -q -e ".[dev,kubernetes,docker]"
  touch "$stamp"
fi
