"""The cheaper alternatives to ETO, as flows on the same cached stages (`eto baseline METHOD`).

- ``best-of-n``: the SFT policy samples N trajectories per evaluation task and the best reward
  counts. Choosing needs the reward, so it is an oracle's upper reference, not a policy.
- ``rft``: rejection-sampling fine-tuning: the SFT policy samples training tasks, and SFT is
  redone from the base model on the expert data plus the agent's own successes.
- ``rft-eto``: the setting without expert trajectories: RFT from the base model on its own
  successes, then ETO iterations on pairs among the agent's own samples.
- ``eto-no-sft``: ETO straight from the base model on those self pairs (the paper: it fails).

The no-expert methods never train on expert trajectories; the tiny default model still gets its
tokenizer and language-model pre-training from the expert corpus (a stand-in for a pre-trained
LLM's pre-training), which docs/results.md states next to their numbers.
"""

from __future__ import annotations

import time
from contextlib import ExitStack
from dataclasses import asdict
from typing import Any, Literal

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from eto_core import stages
from eto_core.config import Recipe
from eto_core.evaluation import results_table
from eto_core.records import EvalSummary
from eto_core.stage_names import EVAL_SPLITS
from eto_core.storage import ArtifactRef, ArtifactStore
from eto_core.tracking import Tracker
from flows.pipeline import current_flow_run_id, eto_iteration, refuse_endpoint_backend
from flows.pipeline_run import ended_status, raise_hidden_stop
from flows.rollouts import evaluate_policy, rollout
from tasks.runners import make_task_runner
from tasks.stage_tasks import expert_task, model_init_task, rft_task, sft_task

Method = Literal["best-of-n", "rft", "rft-eto", "eto-no-sft"]
METHODS: tuple[str, ...] = ("best-of-n", "rft", "rft-eto", "eto-no-sft")


def _check(recipe: Recipe, method: str) -> None:
    if method not in METHODS:
        raise ValueError(f"unknown baseline '{method}'; choose one of {', '.join(METHODS)}")
    if method in ("rft-eto", "eto-no-sft") and recipe.iterations > 0 and recipe.pairs.samples_per_task < 2:
        raise ValueError(
            f"'{method}' has no expert to pair with: its pairs come from the agent's own samples, so set "
            "pairs.samples_per_task >= 2 and explore.temperature > 0 (e.g. --set pairs.samples_per_task=4 "
            "--set explore.temperature=0.7)."
        )
    if method in ("rft-eto", "eto-no-sft") and recipe.pairs.level != "trajectory":
        raise ValueError(
            f"'{method}' trains without expert trajectories, and step-level pairs (pairs.level "
            f"'{recipe.pairs.level}') continue from expert prefixes; set pairs.level: trajectory."
        )


@flow(name="eto-baseline", log_prints=True)
def baseline_flow(recipe: Recipe, method: Method, state_dir: str = ".eto") -> dict[str, Any]:
    """One baseline method on the recipe, evaluated on seen/unseen, tracked as one MLflow run."""
    refuse_endpoint_backend(recipe)
    _check(recipe, method)
    logger = get_run_logger()
    started = time.perf_counter()
    store = stages.make_store(recipe, state_dir)
    store.check()
    tracker = Tracker(recipe.tracking.mlflow_uri, recipe.tracking.experiment)
    flow_run_id = current_flow_run_id()
    parent = tracker.start_run(f"{method} ({recipe.name})", tags={
        "prefect.flow_run_id": flow_run_id, "eto.recipe": recipe.name, "eto.env": recipe.env.name,
        "eto.method": method, "eto.seed": str(recipe.seed)})
    status = "FAILED"
    workers = ExitStack()
    try:
        runner = workers.enter_context(make_task_runner(recipe.runner))
        tracker.log_params(parent, recipe.model_dump(mode="json"))
        ctx = _Context(recipe, store, tracker, parent, runner, flow_run_id)
        summaries = {"best-of-n": _best_of_n, "rft": _rft, "rft-eto": _rft_eto, "eto-no-sft": _eto_no_sft}[method](ctx)
        tracker.log_summaries(parent, summaries)
        table = results_table(summaries)
        tracker.log_text(parent, table, "results.md")
        create_markdown_artifact(key=f"eto-baseline-{method}-{recipe.name}".lower().replace("_", "-"),
                                 markdown=f"# {method} on {recipe.env.name} ({recipe.name})\n\n{table}\n",
                                 description=f"Baseline {method}: reward and success on seen/unseen")
        logger.info("%s results (%s):\n%s", method, recipe.name, table)
        status = "FINISHED"
        return {"method": method, "table": table, "summaries": [asdict(s) for s in summaries],
                "mlflow_run_id": parent, "seconds": time.perf_counter() - started}
    except BaseException as exc:
        status = ended_status(exc)
        raise_hidden_stop(exc)
        raise
    finally:
        workers.close()
        tracker.close_run(parent, status, logger)


