"""``webshop``: a WebShop-compatible text shopping environment (Yao et al., NeurIPS 2022).

Our own implementation from the paper's description and WebShop's data formats, with no
Java (WebShop's Lucene index needs one) and no Flask: pages and actions in
:mod:`~environments.webshop.pages`, the purchase reward in :mod:`~environments.webshop.reward`,
BM25 search in :mod:`~environments.webshop.search`, data files in
:mod:`~environments.webshop.data`, splits in :mod:`~environments.webshop.splits`, the scripted
expert in :mod:`~environments.webshop.expert`.

Data: ``data_dir`` holds WebShop's files (the 1,000-product set, ``items_shuffle_1000.json`` +
``items_ins_v2_1000.json``, or the full one, ``items_shuffle.json`` + ``items_ins_v2.json``,
with ``items_human_ins.json``), or a synthetic catalogue in the same formats
(:mod:`~environments.webshop.synthetic`; ``synthetic=True`` generates one into an empty
``data_dir``). With no ``data_dir`` the default synthetic catalogue is generated once under
``cache_dir`` (default ``~/.cache/eto/webshop``), which also holds the BM25 index cache.

Episode: reset shows the search page with the instruction; every action is one step (invalid
ones too); ``click[Buy Now]`` terminates with the purchase reward; the reward before that is 0
(the episode's value so far); ``max_steps`` actions without a purchase truncate. ETO allows
WebShop agents 10 rounds, the default here. ``info["success"]`` = reward 1.

Task ids are ``webshop-<goal index>``, the goal's position in WebShop's goal order (so ETO's
split files, which are goal indices, name the same goals). ``version`` carries a digest of
the data (and split) files, so cached trajectories never outlive the data they came from.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from environments.base import SPLITS, Split, StepResult, TextEnv
from environments.webshop import synthetic as synth
from environments.webshop.data import (
    Catalogue,
    Goal,
    Product,
    WebShopDataError,
    file_digest,
    find_files,
    load_catalogue,
)
from environments.webshop.expert import expert_plan
from environments.webshop.pages import Session
from environments.webshop.prompt import one_shot_example, task_instruction
from environments.webshop.search import SearchIndex, shared_index
from environments.webshop.splits import (
    ETO_TEST_FILE,
    ETO_TRAIN_FILE,
    SplitIndices,
    eto_splits,
    hashed_category_held_out,
    holdout_splits,
)

DEFAULT_MAX_STEPS = 10
ENV_VERSION = "1"
"""Bump when observations, rewards, splits or the expert change (the data digest is added)."""


def default_cache_dir() -> Path:
    return Path.home() / ".cache" / "eto" / "webshop"


def task_id(goal_index: int) -> str:
    return f"webshop-{goal_index}"


_SPLITS: dict[tuple[Any, ...], SplitIndices] = {}


class WebShopEnv(TextEnv):
    name = "webshop"

    def __init__(
        self,
        data_dir: str | Path | None = None,
        synthetic: bool = False,
        synthetic_products: int = synth.DEFAULT_PRODUCTS,
        synthetic_seed: int = 0,
        products_file: str | None = None,
        attributes_file: str | None = None,
        goals_file: str | None = None,
        splits_dir: str | Path | None = None,
        leak_free: bool = True,
        seen_size: int = 100,
        dev_size: int = 50,
        unseen_size: int = 100,
        max_steps: int = DEFAULT_MAX_STEPS,
        cache_dir: str | Path | None = None,
    ) -> None:
        """
        data_dir: folder with the data files; None: the default synthetic catalogue under cache_dir.
        synthetic: generate a synthetic catalogue (synthetic_products, synthetic_seed) into data_dir
            when it holds no products file.
        products_file / attributes_file / goals_file: file names (in data_dir) or paths, where the
            folder holds several candidates (e.g. both the 1,000-product and the full set).
        splits_dir: folder with ETO's webshop_{train,test}_indices.json (real data only);
            leak_free: drop ETO's 21 test goals that are also training goals from seen (True), or
            keep ETO's test list exact and drop them from train (False). See splits.py.
        seen_size / dev_size / unseen_size: split sizes where splits are carved from the goals
            (synthetic data, or real data without splits_dir); unseen_size also caps ETO mode's
            unseen split.
        cache_dir: BM25 index cache (and the default synthetic catalogue); default ~/.cache/eto/webshop.
        """
        sizes = {"seen_size": seen_size, "dev_size": dev_size, "unseen_size": unseen_size}
        if any(n < 0 for n in sizes.values()) or max_steps < 1:
            raise ValueError(
                f"webshop: sizes must be >= 0 and max_steps >= 1, got {sizes}, max_steps={max_steps}"
            )
        self.max_steps = max_steps
        cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
        if data_dir is None:
            synthetic = True
            folder = f"v{synth.GENERATOR_VERSION}-seed{synthetic_seed}-n{synthetic_products}"
            data = cache / "synthetic" / folder
        else:
            data = Path(data_dir).expanduser()
        meta = (
            self._ensure_synthetic(data, synthetic_products, synthetic_seed)
            if synthetic
            else synth.read_meta(data)
        )

        self.catalogue: Catalogue = load_catalogue(
            find_files(data, products_file, attributes_file, goals_file)
        )
        self.index: SearchIndex = shared_index(self.catalogue.products, self.catalogue.products_digest, cache)
        eto_dir = Path(splits_dir).expanduser() if splits_dir is not None else None
        # Everything that decides tasks, besides the constructor's arguments: the data, the
        # generator's record of held-out categories, ETO's split files.
        identity = [self.catalogue.digest]
        if meta is not None:
            identity.append(file_digest(data / synth.META_FILE))
        if eto_dir is not None:
            identity += [
                file_digest(eto_dir / f) for f in (ETO_TRAIN_FILE, ETO_TEST_FILE) if (eto_dir / f).is_file()
            ]
        data_id = hashlib.sha256("|".join(identity).encode()).hexdigest()[:12]
        self.version = f"{ENV_VERSION}+{data_id}"
        self.splits = self._splits(data_id, meta, eto_dir, leak_free, seen_size, dev_size, unseen_size)
        self._session: Session | None = None
        self._steps = 0
        self._over = False
        self._plans: dict[str, list[tuple[str, str]] | None] = {}

    @staticmethod
    def _ensure_synthetic(data: Path, products: int, seed: int) -> dict[str, Any]:
        meta = synth.read_meta(data)
        if meta is None:
            if any(data.glob("items_shuffle*.json")):
                raise WebShopDataError(
                    f"{data}: holds a products file that is not a synthetic catalogue; "
                    "use synthetic=False for real WebShop data, or another folder for a synthetic one."
                )
            return synth.generate(data, products=products, seed=seed)
        if (meta.get("products"), meta.get("seed")) != (products, seed):
            raise WebShopDataError(
                f"{data}: holds a synthetic catalogue of {meta.get('products')} products (seed {meta.get('seed')}), "
                f"not the {products} products (seed {seed}) asked for; ask for those or use another folder."
            )
        return meta

    def _splits(
        self,
        data_id: str,
        meta: dict[str, Any] | None,
        splits_dir: Path | None,
        leak_free: bool,
        seen_size: int,
        dev_size: int,
        unseen_size: int,
    ) -> SplitIndices:
        goals = self.catalogue.goals
        key = (data_id, str(splits_dir), leak_free, seen_size, dev_size, unseen_size)
        if key in _SPLITS:
            return _SPLITS[key]
        if meta is not None:
            if splits_dir is not None:
                raise ValueError("webshop: splits_dir (ETO's split files) only applies to real WebShop data")
            held = frozenset(meta.get("held_out_categories", ()))
            splits = holdout_splits(goals, lambda g: g.category in held, seen_size, dev_size, unseen_size)
        elif splits_dir is not None:
            splits = eto_splits(goals, splits_dir, leak_free, unseen_size)
        else:
            splits = holdout_splits(goals, hashed_category_held_out, seen_size, dev_size, unseen_size)
        _SPLITS[key] = splits
        return splits

    # --- tasks -------------------------------------------------------------------------

    def tasks(self, split: Split) -> list[str]:
        if split not in SPLITS:
            raise ValueError(f"webshop: unknown split {split!r}; known: {', '.join(SPLITS)}")
        return [task_id(i) for i in self.splits[split]]

    def goal(self, task: str) -> Goal:
        """The goal behind a task id; ValueError for an id that names no goal."""
        prefix, _, number = task.partition("-")
        if prefix == "webshop" and number.isdigit() and task == task_id(int(number)):
            index = int(number)
            if index < len(self.catalogue.goals):
                return self.catalogue.goals[index]
        raise ValueError(
            f"webshop: unknown task id {task!r}; expected 'webshop-<goal index>' with an index below "
            f"{len(self.catalogue.goals)} (the number of goals)"
        )

    def search(self, keywords: str) -> tuple[Product, ...]:
        products = self.catalogue.products
        return tuple(products[i] for i in self.index.search(keywords))

    # --- episode -----------------------------------------------------------------------

    def reset(self, task_id: str) -> tuple[str, dict[str, Any]]:
        goal = self.goal(task_id)
        self._session = Session(goal, self.search)
        self._steps = 0
        self._over = False
        return self._session.observation(), {"instruction": goal.instruction, "task_id": task_id}

    def step(self, action: str) -> StepResult:
        session = self._session
        if session is None:
            raise RuntimeError("webshop: step() before reset()")
        if self._over:
            raise RuntimeError("webshop: step() after the episode ended; call reset()")
        observation, valid = session.apply(action)
        self._steps += 1
        purchase = session.purchase
        terminated = purchase is not None
        truncated = not terminated and self._steps >= self.max_steps
        self._over = terminated or truncated
        info: dict[str, Any] = {
            "success": purchase is not None and purchase.success,
            "valid_action": valid,
            "page": session.page,
            "steps": self._steps,
        }
        if purchase is not None:
            assert session.product is not None
            info["purchased"] = session.product.asin
            info["reward_parts"] = purchase.as_info()
        reward = purchase.reward if purchase is not None else 0.0
        return StepResult(observation, float(reward), terminated, truncated, info)

    # --- expert and prompt -------------------------------------------------------------

    def _plan(self, task: str) -> list[tuple[str, str]] | None:
        if task not in self._plans:
            self._plans[task] = expert_plan(self.goal(task), self.search, self.max_steps)
        return self._plans[task]

    def expert(self, task_id: str) -> list[str] | None:
        plan = self._plan(task_id)
        return None if plan is None else [action for _, action in plan]

    def expert_thoughts(self, task_id: str) -> list[str] | None:
        plan = self._plan(task_id)
        return None if plan is None else [thought for thought, _ in plan]

    def task_instruction(self) -> str:
        return task_instruction(self.max_steps)

    def one_shot_example(self) -> list[tuple[str, str]]:
        return one_shot_example(self.max_steps)

    def close(self) -> None:
        self._session = None
        self._over = False
