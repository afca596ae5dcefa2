"""ScienceWorld tests need the optional extra and Java; both are installed in CI."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("scienceworld", reason="ScienceWorld tests need: pip install -e '.[sciworld]'")
if shutil.which("java") is None:
    pytest.skip("ScienceWorld needs Java 17+ on PATH (apt-get install openjdk-17-jre-headless)", allow_module_level=True)

from environments.sciworld import SciWorldEnv  # noqa: E402

TASK_TYPES = ["find-animal", "lifespan-longest-lived", "chemistry-mix-paint-secondary-color"]


@pytest.fixture(scope="session")
def sw_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("sciworld-cache")


@pytest.fixture(scope="module")
def sw_env(sw_cache: Path) -> Iterator[SciWorldEnv]:
    env = SciWorldEnv(task_types=TASK_TYPES, eval_per_type=3, train_per_type=5, cache_dir=str(sw_cache))
    yield env
    env.close()