class _Context:
    def __init__(self, recipe: Recipe, store: ArtifactStore, tracker: Tracker, parent: str, runner: Any,
                 flow_run_id: str) -> None:
        self.recipe, self.store, self.tracker, self.parent = recipe, store, tracker, parent
        self.runner, self.flow_run_id = runner, flow_run_id
        self.expert = expert_task(recipe, store, tracker=tracker, parent=parent)
        self.base = model_init_task(recipe, store, self.expert.ref, tracker=tracker, parent=parent)

    def sft(self) -> stages.StageResult:
        return sft_task(self.recipe, self.store, self.base.ref, self.expert.ref, tracker=self.tracker,
                        parent=self.parent, flow_run_id=self.flow_run_id)

    def evaluate(self, model: ArtifactRef, label: str, iteration: int = 0) -> list[EvalSummary]:
        return evaluate_policy(self.recipe, self.store, model, stage=label, iteration=iteration, tracker=self.tracker,
                         parent=self.parent, runner=self.runner)

    def rft(self, policy: ArtifactRef, expert: ArtifactRef | None) -> stages.StageResult:
        explored = rollout(self.recipe, self.store, policy, stage="rft_explore", split="train", iteration=0,
                            gen=stages.sampling(self.recipe, "rft_explore"), tracker=self.tracker, parent=self.parent,
                            runner=self.runner)
        return rft_task(self.recipe, self.store, self.base.ref, expert, explored.ref, tracker=self.tracker,
                        parent=self.parent, flow_run_id=self.flow_run_id)

    def iterate(self, policy: ArtifactRef) -> list[EvalSummary]:
        """ETO iterations on self pairs only (no expert trajectories)."""
        out: list[EvalSummary] = []
        for iteration in range(1, self.recipe.iterations + 1):
            _, new_policy, summaries = eto_iteration(self.recipe, self.store, None, policy, iteration, self.tracker,
                                                  self.parent, self.flow_run_id, self.runner, stop_without_pairs=True)
            if new_policy is None:
                # Every sample of every task scored the same: no contrast to learn from. That is
                # this method's result (the paper's "ETO without SFT" failure), not a crash.
                reason = f"iteration {iteration}: no two samples of a task differ in reward, so no pairs; stopped"
                get_run_logger().warning(reason)
                self.tracker.set_tags(self.parent, {"eto.stopped": reason})
                break
            out += summaries
            policy = new_policy.ref
        return out


def _best_of_n(ctx: _Context) -> list[EvalSummary]:
    sft = ctx.sft()
    out = []
    for split in EVAL_SPLITS:
        result = rollout(ctx.recipe, ctx.store, sft.ref, stage="best_of_n", split=split, iteration=0,
                          gen=stages.sampling(ctx.recipe, "best_of_n"), tracker=ctx.tracker, parent=ctx.parent,
                          runner=ctx.runner)
        summary = stages.rollout_summary(result)
        summary.stage = f"best-of-{ctx.recipe.baselines.best_of_n} (oracle)"
        out.append(summary)
    return out


def _rft(ctx: _Context) -> list[EvalSummary]:
    rft = ctx.rft(ctx.sft().ref, ctx.expert.ref)
    return ctx.evaluate(rft.ref, "rft")


def _rft_eto(ctx: _Context) -> list[EvalSummary]:
    rft = ctx.rft(ctx.base.ref, None)
    return ctx.evaluate(rft.ref, "rft (no expert)") + ctx.iterate(rft.ref)


def _eto_no_sft(ctx: _Context) -> list[EvalSummary]:
    return ctx.evaluate(ctx.base.ref, "base (no SFT)") + ctx.iterate(ctx.base.ref)
