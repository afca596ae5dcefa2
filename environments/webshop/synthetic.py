"""A synthetic WebShop catalogue, written in WebShop's own file formats.

``generate(out_dir, products=2000, seed=0)`` writes ``items_shuffle.json`` (products),
``items_ins_v2.json`` (attributes), ``items_human_ins.json`` (goal instructions),
``reviews.json`` and ``synthetic.json`` (what was generated, and which categories are held
out). The same seed and sizes give byte-identical files; 100,000 products take seconds.

Eight categories (beauty, electronics, fashion, food, furniture, garden, pets, sports), five
product types each; a product has a brand, 2-4 of its category's attributes, one or two
option groups with 2-4 values, and a price ($1-$300, one in ten a price range). Each type has
its own category path, so "same category" (two shared levels) means "same type".

Goals (``goal_fraction`` of the products) are written so that a tiny model can learn the task
by copying: the instruction names the product type, a set of its attributes that no other
product of that type has all of (the smallest such set), and one value of each of its option
groups, e.g. "i need a paraben free shampoo with scent lavender and size 8 fl oz". The
product's title names its type and attributes, so searching the instruction's words puts it
at or near the top (see the tests for the measured rank). A product with no such set (another
product of its type has all its attributes) gets no goal. ``garden`` and ``pets`` are held
out by default: their goals make the ``unseen`` split.
"""

from __future__ import annotations

import argparse
import json
import os
import random
from collections import Counter
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path
from typing import Any

GENERATOR = "eto-webshop-synthetic"
GENERATOR_VERSION = "1"
META_FILE = "synthetic.json"
PRODUCTS_FILE = "items_shuffle.json"
ATTRIBUTES_FILE = "items_ins_v2.json"
GOALS_FILE = "items_human_ins.json"
REVIEWS_FILE = "reviews.json"
DEFAULT_PRODUCTS = 2000
DEFAULT_GOAL_FRACTION = 1.0
DEFAULT_HELD_OUT: tuple[str, ...] = ("garden", "pets")
RANGE_PRICE_SHARE = 0.1
REVIEW_SHARE = 0.5


@dataclass(frozen=True)
class Category:
    name: str
    root: str
    types: tuple[tuple[str, str, float], ...]
    """(product type, its sub-path, typical price)"""
    attributes: tuple[str, ...]
    options: tuple[tuple[str, tuple[str, ...]], ...]


