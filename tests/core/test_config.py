"""config.toml as core/config.py reads it: unknown keys and bad types refused, the ``[whatsapp]``
table as the channel reads it, budgets and prices checked."""

from __future__ import annotations

import pytest

from nanoclaw.core import config as config_mod
from nanoclaw.core import config_file


def test_whatsapp_config_table(tmp_path, monkeypatch):
    monkeypatch.delenv("NANOCLAW_STATE_DIR", raising=False)
    path = tmp_path / "config.toml"
    path.write_text('channels = ["whatsapp", "terminal"]\n[whatsapp]\nstore_unregistered = true\n'
                    'send_rate_per_minute = 6\nmax_message_chars = 1000\n')
    cfg = config_file.load(path)
    assert cfg.channels == ("whatsapp", "terminal")
    assert cfg.whatsapp.store_unregistered is True and cfg.whatsapp.send_rate_per_minute == 6.0
    assert cfg.whatsapp.max_message_chars == 1000 and cfg.whatsapp.download_media is True
    path.write_text('[whatsapp]\nstore_unregistered = "yes"\n')
    with pytest.raises(config_mod.ConfigError, match="true or false"):
        config_file.load(path)
    path.write_text('[whatsapp]\nsend_burst = true\n')
    with pytest.raises(config_mod.ConfigError, match="expected int"):
        config_file.load(path)
    path.write_text('[whatsapp]\nno_such = 1\n')
    with pytest.raises(config_mod.ConfigError, match="unknown setting"):
        config_file.load(path)


def test_budget_and_price_configuration_is_checked(tmp_path):
    from nanoclaw.core import config as config_mod
    from nanoclaw.core import config_file
    conf = tmp_path / "c.toml"
    for text, msg in (('[usage.prices.x]\ninput = 1\n', "input and output prices are required"),
                      ('[usage.prices.x]\ninput = 1\noutput = -2\n', "0 or more"),
                      ('[budgets]\nday_usd = -1\n', "0 (none) or more"),
                      ('[budgets]\nweekly_usd = 1\n', "unknown setting 'weekly_usd'"),
                      ('[budgets.groups."../x"]\nday_usd = 1\n', "is not a group folder name"),
                      ('[api]\nmax_calls_per_group = 0\n', "max_calls_per_group, max_calls_per_agent, max_body_bytes and"),
                      ('[api]\nbetas = "x"\n', "api.betas: expected a list of strings"),
                      ('[usage]\nweb_search_usd = -1\n', "web_search_usd and web_fetch_usd are USD per request")):
        conf.write_text(text)
        with pytest.raises(config_mod.ConfigError, match=msg.replace("(", r"\(").replace(")", r"\)")):
            config_file.load(conf)
    conf.write_text('[usage]\nallowed_models = ["claude-*"]\n[usage.prices.claude-new]\ninput = 1\noutput = 2\n'
                    '[budgets]\nmonth_usd = 30\n[budgets.groups.family]\nday_usd = 2\nday_tokens = 500000\n')
    cfg = config_file.load(conf)
    assert cfg.usage.allowed_models == ("claude-*",) and cfg.usage.prices["claude-new"].output == 2.0
    assert "claude-sonnet-4-5" in cfg.usage.prices  # the shipped table stays under the owner's rows
    assert cfg.budget.month_usd == 30 and cfg.budget_groups["family"].day_tokens == 500000


def test_config_refuses_unknown_keys_and_bad_types(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text("promt_cap = 3\n")
    with pytest.raises(config_mod.ConfigError, match="unknown setting 'promt_cap'"):
        config_file.load(p)
    p.write_text('prompt_cap = "ten"\n')
    with pytest.raises(config_mod.ConfigError, match="expected int"):
        config_file.load(p)
    p.write_text('[container]\nruntime = "runc"\nulimits = ["nofile=1024:1024"]\n')
    c = config_file.load(p)
    assert c.container.runtime == "runc" and c.container.ulimits == ("nofile=1024:1024",)
