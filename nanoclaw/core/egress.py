"""Web egress policy: which hosts, ports and addresses a group's agent may reach.

Pure rules, no I/O: the proxy daemon (``nanoclaw/daemons/proxy.py``) resolves
a name itself, asks :meth:`EgressPolicy.check_name` before resolving and
:meth:`EgressPolicy.check_address` for every address the name resolved to,
and connects only to an address that passed. Configured as ``[egress]`` with
per-group overrides in ``[egress.groups.<folder>]`` (``nanoclaw.core.config``).

The default is open to the public internet and closed to everything local:
loopback, RFC 1918, link-local (cloud metadata at 169.254.169.254), CGNAT,
unique-local IPv6, multicast, unspecified and every other address that is not
globally routable. The owner may open specific local addresses again with
``allow_addresses``.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, replace
from functools import cached_property

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
        ("fc00::/7", "unique-local (fc00::/7)"),
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


def parse_ip(host: str) -> IPAddress | None:
    """``host`` as an IP address when it is a literal one (IPv6 without brackets), else None."""
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def normalize_host(host: str) -> str | None:
    """A host name or IP literal as the rules compare it (lower case, no trailing dot),
    or None when it is not one: the agent's input is logged and matched, so it must be tame."""
    host = (host or "").strip().lower().removesuffix(".")
    if not host or len(host) > 253 or not host.isascii():
        return None
    if parse_ip(host) is not None:
        return str(parse_ip(host))
    return host if all(_LABEL.match(label) for label in host.split(".")) else None


def domain_matches(host: str, domain: str) -> bool:
    """Whether ``domain`` (a rule) covers ``host``: the domain itself and every name below it."""
    return host == domain or host.endswith("." + domain)


@dataclass(frozen=True)
class EgressPolicy:
    """One group's egress settings: ``[egress]``, with ``[egress.groups.<folder>]`` on top."""

    mode: str = "open"  # "open": the public internet; "allowlist": allow_domains only; "off": nothing
    allow_domains: tuple[str, ...] = ()  # a domain covers its subdomains; IP literals match exactly
    deny_domains: tuple[str, ...] = ()  # always wins over allow_domains
    allow_addresses: tuple[str, ...] = ()  # local addresses or networks the owner opens ("192.168.1.20")
    ports: tuple[int, ...] = (80, 443)  # for CONNECT and plain http:// alike
    max_tunnels: int = 16  # connections at once, per group
    max_bytes_per_run: int = 1 << 30  # in and out together, per container run; 0: no cap
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
        if self.max_tunnels < 1 or self.max_bytes_per_run < 0:
            raise ValueError("max_tunnels must be at least 1 and max_bytes_per_run at least 0")
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

    def check_address(self, ip: IPAddress) -> Refusal | None:
        """The rule for one address the name resolved to: local ones are refused unless the
        owner opened them in ``allow_addresses``."""
        for net in self.allowed_networks:
            if unwrap(ip).version == net.version and unwrap(ip) in net:
                return None
        kind = classify(ip)
        if kind:
            return Refusal("local-address", f"{ip} is {kind}; agents may not reach local addresses")
        return None
