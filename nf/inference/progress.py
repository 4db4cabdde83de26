"""Progress of a long pass for people (`nf-eval`): done/total images, images/s and ETA."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from typing import Any, TextIO


def duration(seconds: float) -> str:
    """`1h02m`, `3m05s`, `42s`: short enough for a progress line."""
    seconds = max(0, round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


class Progress:
    """`done/total` of a long pass (images), with images/s and ETA, printed at most every
    `every_s` seconds and once at the end: `nf-eval`'s lines while it runs."""

    def __init__(
        self, label: str, total: int, *, every_s: float = 10.0, out: TextIO | None = None, enabled: bool = True
    ):
        self.label, self.total, self.every_s, self.out, self.enabled = label, total, every_s, out, enabled
        self.done = 0
        self._t0 = self._last = time.perf_counter()

    def line(self, now: float) -> str:
        elapsed = max(now - self._t0, 1e-9)
        rate = self.done / elapsed
        eta = (self.total - self.done) / rate if rate > 0 else float("nan")
        pct = self.done / max(self.total, 1)
        eta_text = f"ETA {duration(eta)}" if self.done < self.total and rate > 0 else f"took {duration(elapsed)}"
        return f"{self.label}: {self.done:,}/{self.total:,} images ({pct:.0%})  {rate:,.1f} images/s  {eta_text}"

    def update(self, n: int) -> None:
        self.done += n
        now = time.perf_counter()
        if self.enabled and (now - self._last >= self.every_s or self.done >= self.total):
            self._last = now
            print(self.line(now), file=self.out or sys.stdout, flush=True)


def with_progress(
    batches: Callable[[], Iterator[dict]], label: str, total: int, count: Callable[[dict], int], **kwargs: Any
) -> Callable[[], Iterator[dict]]:
    """The batch factory `batches`, reporting `Progress` of each pass as it is consumed; `count`
    gives a batch's real examples (eval batches are padded)."""

    def factory() -> Iterator[dict]:
        progress = Progress(label, total, **kwargs)
        for batch in batches():
            yield batch
            progress.update(count(batch))

    return factory
