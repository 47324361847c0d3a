"""The agent's unix socket: the only way to the CNI start gate.

``callgate-cni`` on the host connects to it (a hostPath,
``/run/callgate/agent.sock`` in deploy/, mode 0600: root on the node only) and
speaks minimal HTTP/1.0:

* ``POST /cni`` — the CNI environment in ``CNI-*`` headers, the network
  configuration as the body; the answer's body is what the plugin prints, the
  status says how it exits (200: 0, anything else: 1). See
  :mod:`callgate.agent.cni`.
* ``GET /programmed?pod=NS/NAME[&interface=IF][&wait=SECONDS]`` — whether the
  pod is programmed and the live table holds the rules (a drifted table is
  repaired first), for people and scripts on the node
  (``curl --unix-socket /run/callgate/agent.sock 'http://agent/programmed?pod=ns/name'``).

Nothing of this is on the metrics port: the node address is reachable from
pods, and the gate is for the node's runtime only.
"""

from __future__ import annotations

import json
import os
import socketserver
import stat
import threading
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from callgate.agent import cni
from callgate.cni.request import HEADERS, MAX_BODY
from callgate.policy.validation import dns_label, dns_subdomain, interface_name

MAX_WAIT = 120.0



def _handler(gate: cni.Gate) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "callgate-agent"
        protocol_version = "HTTP/1.0"  # one request per connection: the plugin reads to EOF

        def log_message(self, format: str, *args: Any) -> None:
            pass  # the CNI handler logs what matters, with fields

        def address_string(self) -> str:
            return "unix"  # AF_UNIX peers have no address; the default would index into ''

        def _send(self, code: int, body: bytes, ctype: str) -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _json(self, code: int, data: dict[str, Any]) -> None:
            self._send(code, json.dumps(data).encode() + b"\n", "application/json")

        def do_POST(self) -> None:
            if urlsplit(self.path).path != "/cni":
                self._json(404, {"error": "not found"})
                return
            try:
                length = int(self.headers.get("Content-Length", ""))
            except ValueError:
                self._json(411, {"error": "Content-Length required"})
                return
            if not 0 <= length <= MAX_BODY:
                self._json(413, {"error": f"body must be at most {MAX_BODY} bytes"})
                return
            body = self.rfile.read(length)
            env = {name: value for name, header in HEADERS.items() if (value := self.headers.get(header)) is not None}
            status, out = cni.handle(gate, env, body)
            self._send(200 if status == 0 else 400, out, "application/json")

        def do_GET(self) -> None:
            url = urlsplit(self.path)
            if url.path != "/programmed":
                self._json(404, {"error": "not found"})
                return
            query = parse_qs(url.query)
            pod = (query.get("pod") or [""])[0]
            ifaces = query.get("interface")
            iface = ifaces[0] if ifaces else None
            ns, _, name = pod.partition("/")
            if not ns or dns_label(ns) or not name or dns_subdomain(name):
                self._json(400, {"error": "pod must be NAMESPACE/NAME"})
                return
            if iface is not None and interface_name(iface):
                self._json(400, {"error": "interface is not a valid interface name"})
                return
            try:
                wait = min(float((query.get("wait") or ["0"])[0]), MAX_WAIT)
            except ValueError:
                self._json(400, {"error": "wait must be a number of seconds"})
                return
            ok, why = gate.wait_programmed(pod, iface, max(wait, 0.0))
            self._json(200, {"pod": pod, "programmed": ok, "reason": why})

    return Handler


class _Server(socketserver.ThreadingUnixStreamServer):
    daemon_threads = True  # a runtime that hangs up mid-wait must not keep the agent from exiting


class CniSocket:
    """The unix-socket server on its own daemon threads."""

    def __init__(self, path: str, gate: cni.Gate) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        if self.path.is_socket():  # left by a previous agent on this node
            self.path.unlink()
        elif self.path.exists() or self.path.is_symlink():
            raise OSError(f"{path} exists and is not a socket; refusing to replace it")
        old = os.umask(0o177)  # the socket is born 0600: no window with wider permissions
        try:
            self.server = _Server(str(self.path), _handler(gate))
        finally:
            os.umask(old)
        self.thread = threading.Thread(target=self.server.serve_forever, name="callgate-cni-socket", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        if self.thread.is_alive():
            self.server.shutdown()  # waits for serve_forever: only when it runs
        self.server.server_close()
        try:
            if stat.S_ISSOCK(self.path.lstat().st_mode):
                self.path.unlink()
        except FileNotFoundError:
            pass
