"""The fault log: every injected bad input records what it was and what the system said.

Each test wraps its fault in ``fault(...)``, which asserts the error type and that the message
names the file/row/field, then records one row. With ``ETO_RELIABILITY_JSON`` set, the rows are
written there at the end of the session; ``benchmarks/reliability_table.py`` renders them as
the table in docs/reliability.md, so the document comes from a test run, not from memory.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import pytest

ROWS: list[dict[str, str]] = []
NOTHING_LOST = "nothing: inputs untouched, no output written"

Fault = Callable[..., AbstractContextManager[Any]]


@pytest.fixture(scope="session", autouse=True)
def _write_fault_log() -> Iterator[None]:
    yield
    target = os.environ.get("ETO_RELIABILITY_JSON")
    if target:
        # Grouped by area, in the order the tests recorded them (the crash rows tell a sequence).
        Path(target).write_text(json.dumps(sorted(ROWS, key=lambda r: r["area"]), indent=1))


@pytest.fixture
def fault(request: pytest.FixtureRequest) -> Fault:
    """``with fault(area, what, ExcType, match):`` — the block must raise; the row is recorded."""

    @contextmanager
    def injected(area: str, what: str, exc: type[BaseException], match: str, lost: str = NOTHING_LOST) -> Iterator[None]:
        # DOTALL: record errors list one problem per line after the file name.
        with pytest.raises(exc, match=re.compile(match, re.DOTALL)) as info:
            yield
        ROWS.append({"area": area, "test": request.node.name, "fault": what,
                     "error": f"{type(info.value).__name__}: {info.value}", "lost": lost})

    return injected
