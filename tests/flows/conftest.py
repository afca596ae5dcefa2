"""A Prefect test harness (a temporary API server and database) shared by a module's flow runs."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def prefect_harness():  # type: ignore[no-untyped-def]
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield
