"""The lab's pod workload: answer on every declared TCP and UDP port.

Run inside a pod's network namespace::

    python -m callgate.lab.server --name x/a --tcp 80 --udp 80 --tcp 81

It listens on all IPv4 and all IPv6 addresses (two sockets per port, the IPv6
one ``V6ONLY`` so both can bind). TCP: accept, write ``"<name> <port>/TCP\\n"``
so a probe can tell it reached the right pod, close. UDP: echo each datagram.
Once every socket is bound it prints ``ready`` on stdout and then detaches its
stdout/stderr, so the process that started it can stop reading; a bind failure
instead exits non-zero with the reason on stderr.

This module imports only the standard library: it starts once per pod and
should start fast.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import cast


def bind_socket(family: socket.AddressFamily, kind: socket.SocketKind, port: int) -> socket.socket:
    """A non-blocking socket bound to every address of ``family`` on ``port``."""
    sock = socket.socket(family, kind)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            # Without V6ONLY the IPv6 socket would also take IPv4 and the IPv4 bind would fail.
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", port))
        if kind == socket.SOCK_STREAM:
            sock.listen(128)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


class Echo(asyncio.DatagramProtocol):
    """UDP: send every datagram back where it came from."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # The selector transport is a DatagramTransport in behaviour, not by class.
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        self.transport.sendto(data, addr)

    def error_received(self, exc: Exception) -> None:
        pass  # an ICMP error for an earlier reply; nothing to do


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def tcp_handler(reply: bytes) -> Handler:
    """TCP: write ``reply`` without waiting for a request, then close."""

    async def handle(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            writer.write(reply)
            await writer.drain()
        except OSError:
            pass  # the prober gave up; nothing to report
        finally:
            writer.close()

    return handle


async def serve(name: str, tcp_ports: Sequence[int], udp_ports: Sequence[int]) -> None:
    loop = asyncio.get_running_loop()
    families = (socket.AF_INET, socket.AF_INET6)
    servers = []
    for port in sorted(set(tcp_ports)):
        handler = tcp_handler(f"{name} {port}/TCP\n".encode())
        for family in families:
            sock = bind_socket(family, socket.SOCK_STREAM, port)
            servers.append(await asyncio.start_server(handler, sock=sock))
    for port in sorted(set(udp_ports)):
        for family in families:
            sock = bind_socket(family, socket.SOCK_DGRAM, port)
            await loop.create_datagram_endpoint(Echo, sock=sock)
    announce_ready()
    await asyncio.Event().wait()  # serve until killed


def announce_ready() -> None:
    """Tell the starter we are listening, then let go of its pipes."""
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    os.close(devnull)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m callgate.lab.server",
                                     description="Answer on every declared TCP and UDP port (lab pod workload).")
    parser.add_argument("--name", default="pod", help="identity written in TCP replies (namespace/name)")
    parser.add_argument("--tcp", type=int, action="append", default=[], help="TCP port to serve (repeatable)")
    parser.add_argument("--udp", type=int, action="append", default=[], help="UDP port to echo on (repeatable)")
    args = parser.parse_args(argv)
    for port in (*args.tcp, *args.udp):
        if not 1 <= port <= 65535:
            parser.error(f"port {port} must be between 1 and 65535")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        asyncio.run(serve(args.name, args.tcp, args.udp))
    except OSError as exc:
        print(f"callgate.lab.server: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
