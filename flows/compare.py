"""`eto compare`: the report comparing methods (markdown table, PNG plot, HTML pair viewer),
written to a folder, logged to MLflow as its own run and to Prefect as a markdown artifact."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from eto_core.method_comparison import (
    MethodRun,
    comparison_table,
    iteration_plot,
    own_start_rows,
    pair_viewer_html,
    paired_rows,
    paired_table,
    task_rewards,
    task_solved_steps,
)
from eto_core.plots import save_plot
from eto_core.records import PreferencePair, frame_to_pairs, read_records
from eto_core.stages import PAIRS_FILE, TRAJ_FILE
from eto_core.storage import ArtifactError, ArtifactRef, ArtifactStore
from eto_core.tracking import Tracker


def _write_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".tmp") as tmp:
        tmp.write(text)
    os.replace(tmp.name, path)


def pick_pairs(pairs: list[PreferencePair], limit: int) -> list[PreferencePair]:
    """Pairs worth looking at first: failures against a success ("lose"), then the rest."""
    order = {"lose": 0, "self": 1, "win": 2}
    return sorted(pairs, key=lambda p: (order.get(p.kind, 3), p.task_id))[:limit]


def load_pairs(source: str) -> list[PreferencePair]:
    """Pairs from a pairs.parquet file, a pairs artifact folder, or its file:// URI."""
    path = Path(urlparse(source).path if source.startswith("file://") else source)
    if path.is_dir():
        path = path / PAIRS_FILE
    if not path.is_file():
        raise ValueError(f"{source}: no {PAIRS_FILE} there; pass --pairs with a pairs artifact folder or file")
    return frame_to_pairs(read_records(path, "pairs"))


def load_task_results(runs: list[MethodRun], cache_dir: str) -> tuple[dict[str, dict[str, float]],
                                                                        dict[str, dict[str, float]]]:
    """Evaluation URI -> per-task rewards, and -> the steps of each solved task, for every
    evaluation the runs tagged. One that can no longer be read (its artifact deleted or
    replaced) is left out with a warning: the table of means does not need it."""
    out: dict[str, dict[str, float]] = {}
    steps: dict[str, dict[str, float]] = {}
    for run in runs:
        for ref in run.evals.values():
            if ref["uri"] in out:
                continue
            root = ref["uri"].rsplit("/", 2)[0]  # artifacts live at <root>/<stage>/<key>
            store = ArtifactStore(root, cache_dir=cache_dir, s3_endpoint_url=run.storage.get("s3_endpoint_url"),
                                  s3_region=run.storage.get("s3_region", "us-east-1"))
            try:
                folder = store.fetch(ArtifactRef(ref["uri"], ref["digest"]))
            except ArtifactError as exc:
                get_run_logger().warning("per-task comparison without %s: %s", ref["uri"], exc)
                continue
            frame = read_records(folder / TRAJ_FILE, "trajectories")
            out[ref["uri"]], steps[ref["uri"]] = task_rewards(frame), task_solved_steps(frame)
    return out, steps


@flow(name="eto-compare", log_prints=True)
def compare_flow(mlflow_uri: str, experiment: str = "eto", out_dir: str = "eto-compare", recipe: str | None = None,
                 env: str | None = None, pairs: str | None = None, max_pairs: int = 6,
                 cache_dir: str = ".eto/cache") -> dict[str, Any]:
    logger = get_run_logger()
    tracker = Tracker(mlflow_uri, experiment)
    runs = tracker.method_runs(recipe=recipe, env=env)
    if not runs:
        scope = " and ".join(x for x in (f"recipe '{recipe}'" if recipe else "", f"env '{env}'" if env else "") if x)
        raise ValueError(f"no finished eto run, baseline or evaluation in experiment '{experiment}' at {mlflow_uri}"
                         + (f" for {scope}" if scope else "") + "; run `eto run` or `eto baseline` first.")
    out = Path(out_dir)
    table = comparison_table(runs)
    # The base rows repeat a method run's zero-shot evaluation: count the tracked runs once.
    count = len({r.run_id for r in runs})
    title = f"Methods on {env or 'all envs'} ({recipe or 'all recipes'}), {count} run{'' if count == 1 else 's'}"
    report = (f"# {title}\n\nMean ± standard deviation over seeds; 'seeds' counts the runs in a row. "
              "Best-of-N picks by reward: an oracle's upper reference, not a policy.\n\n"
              f"{table}\n\n![reward per iteration](reward_per_iteration.png)\n")
    rewards, solved_steps = load_task_results(runs, cache_dir)
    paired, own = paired_rows(runs, rewards), own_start_rows(runs, rewards)
    paired_text, own_text = paired_table(paired) if paired else "", paired_table(own) if own else ""
    steps = paired_rows(runs, solved_steps)
    steps_text = paired_table(steps, quantity="steps") if steps else ""
    if paired_text:
        report += ("\n## Per task, against the same seed's SFT\n\nReward minus the SFT policy's on the same task "
                   "and seed, averaged over tasks x seeds; the interval is a bootstrap over tasks (resampled within "
                   "each seed), so it is the spread even a one-seed run has. ↑ / ↓: tasks that scored higher / lower "
                   f"than SFT, of n compared.\n\n{paired_text}\n")
    if steps_text:
        report += ("\n## Steps on the tasks both solved, against the same seed's SFT\n\nSteps minus SFT's on each "
                   "task that both solved (Best-of-N: its pick), averaged over those tasks x seeds, with the same "
                   "bootstrap; negative is fewer steps. This is action efficiency without the failures, which run to "
                   f"the step cap and dominate the mean steps above. ↑ / ↓: more / fewer steps.\n\n{steps_text}\n")
    if own_text:
        report += ("\n## ETO iterations against their own start (methods without SFT)\n\nThe same difference, "
                   "but from the model the method's ETO iterations started from (RFT's model for RFT->ETO, the "
                   f"base model for ETO without SFT): what its ETO half added.\n\n{own_text}\n")
    _write_atomically(out / "compare.md", report)
    save_plot(iteration_plot(runs, title), out / "reward_per_iteration.png")
    files = ["compare.md", "reward_per_iteration.png"]
    source = pairs or tracker.latest_stage_artifact("pairs", recipe=recipe)
    if source and (pairs or source.startswith("file://")):
        shown = pick_pairs(load_pairs(source), max_pairs)
        _write_atomically(out / "viewer.html", pair_viewer_html(shown, f"Pairs from {source}"))
        files.append("viewer.html")
    else:
        logger.info("no local pairs artifact found (pass pairs=...); the report has no viewer")
    run_id = tracker.start_run("compare", tags={"eto.compare": "true", **({"eto.recipe": recipe} if recipe else {})})
    tracker.log_artifacts(run_id, out, "compare")
    tracker.end_run(run_id)
    create_markdown_artifact(key="eto-compare", markdown=report.replace("![reward per iteration](reward_per_iteration.png)\n", ""),
                             description="Methods side by side: reward, success and steps per split")
    logger.info("comparison of %d runs:\n%s", count, table)
    return {"table": table, "paired_table": paired_text, "own_start_table": own_text, "steps_table": steps_text,
            "folder": str(out.resolve()), "files": files, "mlflow_run_id": run_id}
