"""The NFLOG reader: parsing on hand-built messages, then real `log group` packets in a scratch namespace."""

from __future__ import annotations

import socket
import struct
import subprocess
import time

import pytest

from callgate.enforcers.netns import run_in
from callgate.enforcers.nflog import NflogPacket, NflogSocket, packet_headers, parse_messages
from tests.netns import nft


def _attr(kind: int, value: bytes) -> bytes:
    raw = struct.pack("=HH", 4 + len(value), kind) + value
    return raw + b"\0" * (-len(raw) % 4)


def _message(family: int, attrs: bytes) -> bytes:
    body = struct.pack("!BBH", family, 0, 7) + attrs
    return struct.pack("=IHHII", 16 + len(body), (4 << 8) | 0, 0, 0, 0) + body


def _udp4(src: str, dst: str, sport: int, dport: int) -> bytes:
    ip = bytes([0x45, 0, 0, 28, 0, 0, 0x40, 0, 64, 17, 0, 0]) + socket.inet_aton(src) + socket.inet_aton(dst)
    return ip + struct.pack("!HHHH", sport, dport, 8, 0)


def test_parse_batched_messages_with_every_attribute() -> None:
    first = _message(socket.AF_INET, _attr(1, struct.pack("!HBx", 0x0800, 2))
                     + _attr(3, struct.pack("!QQ", 1_700_000_000, 250_000))
                     + _attr(4, struct.pack("!I", 3)) + _attr(5, struct.pack("!I", 9))
                     + _attr(9, _udp4("198.18.0.1", "198.18.0.2", 4000, 53)) + _attr(10, b"D0123456789ab\0"))
    second = _message(socket.AF_INET6, _attr(10 | 0x4000, b"x\0"))  # a byte-order flag on the type is ignored
    done = struct.pack("=IHHII", 20, 3, 2, 0, 0) + b"\0" * 4
    packets = parse_messages(first + second + done)
    assert len(packets) == 2
    p = packets[0]
    assert (p.family, p.prefix, p.timestamp, p.indev, p.outdev, p.hook) == (
        socket.AF_INET, "D0123456789ab", 1_700_000_000.25, 3, 9, 2)
    headers = packet_headers(p.family, p.payload)
    assert headers is not None
    assert (headers.protocol, headers.src, headers.dst, headers.sport, headers.dport) == (
        17, "198.18.0.1", "198.18.0.2", 4000, 53)
    assert (packets[1].family, packets[1].prefix, packets[1].payload, packets[1].timestamp) == (
        socket.AF_INET6, "x", b"", None)


def test_hostile_bytes_never_raise() -> None:
    assert parse_messages(b"") == []
    assert parse_messages(b"\xff" * 7) == []
    # A length past the end, an attribute longer than its message: dropped, not raised.
    assert parse_messages(struct.pack("=IHHII", 4096, 0x400, 0, 0, 0)) == []
    assert parse_messages(_message(2, struct.pack("=HH", 200, 10) + b"ab"))[0].prefix == ""
    assert packet_headers(socket.AF_INET, b"\x45" + b"\0" * 5) is None
    assert packet_headers(socket.AF_INET6, b"\x45" * 40) is None
    short = packet_headers(socket.AF_INET, _udp4("198.18.0.1", "198.18.0.2", 1, 2)[:22])
    assert short is not None and (short.protocol, short.sport, short.dport) == (17, None, None)


def test_ipv6_ports_after_extension_headers() -> None:
    hop_by_hop = bytes([6, 0]) + b"\0" * 6  # next header TCP, 8 bytes
    ip6 = (bytes([0x60, 0, 0, 0]) + struct.pack("!HBB", 28, 0, 64) + socket.inet_pton(socket.AF_INET6, "fd00::1")
           + socket.inet_pton(socket.AF_INET6, "fd00::2"))
    headers = packet_headers(socket.AF_INET6, ip6 + hop_by_hop + struct.pack("!HH", 40000, 443) + b"\0" * 16)
    assert headers is not None
    assert (headers.protocol, headers.src, headers.dst, headers.sport, headers.dport) == (
        6, "fd00::1", "fd00::2", 40000, 443)


def _send_udp(netns: str, family: int, address: str, port: int) -> None:
    def send() -> None:
        with socket.socket(family, socket.SOCK_DGRAM) as s:
            s.sendto(b"probe", (address, port))
    run_in(netns, send)


def _receive(reader: NflogSocket, want: int, seconds: float = 5.0) -> list[NflogPacket]:
    packets: list[NflogPacket] = []
    deadline = time.monotonic() + seconds
    while len(packets) < want and time.monotonic() < deadline:
        packets += reader.receive(timeout=0.2)
    return packets


@pytest.mark.kernel
def test_nft_log_group_packets_read_back(netns: str) -> None:
    subprocess.run(["ip", "-n", netns, "link", "set", "lo", "up"], check=True)
    nft(netns, "-f", "-", stdin="""
table inet cgtest {
  chain out {
    type filter hook output priority 0; policy accept;
    udp dport 9999 log group 7 prefix "D0123456789ab"
    udp dport 9998 log group 8 prefix "other"
  }
}
""")
    reader = NflogSocket(7, netns, timeout=1)
    try:
        _send_udp(netns, socket.AF_INET, "127.0.0.1", 9999)
        _send_udp(netns, socket.AF_INET6, "::1", 9999)
        _send_udp(netns, socket.AF_INET, "127.0.0.1", 9998)  # another group: not ours
        packets = _receive(reader, 2)
    finally:
        reader.close()
    assert [p.prefix for p in packets] == ["D0123456789ab", "D0123456789ab"]
    assert [p.family for p in packets] == [socket.AF_INET, socket.AF_INET6]
    assert {p.outdev for p in packets} == {1}  # lo
    for p, dst in zip(packets, ["127.0.0.1", "::1"], strict=True):
        headers = packet_headers(p.family, p.payload)
        assert headers is not None
        assert (headers.protocol, headers.dst, headers.dport) == (17, dst, 9999)


@pytest.mark.kernel
def test_iptables_nflog_packets_read_back(netns: str) -> None:
    subprocess.run(["ip", "-n", netns, "link", "set", "lo", "up"], check=True)
    subprocess.run(["ip", "netns", "exec", netns, "iptables", "-A", "OUTPUT", "-p", "udp", "--dport", "9999",
                    "-j", "NFLOG", "--nflog-group", "9", "--nflog-prefix", "A0123456789ab"], check=True)
    reader = NflogSocket(9, netns, timeout=1)
    try:
        _send_udp(netns, socket.AF_INET, "127.0.0.1", 9999)
        packets = _receive(reader, 1)
    finally:
        reader.close()
    assert [p.prefix for p in packets] == ["A0123456789ab"]
    headers = packet_headers(packets[0].family, packets[0].payload)
    assert headers is not None and (headers.protocol, headers.dst, headers.dport) == (17, "127.0.0.1", 9999)


@pytest.mark.kernel
def test_a_bound_group_refuses_a_second_reader(netns: str) -> None:
    first = NflogSocket(11, netns)
    try:
        with pytest.raises(OSError, match="NFLOG group 11"):
            NflogSocket(11, netns)
    finally:
        first.close()
