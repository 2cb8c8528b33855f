"""The egress policy (core/egress.py), pure: which addresses are local in every spelling, the rules'
order, and the [egress] configuration's checks."""

from __future__ import annotations

import re

import pytest

from nanoclaw.core import config as config_mod
from nanoclaw.core import config_file
from nanoclaw.core.egress import EgressPolicy, classify, normalize_host, parse_ip


@pytest.mark.parametrize("address, kind", [
    ("127.0.0.1", "loopback"), ("10.0.0.1", "RFC 1918"), ("172.16.5.4", "RFC 1918"),
    ("192.168.1.1", "RFC 1918"), ("169.254.169.254", "link-local"), ("100.64.0.1", "carrier-grade NAT"),
    ("0.0.0.0", "unspecified"), ("224.0.0.251", "multicast"), ("255.255.255.255", "reserved"),
    ("::1", "loopback"), ("::", "unspecified"), ("fd00::1", "unique-local"), ("fe80::1", "link-local"),
    ("ff02::1", "multicast"), ("::ffff:10.0.0.1", "RFC 1918"), ("64:ff9b::a9fe:a9fe", "link-local"),
    ("2002:a00:1::1", "RFC 1918"), ("192.0.2.1", "not a public address"),
    # IPv4 inside IPv6 in the spellings Python calls global, and deprecated or local-use ranges
    ("::8.8.8.8", "IPv4-compatible"), ("::127.0.0.1", "IPv4-compatible"), ("::ffff:0:8.8.8.8", "IPv4-translated"),
    ("64:ff9b:1::808:808", "local-use NAT64"), ("fec0::1", "site-local"),
])
def test_every_local_address_is_classified(address, kind):
    assert kind in (classify(parse_ip(address)) or "")


@pytest.mark.parametrize("address", ["93.184.216.34", "1.1.1.1", "2606:4700:4700::1111", "::ffff:8.8.8.8"])
def test_public_addresses_are_not_local(address):
    assert classify(parse_ip(address)) is None


def test_policy_rules_in_order():
    open_ = EgressPolicy(deny_domains=("tracker.example",), allow_addresses=("192.168.1.20",)).validated()
    assert open_.check_name("example.org", 443) is None
    assert open_.check_name("example.org", 22).rule == "port"
    assert open_.check_name("ads.tracker.example", 443).rule == "deny-list"  # a domain covers its subdomains
    assert open_.check_name("nottracker.example", 443) is None  # ... but not look-alikes
    assert open_.check_address(parse_ip("192.168.1.20")) is None  # opened by the owner
    assert open_.check_address(parse_ip("192.168.1.21")).rule == "local-address"
    assert open_.check_address(parse_ip("93.184.216.34")) is None
    allow = EgressPolicy(mode="allowlist", allow_domains=("Wikipedia.ORG.",), deny_domains=("x.wikipedia.org",))
    allow = allow.validated()
    assert allow.check_name("en.wikipedia.org", 443) is None
    assert allow.check_name("x.wikipedia.org", 443).rule == "deny-list"  # deny wins
    assert allow.check_name("example.org", 443).rule == "allowlist"
    assert EgressPolicy(mode="off").check_name("example.org", 443).rule == "egress-off"
    for bad in ("a b", "-x.org", "x..org", "ex\u00e4mple.org", "a" * 254, "host\r\ninjected: 1",
                "fe80::1%eth0", "fe80::1%x,verdict=allowed", "fe80::1%25eth0"):  # no zone ids
        assert normalize_host(bad) is None, bad
    # an IPv4 address has one spelling here, whichever the resolver would read
    for spelled in ("0x5db8d70e", "93.12113678", "0135.0270.0327.016", "1572394766", "0X5DB8D70E", "93.184.215.14."):
        assert normalize_host(spelled) == "93.184.215.14", spelled
    deny = EgressPolicy(deny_domains=("0x5db8d70e",)).validated()
    assert deny.deny_domains == ("93.184.215.14",)
    for host in ("93.184.215.14", "::ffff:93.184.215.14", "::ffff:5db8:d70e"):
        assert deny.check_name(normalize_host(host), 443).rule == "deny-list", host
    assert deny.check_address(parse_ip("::ffff:93.184.215.14")).rule == "deny-list"  # a name resolving to it


def test_egress_configuration_is_validated(tmp_path):
    good = tmp_path / "good.toml"
    good.write_text('[egress]\nallow_addresses = ["127.0.0.1"]\nports = [443]\n'
                    '[egress.groups.family]\nmode = "allowlist"\nallow_domains = ["wikipedia.org"]\n')
    cfg = config_file.load(good)
    assert cfg.egress_for("main").mode == "open" and cfg.egress_for("main").ports == (443,)
    family = cfg.egress_for("family")  # its own keys over [egress]
    assert (family.mode, family.allow_domains, family.allow_addresses) == ("allowlist", ("wikipedia.org",),
                                                                            ("127.0.0.1",))
    for text, error in [('[egress]\nmode = "sometimes"', "egress.mode: expected one of open, allowlist, off"),
                        ('[egress]\nports = ["443"]', "egress.ports: expected a list of integers"),
                        ('[egress]\nallow_addresses = ["intranet"]', "not an IP address or network"),
                        ('[egress.groups."../x"]\nmode = "off"', "not a group folder name"),
                        ('[egress.groups.family]\nmax_tunels = 3', "unknown setting 'max_tunels'"),
                        ('[egress]\nmax_tunnels = 0', "max_tunnels must be at least 1")]:
        bad = tmp_path / "bad.toml"
        bad.write_text(text)
        with pytest.raises(config_mod.ConfigError, match=re.escape(error)):
            config_file.load(bad)


def test_the_old_per_run_byte_cap_is_read_as_a_days_with_a_deprecation_line(tmp_path, caplog):
    conf = tmp_path / "c.toml"
    conf.write_text('[egress]\nmax_bytes_per_run = 5000\n[egress.groups.family]\nmax_bytes_per_run = 700\n')
    cfg = config_file.load(conf)
    assert cfg.egress_for("main").max_bytes_per_day == 5000 and cfg.egress_for("family").max_bytes_per_day == 700
    said = [r.getMessage() for r in caplog.records if "max_bytes_per_run is deprecated" in r.getMessage()]
    assert len(said) == 2 and said[0].startswith("egress.max_bytes_per_run is deprecated: read as max_bytes_per_day")
    conf.write_text('[egress]\nmax_bytes_per_run = 5000\nmax_bytes_per_day = 10\n')
    with pytest.raises(config_mod.ConfigError, match="max_bytes_per_run is replaced by max_bytes_per_day; remove it"):
        config_file.load(conf)
