# callgate: the per-node agent and the cluster controller, in one image.
#
#   docker build -t ghcr.io/callgate/callgate:0.1.0 .
#
# Debian 12, as the hosts callgate is tested on: its nftables userspace
# (libnftables, used through ctypes; python3-nftables for the bindings) matches
# what the agent's transactions are written against. Python is Debian's 3.11;
# callgate goes into a venv that also sees the distribution's packages.
FROM debian:12-slim

RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      ca-certificates nftables libnftables1 python3 python3-nftables python3-venv \
 && rm -rf /var/lib/apt/lists/*

RUN python3 -m venv --system-site-packages /opt/callgate

# Only what the package needs (not tests, benchmarks or a local .venv).
COPY pyproject.toml README.md /src/
COPY callgate /src/callgate
RUN /opt/callgate/bin/pip install --no-cache-dir '/src[kubernetes,docker]' \
 && rm -rf /src

ENV PATH=/opt/callgate/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

# The agent runs as root with only CAP_NET_ADMIN (see deploy/agent-daemonset.yaml);
# the controller's Deployment runs it as 65532. No USER here so both can share it.
ENTRYPOINT ["callgate"]
CMD ["--help"]
