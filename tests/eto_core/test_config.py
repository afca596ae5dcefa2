"""Recipes: the shipped ones load; bad ones fail naming the file and field."""

from __future__ import annotations

from pathlib import Path

import pytest

from eto_core.config import Recipe, RecipeError, describe_fields, load_recipe

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name", sorted(p.stem for p in (ROOT / "recipes").glob("*.yaml")))
def test_shipped_recipes_load(name: str) -> None:
    recipe = load_recipe(ROOT / "recipes" / f"{name}.yaml")
    assert recipe.name == name and recipe.iterations >= 1


def test_overrides_and_per_iteration_dpo() -> None:
    recipe = load_recipe(ROOT / "recipes" / "default.yaml", ["iterations=3", "dpo.beta=0.2", "seed=7"])
    assert recipe.iterations == 3 and recipe.seed == 7
    assert recipe.dpo_for_iteration(1).beta == 0.1  # dpo_iterations[0] overrides dpo.beta
    assert recipe.dpo_for_iteration(2).beta == 0.5
    assert recipe.dpo_for_iteration(3).beta == 0.5  # the last entry repeats
    plain = Recipe()
    assert plain.dpo_for_iteration(2) == plain.dpo


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "r.yaml"
    p.write_text(text)
    return p


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("dpo: {beta: -1}", "dpo.beta"),
        ("dpo: {betta: 0.1}", "unknown key"),
        ("sft: {num_train_epochs: 0}", "sft.num_train_epochs"),
        ("iterations: 1\ndpo_iterations: [{beta: 0.1}, {beta: 0.2}]", "dpo_iterations has 2 entries"),
        ("data: {train_tasks: 10, explore_tasks: 20}", "explore_tasks"),
        ("data: {one_shot_in_training: false}\npairs: {level: both}", "use pairs.level: trajectory"),
        ("- a\n- b", "must be a mapping"),
        ("name: [unclosed", "not valid YAML"),
    ],
)
def test_bad_recipes_name_file_and_field(tmp_path: Path, text: str, needle: str) -> None:
    with pytest.raises(RecipeError) as err:
        load_recipe(_write(tmp_path, text))
    assert needle in str(err.value) and "r.yaml" in str(err.value)


def test_missing_file() -> None:
    with pytest.raises(RecipeError, match="not found"):
        load_recipe("nope.yaml")


def test_recipe_help_documents_every_field() -> None:
    lines = describe_fields()
    keys = {line.split(":", 1)[0] for line in lines}
    assert {"iterations", "dpo.beta", "sft.learning_rate", "model.pretrain.max_steps", "storage.root"} <= keys


def test_global_seed_reaches_every_component() -> None:
    from eto_core.seeding import seeded

    r0 = load_recipe(ROOT / "recipes" / "default.yaml")
    r3 = load_recipe(ROOT / "recipes" / "default.yaml", ["seed=3"])
    for part in ("sft", "dpo", "explore", "evaluate"):
        assert seeded(getattr(r3, part), r3).seed == getattr(r3, part).seed + 3
        assert seeded(getattr(r0, part), r0) == getattr(r0, part)  # seed 0 leaves settings as written
    assert seeded(r3.model.tiny, r3).seed == 3 and seeded(r3.model.pretrain, r3).seed == 3


def test_lowering_iterations_on_the_command_line_drops_the_unused_dpo_iteration_entries(tmp_path: Path) -> None:
    text = "iterations: 2\ndpo_iterations: [{beta: 0.1, learning_rate: 5.0e-5}, {beta: 0.5}]"
    full = load_recipe(_write(tmp_path, text))
    one = load_recipe(_write(tmp_path, text), ["iterations=1"])
    assert one.iterations == 1 and len(one.dpo_iterations) == 1
    # Iteration 1 keeps exactly the settings (and so the cache keys) of the two-iteration run.
    assert one.dpo_for_iteration(1) == full.dpo_for_iteration(1)
    # A list given on the command line is still checked against iterations.
    with pytest.raises(RecipeError, match="dpo_iterations has 2 entries"):
        load_recipe(_write(tmp_path, text), ["iterations=1", "dpo_iterations=[{beta: 0.1}, {beta: 0.2}]"])
