"""A small NFLOG reader on the standard library's netlink socket.

Packets that a rule sends to ``log group N`` (nft) or ``-j NFLOG --nflog-group
N`` (iptables) arrive on an ``AF_NETLINK``/``NETLINK_NETFILTER`` socket bound
to group N through nfnetlink_log: one ``NFULNL_MSG_PACKET`` message per
packet, its attributes carrying the rule's prefix, the first bytes of the
packet, the interfaces and (when the packet has one) a timestamp. No
maintained pure-Python library reads these; the protocol is small and stable
(include/uapi/linux/netfilter/nfnetlink_log.h), so this module speaks it.

The kernel batches packets (``qthresh`` packets or ``timeout``, whichever
comes first) into one multipart datagram, which keeps a storm of logged
packets at one ``recv`` per batch. When the socket's buffer overflows the
kernel drops what does not fit and the next ``recv`` fails with ENOBUFS:
:attr:`NflogSocket.overruns` counts those.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import select
import socket
import struct
from dataclasses import dataclass

from callgate.enforcers.netns import run_in
from callgate.enforcers.nfnetlink import (
    NFGENMSG,
    NLM_F_ACK,
    NLMSG_ERROR,
    attribute,
    attributes,
    error_code,
    messages,
    open_socket,
    request,
)

_NFNL_SUBSYS_ULOG = 4
_NFULNL_MSG_PACKET = 0
_NFULNL_MSG_CONFIG = 1

# Configuration attributes and commands.
_NFULA_CFG_CMD = 1
_NFULA_CFG_MODE = 2
_NFULA_CFG_NLBUFSIZ = 3
_NFULA_CFG_TIMEOUT = 4
_NFULA_CFG_QTHRESH = 5
_CMD_BIND = 1
_CMD_UNBIND = 2
_COPY_PACKET = 2

# Packet attributes.
_NFULA_PACKET_HDR = 1
_NFULA_TIMESTAMP = 3
_NFULA_IFINDEX_INDEV = 4
_NFULA_IFINDEX_OUTDEV = 5
_NFULA_PAYLOAD = 9
_NFULA_PREFIX = 10
# Enough of a packet for the IPv6 header plus a transport header's ports.
DEFAULT_COPY_RANGE = 128


@dataclass(frozen=True, slots=True)
class NflogPacket:
    """One logged packet as the kernel reported it."""

    family: int  # socket.AF_INET or socket.AF_INET6 (the packet's, from nfgenmsg)
    prefix: str  # the rule's log prefix ("" when it had none)
    payload: bytes  # the packet from its network header, cut at the copy range
    timestamp: float | None  # seconds since the epoch, when the packet carried a timestamp
    indev: int | None  # interface indexes
    outdev: int | None
    hook: int | None  # the netfilter hook number


@dataclass(frozen=True, slots=True)
class PacketHeaders:
    """What a flow record needs from a packet's network and transport headers."""

    protocol: int  # IP protocol number
    src: str
    dst: str
    sport: int | None  # TCP, UDP, SCTP, UDP-Lite; None for other protocols
    dport: int | None


_PORT_PROTOCOLS = frozenset({6, 17, 132, 136})  # TCP, UDP, SCTP, UDP-Lite
# IPv6 extension headers a transport header may follow (hop-by-hop, routing,
# destination options); fragments and others end the walk.
_IPV6_EXTENSIONS = frozenset({0, 43, 60})


def packet_headers(family: int, payload: bytes) -> PacketHeaders | None:
    """Addresses, protocol and ports of a packet that starts at its network
    header; None when it is too short or not IPv4/IPv6 (hostile bytes never
    raise)."""
    if family == socket.AF_INET and len(payload) >= 20 and payload[0] >> 4 == 4:
        header_len = (payload[0] & 0x0F) * 4
        protocol = payload[9]
        src, dst = str(ipaddress.IPv4Address(payload[12:16])), str(ipaddress.IPv4Address(payload[16:20]))
        first_fragment = struct.unpack_from("!H", payload, 6)[0] & 0x1FFF == 0
        transport = header_len if header_len >= 20 and first_fragment else None
    elif family == socket.AF_INET6 and len(payload) >= 40 and payload[0] >> 4 == 6:
        protocol = payload[6]
        src, dst = str(ipaddress.IPv6Address(payload[8:24])), str(ipaddress.IPv6Address(payload[24:40]))
        offset = 40
        while protocol in _IPV6_EXTENSIONS and len(payload) >= offset + 8:
            protocol, length = payload[offset], payload[offset + 1]
            offset += (length + 1) * 8
        transport = offset
    else:
        return None
    if protocol in _PORT_PROTOCOLS and transport is not None and len(payload) >= transport + 4:
        sport, dport = struct.unpack_from("!HH", payload, transport)
        return PacketHeaders(protocol, src, dst, sport, dport)
    return PacketHeaders(protocol, src, dst, None, None)


