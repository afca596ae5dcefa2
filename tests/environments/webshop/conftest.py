"""Shared fixtures: one small synthetic catalogue and env per test session, in temp folders
(never the user's ~/.cache), so the whole webshop suite builds one BM25 index."""

from __future__ import annotations

from pathlib import Path

import pytest

from environments.webshop import WebShopEnv
from environments.webshop.synthetic import generate


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("webshop-cache")


@pytest.fixture(scope="session")
def small_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("webshop-small")
    generate(folder, products=600, seed=1)
    return folder


@pytest.fixture(scope="session")
def env(small_dir: Path, cache_dir: Path) -> WebShopEnv:
    return WebShopEnv(small_dir, seen_size=30, dev_size=10, unseen_size=30, cache_dir=cache_dir)
