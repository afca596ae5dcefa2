"""MLflow helpers: a parent run per pipeline run, a nested run per stage, models registered.

Uses ``MlflowClient`` with explicit run ids rather than the fluent API's active-run stack,
because Prefect may run stages on worker threads where that stack is not shared.
"""

from __future__ import annotations

import functools
import json
import time
import urllib.error
import urllib.request
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pandas as pd
from mlflow import MlflowClient
from mlflow.data.pandas_dataset import from_pandas
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException

from eto_core import stopping
from eto_core.locks import file_lock
from eto_core.records import EvalSummary

T = TypeVar("T")
PARENT_TAG = "mlflow.parentRunId"
# Tag prefix of a method run's evaluation artifacts: eto.eval.<split>.<iteration> = {"uri", "digest"}.
EVAL_TAG = "eto.eval."
# The zero-shot base model's evaluations, logged beside a run's SFT (iteration 0) rather than as
# an iteration: metrics base_<split>_<metric>, artifacts eto.base_eval.<split> = {"uri", "digest"}.
BASE_METRIC = "base_"
BASE_EVAL_TAG = "eto.base_eval."
BASE_METHOD = "base"
_MAX_PARAM = 500
CHAMPION = "champion"
# Model versions are compared on the seen split: unseen stays a held-out report, never a selector.
SELECTION_METRIC = "seen_avg_reward"


class TrackingError(RuntimeError):
    """An MLflow tracking server that cannot be used; the message names the setting to fix."""


# MLflow's client retries an unanswered request 7 times with a doubling backoff (minutes) by
# default; these bound a mid-run outage to about 15 s of retries before the run stops with a
# TrackingError. Applied with setdefault, so a user's own settings win.
MLFLOW_RETRY_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "4",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
}
_UNREACHABLE_SIGNS = ("Max retries exceeded", "Connection refused", "Failed to establish a new connection",
                      "Connection aborted", "Read timed out", "RemoteDisconnected")


def is_unreachable(exc: BaseException) -> bool:
    """An MLflow client error that means the tracking server did not answer (vs. a bad request)."""
    import requests

    return isinstance(exc, (MlflowException, requests.exceptions.ConnectionError, requests.exceptions.Timeout)) and \
        any(sign in str(exc) for sign in _UNREACHABLE_SIGNS)


def is_locked(exc: BaseException) -> bool:
    """SQLite's 'database is locked': another process (a stage's logger, the UI) holds the store."""
    return "database is locked" in str(exc)


def lost_server_error(tracking_uri: str, exc: BaseException) -> TrackingError:
    first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
    return TrackingError(
        f"the MLflow tracking server at {tracking_uri} stopped answering during the run ({first}); every stage "
        "that finished is kept in the artifact store: once tracking.mlflow_uri answers again, rerun the same "
        "command and it resumes from them."
    )


def check_server(tracking_uri: str, *, timeout: float = 3.0, attempts: int = 2) -> None:
    """Fail in seconds, naming tracking.mlflow_uri, when an http(s) tracking server does not answer.

    MLflow's own client retries a dead server for minutes before it says so.
    """
    if not tracking_uri.startswith(("http://", "https://")):
        return
    url = f"{tracking_uri.rstrip('/')}/health"
    reason = ""
    for attempt in range(attempts):
        try:
            with urllib.request.urlopen(url, timeout=timeout):
                return
        except urllib.error.HTTPError:
            return  # it answered: an auth or proxy layer in front is the server's business
        except (urllib.error.URLError, OSError) as exc:
            reason = str(getattr(exc, "reason", exc))
        if attempt + 1 < attempts:
            time.sleep(1.0)
    raise TrackingError(
        f"cannot reach the MLflow tracking server at {tracking_uri} ({reason}); check tracking.mlflow_uri "
        "(eto run --mlflow-uri) and that the server is up (local stack: `eto stack status`)."
    )


@contextmanager
def sqlite_init_lock(tracking_uri: str) -> Iterator[None]:
    """Hold an exclusive file lock beside a local SQLite store while it is opened (no-op otherwise).

    MLflow creates the schema on a store's first connection, and two runs starting at once on a
    fresh database both try: the second fails with "table ... already exists". The same race
    would create the experiment twice."""
    if not tracking_uri.startswith("sqlite:///"):
        yield
        return
    db = Path(tracking_uri.removeprefix("sqlite:///"))
    with file_lock(db.with_name(db.name + ".lock")):
        yield