CATEGORIES: tuple[Category, ...] = (
    Category(
        "beauty", "Beauty & Personal Care",
        (("shampoo", "Hair Care", 12), ("face moisturizer", "Skin Care", 25), ("lipstick", "Makeup", 15),
         ("body wash", "Bath & Body", 10), ("perfume", "Fragrance", 60)),
        ("paraben free", "cruelty free", "long lasting", "sulfate free", "travel size", "dermatologist tested",
         "fragrance free", "natural ingredients", "sensitive skin", "vitamin e"),
        (("scent", ("lavender", "rose", "vanilla", "coconut", "citrus")),
         ("size", ("2 fl oz", "4 fl oz", "8 fl oz", "16 fl oz"))),
    ),
    Category(
        "electronics", "Electronics",
        (("bluetooth speaker", "Portable Audio", 45), ("wireless earbuds", "Headphones", 60),
         ("phone charger", "Chargers", 18), ("hdmi cable", "Cables", 12), ("power bank", "Batteries", 30)),
        ("fast charging", "water resistant", "noise cancelling", "high definition", "long battery life",
         "usb c", "plug and play", "heavy duty", "compact design", "dual port"),
        (("color", ("black", "white", "blue", "red", "silver")), ("style", ("standard", "pro", "mini"))),
    ),
    Category(
        "fashion", "Clothing, Shoes & Jewelry",
        (("running shoes", "Athletic Shoes", 70), ("hoodie", "Sweatshirts", 40), ("dress shirt", "Shirts", 35),
         ("yoga pants", "Leggings", 30), ("rain jacket", "Outerwear", 80)),
        ("machine wash", "slim fit", "relaxed fit", "quick dry", "button closure", "long sleeve",
         "elastic waistband", "cotton blend", "non slip sole", "breathable fabric"),
        (("color", ("black", "navy", "grey", "olive", "burgundy")),
         ("size", ("small", "medium", "large", "x-large"))),
    ),
    Category(
        "food", "Grocery & Gourmet Food",
        (("green tea", "Tea", 15), ("coffee beans", "Coffee", 20), ("dark chocolate", "Candy", 10),
         ("trail mix", "Snacks", 12), ("protein bar", "Nutrition Bars", 25)),
        ("gluten free", "non gmo", "sugar free", "usda organic", "low calorie", "high protein",
         "keto friendly", "individually wrapped", "caffeine free", "fair trade"),
        (("flavor", ("original", "mint", "caramel", "berry", "honey")),
         ("size", ("pack of 1", "pack of 2", "pack of 6", "pack of 12"))),
    ),
    Category(
        "furniture", "Home & Kitchen",
        (("office chair", "Office Furniture", 150), ("bookshelf", "Storage", 90), ("coffee table", "Tables", 120),
         ("bed frame", "Bedroom Furniture", 200), ("bar stool", "Seating", 60)),
        ("easy assembly", "solid wood", "storage space", "metal frame", "mid century", "space saving",
         "lumbar support", "heavy duty", "living room", "water proof"),
        (("color", ("walnut", "white", "black", "grey", "oak")), ("size", ("small", "medium", "large"))),
    ),
    Category(
        "garden", "Patio, Lawn & Garden",
        (("garden hose", "Watering Equipment", 35), ("plant pot", "Planters", 20), ("bird feeder", "Bird Care", 25),
         ("solar light", "Outdoor Lighting", 30), ("pruning shears", "Garden Tools", 18)),
        ("weather resistant", "uv protection", "drainage hole", "rust proof", "lightweight", "outdoor use",
         "expandable", "ergonomic handle", "stainless steel", "easy install"),
        (("color", ("green", "black", "terracotta", "white")), ("size", ("small", "medium", "large"))),
    ),
    Category(
        "pets", "Pet Supplies",
        (("dog bed", "Dog Beds", 45), ("cat tree", "Cat Furniture", 70), ("dog leash", "Leashes", 15),
         ("pet brush", "Grooming", 12), ("cat litter", "Litter", 20)),
        ("machine washable", "non toxic", "odor control", "orthopedic", "reflective", "chew resistant",
         "easy clean", "large breed", "scratch resistant", "dust free"),
        (("color", ("brown", "grey", "pink", "blue")), ("size", ("small", "medium", "large", "x-large"))),
    ),
    Category(
        "sports", "Sports & Outdoors",
        (("yoga mat", "Yoga", 25), ("water bottle", "Hydration", 20), ("resistance bands", "Strength Training", 18),
         ("camping tent", "Camping", 110), ("dumbbell set", "Weights", 80)),
        ("non slip", "bpa free", "extra thick", "leak proof", "insulated", "portable", "adjustable",
         "double wall", "easy setup", "anti tear"),
        (("color", ("black", "purple", "teal", "orange")), ("size", ("one size", "standard", "large"))),
    ),
)  # fmt: skip

BRANDS: tuple[str, ...] = (
    "Lumora", "Vexa", "Brightwell", "Oakhurst", "Nimbo", "Zephra", "Calder", "Pinecrest", "Solvan", "Marlo",
    "Trevi", "Quillon", "Hartfield", "Novique", "Arbor", "Kestrel", "Fenwick", "Ostara", "Belmora", "Tidewell",
    "Corvin", "Ilsa", "Rowan", "Sable", "Juniper", "Halden", "Mirelle", "Tovik", "Ardent", "Sunvale",
)  # fmt: skip

_TEMPLATES: tuple[str, ...] = (
    "i need {a} {attrs} {kind} with {opts}",
    "i am looking for {a} {attrs} {kind} with {opts}",
    "i want to buy {a} {kind} that is {attrs}, with {opts}",
    "find me {a} {attrs} {kind} with {opts}",
)
_REVIEW_TITLES: tuple[str, ...] = (
    "Great value",
    "Works as described",
    "Would buy again",
    "Not bad",
    "Love it",
)
_REVIEW_BODIES: tuple[str, ...] = (
    "Arrived quickly and does the job.",
    "Good quality for the price.",
    "Exactly what I was looking for.",
    "Fine, though the packaging was damaged.",
)


