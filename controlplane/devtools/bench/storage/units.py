"""Rounding of the storage figures."""

from __future__ import annotations


def ms(seconds: float) -> float:
    """Seconds as milliseconds, two decimals (what the figures print)."""
    return round(seconds * 1000, 2)
