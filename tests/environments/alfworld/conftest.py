"""ALFWorld test data: the shared archives extracted once, or an already extracted $ALFWORLD_DATA.

Tests that play games skip, saying why, when the alfworld package or the data is missing.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from environments.alfworld.data import JSON_DIR, default_cache_dir, prepare_data

REPO_ROOT = Path(__file__).resolve().parents[3]
SHARED_ARCHIVES = REPO_ROOT.parent / "shared" / "data" / "alfworld"
"""../shared/data/alfworld from the repository root (CI and developer machines have it)."""

ETO_UNSEEN_IDS = SHARED_ARCHIVES.parent / "eto_splits" / "alfworld_gamefile_id.txt"

_ENV_ROOT = os.environ.get("ALFWORLD_DATA")
"""Read before any test module imports alfworld, which sets ALFWORLD_DATA to its default."""


@pytest.fixture(scope="session")
def data_root() -> Path:
    """A folder holding json_2.1.1: $ALFWORLD_DATA if it has one, else the shared archives
    extracted (once, idempotently) into ~/.cache/eto/alfworld."""
    pytest.importorskip("alfworld", reason="the alfworld package is not installed (pip install alfworld==0.4.2)")
    if _ENV_ROOT and (Path(_ENV_ROOT) / JSON_DIR).is_dir():
        return Path(_ENV_ROOT)
    if not (SHARED_ARCHIVES / "alfworld_valid_seen.tgz").is_file():
        pytest.skip(f"no ALFWorld data: neither $ALFWORLD_DATA/{JSON_DIR} nor archives in {SHARED_ARCHIVES}")
    return prepare_data(SHARED_ARCHIVES, default_cache_dir())


@pytest.fixture(scope="session")
def eto_unseen_ids() -> Path:
    """ETO's list of its unseen (valid_unseen) game ids."""
    if not ETO_UNSEEN_IDS.is_file():
        pytest.skip(f"{ETO_UNSEEN_IDS} not found")
    return ETO_UNSEEN_IDS
