"""Prometheus metrics and the agent's small HTTP server.

Endpoints on ``--metrics-address`` (default 127.0.0.1:9464):

* ``/metrics``  Prometheus text format, from the agent's own registry.
* ``/healthz``  200 while the reactor thread is alive (liveness: restart me if not).
* ``/readyz``   200 when the kernel holds the rules for the latest snapshot the
  source gave us; 503 with the reason otherwise — before the first apply,
  after a failed apply, or while the source is lost (the old rules are still
  enforced, but may be stale: "ready" means "up to date", and a stale node
  should show up in ``kubectl get pods`` without being restarted).

The CNI start gate and ``/programmed`` are not here: they are on the agent's
unix socket (:mod:`callgate.agent.cni_socket`), because this port is on the
node address, which every pod can reach.

Per-policy packet/byte counters are read from the kernel at scrape time: every
compiled rule carries its rule id in its comment, which the RuleSet the
enforcer applied maps back to the rule's origins (counted for the first one,
when rules of several policies were merged into one); the fail-closed drop
rules are counted on their own.
"""

from __future__ import annotations

import re
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol
from urllib.parse import urlsplit

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from callgate.enforcers.base import Enforcer, RuleCounters

_SYNC_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class PolicyCounters(Collector):
    """Packet and byte counters per policy, summed from the live rule counters.

    The kernel's rules carry rule ids; the RuleSet the enforcer last applied
    says which policy each id stands for. A backend that cannot read its
    counters (iptables) gives no series at all."""

    def __init__(self, enforcer: Enforcer) -> None:
        self.enforcer = enforcer

    def collect(self) -> Iterator[CounterMetricFamily]:
        try:
            counters = self.enforcer.rule_counters()
        except Exception:  # a scrape must not fail because the kernel said no
            counters = RuleCounters({})
        if counters is None:
            return
        applied = self.enforcer.applied
        origins = applied.ruleset.rule_origins() if applied is not None else {}
        packets = CounterMetricFamily("callgate_policy_packets", "Packets matched by rules of each policy",
                                      labels=["policy", "direction"])
        octets = CounterMetricFamily("callgate_policy_bytes", "Bytes matched by rules of each policy",
                                     labels=["policy", "direction"])
        dropped = CounterMetricFamily("callgate_fail_closed_dropped_packets",
                                      "Packets dropped on container interfaces the agent has not programmed yet")
        limited = CounterMetricFamily("callgate_flow_log_limited_packets",
                                      "New connections the per-endpoint flow-log rate limit kept out of the log")
        spoofed = CounterMetricFamily("callgate_spoofed_dropped_packets",
                                      "Packets dropped because an endpoint sent them from an address not its own")
        sums: dict[tuple[str, str], list[int]] = {}
        for rule_id, (p, b) in counters.by_rule.items():
            found = origins.get(rule_id)
            if not found:  # a rule applied before the mapping we hold (or not callgate's)
                continue
            acc = sums.setdefault((found[0].policy, found[0].direction), [0, 0])
            acc[0] += p
            acc[1] += b
        for (policy, direction), (p, b) in sorted(sums.items()):
            packets.add_metric([policy, direction], p)
            octets.add_metric([policy, direction], b)
        dropped.add_metric([], counters.fail_closed_dropped)
        limited.add_metric([], counters.flow_log_limited)
        spoofed.add_metric([], counters.spoofed_dropped)
        yield packets
        yield octets
        yield dropped
        yield limited
        yield spoofed