def category_names() -> tuple[str, ...]:
    return tuple(c.name for c in CATEGORIES)


@dataclass(frozen=True)
class _Drawn:
    asin: str
    category: Category
    kind: str
    sub_path: str
    brand: str
    attributes: tuple[str, ...]
    options: tuple[tuple[str, tuple[str, ...]], ...]
    low: float
    high: float | None


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _draw_product(rng: random.Random, asins: set[str]) -> _Drawn:
    category = CATEGORIES[rng.randrange(len(CATEGORIES))]
    kind, sub_path, typical = category.types[rng.randrange(len(category.types))]
    attrs = rng.sample(range(len(category.attributes)), rng.randint(2, 4))
    groups = sorted(rng.sample(range(len(category.options)), rng.randint(1, len(category.options))))
    options = []
    for g in groups:
        name, values = category.options[g]
        picked = sorted(rng.sample(range(len(values)), rng.randint(2, min(4, len(values)))))
        options.append((name, tuple(values[i] for i in picked)))
    low = min(300.0, max(1.0, round(typical * rng.uniform(0.6, 1.5)))) - 0.01
    high = low + rng.choice((2.0, 5.0, 10.0)) if rng.random() < RANGE_PRICE_SHARE else None
    while True:
        asin = f"B0{rng.getrandbits(32):08X}"
        if asin not in asins:
            asins.add(asin)
            break
    return _Drawn(
        asin=asin,
        category=category,
        kind=kind,
        sub_path=sub_path,
        brand=BRANDS[rng.randrange(len(BRANDS))],
        attributes=tuple(category.attributes[i] for i in sorted(attrs)),
        options=tuple(options),
        low=low,
        high=high,
    )


def _product_record(d: _Drawn) -> dict[str, Any]:
    title = f"{d.brand} {d.kind.title()}, " + ", ".join(a.title() for a in d.attributes)
    pricing = f"${d.low:.2f}" if d.high is None else f"${d.low:.2f} - ${d.high:.2f}"
    return {
        "asin": d.asin,
        "name": title,
        "category": d.category.name,
        "query": d.kind,
        "product_category": f"{d.category.root} › {d.sub_path} › {d.kind.title()}",
        "full_description": f"The {d.brand} {d.kind} is {', '.join(d.attributes)}. Made to last for everyday use.",
        "small_description": [a.capitalize() for a in d.attributes] + [f"Designed by {d.brand}"],
        "pricing": pricing,
        "customization_options": {g: [{"value": v, "image": None} for v in vs] for g, vs in d.options},
        "images": [],
    }


def _goal_attributes(
    d: _Drawn, counts: Counter[tuple[str, tuple[str, ...]]], rng: random.Random
) -> tuple[str, ...]:
    """The smallest attribute set only this product of its type has (ties drawn at random)."""
    for size in range(1, len(d.attributes) + 1):
        subsets = [s for s in combinations(d.attributes, size) if counts[(d.kind, s)] == 1]
        if subsets:
            return subsets[rng.randrange(len(subsets))]
    return ()


def _instruction(
    d: _Drawn, attrs: tuple[str, ...], options: list[tuple[str, str]], rng: random.Random
) -> str:
    template = _TEMPLATES[rng.randrange(len(_TEMPLATES))]
    attr_text = attrs[0] if len(attrs) == 1 else ", ".join(attrs[:-1]) + " and " + attrs[-1]
    opts = " and ".join(f"{group} {value}" for group, value in options)
    first = (attr_text if "{attrs} {kind}" in template else d.kind).split()[0]
    return template.format(a=_article(first), attrs=attr_text, kind=d.kind, opts=opts)


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, ensure_ascii=False, separators=(",", ":")), encoding="utf-8")
    os.replace(tmp, path)