def parse_messages(data: bytes) -> list[NflogPacket]:
    """The NFLOG packets in one netlink datagram (other messages are skipped)."""
    return [_packet(data[payload], attributes(data, payload + NFGENMSG.size, end))
            for kind, _seq, payload, end in messages(data)
            if kind == (_NFNL_SUBSYS_ULOG << 8) | _NFULNL_MSG_PACKET and end - payload >= NFGENMSG.size]


def _packet(family: int, attrs: dict[int, bytes]) -> NflogPacket:
    prefix = attrs.get(_NFULA_PREFIX, b"").split(b"\0", 1)[0].decode("ascii", "replace")
    timestamp = None
    if len(stamp := attrs.get(_NFULA_TIMESTAMP, b"")) == 16:
        sec, usec = struct.unpack("!QQ", stamp)
        timestamp = sec + usec / 1e6
    hook = attrs[_NFULA_PACKET_HDR][2] if len(attrs.get(_NFULA_PACKET_HDR, b"")) >= 3 else None
    return NflogPacket(family=family, prefix=prefix, payload=attrs.get(_NFULA_PAYLOAD, b""), timestamp=timestamp,
                       indev=_u32(attrs.get(_NFULA_IFINDEX_INDEV)), outdev=_u32(attrs.get(_NFULA_IFINDEX_OUTDEV)),
                       hook=hook)


def _u32(value: bytes | None) -> int | None:
    return struct.unpack("!I", value)[0] if value is not None and len(value) == 4 else None


class NflogSocket:
    """A netlink socket bound to one NFLOG group (in ``netns``, when given).

    ``qthresh``/``timeout`` (hundredths of a second) let the kernel batch
    packets; ``buffer`` is the socket's receive buffer in bytes, which decides
    how large a burst survives between two reads."""

    def __init__(self, group: int, netns: str | None = None, *, copy_range: int = DEFAULT_COPY_RANGE,
                 qthresh: int = 64, timeout: int = 5, buffer: int = 4 << 20) -> None:
        if not 0 <= group <= 0xFFFF:
            raise ValueError(f"NFLOG group {group} is not between 0 and 65535")
        self.group = group
        self.overruns = 0  # times the kernel dropped packets because the buffer was full
        self._seq = 0
        self._sock = run_in(netns, open_socket)
        try:
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, buffer)
            self._config(attribute(_NFULA_CFG_CMD, bytes([_CMD_BIND])))
            self._config(attribute(_NFULA_CFG_MODE, struct.pack("!IBx", copy_range, _COPY_PACKET))
                         + attribute(_NFULA_CFG_QTHRESH, struct.pack("!I", qthresh))
                         + attribute(_NFULA_CFG_TIMEOUT, struct.pack("!I", timeout))
                         + attribute(_NFULA_CFG_NLBUFSIZ, struct.pack("!I", min(buffer // 2, 1 << 17))))
        except BaseException:
            self._sock.close()
            raise

    def fileno(self) -> int:
        return self._sock.fileno()

    def _config(self, attrs: bytes) -> None:
        """Send one config message and wait for its acknowledgement (OSError when refused)."""
        self._seq += 1
        self._sock.send(request((_NFNL_SUBSYS_ULOG << 8) | _NFULNL_MSG_CONFIG, NLM_F_ACK, self._seq, self.group, attrs))
        while True:
            data = self._sock.recv(65536)
            for kind, seq, payload, _end in messages(data):
                if kind == NLMSG_ERROR and seq == self._seq:
                    if code := error_code(data, payload):
                        raise OSError(-code, f"NFLOG group {self.group}: {errno.errorcode.get(-code, code)}")
                    return

    def receive(self, timeout: float | None = None) -> list[NflogPacket]:
        """The packets of the next datagram; [] when ``timeout`` seconds pass
        without one (or when the kernel reported an overrun, counted)."""
        if timeout is not None and not select.select([self._sock], [], [], timeout)[0]:
            return []
        try:
            data = self._sock.recv(1 << 18)
        except OSError as exc:
            if exc.errno == errno.ENOBUFS:
                self.overruns += 1
                return []
            raise
        return parse_messages(data)

    def close(self) -> None:
        if self._sock.fileno() < 0:
            return
        with contextlib.suppress(OSError):  # closing the socket unbinds it as well
            self._config(attribute(_NFULA_CFG_CMD, bytes([_CMD_UNBIND])))
        self._sock.close()
