"""The record-keeping side of one ``eto_pipeline`` run, kept out of the ETO loop itself.

One MLflow parent run per flow run (each stage task adds its own nested run), the models'
registry tags, the iteration selection on the selection split, the champion alias, and the
results: table, reward-per-iteration plot, stage wall times and the Prefect markdown artifact.
The loop in flows/pipeline.py calls ``record_*`` as it goes and ``finish`` at the end.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

from prefect.artifacts import create_markdown_artifact

from eto_core import stages
from eto_core.config import Recipe
from eto_core.evaluation import results_table
from eto_core.plots import reward_plot
from eto_core.records import EvalSummary
from eto_core.selection import Choice, choose_iteration
from eto_core.storage import ArtifactRef
from eto_core.tracking import Tracker, is_unreachable, lost_server_error
from flows.stage_clock import StageClock
from infra.lifecycle import hidden_stop, stop_in_chain


class PipelineRun:
    """MLflow, the model registry and selection for one pipeline run; ``clock`` times its stages."""

    def __init__(self, recipe: Recipe, flow_run_id: str, method: str, logger: logging.Logger | logging.LoggerAdapter[Any]) -> None:
        self.recipe, self.logger = recipe, logger
        self.started = time.perf_counter()
        self.tracker = Tracker(recipe.tracking.mlflow_uri, recipe.tracking.experiment)
        self.parent = self.tracker.start_run(f"{recipe.name}", tags={
            "prefect.flow_run_id": flow_run_id, "eto.recipe": recipe.name, "eto.env": recipe.env.name,
            "eto.method": method, "eto.seed": str(recipe.seed)})
        self.clock = StageClock()
        self.versions: dict[int, str | None] = {}
        """Registered model version per iteration (0 = SFT); None where models are not logged."""
        self.models: dict[int, ArtifactRef] = {}
        self.scores: list[float] = []
        """Selection score of iteration i at index i (0 = SFT)."""
        self.choice: Choice | None = None
        self.status = "FAILED"

    @property
    def selection_metric(self) -> str:
        return f"select_{self.recipe.selection.metric}"

    def log_params(self) -> None:
        self.tracker.log_params(self.parent, self.recipe.model_dump(mode="json"))

    def record_model(self, iteration: int, result: stages.StageResult) -> None:
        self.versions[iteration] = result.info.get("model_version")
        self.models[iteration] = result.ref

    def record_iteration(self, iteration: int, pairs: stages.StageResult, policy: stages.StageResult) -> None:
        self.tracker.log_metrics(self.parent, {**pairs.metrics, **policy.metrics}, step=iteration)
        self.record_model(iteration, policy)

    def record_selection(self, iteration: int, score_of: Callable[[ArtifactRef, int], float]) -> bool:
        """Score iteration ``iteration``'s policy on the selection split; True when iterating should
        stop (``selection.patience`` iterations without gain). Without a selection split: False."""
        sel = self.recipe.selection
        if not sel.split:
            return False
        score = score_of(self.models[iteration], iteration)
        self.scores.append(score)
        self.tracker.log_metrics(self.parent, {self.selection_metric: score}, step=iteration)
        if self.versions.get(iteration):
            self.tracker.client.set_model_version_tag(self.recipe.model_name, self.versions[iteration],
                                                      self.selection_metric, f"{score:.4f}")
        if iteration == 0:
            return False
        self.choice = choose_iteration(self.scores, patience=sel.patience, min_delta=sel.min_delta)
        self.logger.info("selection (%s on %s): %s", sel.metric, sel.split, self.choice.reason)
        if self.choice.stop and iteration < self.recipe.iterations:
            self.tracker.set_tags(self.parent, {"eto.stopped_early_after": str(iteration)})
            return True
        return False

    def finish(self, base: list[EvalSummary], summaries: list[EvalSummary], stage_metrics: dict[str, float],
               final: stages.StageResult) -> dict[str, Any]:
        """Log the results, tag and promote the registered models; the flow's return value."""
        recipe, tracker, parent = self.recipe, self.tracker, self.parent
        sel = recipe.selection
        if sel.split:
            self.choice = choose_iteration(self.scores, patience=sel.patience, min_delta=sel.min_delta)
            tracker.set_tags(parent, {"eto.best_iteration": str(self.choice.best_iteration),
                                      "eto.selection": self.choice.reason})
        tracker.log_summaries(parent, summaries)
        tracker.log_base_summaries(parent, base)  # beside iteration 0 (SFT), not as a step of its own
        self._tag_versions(summaries)
        self._move_champion()
        tracker.log_metrics(parent, stage_metrics)
        table = results_table(base + summaries)
        fig = reward_plot(summaries, f"ETO on {recipe.env.name} ({recipe.name})", baseline=base)
        tracker.log_figure(parent, fig, "reward_per_iteration.png")
        tracker.log_text(parent, table, "results.md")
        times = self.clock.table()
        tracker.log_metrics(parent, self.clock.metrics())
        tracker.log_text(parent, times, "stage_seconds.md")
        create_markdown_artifact(
            key=f"eto-results-{recipe.name}".lower().replace("_", "-"),
            markdown=f"# ETO results: {recipe.name} on {recipe.env.name}\n\n{table}\n\n## Wall time by stage\n\n{times}\n",
            description="Average reward and success rate per iteration on seen/unseen tasks",
        )
        elapsed = time.perf_counter() - self.started
        tracker.log_metrics(parent, {"pipeline_seconds": elapsed})
        self.logger.info("ETO results (%s):\n%s\n\nwall time by stage:\n%s", recipe.name, table, times)
        self.status = "FINISHED"
        choice = self.choice
        return {
            "table": table,
            "summaries": [asdict(s) for s in base + summaries],
            "mlflow_run_id": parent,
            "final_model": final.ref.to_dict(),
            "model_versions": self.versions,
            "seconds": elapsed,
            "stage_seconds": dict(self.clock.seconds),
            "selection": None if choice is None else {
                "scores": self.scores, "best_iteration": choice.best_iteration,
                "best_model": self.models[choice.best_iteration].to_dict(), "reason": choice.reason},
        }

    def _tag_versions(self, summaries: list[EvalSummary]) -> None:
        for s in summaries:
            version = self.versions.get(s.iteration)
            if version:
                for metric, value in ((f"{s.split}_avg_reward", s.avg_reward), (f"{s.split}_success_rate", s.success_rate)):
                    self.tracker.client.set_model_version_tag(self.recipe.model_name, version, metric, f"{value:.4f}")

    def _move_champion(self) -> None:
        """The champion alias moves, in iteration order, only to a version that beats it on the
        selection split (or, without one, on seen)."""
        for iteration, version in sorted(self.versions.items()):
            if not version:
                continue
            decision = (self.tracker.promote_if_better(self.recipe.model_name, version, metric=self.selection_metric)
                        if self.recipe.selection.split else self.tracker.promote_if_better(self.recipe.model_name, version))
            champion = decision.candidate if decision.promoted else decision.champion
            self.tracker.set_tags(self.parent, {f"eto.champion.iter{iteration}": decision.reason,
                                                "eto.champion_version": str(champion)})
            self.logger.info("champion %s: %s", "moved" if decision.promoted else "kept", decision.reason)

    def fail(self, exc: BaseException) -> None:
        """Mark how the run ended (KILLED when told to stop, FAILED otherwise); a lost tracking
        server is re-raised as the error that names it."""
        if not isinstance(exc, Exception) or stop_in_chain(exc) is not None:
            self.status = ended_status(exc)
        elif is_unreachable(exc):
            raise lost_server_error(self.recipe.tracking.mlflow_uri, exc) from exc

    def close(self) -> None:
        """End the parent run (and, unless it finished, its open stage runs) with its status."""
        self.tracker.close_run(self.parent, self.status, self.logger)


def ended_status(exc: BaseException) -> str:
    """The MLflow status of a run that ``exc`` ended: KILLED when the process was told to stop
    (SIGTERM, SIGINT), FAILED otherwise."""
    return "KILLED" if stop_in_chain(exc) is not None else "FAILED"


def raise_hidden_stop(exc: BaseException) -> None:
    """In a flow's ``except``: raise the stop that the error ``exc`` hides in its place
    (infra.lifecycle.hidden_stop), so the flow run and the command end as stopped."""
    if (stopped := hidden_stop(exc)) is not None:
        raise stopped from exc
