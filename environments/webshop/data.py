"""WebShop's data files, read and checked, and the goal list built from them.

The files (WebShop's own formats; the synthetic generator writes the same ones):

- products, ``items_shuffle_1000.json`` / ``items_shuffle.json``: a JSON list of product
  records. Read per record: ``asin``, ``name`` (alias ``Title``), ``category``, ``query``,
  ``product_category`` ("Root › Sub › Leaf"), ``full_description`` (alias ``Description``),
  ``small_description`` (alias ``BulletPoints``; a list of strings or one string),
  ``pricing`` ("$12.99" or "$10.00 - $20.00"; alias ``Price``; missing or empty: $100.00 as in
  WebShop) and ``customization_options`` (``{group: [{"value": str, "image": ...}]}``; alias
  ``options`` as ``{group: [str]}``). Other fields (images, brand, ...) are ignored. As in
  WebShop, records whose asin is "nan" or longer than 10 characters are skipped and a
  repeated asin keeps its first record.
- attributes, ``items_ins_v2_1000.json`` / ``items_ins_v2.json``:
  ``{asin: {"attributes": [str], "instruction": str, "instruction_attributes": [str]}}``;
  only ``attributes`` is read (the product's hidden attributes the reward checks). A product
  without an entry has no attributes.
- human goals, ``items_human_ins.json``: ``{asin: [{"instruction": str,
  "instruction_attributes": [str], "instruction_options": [str]}, ...]}``.
- reviews, ``reviews.json`` (optional): ``[{"asin", "average_rating", "reviews": [{"title",
  "score" or "stars", "body" or "review"}]}]``.

Goals follow WebShop's construction so that goal indices (and ETO's split files, which index
them) mean the same goals: products in file order; for each, its human instructions in file
order, skipping those with no ``instruction_attributes``; then the whole list shuffled with
``random.Random(233)``. One deliberate difference: WebShop draws each goal's price bound from
an unseeded global RNG (and a price inside a price range at random), so its price bounds
change between runs. Here a price range counts as its lowest price, and the bound is drawn
the same way (two of the next four multiples of $10 above the price, the larger one kept;
none when fewer than two exist) from an RNG seeded by the goal's asin, position and text.

One module (~520 lines) because the four file formats above and the goal construction are one
contract, WebShop's: the readers, their checks and the goal list change together.

Anything unusable raises :class:`WebShopDataError` naming the file, the record, the field
and what to do: files that are read whole into memory deserve one clear message, not a
KeyError from deep inside an episode.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from environments.webshop.text import display_option

PRICE_STEP = 10.0
PRICE_CHOICES = 4
DEFAULT_PRICE = 100.0
NO_PRICE_BOUND = 1_000_000.0
GOAL_SHUFFLE_SEED = 233
_PRICE = re.compile(r"\$\s*([0-9][0-9,]*(?:\.[0-9]+)?|\.[0-9]+)")
_PRICE_CLAUSE = ", and price lower than {:.2f} dollars"

FIX_HINT = (
    "Fix or remove that record (the expected format is in environments/webshop/data.py), "
    "or download WebShop's data files again."
)


class WebShopDataError(ValueError):
    """A WebShop data file that cannot be used; the message names the file, the record (index
    and asin), the field and what to do."""


@dataclass(frozen=True)
class Review:
    title: str
    score: str
    body: str


@dataclass(frozen=True)
class Product:
    asin: str
    title: str
    category: str
    query: str
    product_category: str
    description: str
    features: tuple[str, ...]
    price: float
    """What a purchase costs: the price, or the lowest price of a range."""
    price_tag: str
    """The price as shown: "$12.99" or "$10.00 to $20.00"."""
    options: tuple[tuple[str, tuple[str, ...]], ...]
    """(group, values) in file order; group names and values in display form (lower case)."""
    attributes: tuple[str, ...]
    rating: str = "N.A."
    reviews: tuple[Review, ...] = ()


@dataclass(frozen=True)
class Goal:
    index: int
    asin: str
    instruction: str
    """What the agent is told: the human instruction plus the price clause."""
    request: str
    """The human instruction alone (no price clause): the scripted expert's search words."""
    attributes: tuple[str, ...]
    options: tuple[str, ...]
    price_upper: float
    name: str
    """Title of the product the instruction was written for."""
    category: str
    query: str
    product_category: str


