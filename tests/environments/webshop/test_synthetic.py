"""The synthetic catalogue generator: determinism, formats, and goals an agent can satisfy."""

from __future__ import annotations

import json
from pathlib import Path

from environments.webshop.data import find_files, load_catalogue
from environments.webshop.reward import purchase_reward
from environments.webshop.synthetic import CATEGORIES, generate, read_meta

FILES = ("items_shuffle.json", "items_ins_v2.json", "items_human_ins.json", "reviews.json", "synthetic.json")


def test_same_seed_same_bytes_other_seed_other_catalogue(tmp_path: Path) -> None:
    generate(tmp_path / "a", products=120, seed=7)
    generate(tmp_path / "b", products=120, seed=7)
    generate(tmp_path / "c", products=120, seed=8)
    for name in FILES:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    assert (tmp_path / "a" / FILES[0]).read_bytes() != (tmp_path / "c" / FILES[0]).read_bytes()


def test_files_are_in_webshop_formats(small_dir: Path) -> None:
    products = json.loads((small_dir / "items_shuffle.json").read_text())
    assert isinstance(products, list) and len(products) == 600
    first = products[0]
    for field in ("asin", "name", "category", "query", "product_category", "full_description",
                  "small_description", "pricing", "customization_options"):  # fmt: skip
        assert field in first, field
    group = next(iter(first["customization_options"].values()))
    assert set(group[0]) == {"value", "image"}
    attributes = json.loads((small_dir / "items_ins_v2.json").read_text())
    assert set(attributes[first["asin"]]) == {"attributes", "instruction", "instruction_attributes"}
    goals = json.loads((small_dir / "items_human_ins.json").read_text())
    entry = next(iter(goals.values()))[0]
    assert {"instruction", "instruction_attributes", "instruction_options"} <= set(entry)
    meta = read_meta(small_dir)
    assert meta is not None and meta["products"] == 600 and meta["held_out_categories"] == ["garden", "pets"]


def test_every_category_and_goal_shape(small_dir: Path) -> None:
    catalogue = load_catalogue(find_files(small_dir))
    assert {p.category for p in catalogue.products} == {c.name for c in CATEGORIES}
    assert all(1 <= len(p.options) <= 2 and 2 <= len(p.attributes) <= 4 for p in catalogue.products)
    assert any("to $" in p.price_tag for p in catalogue.products)  # some price ranges
    assert len(catalogue.goals) > 250
    for goal in catalogue.goals:
        target = catalogue.product(goal.asin)
        # The instruction names the type, the attributes and every option; the price clause is there
        assert goal.query in goal.request and all(a in goal.request for a in goal.attributes)
        assert all(o in goal.request for o in goal.options) and len(goal.options) == len(target.options)
        assert "price lower than" in goal.instruction
        # The goal's own product with the named options scores 1
        assert purchase_reward(goal, target, goal.options).success
        # No other product of its type has all the goal's attributes
        rivals = [p for p in catalogue.products if p.query == goal.query and p.asin != goal.asin
                  and set(goal.attributes) <= set(p.attributes)]  # fmt: skip
        assert not rivals, goal.request
