"""The host's own addresses, the networks it is on, and its gateways: local, whatever range
they are in.

A home server's IPv6 addresses are global, and so is the whole /64 its LAN is on: the
router's admin page at ``[prefix::1]``, the printer, the NAS, and this host's own
services on ``[::]``. An address range cannot tell them from the web; only the host can.

Read from the kernel over rtnetlink (``NETLINK_ROUTE``: a dump of every address and
route) when the daemon starts, again whenever the kernel announces an address or route
change (the socket subscribes to those groups), and on every work pass as a safety net
(a burst of changes can overflow the socket). Counted as local:

- every address of every interface (``RTM_NEWADDR``), and the network its prefix length
  puts it on;
- every route that leaves by an interface with no gateway (on-link: a DHCPv6 address is a
  /128, its /64 comes from the router's advertisement), unless it is a default route or
  shorter than /8 (IPv4) or /32 (IPv6): a VPN's ``0.0.0.0/1`` is the internet, not a LAN;
- every gateway of every route, the default gateways among them.

If the kernel cannot be read the daemon refuses every connection (``host-unknown``):
without this list a global address could be the owner's router.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
from dataclasses import dataclass

from nanoclaw.core.egress import IPAddress, IPNetwork, unwrap

RTM_NEWADDR, RTM_GETADDR, RTM_NEWROUTE, RTM_GETROUTE = 20, 22, 24, 26
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLM_F_REQUEST, NLM_F_DUMP = 0x1, 0x300
IFA_ADDRESS, IFA_LOCAL = 1, 2
RTA_DST, RTA_GATEWAY, RTA_MULTIPATH, RTA_VIA = 1, 5, 9, 18
RTN_UNICAST = 1
# Address and route changes, IPv4 and IPv6 (RTMGRP_IPV4_IFADDR, _IPV4_ROUTE, _IPV6_IFADDR, _IPV6_ROUTE).
CHANGES = 0x10 | 0x40 | 0x100 | 0x400
MIN_ONLINK = {4: 8, 6: 32}
_HDR = struct.Struct("=LHHLL")


@dataclass(frozen=True)
class Local:
    """One local network of the host's, and how a refusal names it."""

    network: IPNetwork
    name: str


def _attrs(data: bytes, offset: int) -> dict[int, bytes]:
    """Netlink attributes (type -> value) from ``offset`` to the end of ``data``."""
    out = {}
    while offset + 4 <= len(data):
        length, kind = struct.unpack_from("=HH", data, offset)
        if length < 4:
            break
        out[kind & 0x3FFF] = data[offset + 4:offset + length]
        offset += (length + 3) & ~3
    return out


def _ip(family: int, raw: bytes) -> IPAddress | None:
    if family == socket.AF_INET and len(raw) == 4 or family == socket.AF_INET6 and len(raw) == 16:
        return ipaddress.ip_address(raw)
    return None


def _ifname(index: int) -> str:
    try:
        return socket.if_indextoname(index)
    except OSError:
        return f"interface {index}"


def _dump(kind: int, payload: bytes) -> list[tuple[int, bytes]]:
    """One rtnetlink dump: the (type, message body) of every answer."""
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, socket.NETLINK_ROUTE) as sock:
        sock.settimeout(5)
        sock.sendto(_HDR.pack(_HDR.size + len(payload), kind, NLM_F_REQUEST | NLM_F_DUMP, 1, 0) + payload, (0, 0))
        out = []
        while True:
            data = sock.recv(1 << 16)
            offset = 0
            while offset + _HDR.size <= len(data):
                length, mtype, _, _, _ = _HDR.unpack_from(data, offset)
                if mtype == NLMSG_DONE:
                    return out
                if mtype == NLMSG_ERROR:
                    (errno,) = struct.unpack_from("=i", data, offset + _HDR.size)
                    if errno:
                        raise OSError(-errno, "rtnetlink dump refused")
                    return out
                out.append((mtype, data[offset + _HDR.size:offset + length]))
                offset += (length + 3) & ~3


