"""Progress for long batches: a live rich bar in a terminal, periodic plain lines in job logs.

`ray job logs --follow` is not a TTY, so there we print one line every `log_every` seconds with the same
numbers: done, failed, in flight, videos/minute, ETA.
"""
from __future__ import annotations

import sys
import time

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn


class ProgressReporter:
    def __init__(self, total: int, live: bool | None = None, log_every: float = 10.0):
        self.total = total
        self.live = sys.stderr.isatty() if live is None else live
        self.console = Console(stderr=True)
        self.log_every = log_every
        self.done = self.failed = self.inflight = 0
        self._base_done = 0
        self._t0 = time.time()
        self._last_log = 0.0
        self._progress: Progress | None = None
        self._task = None

    def _stats(self) -> str:
        elapsed = max(time.time() - self._t0, 1e-9)
        new = self.done - self._base_done
        rate = new / elapsed * 60.0
        left = self.total - self.done - self.failed
        eta = f"{left / (new / elapsed):.0f}s" if new else "?"
        return f"ok {self.done}  failed {self.failed}  in flight {self.inflight}  {rate:.1f} videos/min  ETA {eta}"

    def start(self, done: int = 0, failed: int = 0):
        self.done, self.failed, self._base_done = done, failed, done
        self._t0 = time.time()
        if self.live:
            self._progress = Progress(TextColumn("[bold]rendering"), BarColumn(), MofNCompleteColumn(),
                                      TextColumn("{task.fields[stats]}"), TimeElapsedColumn(), console=self.console)
            self._progress.start()
            self._task = self._progress.add_task("render", total=self.total, completed=done + failed, stats=self._stats())
        else:
            self.console.print(f"[turbo-batch] {self.total} rows: {done} already done, {failed} invalid", highlight=False, markup=False)

    def update(self, done_inc: int = 0, failed_inc: int = 0, inflight: int | None = None):
        self.done += done_inc
        self.failed += failed_inc
        if inflight is not None:
            self.inflight = inflight
        if self._progress is not None:
            self._progress.update(self._task, completed=self.done + self.failed, stats=self._stats())
        elif time.time() - self._last_log >= self.log_every or (done_inc or failed_inc) and self.done + self.failed == self.total:
            self._last_log = time.time()
            self.console.print(f"[turbo-batch] {self.done + self.failed}/{self.total}  {self._stats()}", highlight=False, markup=False)

    def log(self, message: str):
        self.console.print(f"[turbo-batch] {message}", highlight=False, markup=False)

    def stop(self):
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
