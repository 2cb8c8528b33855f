"""Retry delays (core/backoff.py)."""

from __future__ import annotations

from nanoclaw.core.backoff import Backoff, backoff


def test_backoff_doubles_and_caps():
    assert [backoff(n, 5, 60) for n in range(0, 7)] == [0, 5, 10, 20, 40, 60, 60]


def test_backoff_doubles_and_is_capped_then_resets():
    b = Backoff(2.0, 300.0)
    assert [b.next() for _ in range(10)] == [2, 4, 8, 16, 32, 64, 128, 256, 300, 300]
    b.reset()
    assert b.next() == 2
