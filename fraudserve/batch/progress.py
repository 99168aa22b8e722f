"""A plain progress line on stderr: rows done, rows/s and ETA (no dependency on tqdm)."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    def __init__(
        self,
        total_rows: int | None,
        *,
        exact: bool = True,
        stream: TextIO | None = None,
        every_s: float = 0.5,
        quiet: bool = False,
    ) -> None:
        self.total = total_rows
        self.quiet = quiet
        self.exact = exact
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        # Without a terminal (CI logs, nohup) a line per 10 s is enough and stays readable.
        self.every_s = every_s if self.tty else 10.0
        self.started = time.perf_counter()
        self.rows = 0
        self.skipped = 0
        self._last = 0.0

    def skip(self, rows: int) -> None:
        """Rows already done by an earlier run: counted for the bar, not for the rate."""
        self.skipped += rows

    def advance(self, rows: int) -> None:
        self.rows += rows
        now = time.perf_counter()
        if now - self._last >= self.every_s:
            self._last = now
            self._emit(final=False)

    def close(self) -> None:
        self._emit(final=True)

    def line(self) -> str:
        elapsed = max(time.perf_counter() - self.started, 1e-9)
        rate = self.rows / elapsed
        done = self.rows + self.skipped
        text = f"{done:,} rows"
        if self.total:
            approx = "" if self.exact else "~"
            text += f" / {approx}{self.total:,} ({min(100.0, 100.0 * done / self.total):.0f}%)"
        text += f" | {rate:,.0f} rows/s | {_clock(elapsed)} elapsed"
        if self.total and rate > 0 and done < self.total:
            text += f" | ETA {_clock((self.total - done) / rate)}"
        return text

    def _emit(self, *, final: bool) -> None:
        if self.quiet:
            return
        end = "\n" if final or not self.tty else ""
        prefix = "\r\x1b[K" if self.tty else ""
        self.stream.write(f"{prefix}{self.line()}{end}")
        self.stream.flush()


def _clock(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"
