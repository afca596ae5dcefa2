"""The Prefect task runner that rollout shards are submitted to (``runner`` in the recipe).

It is chosen by the recipe rather than fixed on the flow decorator, so a run started from the
Prefect UI or a schedule honours the recipe exactly as ``eto run`` does. Shard results do not
depend on the runner: each shard carries its own tasks and sampling seed.
"""

from __future__ import annotations

from typing import Any

from prefect.task_runners import ThreadPoolTaskRunner

from eto_core.config import RunnerSettings


class RunnerUnavailable(RuntimeError):
    """The recipe names a runner whose Prefect integration is not installed."""


def make_task_runner(settings: RunnerSettings) -> Any:
    """A not-yet-started Prefect task runner for the recipe's ``runner`` section."""
    if settings.kind == "thread":
        return ThreadPoolTaskRunner(max_workers=settings.workers)
    if settings.kind == "dask":
        try:
            from prefect_dask import DaskTaskRunner
        except ImportError as exc:
            raise RunnerUnavailable(
                "runner.kind is 'dask' but prefect-dask is not installed: pip install 'eto[dask]'."
            ) from exc
        if settings.address:
            return DaskTaskRunner(address=settings.address)
        # A local cluster of worker processes, every socket on loopback (the dashboard too).
        return DaskTaskRunner(cluster_kwargs={
            "n_workers": settings.workers, "threads_per_worker": 1, "processes": True,
            "host": "127.0.0.1", "dashboard_address": "127.0.0.1:0",
        })
    try:
        from prefect_ray import RayTaskRunner
    except ImportError as exc:
        raise RunnerUnavailable("runner.kind is 'ray' but prefect-ray is not installed: pip install 'eto[ray]'.") from exc
    if settings.address:
        return RayTaskRunner(address=settings.address)
    return RayTaskRunner(init_kwargs={"num_cpus": settings.workers, "include_dashboard": False})
