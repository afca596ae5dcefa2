"""Recipes that cannot run are refused before anything starts, naming the file and the field
(eto_core/config.py; flows/cli.py exits 2 with the same text)."""

from __future__ import annotations

from pathlib import Path

import pytest

from eto_core.config import RecipeError, load_recipe
from flows.cli import main
from tests.reliability.conftest import Fault

MINI = Path(__file__).resolve().parents[2] / "recipes" / "mini.yaml"


def _recipe(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("what", "text", "match"),
    [
        ("unknown key 'dpo.betta'", "dpo: {betta: 0.1}\n",
         r"recipe\.yaml: invalid recipe:\n  dpo\.betta: .*unknown key: check its spelling"),
        ("unknown top-level section 'trainer'", "trainer: {lr: 1}\n", r"recipe\.yaml: .*  trainer: .*unknown key"),
        ("negative dpo.beta", "dpo: {beta: -0.5}\n", r"recipe\.yaml: .*  dpo\.beta: Input should be greater than 0"),
        ("more dpo_iterations than iterations", "iterations: 1\ndpo_iterations: [{beta: 0.1}, {beta: 0.5}]\n",
         r"recipe\.yaml: .*dpo_iterations has 2 entries but iterations is 1; remove the extra entries"),
        ("data.explore_tasks > data.train_tasks", "data: {train_tasks: 10, explore_tasks: 20}\n",
         r"recipe\.yaml: .*data\.explore_tasks \(20\) exceeds data\.train_tasks \(10\)"),
        ("data.train_tasks = 0", "data: {train_tasks: 0}\n",
         r"recipe\.yaml: .*  data\.train_tasks: Input should be greater than or equal to 1"),
        ("data.on_split_overlap = 'ignore'", "data: {on_split_overlap: ignore}\n",
         r"recipe\.yaml: .*  data\.on_split_overlap: Input should be 'error' or 'warn'"),
        ("iterations written as text", "iterations: two\n",
         r"recipe\.yaml: .*  iterations: Input should be a valid integer"),
        ("a recipe that is a YAML list", "- name: mini\n",
         r"recipe\.yaml: a recipe must be a mapping of settings, got list"),
        ("invalid YAML (unclosed bracket)", "dpo: {beta: 0.1\n", r"recipe\.yaml: not valid YAML"),
        ("env.step_timeout_s = 0", "env: {step_timeout_s: 0}\n",
         r"recipe\.yaml: .*  env\.step_timeout_s: Input should be greater than 0"),
        ("explore.shard_size = 0", "explore: {shard_size: 0}\n",
         r"recipe\.yaml: .*  explore\.shard_size: Input should be greater than or equal to 1"),
    ],
)
def test_bad_recipe_file(tmp_path: Path, fault: Fault, what: str, text: str, match: str) -> None:
    path = _recipe(tmp_path, text)
    with fault("recipes", what, RecipeError, match):
        load_recipe(path)


def test_missing_recipe_file(tmp_path: Path, fault: Fault) -> None:
    with fault("recipes", "--config pointing at no file", RecipeError,
               r"nope\.yaml: recipe file not found; pass --config"):
        load_recipe(tmp_path / "nope.yaml")


@pytest.mark.parametrize(
    ("what", "override", "match"),
    [
        ("--set with an unknown key", "dpo.betaa=0.2", r"mini\.yaml: invalid recipe:\n  dpo\.betaa: .*unknown key"),
        ("--set with a bad value", "dpo.beta=high", r"mini\.yaml: .*  dpo\.beta: Input should be a valid number"),
        ("--set without '='", "iterations", r"mini\.yaml: override 'iterations' must look like key\.sub=value"),
        ("--set into a non-section", "seed.x=1", r"mini\.yaml: override 'seed\.x=1': 'seed' is not a section"),
    ],
)
def test_bad_override(fault: Fault, what: str, override: str, match: str) -> None:
    with fault("recipes", what, RecipeError, match):
        load_recipe(MINI, [override])


def test_cli_bad_override_exits_2_before_running(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    state = tmp_path / "state"
    code = main(["run", "--config", str(MINI), "--set", "data.seen_taskz=3", "--state-dir", str(state),
                 "--artifact-root", str(tmp_path / "artifacts")])
    assert code == 2
    err = capsys.readouterr().err
    assert "mini.yaml" in err and "data.seen_taskz" in err and "unknown key" in err
    assert not (tmp_path / "artifacts").exists()  # refused before any stage ran
