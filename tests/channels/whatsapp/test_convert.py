"""neonize's protobufs to plain values and back (convert.py), against neonize's own."""

from __future__ import annotations

import pytest
from neonize.utils.jid import Jid2String

from nanoclaw.channels.whatsapp import convert as wa_proto


def test_jid_strings_round_trip_with_neonize():
    for text in ("491701234567@s.whatsapp.net", "120363000000000001@g.us", "77000000000002@lid",
                 "491701234567:12@s.whatsapp.net", "4917.1:3@s.whatsapp.net", "status@broadcast"):
        parsed = wa_proto.parse_jid(text)
        assert Jid2String(parsed) == text and wa_proto.jid_str(parsed, device=True) == text
    assert wa_proto.jid_str(wa_proto.parse_jid("491701234567:12@s.whatsapp.net")) == "491701234567@s.whatsapp.net"
    phone = wa_proto.parse_jid("+49 170 1234567")
    assert (phone.User, phone.Server) == ("491701234567", "s.whatsapp.net")
    assert wa_proto.parse_jid("g.us").User == ""
    for bad in ("", "a@b@c", "x@"):
        with pytest.raises(wa_proto.JIDError):
            wa_proto.parse_jid(bad)