# -- reading helpers ------------------------------------------------------------------------------


def read_json(path: Path, what: str) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise WebShopDataError(
            f"{path}: {what} file not found. Point data_dir at a folder holding WebShop's data files, "
            "or set synthetic=True to generate a synthetic catalogue there."
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise WebShopDataError(f"{path}: cannot read the {what} file ({exc}).") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise WebShopDataError(
            f"{path}: the {what} file is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg}); "
            "it may be truncated: download or generate it again."
        ) from None


class _Record:
    """Field access on one JSON record whose errors say where the record is."""

    def __init__(self, path: Path, where: str, raw: Any) -> None:
        self.path, self.where = path, where
        if not isinstance(raw, dict):
            self.fail("(record)", f"expected a JSON object, got {type(raw).__name__}")
        self.raw: dict[str, Any] = raw

    def fail(self, field: str, problem: str) -> NoReturn:
        raise WebShopDataError(f"{self.path}: {self.where}: field {field!r}: {problem}. {FIX_HINT}")

    def get(self, *names: str, required: bool = True) -> Any:
        for name in names:
            if name in self.raw:
                return self.raw[name]
        if required:
            also = f" (or {', '.join(repr(n) for n in names[1:])})" if len(names) > 1 else ""
            self.fail(names[0], f"missing{also}")
        return None

    def text(self, *names: str, nullable: bool = False) -> str:
        value = self.get(*names)
        if value is None and nullable:
            return ""
        if not isinstance(value, str):
            self.fail(names[0], f"expected a string, got {type(value).__name__}")
        return str(value)

    def strings(self, *names: str, required: bool = True, single_ok: bool = False) -> tuple[str, ...]:
        value = self.get(*names, required=required)
        if value is None:
            return ()
        if single_ok and isinstance(value, str):
            return (value,) if value.strip() else ()
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            self.fail(names[0], f"expected a list of strings, got {_describe(value)}")
        return tuple(value)


def _describe(value: Any) -> str:
    if isinstance(value, list):
        kinds = sorted({type(v).__name__ for v in value})
        return f"a list of {', '.join(kinds)}" if kinds else "an empty list"
    return type(value).__name__


def parse_pricing(value: Any, record: _Record, field: str) -> tuple[float, str]:
    """(price, tag) from WebShop's pricing forms; missing or empty means $100.00 as in WebShop."""
    if value is None or value == "" or value == []:
        return DEFAULT_PRICE, f"${DEFAULT_PRICE:.2f}"
    if isinstance(value, list) and all(isinstance(v, int | float) and not isinstance(v, bool) for v in value):
        prices = [float(v) for v in value]
    elif isinstance(value, str):
        prices = [float(m.replace(",", "")) for m in _PRICE.findall(value)]
        if not prices:
            record.fail(field, f"no dollar amount in {value!r} (expected '$12.99' or '$10.00 - $20.00')")
    else:
        record.fail(field, f"expected a price string such as '$12.99', got {_describe(value)}")
    prices = prices[:2]
    if any(p < 0 for p in prices):
        record.fail(field, f"negative price in {value!r}")
    tag = f"${prices[0]:.2f}" if len(prices) == 1 else f"${prices[0]:.2f} to ${prices[1]:.2f}"
    return min(prices), tag


def parse_options(value: Any, record: _Record, field: str) -> tuple[tuple[str, tuple[str, ...]], ...]:
    if value is None or value == []:
        return ()
    if not isinstance(value, dict):
        record.fail(field, f"expected an object {{group: [{{'value': ...}}]}}, got {_describe(value)}")
    groups: list[tuple[str, tuple[str, ...]]] = []
    for group, entries in value.items():
        if entries is None:  # WebShop skips empty groups the same way
            continue
        if not isinstance(entries, list):
            record.fail(f"{field}.{group}", f"expected a list of options, got {_describe(entries)}")
        values: list[str] = []
        for i, entry in enumerate(entries):
            raw = entry.get("value") if isinstance(entry, dict) else entry
            if not isinstance(raw, str):
                record.fail(f"{field}.{group}[{i}].value", f"expected a string, got {type(raw).__name__}")
            shown = display_option(raw)
            if shown and shown not in values:
                values.append(shown)
        if values:
            groups.append((display_option(str(group)), tuple(values)))
    return tuple(groups)


# -- the three (four) files -----------------------------------------------------------------------


def valid_asin(asin: str) -> bool:
    """WebShop's own filter: "nan" placeholders and over-long ids are not products."""
    return asin != "nan" and 0 < len(asin) <= 10


def load_products(
    path: Path, attributes: dict[str, tuple[str, ...]], reviews: dict[str, tuple[str, tuple[Review, ...]]]
) -> tuple[Product, ...]:
    raw = read_json(path, "products")
    if not isinstance(raw, list):
        raise WebShopDataError(
            f"{path}: the products file must be a JSON list of product records, got {_describe(raw)}. "
            "Pass WebShop's items_shuffle*.json file."
        )
    products: list[Product] = []
    seen: set[str] = set()
    for index, item in enumerate(raw):
        asin = item.get("asin") if isinstance(item, dict) else None
        record = _Record(path, f"record {index} (asin {asin!r})", item)
        asin = record.text("asin")
        if not valid_asin(asin) or asin in seen:
            continue
        seen.add(asin)
        price, tag = parse_pricing(record.get("pricing", "Price", required=False), record, "pricing")
        rating, product_reviews = reviews.get(asin, ("N.A.", ()))
        products.append(
            Product(
                asin=asin,
                title=record.text("name", "Title"),
                category=record.text("category"),
                query=record.text("query").lower().strip(),
                product_category=record.text("product_category", nullable=True),
                description=record.text("full_description", "Description", nullable=True),
                features=record.strings("small_description", "BulletPoints", single_ok=True),
                price=price,
                price_tag=tag,
                options=parse_options(
                    record.get("customization_options", "options"), record, "customization_options"
                ),
                attributes=attributes.get(asin, ()),
                rating=rating,
                reviews=product_reviews,
            )
        )
    if not products:
        raise WebShopDataError(
            f"{path}: the products file holds no usable product ({len(raw)} records). "
            "Pass a non-empty items_shuffle*.json, or generate a synthetic catalogue."
        )
    return tuple(products)


def load_attributes(path: Path) -> dict[str, tuple[str, ...]]:
    raw = read_json(path, "attributes")
    if not isinstance(raw, dict):
        raise WebShopDataError(
            f"{path}: the attributes file must be a JSON object {{asin: {{'attributes': [...]}}}}, got "
            f"{_describe(raw)}. Pass WebShop's items_ins_v2*.json file."
        )
    out: dict[str, tuple[str, ...]] = {}
    for index, (asin, entry) in enumerate(raw.items()):
        record = _Record(path, f"record {index} (asin {asin!r})", entry)
        out[asin] = record.strings("attributes", required=False)
    return out


def load_human_instructions(path: Path) -> dict[str, list[tuple[str, tuple[str, ...], tuple[str, ...]]]]:
    """asin -> [(instruction, instruction_attributes, instruction_options)] in file order."""
    raw = read_json(path, "human goals")
    if not isinstance(raw, dict):
        raise WebShopDataError(
            f"{path}: the human goals file must be a JSON object {{asin: [instruction, ...]}}, got "
            f"{_describe(raw)}. Pass WebShop's items_human_ins.json file."
        )
    out: dict[str, list[tuple[str, tuple[str, ...], tuple[str, ...]]]] = {}
    for index, (asin, entries) in enumerate(raw.items()):
        if not isinstance(entries, list):
            raise WebShopDataError(
                f"{path}: record {index} (asin {asin!r}): expected a list of instructions, got "
                f"{_describe(entries)}. {FIX_HINT}"
            )
        items = []
        for k, entry in enumerate(entries):
            record = _Record(path, f"record {index} (asin {asin!r}) instruction {k}", entry)
            if isinstance(record.get("instruction_options", required=False), dict):
                # {group: value} also occurs; only the values are matched
                record = _Record(
                    path,
                    record.where,
                    {**record.raw, "instruction_options": list(entry["instruction_options"].values())},
                )
            items.append(
                (
                    record.text("instruction"),
                    record.strings("instruction_attributes"),
                    record.strings("instruction_options", required=False),
                )
            )
        out[asin] = items
    return out


def load_reviews(path: Path | None) -> dict[str, tuple[str, tuple[Review, ...]]]:
    if path is None:
        return {}
    raw = read_json(path, "reviews")
    if not isinstance(raw, list):
        raise WebShopDataError(
            f"{path}: the reviews file must be a JSON list, got {_describe(raw)}. {FIX_HINT}"
        )
    out: dict[str, tuple[str, tuple[Review, ...]]] = {}
    for index, item in enumerate(raw):
        asin = item.get("asin") if isinstance(item, dict) else None
        record = _Record(path, f"record {index} (asin {asin!r})", item)
        asin = record.text("asin")
        entries = record.get("reviews", required=False) or []
        if not isinstance(entries, list):
            record.fail("reviews", f"expected a list, got {_describe(entries)}")
        reviews = []
        for k, entry in enumerate(entries):
            review = _Record(path, f"record {index} (asin {asin!r}) review {k}", entry)
            score = review.get("score", "stars", required=False)
            body = review.get("body", "review", required=False)
            reviews.append(
                Review(str(review.get("title", required=False) or ""), str(score or ""), str(body or ""))
            )
        rating = record.get("average_rating", required=False)
        out[asin] = (str(rating) if rating not in (None, "") else "N.A.", tuple(reviews))
    return out


# -- goals --------------------------------------------------------------------------------------


def price_bound(asin: str, position: int, request: str, price: float) -> float:
    """WebShop's rule with a seeded draw (see the module docstring); NO_PRICE_BOUND when none."""
    above = [PRICE_STEP * i for i in range(1, 100) if PRICE_STEP * i > price][:PRICE_CHOICES]
    if len(above) < 2:
        return NO_PRICE_BOUND
    seed = int.from_bytes(hashlib.sha256(f"{asin}|{position}|{request}".encode()).digest()[:8], "big")
    return max(random.Random(seed).sample(above, 2))


def build_goals(
    products: tuple[Product, ...],
    instructions: dict[str, list[tuple[str, tuple[str, ...], tuple[str, ...]]]],
    goals_path: Path,
) -> tuple[Goal, ...]:
    ordered: list[tuple[Product, int, str, tuple[str, ...], tuple[str, ...]]] = []
    for product in products:
        for position, (text, attrs, options) in enumerate(instructions.get(product.asin, ())):
            if attrs:
                ordered.append((product, position, text, attrs, options))
    if not ordered:
        raise WebShopDataError(
            f"{goals_path}: no usable goal: none of its instructions (with instruction_attributes) is for a "
            f"product of the products file ({len(products)} products). Pair the goals file with the "
            "products file it was written for."
        )
    random.Random(GOAL_SHUFFLE_SEED).shuffle(ordered)
    goals = []
    for index, (product, position, text, attrs, options) in enumerate(ordered):
        request = text.strip().strip(".").strip()
        bound = price_bound(product.asin, position, request, product.price)
        clause = "" if bound == NO_PRICE_BOUND else _PRICE_CLAUSE.format(bound)
        goals.append(
            Goal(
                index=index,
                asin=product.asin,
                instruction=request + clause,
                request=request,
                attributes=attrs,
                options=options,
                price_upper=bound,
                name=product.title,
                category=product.category,
                query=product.query,
                product_category=product.product_category,
            )
        )
    return tuple(goals)


# -- files on disk and their identity -----------------------------------------------------------


@dataclass(frozen=True)
class DataFiles:
    products: Path
    attributes: Path
    goals: Path
    reviews: Path | None = None


def _pick(data_dir: Path, given: str | None, pattern: str, what: str, arg: str) -> Path:
    if given is not None:
        path = Path(given)
        return path if path.is_absolute() else data_dir / path
    found = sorted(data_dir.glob(pattern))
    if len(found) == 1:
        return found[0]
    if not found:
        raise WebShopDataError(
            f"{data_dir}: no {what} file ({pattern}). Point data_dir at WebShop's data folder, pass {arg}, "
            "or set synthetic=True to generate a synthetic catalogue there."
        )
    raise WebShopDataError(
        f"{data_dir}: several {what} files ({', '.join(p.name for p in found)}); pass {arg} to choose one "
        "(pair items_shuffle_1000.json with items_ins_v2_1000.json, items_shuffle.json with items_ins_v2.json)."
    )


def find_files(
    data_dir: Path,
    products_file: str | None = None,
    attributes_file: str | None = None,
    goals_file: str | None = None,
) -> DataFiles:
    reviews = data_dir / "reviews.json"
    return DataFiles(
        products=_pick(data_dir, products_file, "items_shuffle*.json", "products", "products_file"),
        attributes=_pick(data_dir, attributes_file, "items_ins_v2*.json", "attributes", "attributes_file"),
        goals=_pick(data_dir, goals_file, "items_human_ins*.json", "human goals", "goals_file"),
        reviews=reviews if reviews.is_file() else None,
    )


_DIGESTS: dict[tuple[str, int, int], str] = {}


def file_digest(path: Path) -> str:
    """sha256 of a file's content, remembered per (path, size, mtime) so that the many env
    instances of one process hash a multi-gigabyte catalogue once."""
    try:
        stat = path.stat()
    except FileNotFoundError:
        raise WebShopDataError(f"{path}: file not found.") from None
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _DIGESTS:
        h = hashlib.sha256()
        with path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        _DIGESTS[key] = h.hexdigest()
    return _DIGESTS[key]


@dataclass(frozen=True)
class Catalogue:
    products: tuple[Product, ...]
    goals: tuple[Goal, ...]
    index_of: dict[str, int]
    """asin -> position in ``products`` (and document number in the search index)."""
    products_digest: str
    digest: str
    """Content identity of every file read: part of the environment's version."""

    def product(self, asin: str) -> Product:
        return self.products[self.index_of[asin]]


_CATALOGUES: dict[str, Catalogue] = {}


def load_catalogue(files: DataFiles) -> Catalogue:
    """The parsed catalogue, shared by every env instance of the process (one per concurrent
    episode) and keyed by file content, so an edited file is read again."""
    digests = [file_digest(p) for p in (files.products, files.attributes, files.goals)]
    if files.reviews is not None:
        digests.append(file_digest(files.reviews))
    digest = hashlib.sha256("|".join(digests).encode()).hexdigest()
    cached = _CATALOGUES.get(digest)
    if cached is not None:
        return cached
    attributes = load_attributes(files.attributes)
    reviews = load_reviews(files.reviews)
    products = load_products(files.products, attributes, reviews)
    goals = build_goals(products, load_human_instructions(files.goals), files.goals)
    catalogue = Catalogue(
        products=products,
        goals=goals,
        index_of={p.asin: i for i, p in enumerate(products)},
        products_digest=digests[0],
        digest=digest,
    )
    if len(_CATALOGUES) >= 4:  # a process rarely needs more than one or two catalogues
        _CATALOGUES.pop(next(iter(_CATALOGUES)))
    _CATALOGUES[digest] = catalogue
    return catalogue


def forget_loaded_catalogues() -> None:
    """Drop the in-process catalogues, as a fresh process starts; for benchmarks."""
    _CATALOGUES.clear()