def read() -> list[Local]:
    """The host's local networks, now."""
    found: dict[IPNetwork, str] = {}

    def add(net: IPNetwork, name: str) -> None:
        found.setdefault(net, name)

    for mtype, body in _dump(RTM_GETADDR, struct.pack("=BBBBI", socket.AF_UNSPEC, 0, 0, 0, 0)):
        if mtype != RTM_NEWADDR or len(body) < 8:
            continue
        family, prefix, _, _, index = struct.unpack_from("=BBBBI", body)
        attrs = _attrs(body, 8)
        where = _ifname(index)
        for key in (IFA_LOCAL, IFA_ADDRESS):
            ip = _ip(family, attrs.get(key, b""))
            if ip is not None:
                net = ipaddress.ip_network(f"{ip}/{prefix}", strict=False)
                add(ipaddress.ip_network(ip), f"this host's own address (on {where})")
                add(net, f"on this host's network {net} (on {where})")
    for mtype, body in _dump(RTM_GETROUTE, struct.pack("=BBBBBBBBI", socket.AF_UNSPEC, 0, 0, 0, 0, 0, 0, 0, 0)):
        if mtype != RTM_NEWROUTE or len(body) < 12:
            continue
        family, dst_len, _, _, _, _, _, rtype, _ = struct.unpack_from("=BBBBBBBBI", body)
        if rtype != RTN_UNICAST:
            continue
        attrs = _attrs(body, 12)
        gateways = [attrs[RTA_GATEWAY]] if RTA_GATEWAY in attrs else []
        hops = attrs.get(RTA_MULTIPATH, b"")
        while len(hops) >= 8:  # struct rtnexthop, each with its own attributes
            length = struct.unpack_from("=H", hops)[0]
            if length < 8:
                break
            gateway = _attrs(hops[:length], 8).get(RTA_GATEWAY)
            if gateway:
                gateways.append(gateway)
            hops = hops[(length + 3) & ~3:]
        for raw in gateways:
            ip = _ip(family, raw)
            if ip is not None:
                add(ipaddress.ip_network(ip), "a gateway of this host")
        dst = _ip(family, attrs.get(RTA_DST, b""))
        if not gateways and RTA_VIA not in attrs and dst is not None and dst_len >= MIN_ONLINK[dst.version]:
            net = ipaddress.ip_network(f"{dst}/{dst_len}", strict=False)
            add(net, f"on a network this host is on ({net})")
    # most specific first, so a refusal names the host's own address before its network
    return [Local(net, name) for net, name in sorted(found.items(), key=lambda x: -x[0].prefixlen)]


class HostAddresses:
    """The current list, and the netlink socket that says when to read it again."""

    def __init__(self) -> None:
        self.locals: list[Local] = []
        self.error = ""  # why the list could not be read ("" when it was)
        self.events: socket.socket | None = None

    def refresh(self) -> tuple[set[IPNetwork], set[IPNetwork]]:
        """Read the list again: (networks added, networks gone)."""
        before = {loc.network for loc in self.locals}
        try:
            self.locals = read()
            self.error = ""
        except OSError as exc:
            self.error = f"cannot read this host's addresses: {exc}"
            return set(), set()
        after = {loc.network for loc in self.locals}
        return after - before, before - after

    def subscribe(self) -> socket.socket:
        """A socket that becomes readable when the kernel announces an address or route change."""
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK,
                             socket.NETLINK_ROUTE)
        sock.bind((0, CHANGES))
        self.events = sock
        return sock

    def drain(self) -> None:
        """Read every pending announcement (their content is not needed: the list is read whole)."""
        assert self.events is not None
        while True:
            try:
                if not self.events.recv(1 << 16):
                    return
            except BlockingIOError:
                return
            except OSError:  # ENOBUFS: announcements were lost, which a full read covers
                return

    def match(self, ip: IPAddress) -> str | None:
        """What local thing of the host's ``ip`` is, or None."""
        for candidate in {ip, unwrap(ip)}:
            for loc in self.locals:
                if candidate.version == loc.network.version and candidate in loc.network:
                    return loc.name
        return None

    def close(self) -> None:
        if self.events is not None:
            self.events.close()

