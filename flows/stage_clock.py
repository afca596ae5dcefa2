"""Wall time per stage of one flow run: where an ETO run's time goes, stage by stage.

A stage reused from the cache takes (almost) no time here, which is what it cost this run. The
flow logs the times to its MLflow run (``seconds/<stage>`` metrics) and as a table.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext


class StageClock:
    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - started

    @staticmethod
    def timing(clock: StageClock | None, name: str) -> AbstractContextManager[None]:
        """``clock.stage(name)``, or nothing when no clock is kept (the part-flows, baselines)."""
        return nullcontext() if clock is None else clock.stage(name)

    def metrics(self) -> dict[str, float]:
        return {f"seconds/{name}": round(s, 3) for name, s in self.seconds.items()}

    def table(self) -> str:
        return seconds_table(self.seconds)


def seconds_table(seconds: dict[str, float]) -> str:
    """A markdown table of the stages in the order they ran, with their share of the total."""
    total = sum(seconds.values())
    rows = [f"| {name} | {s:.1f} | {s / 60:.1f} | {100 * s / (total or 1.0):.0f}% |" for name, s in seconds.items()]
    return "\n".join(["| stage | seconds | minutes | share |", "|---|---:|---:|---:|", *rows,
                      f"| total | {total:.1f} | {total / 60:.1f} | 100% |"])
