"""Web egress policy: which hosts, ports and addresses a group's agent may reach.

Pure rules, no I/O: the egress daemon (``nanoclaw/daemons/egress/``) resolves
a name itself, asks :meth:`EgressPolicy.check_name` before resolving and
:meth:`EgressPolicy.check_address` for every address the name resolved to,
and connects only to an address that passed. The API relay holds server-side
tools (web search and fetch at Anthropic) to the same policy. Configured as
``[egress]`` with per-group overrides in ``[egress.groups.<folder>]``
(``nanoclaw.core.config``).

The default is open to the public internet and closed to everything local:
loopback, RFC 1918, link-local (cloud metadata at 169.254.169.254), CGNAT,
unique-local and site-local IPv6, IPv4 inside IPv6 by any of its spellings,
multicast, unspecified and every other address that is not globally routable;
and, whatever their range, the host's own addresses, the networks it is on and
its gateways (the egress daemon reads those from the kernel and passes them in
as ``host``: a global IPv6 prefix is the home network too). The owner may open
specific local addresses again with ``allow_addresses``.

A host is one spelling per address: an IPv4 address written as the C library's
``inet_aton`` would read it (``0x5db8d70e``, ``93.12113678``, ``0135.0270.0327.016``)
is the dotted quad here, so a rule naming it matches every spelling.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property

from msgspec import Struct
from msgspec.structs import replace

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
MODES = ("open", "allowlist", "off")

# The local ranges, each with the name a refusal gives it. Checked in order; anything else
# that Python does not call globally routable is refused too (see classify).
LOCAL_NETWORKS: tuple[tuple[IPNetwork, str], ...] = tuple(
    (ipaddress.ip_network(net), name) for net, name in (
        ("0.0.0.0/8", "unspecified (0.0.0.0/8)"),
        ("127.0.0.0/8", "loopback (127.0.0.0/8)"),
        ("10.0.0.0/8", "private (RFC 1918)"),
        ("172.16.0.0/12", "private (RFC 1918)"),
        ("192.168.0.0/16", "private (RFC 1918)"),
        ("169.254.0.0/16", "link-local (169.254.0.0/16, cloud metadata)"),
        ("100.64.0.0/10", "carrier-grade NAT (100.64.0.0/10)"),
        ("224.0.0.0/4", "multicast"),
        ("240.0.0.0/4", "reserved (240.0.0.0/4)"),
        ("::/128", "unspecified (::)"),
        ("::1/128", "loopback (::1)"),
        # IPv4 inside IPv6 that is not unwrapped below: deprecated or local-use, never the public web
        ("::/96", "IPv4-compatible (::/96, deprecated)"),
        ("::ffff:0:0:0/96", "IPv4-translated (::ffff:0:0:0/96)"),
        ("64:ff9b:1::/48", "local-use NAT64 (64:ff9b:1::/48)"),
        ("fc00::/7", "unique-local (fc00::/7)"),
        ("fec0::/10", "site-local (fec0::/10, deprecated)"),
        ("fe80::/10", "link-local (fe80::/10)"),
        ("ff00::/8", "multicast"),
    ))
NAT64 = ipaddress.ip_network("64:ff9b::/96")
_LABEL = re.compile(r"^(?!-)[a-z0-9_-]{1,63}(?<!-)$")


@dataclass(frozen=True)
class Refusal:
    """Why a connection is refused: ``rule`` for the journal (one word), ``detail`` for the agent."""

    rule: str
    detail: str


def unwrap(ip: IPAddress) -> IPAddress:
    """The IPv4 address inside an IPv4-mapped, NAT64 or 6to4 IPv6 address, else ``ip``:
    ``::ffff:10.0.0.1`` reaches 10.0.0.1 and must be judged as it."""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped:
            return ip.ipv4_mapped
        if ip in NAT64:
            return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if ip.sixtofour:
            return ip.sixtofour
    return ip


def classify(ip: IPAddress) -> str | None:
    """What kind of local address ``ip`` is (``"loopback (127.0.0.0/8)"``, …), or None when
    it is a public, globally routable address."""
    ip = unwrap(ip)
    for net, name in LOCAL_NETWORKS:
        if ip.version == net.version and ip in net:
            return name
    if not ip.is_global:
        return "not a public address"
    return None


def _inet_aton(host: str) -> ipaddress.IPv4Address | None:
    """An IPv4 address in any spelling the C library's resolver takes for one (1 to 4 parts,
    each decimal, octal with a leading 0 or hex with 0x, the last filling the rest), else None."""
    parts = host.split(".")
    if not 1 <= len(parts) <= 4:
        return None
    values = []
    for part in parts:
        try:
            if part[:2] in ("0x", "0X") and len(part) > 2:
                values.append(int(part[2:], 16))
            elif part.startswith("0") and len(part) > 1:
                values.append(int(part[1:], 8))
            else:
                values.append(int(part, 10) if part.isdigit() else -1)
        except ValueError:
            return None
    if min(values) < 0 or any(v > 255 for v in values[:-1]) or values[-1] >= 1 << (8 * (5 - len(parts))):
        return None
    value = values[-1]
    for i, v in enumerate(values[:-1]):
        value |= v << (24 - 8 * i)
    return ipaddress.IPv4Address(value)


def parse_ip(host: str) -> IPAddress | None:
    """``host`` as an IP address when it is a literal one (IPv6 without brackets, IPv4 in any
    spelling the resolver would read as one), else None. A zone id (``fe80::1%eth0``) is no
    address of the web's: None."""
    if "%" in host:
        return None
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return _inet_aton(host)


