"""Retry delays (core/backoff.py)."""

from __future__ import annotations

from nanoclaw.core.backoff import backoff


def test_backoff_doubles_and_caps():
    assert [backoff(n, 5, 60) for n in range(0, 7)] == [0, 5, 10, 20, 40, 60, 60]
