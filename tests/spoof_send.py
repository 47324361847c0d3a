"""Packets a pod should not get through, sent from inside a lab pod (stdlib only).

Run as ``python tests/spoof_send.py MODE ...`` inside the pod's namespace:

* ``udp SRC DST PORT``: one UDP datagram from source address SRC (any
  address: a raw socket writes the IP header itself), IPv4 or IPv6, from
  source port :data:`SPORT`; prints ``sent``, or ``refused`` when this
  namespace's own output hook dropped it;
* ``tcp6-link-local DST_IFINDEX_ADDR PORT``: a TCP connect to a link-local
  address (``fe80::…``) on eth0; prints ``connected`` or ``blocked``;
* ``vlan0 DST_MAC SRC DST PORT``: a TCP SYN in an Ethernet frame with an
  802.1Q priority tag (VLAN 0) from eth0 through a packet socket; prints
  ``answered`` when a SYN-ACK comes back, else ``blocked``.
"""

from __future__ import annotations

import random
import socket
import struct
import sys
import time

SPORT = 40404  # what tests count on the receiving side
TIMEOUT = 1.5


def checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return ~total & 0xFFFF


def udp(src: str, dst: str, port: int) -> None:
    payload = b"callgate spoof test"
    v6 = ":" in dst
    family = socket.AF_INET6 if v6 else socket.AF_INET
    s_addr, d_addr = socket.inet_pton(family, src), socket.inet_pton(family, dst)
    segment = struct.pack("!HHHH", SPORT, port, 8 + len(payload), 0) + payload
    pseudo = (s_addr + d_addr + struct.pack("!I3xB", len(segment), 17) if v6
              else s_addr + d_addr + struct.pack("!BBH", 0, 17, len(segment)))
    segment = segment[:6] + struct.pack("!H", checksum(pseudo + segment) or 0xFFFF) + segment[8:]
    if v6:
        header = struct.pack("!IHBB16s16s", 6 << 28, len(segment), 17, 64, s_addr, d_addr)
    else:
        header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(segment), 1, 0, 64, 17, 0, s_addr, d_addr)
        header = header[:10] + struct.pack("!H", checksum(header)) + header[12:]
    # IPPROTO_RAW: the kernel sends our header as it is (IPv6 too, since Linux 4.5).
    with socket.socket(family, socket.SOCK_RAW, socket.IPPROTO_RAW) as sock:
        try:
            sock.sendto(header + segment, (dst, 0))
        except PermissionError:
            print("refused")  # dropped by an output hook in this very namespace (macvlan: callgate's table)
            return
    print("sent")


def tcp6_link_local(dst: str, port: int) -> str:
    with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as sock:
        sock.settimeout(TIMEOUT)
        try:
            sock.connect((dst, port, 0, socket.if_nametoindex("eth0")))
        except OSError:
            return "blocked"
    return "connected"


def vlan0(dst_mac: str, src: str, dst: str, port: int) -> str:
    # A port of its own each time: a SYN-ACK the receiver still retransmits for an
    # earlier attempt (which nobody completes) must not pass for an answer to this one.
    sport = random.randint(41000, 60999)
    tcp = struct.pack("!HHIIBBHHH", sport, port, 1, 0, 5 << 4, 0x02, 64240, 0, 0)
    pseudo = socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!BBH", 0, 6, len(tcp))
    tcp = tcp[:16] + struct.pack("!H", checksum(pseudo + tcp)) + tcp[18:]
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 1, 0, 64, 6, 0, socket.inet_aton(src),
                     socket.inet_aton(dst))
    ip = ip[:10] + struct.pack("!H", checksum(ip)) + ip[12:]
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003)) as sock:
        sock.bind(("eth0", 0))
        frame = bytes.fromhex(dst_mac.replace(":", "")) + sock.getsockname()[4] + struct.pack("!HH", 0x8100, 0)
        sock.send(frame + b"\x08\x00" + ip + tcp)
        sock.settimeout(0.2)
        deadline = time.monotonic() + TIMEOUT
        want = socket.inet_aton(dst) + socket.inet_aton(src)
        while time.monotonic() < deadline:
            try:
                data = sock.recv(2048)
            except TimeoutError:
                continue
            at = data.find(want)
            if at > 0 and data[at - 3] == 6:  # IPv4 protocol field: TCP
                reply = data[at + 8:]
                if struct.unpack("!H", reply[2:4])[0] == sport and reply[13] & 0x12 == 0x12:
                    return "answered"
    return "blocked"


def main(argv: list[str]) -> int:
    mode, *args = argv
    if mode == "udp":
        udp(args[0], args[1], int(args[2]))
    elif mode == "tcp6-link-local":
        print(tcp6_link_local(args[0], int(args[1])))
    elif mode == "vlan0":
        print(vlan0(args[0], args[1], args[2], int(args[3])))
    else:
        print(f"unknown mode {mode!r}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