def normalize_host(host: str) -> str | None:
    """A host name or IP literal as the rules compare it (lower case, no trailing dot, an
    address in its one canonical spelling), or None when it is not one: the agent's input is
    logged and matched, so it must be tame."""
    host = (host or "").strip().lower().removesuffix(".")
    if not host or len(host) > 253 or not host.isascii() or "%" in host:
        return None
    ip = parse_ip(host)
    if ip is not None:
        return str(ip)
    return host if all(_LABEL.match(label) for label in host.split(".")) else None


def domain_matches(host: str, domain: str) -> bool:
    """Whether ``domain`` (a rule) covers ``host``: the domain itself and every name below it;
    an address rule, the same address however wrapped (``::ffff:93.184.215.14``)."""
    if host == domain:
        return True
    ip, rule = parse_ip(host), parse_ip(domain)
    if ip is not None or rule is not None:
        return ip is not None and rule is not None and unwrap(ip) == unwrap(rule)
    return host.endswith("." + domain)


# dict=True: room for the cached_property below
class EgressPolicy(Struct, frozen=True, forbid_unknown_fields=True, kw_only=True, dict=True):
    """One group's egress settings: ``[egress]``, with ``[egress.groups.<folder>]`` on top."""

    mode: str = "open"  # "open": the public internet; "allowlist": allow_domains only; "off": nothing
    allow_domains: tuple[str, ...] = ()  # a domain covers its subdomains; IP literals match exactly
    deny_domains: tuple[str, ...] = ()  # always wins over allow_domains
    allow_addresses: tuple[str, ...] = ()  # local addresses or networks the owner opens ("192.168.1.20")
    ports: tuple[int, ...] = (80, 443)  # for CONNECT and plain http:// alike
    max_tunnels: int = 16  # connections at once, per group
    max_bytes_per_day: int = 1 << 30  # in and out together, per group (lead and team) and day; 0: no cap
    max_bytes_per_agent_per_day: int = 0  # ... and per agent of it (the lead, each member); 0: only the group's
    connect_timeout: float = 10.0  # seconds to reach the site
    idle_timeout: float = 300.0  # a connection silent both ways this long is closed

    def validated(self) -> "EgressPolicy":
        """This policy, normalised, or ValueError naming the bad setting."""
        if self.mode not in MODES:
            raise ValueError(f"mode: expected one of {', '.join(MODES)}, got {self.mode!r}")
        domains = {}
        for key in ("allow_domains", "deny_domains"):
            out = []
            for domain in getattr(self, key):
                norm = normalize_host(domain)
                if norm is None:
                    raise ValueError(f"{key}: {domain!r} is not a domain name or IP address")
                out.append(norm)
            domains[key] = tuple(out)
        for value in self.allow_addresses:
            try:
                ipaddress.ip_network(value, strict=False)
            except ValueError:
                raise ValueError(f"allow_addresses: {value!r} is not an IP address or network") from None
        if not all(1 <= p <= 65535 for p in self.ports):
            raise ValueError(f"ports: each must be 1-65535, got {list(self.ports)}")
        if self.max_tunnels < 1 or min(self.max_bytes_per_day, self.max_bytes_per_agent_per_day) < 0:
            raise ValueError("max_tunnels must be at least 1, max_bytes_per_day and max_bytes_per_agent_per_day "
                             "at least 0")
        if self.connect_timeout <= 0 or self.idle_timeout <= 0:
            raise ValueError("connect_timeout and idle_timeout must be positive")
        return replace(self, **domains)

    @cached_property
    def allowed_networks(self) -> tuple[IPNetwork, ...]:
        return tuple(ipaddress.ip_network(v, strict=False) for v in self.allow_addresses)

    def check_name(self, host: str, port: int) -> Refusal | None:
        """The rules that need no lookup (``host`` normalised): mode, port, deny and allow lists."""
        if self.mode == "off":
            return Refusal("egress-off", "web access is off for this group")
        if port not in self.ports:
            allowed = ", ".join(map(str, self.ports))
            return Refusal("port", f"port {port} is not allowed (allowed: {allowed})")
        for domain in self.deny_domains:
            if domain_matches(host, domain):
                return Refusal("deny-list", f"{host} is on this group's deny list ({domain})")
        if self.mode == "allowlist" and not any(domain_matches(host, d) for d in self.allow_domains):
            return Refusal("allowlist", f"{host} is not on this group's allow list")
        return None

    def check_address(self, ip: IPAddress, host: Callable[[IPAddress], str | None] | None = None
                      ) -> Refusal | None:
        """The rule for one address the name resolved to: an address on the deny list is
        refused; local ones are refused unless the owner opened them in ``allow_addresses``.
        ``host`` says whether an address is the host's own, on its networks or a gateway of it
        (what it is, or None)."""
        for domain in self.deny_domains:
            rule = parse_ip(domain)
            if rule is not None and unwrap(rule) == unwrap(ip):
                return Refusal("deny-list", f"{ip} is on this group's deny list ({domain})")
        for net in self.allowed_networks:
            if unwrap(ip).version == net.version and unwrap(ip) in net:
                return None
        kind = classify(ip) or (host(ip) if host else None)
        if kind:
            return Refusal("local-address", f"{ip} is {kind}; agents may not reach local addresses")
        return None
