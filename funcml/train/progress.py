"""Progress of a training run, in a terminal and in a log file.

    reporter = Progress(total=1000, start=0, desc="seg-unet", enabled=True)
    reporter.train(step, loss=0.41, items_per_s=165.0)        # every log window
    reporter.eval(step, {"val/miou": 0.83}, best=("val/miou", 0.83, 250))
    reporter.close()

In a terminal (`stream.isatty()`), a tqdm bar shows the loss, the throughput and the latest
validation metric with the best so far. Anywhere else (a redirected job, CI, a cluster's log
file) a bar is a stream of carriage returns nobody sees until the end, so the reporter prints
one plain line every `every_s` seconds of training (and at the last step) and one line per
evaluation:

    [seg-unet] step 120/1000 (12%) loss 0.4321 | 165 items/s | elapsed 0:21 | eta 2:34
    [seg-unet] eval at step 250: val/miou 0.8312 (best 0.8312 at step 250) | elapsed 0:45 | eta 2:15

The ETA is the remaining steps at the mean step time so far (evaluation time included).
"""

from __future__ import annotations

import math
import sys
import time
from typing import IO, Any

from tqdm.auto import tqdm

__all__ = ["Progress", "format_seconds"]


def format_seconds(seconds: float) -> str:
    """`75.2 -> "1:15"`, `3725 -> "1:02:05"`; "?" for a value that is not finite."""
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    s = int(round(seconds))
    h, rest = divmod(s, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def _fmt(value: float) -> str:
    return f"{value:.4f}" if math.isfinite(value) else str(value)


class Progress:
    """Reports a run's progress as a bar (terminal) or as plain lines (anything else); see the module docstring.

    Arguments:
        total: the run's last step.
        start: the first step (a resumed run starts past 0).
        desc: the run's name, at the start of every line.
        enabled: False prints nothing (tests, non-main ranks).
        stream: where to write (default sys.stderr).
        bar: force the bar (True) or the lines (False); None decides by `stream.isatty()`.
        every_s: seconds between two plain lines (the last step always prints).
    """

    def __init__(self, total: int, start: int = 0, desc: str = "train", *, enabled: bool = True,
                 stream: IO[str] | None = None, bar: bool | None = None, every_s: float = 15.0):
        self.total, self.start, self.desc = total, start, desc
        self.enabled = enabled
        self.stream = stream if stream is not None else sys.stderr
        isatty = getattr(self.stream, "isatty", lambda: False)
        self.use_bar = enabled and (isatty() if bar is None else bar)
        self.every_s = every_s
        self.t0 = time.perf_counter()
        self._last_line = -math.inf
        self._postfix: dict[str, str] = {}
        self._bar = tqdm(total=total, initial=start, desc=desc, disable=not self.use_bar, file=self.stream,
                         dynamic_ncols=True, mininterval=1.0)

    def _timing(self, step: int) -> str:
        elapsed = time.perf_counter() - self.t0
        done = step - self.start
        eta = elapsed / done * (self.total - step) if done > 0 else math.nan
        return f"elapsed {format_seconds(elapsed)} | eta {format_seconds(eta)}"

    def _print(self, text: str) -> None:
        print(f"[{self.desc}] {text}", file=self.stream, flush=True)

    def update(self, n: int = 1) -> None:
        """Advance the bar by `n` steps (the plain lines come from `train`)."""
        self._bar.update(n)

    def train(self, step: int, loss: float, items_per_s: float | None = None) -> None:
        """A log window ended at `step` with this loss and throughput."""
        if not self.enabled:
            return
        self._postfix["loss"] = _fmt(loss)
        if items_per_s is not None:
            self._postfix["items/s"] = f"{items_per_s:.0f}"
        if self.use_bar:
            self._bar.set_postfix(self._postfix, refresh=False)
            return
        now = time.perf_counter()
        if now - self._last_line < self.every_s and step != self.total:
            return
        self._last_line = now
        pct = 100.0 * step / self.total if self.total else 100.0
        speed = f" | {items_per_s:.0f} items/s" if items_per_s is not None else ""
        self._print(f"step {step}/{self.total} ({pct:.0f}%) loss {_fmt(loss)}{speed} | {self._timing(step)}")

    def eval(self, step: int, metrics: dict[str, float], best: tuple[str, float | None, int | None] | None = None
             ) -> None:
        """An evaluation at `step`; `best` is `(metric, value, step)` of the best evaluation so far."""
        if not self.enabled or not metrics:
            return
        name = best[0] if best is not None and best[0] in metrics else next(iter(metrics))
        text = f"{name} {_fmt(metrics[name])}"
        if best is not None and best[0] == name and best[1] is not None:
            text += f" (best {_fmt(best[1])} at step {best[2]})"
        if self.use_bar:
            self._postfix[name] = _fmt(metrics[name])
            if best is not None and best[0] == name and best[1] is not None:
                self._postfix["best"] = f"{_fmt(best[1])}@{best[2]}"
            self._bar.set_postfix(self._postfix, refresh=True)
            return
        others = [f"{k} {_fmt(v)}" for k, v in metrics.items() if k != name][:3]
        extra = (" | " + ", ".join(others)) if others else ""
        self._print(f"eval at step {step}: {text}{extra} | {self._timing(step)}")

    def message(self, text: str) -> None:
        """A line that must not tear the bar (tqdm.write in a terminal)."""
        if not self.enabled:
            return
        if self.use_bar:
            self._bar.write(f"[{self.desc}] {text}", file=self.stream)
        else:
            self._print(text)

    def close(self) -> None:
        """Close the bar (in a terminal, its last state stays on screen)."""
        self._bar.close()

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
