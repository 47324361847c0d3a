# callgate: the per-node agent, the cluster controller and the CNI start gate, in one image.
#
#   docker build -t ghcr.io/callgate/callgate:0.1.0 .
#
# Stage 1 builds callgate-cni, the chained CNI plugin. It runs on the host
# (kubelet/containerd execute it from /opt/cni/bin), where nothing of this
# image exists, so it is one static C binary; the agent's DaemonSet copies it
# out (callgate cni install).
FROM debian:12-slim AS cni-plugin
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc libc6-dev binutils \
 && rm -rf /var/lib/apt/lists/*
COPY scripts/build-cni-plugin.sh /src/scripts/
COPY cni-plugin /src/cni-plugin
RUN bash /src/scripts/build-cni-plugin.sh /out/callgate-cni

# Stage 2, the image. Debian 12, as the hosts callgate is tested on: its
# nftables userspace (libnftables, used through ctypes; python3-nftables for
# the bindings) matches what the agent's transactions are written against.
# Every tool the agent runs is here: iproute2 (`ip -j route` finds a pod's
# host veth; `ip netns exec` for --netns), iptables and ipset (the iptables
# backend: iptables-/ip6tables-restore and -save, ipset restore/save).
# tests/test_image.py starts the agent with only these packages' programs.
# Python is Debian's 3.11; callgate goes into a venv that also sees the
# distribution's packages.
FROM debian:12-slim

RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      ca-certificates nftables libnftables1 python3 python3-nftables python3-venv iproute2 iptables ipset \
 && rm -rf /var/lib/apt/lists/*

RUN python3 -m venv --system-site-packages /opt/callgate

# Only what the package needs (not tests, benchmarks or a local .venv).
COPY pyproject.toml README.md /src/
COPY callgate /src/callgate
RUN /opt/callgate/bin/pip install --no-cache-dir '/src[kubernetes,docker]' \
 && rm -rf /src

COPY --from=cni-plugin /out/callgate-cni /opt/callgate/cni/callgate-cni

ENV PATH=/opt/callgate/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

# The agent runs as root with only CAP_NET_ADMIN (see deploy/agent-daemonset.yaml);
# the controller's Deployment runs it as 65532. No USER here so both can share it.
ENTRYPOINT ["callgate"]
CMD ["--help"]
