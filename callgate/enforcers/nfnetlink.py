"""The nfnetlink framing that callgate speaks on its own ``NETLINK_NETFILTER`` sockets.

Two small conversations need no library: reading NFLOG groups
(:mod:`callgate.enforcers.nflog`) and asking nf_tables for its ruleset
generation (:func:`ruleset_generation`). Both are a netlink header, an
``nfgenmsg`` and type-length-value attributes
(include/uapi/linux/netfilter/nfnetlink.h, nf_tables.h).
"""

from __future__ import annotations

import errno
import socket
import struct
from collections.abc import Iterator

NETLINK_NETFILTER = 12
NFNL_SUBSYS_NFTABLES = 10

NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
NLMSG_ERROR = 0x2

NLMSGHDR = struct.Struct("=IHHII")  # length, type, flags, sequence, port id
NFGENMSG = struct.Struct("!BBH")  # family, version, resource id (big endian)
NLATTR = struct.Struct("=HH")
NLA_TYPE_MASK = 0x3FFF  # without NLA_F_NESTED / NLA_F_NET_BYTEORDER

_NFT_MSG_NEWGEN = 15
_NFT_MSG_GETGEN = 16
_NFTA_GEN_ID = 1


def attributes(data: bytes, offset: int, end: int) -> dict[int, bytes]:
    """The attributes between ``offset`` and ``end``, by type (a malformed one ends the walk)."""
    attrs: dict[int, bytes] = {}
    while offset + NLATTR.size <= end:
        length, kind = NLATTR.unpack_from(data, offset)
        if length < NLATTR.size or offset + length > end:
            break
        attrs[kind & NLA_TYPE_MASK] = data[offset + NLATTR.size:offset + length]
        offset += (length + 3) & ~3
    return attrs


def messages(data: bytes) -> Iterator[tuple[int, int, int, int]]:
    """The netlink messages of one datagram: (type, sequence, start of the
    payload, end of the message); a malformed header ends the walk."""
    offset = 0
    while offset + NLMSGHDR.size <= len(data):
        length, kind, _flags, seq, _port = NLMSGHDR.unpack_from(data, offset)
        if length < NLMSGHDR.size or offset + length > len(data):
            return
        yield kind, seq, offset + NLMSGHDR.size, offset + length
        offset += (length + 3) & ~3


def request(kind: int, flags: int, seq: int, resource: int = 0, attrs: bytes = b"") -> bytes:
    """One nfnetlink request: header, ``nfgenmsg`` (family unspecified) and attributes."""
    body = NFGENMSG.pack(socket.AF_UNSPEC, 0, resource) + attrs
    return NLMSGHDR.pack(NLMSGHDR.size + len(body), kind, NLM_F_REQUEST | flags, seq, 0) + body


def error_code(data: bytes, payload: int) -> int:
    """The (negative errno, or 0 for an acknowledgement) code of an ``NLMSG_ERROR``."""
    return int(struct.unpack_from("=i", data, payload)[0])


def attribute(kind: int, value: bytes) -> bytes:
    """One attribute, padded to four bytes."""
    raw = NLATTR.pack(NLATTR.size + len(value), kind) + value
    return raw + b"\0" * (-len(raw) % 4)


def open_socket() -> socket.socket:
    """A ``NETLINK_NETFILTER`` socket in the calling thread's network namespace."""
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
    try:
        sock.bind((0, 0))
    except BaseException:
        sock.close()
        raise
    return sock


def ruleset_generation(sock: socket.socket, seq: int) -> int:
    """nf_tables' ruleset generation in the socket's namespace.

    The kernel counts every committed nf_tables transaction (of any table, by
    any program) in this number and reports it to whoever asks
    (``NFT_MSG_GETGEN``); a read or a refused transaction leaves it. Two equal
    readings therefore mean that no ruleset changed in between. OSError when
    the kernel refuses or answers something else."""
    sock.send(request((NFNL_SUBSYS_NFTABLES << 8) | _NFT_MSG_GETGEN, 0, seq))
    while True:
        data = sock.recv(65536)
        for kind, got_seq, payload, end in messages(data):
            if got_seq != seq:
                continue
            if kind == NLMSG_ERROR:
                code = error_code(data, payload)
                raise OSError(-code, f"nf_tables generation: {errno.errorcode.get(-code, code)}")
            if kind == (NFNL_SUBSYS_NFTABLES << 8) | _NFT_MSG_NEWGEN:
                gen = attributes(data, payload + NFGENMSG.size, end).get(_NFTA_GEN_ID, b"")
                if len(gen) == 4:
                    return int(struct.unpack("!I", gen)[0])
                raise OSError(errno.EPROTO, "nf_tables generation: answer without NFTA_GEN_ID")
