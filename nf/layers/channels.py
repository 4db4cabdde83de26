"""Channel rounding used by timm's NF models (its `make_divisible`)."""

from __future__ import annotations


def make_divisible(value: float, divisor: int, round_limit: float = 0.9) -> int:
    """Nearest multiple of `divisor` (at least `divisor`), one step up if rounding lost more than
    `1 - round_limit` of `value` (timm's `make_divisible`, which its NF widths use)."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < round_limit * value else rounded