class AgentMetrics:
    """Everything the agent exports, in a registry of its own (no globals)."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.sync_seconds = Histogram("callgate_sync_duration_seconds",
                                      "Time to compile and apply one snapshot, by how it was applied",
                                      ["mode"], buckets=_SYNC_BUCKETS, registry=r)
        self.event_to_live_seconds = Histogram("callgate_event_to_live_seconds",
                                               "From the first source event of a burst to the rules being live",
                                               buckets=_SYNC_BUCKETS, registry=r)
        self.applies = Counter("callgate_applies", "Transactions committed, by mode", ["mode"], registry=r)
        self.apply_errors = Counter("callgate_apply_errors", "Transactions the kernel refused (or compile errors)",
                                    registry=r)
        self.last_success = Gauge("callgate_last_successful_apply_timestamp_seconds",
                                  "Unix time of the last sync that left the kernel in the desired state",
                                  registry=r)
        self.drift_repairs = Counter("callgate_drift_repairs", "Times the live table differed and was repaired",
                                     registry=r)
        self.source_up = Gauge("callgate_source_up", "1 when the last source report was a valid snapshot", registry=r)
        self.source_errors = Counter("callgate_source_errors",
                                     "Source problems reported: source lost or input invalid (rules kept)",
                                     registry=r)
        self.skipped_objects = Gauge("callgate_source_problems",
                                     "Invalid objects the source skipped in its latest snapshot (the rest applies)",
                                     registry=r)
        self.rules = Gauge("callgate_rules", "Rules in the applied ruleset (all chains)", registry=r)
        self.chains = Gauge("callgate_chains", "Per-endpoint chains in the applied ruleset", registry=r)
        self.sets = Gauge("callgate_sets", "Named peer sets in the applied ruleset", registry=r)
        self.set_elements = Gauge("callgate_set_elements", "Elements in all peer sets", registry=r)
        self.endpoints = Gauge("callgate_endpoints", "Local endpoints, by state", ["state"], registry=r)
        self.flow_records = Counter("callgate_flow_log_records", "Flow records written, by verdict", ["verdict"],
                                    registry=r)
        self.flow_undecoded = Counter("callgate_flow_log_undecoded_packets",
                                      "Logged packets that named no rule of the applied ruleset (not written)",
                                      registry=r)
        self.flow_overruns = Counter("callgate_flow_log_overruns",
                                     "Times the kernel dropped logged packets because the agent's socket was full",
                                     registry=r)
        self.revoked = Counter("callgate_revoked_connections",
                               "Tracked connections deleted because an update no longer allows them", registry=r)
        self.revocation_seconds = Histogram("callgate_revocation_duration_seconds",
                                            "Time to walk connection tracking after an update", buckets=_SYNC_BUCKETS,
                                            registry=r)
        self.revocation_errors = Counter("callgate_revocation_errors",
                                         "Walks of connection tracking that failed (connections kept)", registry=r)

    def value(self, name: str, **labels: str) -> float:
        """A sample's current value by its exported name (0 when it has none
        yet), read through the registry's public interface."""
        return self.registry.get_sample_value(name, labels) or 0.0

    def watch_enforcer(self, enforcer: Enforcer) -> None:
        """Export per-policy counters read from ``enforcer``'s live rules at scrape time."""
        self.registry.register(PolicyCounters(enforcer))


class Status(Protocol):
    """What the HTTP server asks the agent."""

    def healthy(self) -> tuple[bool, str]: ...

    def ready(self) -> tuple[bool, str]: ...


def parse_address(text: str) -> tuple[str, int]:
    """``host:port`` (``[v6]:port`` for IPv6); ValueError with a clear message."""
    m = re.fullmatch(r"\[(?P<h6>[0-9A-Fa-f:.]+)\]:(?P<p6>\d{1,5})|(?P<h>[A-Za-z0-9.\-]+):(?P<p>\d{1,5})", text)
    if not m:
        raise ValueError(f"metrics address {text!r} must be HOST:PORT, e.g. 127.0.0.1:9464 or [::1]:9464")
    host, port = (m["h6"], m["p6"]) if m["h6"] else (m["h"], m["p"])
    if not 0 <= int(port) <= 65535:
        raise ValueError(f"metrics address {text!r}: port must be 0-65535")
    return host, int(port)


def _handler(metrics: AgentMetrics, status: Status) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "callgate-agent"

        def log_message(self, format: str, *args: Any) -> None:
            pass  # scrapes every few seconds would drown the structured log

        def _send(self, code: int, body: bytes, ctype: str = "text/plain; charset=utf-8") -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            url = urlsplit(self.path)
            if url.path == "/metrics":
                self._send(200, generate_latest(metrics.registry), CONTENT_TYPE_LATEST)
            elif url.path in ("/healthz", "/readyz"):
                ok, why = status.healthy() if url.path == "/healthz" else status.ready()
                self._send(200 if ok else 503, (why or "ok").encode() + b"\n")
            else:
                self._send(404, b"not found\n")

    return Handler


class _Server(ThreadingHTTPServer):
    daemon_threads = True  # a hanging client must not keep the agent from exiting


class _Server6(_Server):
    address_family = socket.AF_INET6


class StatusServer:
    """The HTTP server on its own daemon threads."""

    def __init__(self, address: str, metrics: AgentMetrics, status: Status) -> None:
        host, port = parse_address(address)
        server = _Server6 if ":" in host else _Server
        self.httpd: ThreadingHTTPServer = server((host, port), _handler(metrics, status))
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="callgate-http", daemon=True)

    @property
    def address(self) -> str:
        host, port = str(self.httpd.server_address[0]), int(self.httpd.server_address[1])
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
