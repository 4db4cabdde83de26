"""Channel rounding: timm's `make_divisible` (its NF widths) and grouped-conv widths."""

from __future__ import annotations


def make_divisible(value: float, divisor: int, round_limit: float = 0.9) -> int:
    """Nearest multiple of `divisor` (at least `divisor`), one step up if rounding lost more than
    `1 - round_limit` of `value` (timm's `make_divisible`, which its NF widths use)."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < round_limit * value else rounded


def grouped_width(channels: float, group_width: int | None, where: str, divisor: int | None = None) -> tuple[int, int]:
    """`(width, groups)`: `channels` rounded down to a multiple of `group_width` (None: one group),
    or with `divisor` first rounded to a multiple of it as timm does (`make_divisible`), then
    down to whole groups when the group width is itself a multiple of the divisor."""
    channels = int(channels if divisor is None else make_divisible(channels, divisor))
    if group_width is None:
        return channels, 1
    groups = channels // group_width
    if groups < 1:
        raise ValueError(f"{where}: {channels} channels cannot hold one group of width {group_width}")
    keep_rounded = divisor is not None and group_width % divisor  # timm's width, groups floored
    return (channels if keep_rounded else groups * group_width), groups