def flatten(prefix: str, value: Any) -> dict[str, str]:
    """Nested settings -> flat ``a.b.c`` params (MLflow params are flat strings)."""
    if isinstance(value, Mapping):
        out: dict[str, str] = {}
        for k, v in value.items():
            out.update(flatten(f"{prefix}.{k}" if prefix else str(k), v))
        return out
    return {prefix: str(value)[:_MAX_PARAM]}


class Tracker:
    """Thin wrapper over one tracking URI and experiment."""

    def __init__(self, tracking_uri: str, experiment: str) -> None:
        self.tracking_uri = tracking_uri
        check_server(tracking_uri)
        with sqlite_init_lock(tracking_uri):
            self.client: Any = _Uninterrupted(MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri))
            found = self.client.get_experiment_by_name(experiment)
            if found:
                self.experiment_id = found.experiment_id
            else:
                # With a local SQLite store MLflow would put artifacts in ./mlruns of whatever folder
                # the run started from; keep them beside the database instead.
                location = None
                if tracking_uri.startswith("sqlite:///"):
                    db = Path(tracking_uri.removeprefix("sqlite:///")).resolve()
                    location = (db.parent / "mlartifacts").as_uri()
                self.experiment_id = self.client.create_experiment(experiment, artifact_location=location)

    def start_run(self, name: str, *, parent: str | None = None, tags: Mapping[str, str] | None = None) -> str:
        all_tags = dict(tags or {})
        if parent:
            all_tags[PARENT_TAG] = parent
        run = self.client.create_run(self.experiment_id, run_name=name, tags=all_tags)
        return str(run.info.run_id)

    def method_runs(self, *, recipe: str | None = None, env: str | None = None) -> list[Any]:
        """Finished top-level runs of a method (tag ``eto.method``), optionally of one recipe/env,
        as ``eto_core.method_comparison.MethodRun``s with their per-split metrics by iteration.

        Of several runs of one recipe, method and seed (a rerun, cached or not) only the latest
        counts: a repeat is not another seed."""
        from eto_core.method_comparison import METRICS, SPLITS, MethodRun, with_selection

        filters = ["attributes.status = 'FINISHED'", "tags.`eto.method` LIKE '%'"]
        if recipe:
            filters.append(f"tags.`eto.recipe` = '{recipe}'")
        if env:
            filters.append(f"tags.`eto.env` = '{env}'")
        runs = self.client.search_runs([self.experiment_id], filter_string=" and ".join(filters),
                                       order_by=["attributes.start_time ASC"], max_results=5000)
        latest: dict[tuple[str, str, str], Any] = {}
        for run in runs:  # oldest first, so a later run of the same key replaces an earlier one
            if PARENT_TAG not in run.data.tags:
                tags = run.data.tags
                latest[(tags.get("eto.recipe", ""), tags["eto.method"], tags.get("eto.seed", "?"))] = run
        out = []
        for run in latest.values():
            found = MethodRun(run.info.run_id, run.data.tags["eto.method"], run.data.tags.get("eto.seed", "?"))
            for key, value in run.data.tags.items():
                if key.startswith(EVAL_TAG):
                    split, _, iteration = key.removeprefix(EVAL_TAG).rpartition(".")
                    found.evals[(split, int(iteration))] = json.loads(value)
            found.storage = {k.removeprefix("storage."): v for k, v in run.data.params.items()
                             if k in ("storage.s3_endpoint_url", "storage.s3_region") and v != "None"}
            for split in SPLITS:
                for metric in METRICS:
                    history = self.client.get_metric_history(run.info.run_id, f"{split}_{metric}")
                    if history:
                        found.values[(split, metric)] = {int(m.step): float(m.value) for m in history}
            best = run.data.tags.get("eto.best_iteration")
            out.append(with_selection(found, int(best)) if best is not None else found)
        return out + self._base_runs(runs)

    @staticmethod
    def _base_runs(runs: Sequence[Any]) -> list[Any]:
        """The zero-shot base model as a method of its own (row "base"), one per recipe and seed,
        from the latest run that evaluated it (every run of a seed evaluates the same cached base)."""
        from eto_core.method_comparison import METRICS, SPLITS, MethodRun

        latest: dict[tuple[str, str], Any] = {}
        for run in runs:  # oldest first
            metrics = run.data.metrics
            if PARENT_TAG not in run.data.tags and any(f"{BASE_METRIC}{s}_avg_reward" in metrics for s in SPLITS):
                latest[(run.data.tags.get("eto.recipe", ""), run.data.tags.get("eto.seed", "?"))] = run
        out = []
        for (_, seed), run in latest.items():
            found = MethodRun(run.info.run_id, BASE_METHOD, seed)
            for split in SPLITS:
                for metric in METRICS:
                    value = run.data.metrics.get(f"{BASE_METRIC}{split}_{metric}")
                    if value is not None:
                        found.values[(split, metric)] = {0: float(value)}
                ref = run.data.tags.get(f"{BASE_EVAL_TAG}{split}")
                if ref:
                    found.evals[(split, 0)] = json.loads(ref)
            out.append(found)
        return out

    def latest_stage_artifact(self, stage: str, *, recipe: str | None = None) -> str | None:
        """The artifact URI of the most recently logged run of a stage (e.g. "pairs")."""
        filters = [f"tags.`eto.stage` = '{stage}'"]
        runs = self.client.search_runs([self.experiment_id], filter_string=" and ".join(filters),
                                       order_by=["attributes.start_time DESC"], max_results=200)
        for run in runs:
            parent = run.data.tags.get(PARENT_TAG)
            if recipe and parent and self.client.get_run(parent).data.tags.get("eto.recipe") != recipe:
                continue
            return str(run.data.tags.get("eto.artifact") or "") or None
        return None

    def has_stage_run(self, artifact_uri: str) -> bool:
        """Whether a stage run tagged with this artifact was already logged in the experiment."""
        quoted = artifact_uri.replace("'", "\\'")
        found = self.client.search_runs([self.experiment_id], filter_string=f"tags.`eto.artifact` = '{quoted}'",
                                        max_results=1)
        return bool(found)

    def end_run(self, run_id: str, status: str = "FINISHED") -> None:
        _retry_locked(lambda: self.client.set_terminated(run_id, status=status))

    def end_open_children(self, parent: str, status: str) -> None:
        """End with ``status`` the nested runs of ``parent`` still RUNNING: a stage that was being
        logged when its flow failed or was stopped."""
        found = _retry_locked(lambda: self.client.search_runs([self.experiment_id], filter_string=(
            f"tags.`mlflow.parentRunId` = '{parent}' and attributes.status = 'RUNNING'")))
        for run in found:
            self.end_run(run.info.run_id, status=status)

    def close_run(self, parent: str, status: str, logger: Any) -> None:
        """End a flow's parent run with ``status`` (and, unless it finished, its open stage runs).

        Runs in a flow's ``finally``, often while it is being stopped: a tracking server that is
        itself the failure is logged rather than raised, so the first error stays the one reported.
        """
        try:
            if status != "FINISHED":
                self.end_open_children(parent, status)
            self.end_run(parent, status=status)
        except Exception as exc:
            if not (is_unreachable(exc) or is_locked(exc)):
                raise
            logger.warning("could not mark MLflow run %s %s: %s", parent, status, str(exc).splitlines()[0][:200])

    def log_params(self, run_id: str, params: Mapping[str, Any]) -> None:
        flat = flatten("", dict(params))
        items = [Param(k, v) for k, v in flat.items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(run_id, params=items[i : i + 100])

    def log_metrics(self, run_id: str, metrics: Mapping[str, float], step: int = 0) -> None:
        import time

        now = int(time.time() * 1000)
        items = [Metric(_clean(k), float(v), now, step) for k, v in metrics.items()]
        for i in range(0, len(items), 500):
            self.client.log_batch(run_id, metrics=items[i : i + 500])

    def log_history(self, run_id: str, history: Sequence[Mapping[str, Any]], prefix: str) -> None:
        """Trainer log_history -> step-indexed metrics."""
        for entry in history:
            step = int(entry.get("step", 0))
            numeric = {f"{prefix}/{k}": float(v) for k, v in entry.items() if isinstance(v, (int, float)) and k != "step"}
            if numeric:
                self.log_metrics(run_id, numeric, step=step)

    def log_summaries(self, run_id: str, summaries: Sequence[EvalSummary]) -> None:
        """Per-split metrics at step = iteration, and each evaluation's artifact as a tag, so
        `eto compare` can pair the methods' per-task rewards."""
        for s in summaries:
            self.log_metrics(run_id, _summary_metrics(s), step=s.iteration)
        self.set_tags(run_id, {f"{EVAL_TAG}{s.split}.{s.iteration}": json.dumps(s.artifact)
                               for s in summaries if s.artifact})

    def log_base_summaries(self, run_id: str, summaries: Sequence[EvalSummary]) -> None:
        """The base model's evaluations beside the run's SFT (``BASE_METRIC`` / ``BASE_EVAL_TAG``)."""
        for s in summaries:
            self.log_metrics(run_id, _summary_metrics(s, BASE_METRIC))
        self.set_tags(run_id, {f"{BASE_EVAL_TAG}{s.split}": json.dumps(s.artifact) for s in summaries if s.artifact})

    def set_tags(self, run_id: str, tags: Mapping[str, str]) -> None:
        self.client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_artifacts(self, run_id: str, folder: Path, artifact_path: str) -> None:
        self.client.log_artifacts(run_id, str(folder), artifact_path=artifact_path)

    def log_text(self, run_id: str, text: str, artifact_file: str) -> None:
        self.client.log_text(run_id, text, artifact_file)

    def log_figure(self, run_id: str, figure: Any, artifact_file: str) -> None:
        self.client.log_figure(run_id, figure, artifact_file)

    def log_dataset(self, run_id: str, frame: pd.DataFrame, *, name: str, source_uri: str, context: str) -> None:
        """Record a dataset input (name, digest, source URI) so a model traces back to its data."""
        light = frame.drop(columns=[c for c in ("messages", "prompt", "chosen", "rejected") if c in frame], errors="ignore")
        with warnings.catch_warnings():
            # MLflow warns that a file:// source is ambiguous and that int columns can't hold NaN;
            # neither matters for a record of where the data lives.
            warnings.simplefilter("ignore", UserWarning)
            dataset = from_pandas(light, source=source_uri, name=name)
            inputs = [_dataset_input(dataset, context)]
            try:
                self.client.log_inputs(run_id, datasets=inputs)
            except MlflowException as exc:
                # A SQL store finds or inserts the dataset row without a lock: two runs logging
                # the same dataset at once collide on its unique key. The row exists now; the
                # retry links this run to it.
                message = str(exc).lower()
                if "unique constraint" not in message and "duplicate entry" not in message:
                    raise
                self.client.log_inputs(run_id, datasets=inputs)

    def register_model(self, name: str, run_id: str, artifact_path: str, tags: Mapping[str, str]) -> str:
        """A new version of registered model ``name`` whose source is the run's model folder."""
        try:
            self.client.create_registered_model(name)
        except MlflowException as exc:
            if "RESOURCE_ALREADY_EXISTS" not in str(exc.error_code) and "already exists" not in str(exc):
                raise
        source = f"{self.client.get_run(run_id).info.artifact_uri}/{artifact_path}"
        version = self.client.create_model_version(
            name, source=source, run_id=run_id, tags={k: str(v) for k, v in tags.items()}
        )
        return str(version.version)

    def set_alias(self, name: str, alias: str, version: str) -> None:
        self.client.set_registered_model_alias(name, alias, version)

    def promote_if_better(self, name: str, version: str, metric: str = SELECTION_METRIC) -> ChampionDecision:
        """Move the ``champion`` alias to ``version`` only if its ``metric`` tag beats the champion's.

        Both scores are model-version tags written after evaluation; a tie keeps the champion (a
        new version has to earn the move). The decision is written on the candidate version.
        """
        score = _float_tag(self.client.get_model_version(name, version).tags, metric)
        if score is None:
            raise ValueError(f"{name} v{version} has no '{metric}' tag; evaluate it before promoting it")
        try:
            current = self.client.get_model_version_by_alias(name, CHAMPION)
        except MlflowException:
            current = None
        if current is None:
            decision = ChampionDecision(name, version, score, None, None, True, f"v{version} is the first champion "
                                        f"({metric} {score:.4f})")
        elif str(current.version) == str(version):
            decision = ChampionDecision(name, version, score, version, score, False, f"v{version} is already champion")
        else:
            best = _float_tag(current.tags, metric)
            promoted = best is None or score > best
            vs = "no score" if best is None else f"{best:.4f}"
            verb = "beats" if promoted else "does not beat"
            decision = ChampionDecision(name, version, score, str(current.version), best, promoted,
                                        f"v{version} {metric} {score:.4f} {verb} champion v{current.version} ({vs})")
        if decision.promoted:
            self.set_alias(name, CHAMPION, version)
        self.client.set_model_version_tag(name, version, "champion_decision", decision.reason)
        return decision


@dataclass(frozen=True)
class ChampionDecision:
    """Whether a new model version took the ``champion`` alias, and why."""

    name: str
    candidate: str
    candidate_score: float
    champion: str | None  # the champion before the decision
    champion_score: float | None
    promoted: bool
    reason: str


def compare_versions(tracking_uri: str, name: str) -> list[dict[str, str]]:
    """One row per version of a registered model: aliases, tags and its stage run's metrics."""
    check_server(tracking_uri)
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    aliases: dict[str, list[str]] = {}
    for alias, version in client.get_registered_model(name).aliases.items():
        aliases.setdefault(str(version), []).append(alias)
    rows = []
    for mv in sorted(client.search_model_versions(f"name='{name}'"), key=lambda mv: int(mv.version)):
        metrics = client.get_run(mv.run_id).data.metrics if mv.run_id else {}
        rows.append({
            "version": str(mv.version),
            "aliases": ",".join(sorted(aliases.get(str(mv.version), []))) or "-",
            **{k: mv.tags.get(k, "-") for k in ("stage", "iteration", "seen_avg_reward", "seen_success_rate",
                                                 "unseen_avg_reward", "unseen_success_rate")},
            # The run's final values; per-step training curves live under train/ in the run.
            "run metrics": " ".join(f"{k}={v:.4g}" for k, v in sorted(metrics.items()) if "/" not in k) or "-",
            "flow run": mv.tags.get("prefect_flow_run_id", "")[:8] or "-",
        })
    return rows


def _float_tag(tags: Mapping[str, str], key: str) -> float | None:
    try:
        return float(tags[key])
    except (KeyError, ValueError):
        return None


def markdown_table(rows: Sequence[Mapping[str, str]]) -> str:
    if not rows:
        return "(no rows)"
    columns = list(rows[0])
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def _clean(key: str) -> str:
    # MLflow keys allow alphanumerics, _ - . space / only
    return "".join(c if c.isalnum() or c in "_-. /" else "_" for c in key)


def _dataset_input(dataset: Any, context: str) -> Any:
    from mlflow.entities import DatasetInput, InputTag

    return DatasetInput(dataset._to_mlflow_entity(), tags=[InputTag(key="mlflow.data.context", value=context)])


def _summary_metrics(s: EvalSummary, prefix: str = "") -> dict[str, float]:
    """An evaluation's metrics under their tracked names: ``<prefix><split>_<metric>``."""
    return {f"{prefix}{s.split}_avg_reward": s.avg_reward, f"{prefix}{s.split}_success_rate": s.success_rate,
            f"{prefix}{s.split}_mean_steps": s.mean_steps}


class _Uninterrupted:
    """An ``MlflowClient`` whose calls a stop signal does not cut in half: the signal's exception
    is raised once the call returns (``eto_core.stopping.uninterrupted``)."""

    def __init__(self, client: MlflowClient) -> None:
        self._client = client

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._client, name)
        if not callable(attr):
            return attr

        @functools.wraps(attr)
        def call(*args: Any, **kwargs: Any) -> Any:
            with stopping.uninterrupted():
                return attr(*args, **kwargs)

        return call


def _retry_locked(call: Callable[[], T], attempts: int = 6, delay: float = 0.25) -> T:
    """Run ``call``, retrying SQLite's 'database is locked' with a doubling wait (~8 s in all).

    A stopped flow ends its runs while a stage thread, or another run, may still be writing to a
    SQLite store; SQLite's own busy wait is short, and losing the end status would leave the run
    RUNNING in the UI.
    """
    for attempt in range(attempts):
        try:
            return call()
        except Exception as exc:
            if not is_locked(exc) or attempt == attempts - 1:
                raise
            time.sleep(delay * 2**attempt)
    raise AssertionError("unreachable")
