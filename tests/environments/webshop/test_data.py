"""Reading WebShop's file formats, building goals, and failing clearly on bad files."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest

from environments.webshop import WebShopDataError, WebShopEnv
from environments.webshop.data import NO_PRICE_BOUND, DataFiles, find_files, load_catalogue


def record(asin: str, **fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "asin": asin,
        "name": f"Lumora Shampoo {asin}",
        "category": "beauty",
        "query": "Shampoo ",
        "product_category": "Beauty & Personal Care › Hair Care › Shampoo",
        "full_description": "A shampoo.",
        "small_description": ["Gentle"],
        "pricing": "$12.50",
        "customization_options": {"Scent": [{"value": "Lavender", "image": None}, {"value": "Black/White"}]},
        "images": ["x.jpg"],
    }
    base.update(fields)
    return base


def write(folder: Path, products: Any, attributes: Any = None, goals: Any = None) -> DataFiles:
    folder.mkdir(parents=True, exist_ok=True)
    if attributes is None:
        attributes = {
            "B0A": {"attributes": ["paraben free"], "instruction": "", "instruction_attributes": []}
        }
    if goals is None:
        goals = {"B0A": [{"instruction": "i need a paraben free shampoo.", "instruction_attributes": ["paraben free"],
                          "instruction_options": ["lavender"]}]}  # fmt: skip
    for name, data in (("items_shuffle_1000.json", products), ("items_ins_v2_1000.json", attributes),
                       ("items_human_ins.json", goals)):  # fmt: skip
        path = folder / name
        path.write_text(data if isinstance(data, str) else json.dumps(data))
    return find_files(folder)


def test_reads_webshop_formats_and_aliases(tmp_path: Path) -> None:
    products = [
        record("B0A"),
        record("nan"),  # WebShop's placeholder asin: skipped
        record("B0A", name="A duplicate"),  # a repeated asin keeps its first record
        record("B0B", pricing="$10.00 - $20.00", small_description="One bullet", customization_options=None),
        # the processed form WebShop caches: Title / Description / BulletPoints / Price
        {k: v for k, v in record("B0C").items() if k not in ("name", "full_description", "small_description",
                                                             "pricing")}
        | {"Title": "Vexa Lotion", "Description": "Soft.", "BulletPoints": ["Soft"], "Price": "$3"},
        record("B0D", pricing=""),  # WebShop's default price
    ]  # fmt: skip
    catalogue = load_catalogue(write(tmp_path, products))
    assert [p.asin for p in catalogue.products] == ["B0A", "B0B", "B0C", "B0D"]
    a, b, c, d = catalogue.products
    assert a.title == "Lumora Shampoo B0A" and a.query == "shampoo" and a.attributes == ("paraben free",)
    assert a.options == (("scent", ("lavender", "black | white")),)
    assert (a.price, a.price_tag) == (12.5, "$12.50")
    assert (b.price, b.price_tag, b.features, b.options) == (10.0, "$10.00 to $20.00", ("One bullet",), ())
    assert (c.title, c.description, c.features, c.price_tag, c.attributes) == (
        "Vexa Lotion",
        "Soft.",
        ("Soft",),
        "$3.00",
        (),
    )
    assert (d.price, d.rating) == (100.0, "N.A.")
    (goal,) = catalogue.goals
    # Trailing full stop dropped; the bound is two of the next four multiples of 10 above $12.50
    # (20, 30, 40, 50), the larger kept: at least 30.
    assert goal.request == "i need a paraben free shampoo"
    assert goal.price_upper in (30.0, 40.0, 50.0)
    assert (
        goal.instruction
        == f"i need a paraben free shampoo, and price lower than {goal.price_upper:.2f} dollars"
    )
    assert (goal.asin, goal.attributes, goal.options, goal.name) == (
        "B0A",
        ("paraben free",),
        ("lavender",),
        a.title,
    )


def test_goal_order_is_webshops(tmp_path: Path) -> None:
    # Products in file order, each product's instructions in order, those without attributes
    # skipped, then random.Random(233).shuffle: the order ETO's goal indices refer to.
    asins = [f"B0{i:03d}" for i in range(30)]
    goals = {
        a: [{"instruction": f"goal {a} {k}", "instruction_attributes": [] if k == 1 else ["x"],
             "instruction_options": []} for k in range(3)]
        for a in reversed(asins)
    }  # fmt: skip
    catalogue = load_catalogue(write(tmp_path, [record(a, pricing="$995") for a in asins], {}, goals))
    expected = [f"goal {a} {k}" for a in asins for k in (0, 2)]
    random.Random(233).shuffle(expected)
    assert [g.request for g in catalogue.goals] == expected
    assert [g.index for g in catalogue.goals] == list(range(60))
    # Above $990 there are fewer than two multiples of 10 left: no bound and no price clause
    assert all(g.price_upper == NO_PRICE_BOUND and g.instruction == g.request for g in catalogue.goals)


def test_price_bound_is_reproducible(tmp_path: Path) -> None:
    files = write(tmp_path, [record("B0A")])
    first = load_catalogue(files).goals
    (tmp_path / "items_human_ins.json").write_text((tmp_path / "items_human_ins.json").read_text() + "\n")
    assert load_catalogue(files).goals[0].price_upper == first[0].price_upper  # re-read, same draw


BAD_PRODUCTS: list[tuple[str, Any, list[str]]] = [
    ("missing field", [record("B0A"), {k: v for k, v in record("B0X").items() if k != "name"}],
     ["items_shuffle_1000.json", "record 1", "'B0X'", "'name'", "missing", "Fix or remove"]),
    ("wrong type", [record("B0A", small_description=5)],
     ["record 0", "'B0A'", "'small_description'", "list of strings", "int"]),
    ("wrong option type", [record("B0A", customization_options={"color": [{"value": 3}]})],
     ["record 0", "'customization_options.color[0].value'", "expected a string"]),
    ("bad price", [record("B0A", pricing="call us")], ["record 0", "'pricing'", "no dollar amount"]),
    ("record not an object", [record("B0A"), "B0B"], ["record 1", "expected a JSON object"]),
    ("empty catalogue", [], ["items_shuffle_1000.json", "no usable product"]),
    ("not a list", {"B0A": record("B0A")}, ["items_shuffle_1000.json", "JSON list"]),
    ("truncated JSON", json.dumps([record("B0A")])[:-40], ["items_shuffle_1000.json", "not valid JSON", "line 1",
                                                           "truncated"]),
]  # fmt: skip


@pytest.mark.parametrize(("case", "products", "phrases"), BAD_PRODUCTS, ids=[c[0] for c in BAD_PRODUCTS])
def test_bad_products_file(tmp_path: Path, case: str, products: Any, phrases: list[str]) -> None:
    files = write(tmp_path, products)
    with pytest.raises(WebShopDataError) as err:
        load_catalogue(files)
    assert isinstance(err.value, ValueError)
    for phrase in phrases:
        assert phrase in str(err.value), (case, str(err.value))


BAD_SIDE_FILES: list[tuple[str, Any, Any, list[str]]] = [
    ("attributes not an object", [], None, ["items_ins_v2_1000.json", "JSON object"]),
    ("attributes wrong type", {"B0A": {"attributes": "paraben free"}}, None,
     ["items_ins_v2_1000.json", "record 0", "'B0A'", "'attributes'", "list of strings"]),
    ("goal missing instruction", None, {"B0A": [{"instruction_attributes": ["x"]}]},
     ["items_human_ins.json", "record 0", "'B0A'", "instruction 0", "'instruction'", "missing"]),
    ("goal attributes wrong type", None, {"B0A": [{"instruction": "x", "instruction_attributes": [1]}]},
     ["items_human_ins.json", "'instruction_attributes'", "list of int"]),
    ("goals for other products", None, {"B0Z": [{"instruction": "x", "instruction_attributes": ["y"]}]},
     ["items_human_ins.json", "no usable goal", "Pair the goals file"]),
]  # fmt: skip


@pytest.mark.parametrize(
    ("case", "attributes", "goals", "phrases"), BAD_SIDE_FILES, ids=[c[0] for c in BAD_SIDE_FILES]
)
def test_bad_attribute_and_goal_files(
    tmp_path: Path, case: str, attributes: Any, goals: Any, phrases: list[str]
) -> None:
    files = write(tmp_path, [record("B0A")], attributes, goals)
    with pytest.raises(WebShopDataError) as err:
        load_catalogue(files)
    for phrase in phrases:
        assert phrase in str(err.value), (case, str(err.value))


def test_missing_and_ambiguous_files(tmp_path: Path, cache_dir: Path) -> None:
    with pytest.raises(WebShopDataError, match=r"no products file .*synthetic=True"):
        WebShopEnv(tmp_path, cache_dir=cache_dir)
    write(tmp_path, [record("B0A")])
    (tmp_path / "items_shuffle.json").write_text("[]")
    with pytest.raises(WebShopDataError, match="several products files .*products_file"):
        WebShopEnv(tmp_path, cache_dir=cache_dir)
    # A bad file surfaces from the constructor as the same error
    with pytest.raises(
        WebShopDataError, match="items_shuffle.json: the products file holds no usable product"
    ):
        WebShopEnv(tmp_path, products_file="items_shuffle.json", attributes_file="items_ins_v2_1000.json",
                   cache_dir=cache_dir)  # fmt: skip
