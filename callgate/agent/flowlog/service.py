"""The agent's flow log: NFLOG packets in, flow records out, on one thread.

The reactor hands over a new :class:`~callgate.agent.flowlog.decode.FlowContext`
after every sync (:meth:`FlowLogService.update`); the reader thread decodes
each batch of logged packets with the context current at that moment. The
kernel limits what reaches the socket (per endpoint address, see
:mod:`callgate.enforcers.nft.actions`), so the work here is bounded by that
rate, not by the packet rate of a storm.
"""

from __future__ import annotations

import logging
import threading
import time

from callgate.agent.flowlog.decode import FlowContext, decode
from callgate.agent.flowlog.writer import FlowLogWriter
from callgate.agent.metrics import AgentMetrics
from callgate.enforcers.nflog import NflogSocket

log = logging.getLogger("callgate.agent.flowlog")


class FlowLogService:
    def __init__(self, socket: NflogSocket, writer: FlowLogWriter, metrics: AgentMetrics) -> None:
        self.socket = socket
        self.writer = writer
        self.metrics = metrics
        self._context: FlowContext | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._overruns = 0

    def update(self, context: FlowContext) -> None:
        """The applied snapshot's context (from the reactor's thread)."""
        self._context = context  # one reference swap: the reader sees the old or the new one

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="callgate-flowlog", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self.socket.close()
        self.writer.close()

    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.drain(timeout=0.5)
            except Exception:  # a bad batch must not end the flow log
                log.exception("flow log: reading logged packets failed")
                time.sleep(0.5)

    def drain(self, timeout: float | None = None) -> int:
        """Read one batch, write its records; how many were written."""
        packets = self.socket.receive(timeout)
        if self.socket.overruns != self._overruns:
            self.metrics.flow_overruns.inc(self.socket.overruns - self._overruns)
            self._overruns = self.socket.overruns
        context = self._context
        if not packets or context is None:
            return 0
        now = time.time()
        records = []
        for packet in packets:
            record = decode(packet, context, now)
            if record is None:
                self.metrics.flow_undecoded.inc()
            else:
                records.append(record)
                self.metrics.flow_records.labels(record.verdict).inc()
        self.writer.write(records)
        return len(records)
