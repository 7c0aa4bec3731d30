"""The progress display: a tqdm bar per layer on a terminal, plain lines elsewhere.

Each update says the trials done, the best time so far against the default plan's, and
the time left (from the seconds budget, or the pace of the trials so far). Without tqdm
(``pip install convgen[tune]``) a terminal gets the plain lines too.
"""
from __future__ import annotations

import sys
import time


def _tqdm():
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm


class Progress:
    """``mode``: "bar", "lines" or "off"; ``enabled=None`` picks a bar on a terminal and
    nothing elsewhere (the API's default); True picks lines where there is no terminal
    (the command line's)."""

    def __init__(self, enabled: bool | None = None, stream=None):
        self.stream = stream or sys.stderr
        tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        if enabled is False or (enabled is None and not tty):
            self.mode = "off"
        elif tty and _tqdm() is not None:
            self.mode = "bar"
        else:
            self.mode = "lines"
        self._bars: dict = {}

    # -- events -------------------------------------------------------------------------------
    def start(self, session) -> None:
        if self.mode == "bar":
            tqdm = _tqdm()
            self._bars[id(session)] = tqdm(
                total=session.trial_budget, desc=session.name, unit="trial", leave=True,
                file=self.stream, position=len(self._bars), dynamic_ncols=True)
        elif self.mode == "lines":
            self._line(f"{session.name}: tuning {session.workload.spec.describe()} "
                       f"{session.workload.input_shape} {session.workload.dtype} on "
                       f"{session.target.name}: {len(session.space)} plans in the space, "
                       f"budget {session.budget_text()}")

    def trial(self, session, trial) -> None:
        if self.mode == "off":
            return
        best, default = session.best_time(), session.default_time()
        vs = f" ({default / best:.2f}x default)" if best and default else ""
        best_text = f"best {best * 1e3:.4f} ms{vs}" if best else "best -"
        left = session.time_left()
        left_text = f", ~{left:.0f} s left" if left is not None else ""
        if self.mode == "bar":
            bar = self._bars.get(id(session))
            if bar is not None:
                bar.set_postfix_str(f"{best_text}{left_text}", refresh=False)
                bar.update(1)
            return
        what = (f"{trial.time.median_s * 1e3:9.4f} ms +-{trial.time.spread:5.1%}" if trial.ok
                else f"{trial.status:>13}")
        budget = f"/{session.trial_budget}" if session.trial_budget else ""
        self._line(f"{session.name} [{trial.index + 1:>3}{budget}] {what}  {trial.plan}"
                   f"{'' if trial.ok else '  (' + trial.error[:120] + ')'}  | {best_text} | "
                   f"{trial.elapsed_s:.0f} s{left_text}")

    def note(self, session, text: str) -> None:
        if self.mode == "bar":
            tqdm = _tqdm()
            tqdm.write(f"{session.name}: {text}", file=self.stream)
        elif self.mode == "lines":
            self._line(f"{session.name}: {text}")

    def done(self, session, result) -> None:
        bar = self._bars.pop(id(session), None)
        if bar is not None:
            bar.close()
        if self.mode != "off":
            text = (f"{result.speedup:.2f}x the default" if result.confirmed
                    else "not confirmed: the default stays")
            self._line(f"{result.name}: best {result.best} -- {text} "
                       f"({len(result.trials)} trials, {result.elapsed_s:.0f} s)")

    def _line(self, text: str) -> None:
        print(text, file=self.stream, flush=True)


class Clock:
    """Seconds since a start, for budgets."""

    def __init__(self):
        self.start = time.monotonic()

    def elapsed(self) -> float:
        return time.monotonic() - self.start