def generate(
    out_dir: str | Path,
    products: int = DEFAULT_PRODUCTS,
    seed: int = 0,
    goal_fraction: float = DEFAULT_GOAL_FRACTION,
    held_out: tuple[str, ...] = DEFAULT_HELD_OUT,
) -> dict[str, Any]:
    """Write the catalogue files into ``out_dir``; returns the metadata written to synthetic.json."""
    if products < 1:
        raise ValueError(f"synthetic webshop: products must be >= 1, got {products}")
    if not 0.0 < goal_fraction <= 1.0:
        raise ValueError(f"synthetic webshop: goal_fraction must be in (0, 1], got {goal_fraction}")
    unknown = sorted(set(held_out) - set(category_names()))
    if unknown or len(set(held_out)) >= len(CATEGORIES):
        raise ValueError(
            f"synthetic webshop: held_out must name some but not all of {', '.join(category_names())}; got {held_out}"
        )
    rng = random.Random(f"{GENERATOR}:{GENERATOR_VERSION}:{seed}")
    asins: set[str] = set()
    drawn = [_draw_product(rng, asins) for _ in range(products)]

    counts: Counter[tuple[str, tuple[str, ...]]] = Counter()
    for d in drawn:
        for size in range(1, len(d.attributes) + 1):
            for subset in combinations(d.attributes, size):
                counts[(d.kind, subset)] += 1

    product_records, attributes, goals, reviews = [], {}, {}, []
    for d in drawn:
        product_records.append(_product_record(d))
        entry: dict[str, Any] = {
            "attributes": list(d.attributes),
            "instruction": "",
            "instruction_attributes": [],
        }
        if rng.random() < goal_fraction and (goal_attrs := _goal_attributes(d, counts, rng)):
            chosen = [(g, vs[rng.randrange(len(vs))]) for g, vs in d.options]
            text = _instruction(d, goal_attrs, chosen, rng)
            entry.update(instruction=text, instruction_attributes=list(goal_attrs))
            goals[d.asin] = [
                {
                    "asin": d.asin,
                    "instruction": text,
                    "instruction_attributes": list(goal_attrs),
                    "instruction_options": [v for _, v in chosen],
                }
            ]
        attributes[d.asin] = entry
        if rng.random() < REVIEW_SHARE:
            score = rng.randint(3, 5)
            title, body = _REVIEW_TITLES[rng.randrange(5)], _REVIEW_BODIES[rng.randrange(4)]
            reviews.append({"asin": d.asin, "average_rating": float(score),
                            "reviews": [{"title": title, "score": str(score), "body": body}]})  # fmt: skip

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    meta = {
        "generator": GENERATOR,
        "version": GENERATOR_VERSION,
        "seed": seed,
        "products": products,
        "goal_fraction": goal_fraction,
        "goals": len(goals),
        "categories": list(category_names()),
        "held_out_categories": sorted(held_out),
    }
    _write_json(out / PRODUCTS_FILE, product_records)
    _write_json(out / ATTRIBUTES_FILE, attributes)
    _write_json(out / GOALS_FILE, goals)
    _write_json(out / REVIEWS_FILE, reviews)
    _write_json(out / META_FILE, meta)  # last: its presence says the set is complete
    return meta


def read_meta(data_dir: Path) -> dict[str, Any] | None:
    """The generator's metadata, or None for a folder that holds no synthetic catalogue."""
    path = data_dir / META_FILE
    if not path.is_file():
        return None
    meta = json.loads(path.read_text())
    if not isinstance(meta, dict) or meta.get("generator") != GENERATOR:
        return None
    return meta


def main() -> None:
    parser = argparse.ArgumentParser(
        description="Write a synthetic WebShop catalogue in WebShop's file formats."
    )
    parser.add_argument("out_dir")
    parser.add_argument("--products", type=int, default=DEFAULT_PRODUCTS)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--goal-fraction", type=float, default=DEFAULT_GOAL_FRACTION)
    args = parser.parse_args()
    meta = generate(args.out_dir, products=args.products, seed=args.seed, goal_fraction=args.goal_fraction)
    print(json.dumps(meta))


if __name__ == "__main__":
    main()
