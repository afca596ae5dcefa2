"""ScienceWorld fixtures. Playing games needs the optional extra and Java (both installed in CI):
tests that do skip, saying why, through ``needs_simulator``; the split logic in
test_sciworld_splits.py runs everywhere (a few of its tests need only the scienceworld package)."""

from __future__ import annotations

import importlib.util
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from environments.sciworld import SciWorldEnv

TASK_TYPES = ["find-animal", "lifespan-longest-lived", "chemistry-mix-paint-secondary-color"]

HAS_PACKAGE = importlib.util.find_spec("scienceworld") is not None
needs_package = pytest.mark.skipif(
    not HAS_PACKAGE, reason="needs the scienceworld package: pip install -e '.[sciworld]'"
)
"""For tests that use scienceworld's pure-Python helpers (task names) but no simulator."""
needs_simulator = pytest.mark.skipif(
    not HAS_PACKAGE or shutil.which("java") is None,
    reason="the ScienceWorld simulator needs pip install -e '.[sciworld]' and Java 17+ on PATH "
    "(apt-get install openjdk-17-jre-headless)",
)
"""For tests that start the simulator (a JVM)."""


@pytest.fixture(scope="session")
def sw_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("sciworld-cache")


@pytest.fixture(scope="module")
def sw_env(sw_cache: Path) -> Iterator[SciWorldEnv]:
    env = SciWorldEnv(task_types=TASK_TYPES, eval_per_type=3, train_per_type=5, cache_dir=str(sw_cache))
    yield env
    env.close()
