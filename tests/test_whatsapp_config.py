"""The ``[whatsapp]`` table of config.toml, as the channel reads it."""

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
