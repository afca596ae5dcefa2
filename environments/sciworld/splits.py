"""ScienceWorld task types, variation splits and ETO's published index files.

ETO evaluates on 24 of ScienceWorld's 30 task types (the inclined-plane, Mendelian-genetics
and unknown-substance melting-point tasks are left out) with **seen = ScienceWorld's dev
variations** and **unseen = its test variations**, at most 10 variations per task type, and
trains on train variations. Task ids here are ``"<task name>/<variation>"`` with ScienceWorld's
own task names (``find-animal/12``).

Two ways to build the splits:

- ``"scienceworld"`` (default): from the simulator's own train/dev/test variation lists, which
  are disjoint by construction, so the splits are leak-free;
- ``"eto"``: exactly the lists in ETO's index files (``sciworld_{train,dev,test}_indices.json``
  in a folder the caller names). Those lists are NOT disjoint: :func:`eto_overlap` reports the
  dev/test items that also occur in train (54 dev items in the published files).
  ``"eto-leak-free"`` keeps ETO's seen/unseen lists and drops the overlapping items from train.

Reading the variation lists needs the simulator (one ``load`` per task type, up to ~4 s
each), so they are cached in a JSON file per ScienceWorld version; the cache is written
atomically and recomputed when it is unreadable.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

log = logging.getLogger(__name__)

EXCLUDED_TASK_TYPES: frozenset[str] = frozenset(
    {
        "measure-melting-point-unknown-substance",
        "inclined-plane-determine-angle",
        "inclined-plane-friction-named-surfaces",
        "inclined-plane-friction-unnamed-surfaces",
        "mendelian-genetics-known-plant",
        "mendelian-genetics-unknown-plant",
    }
)
"""Task types ETO leaves out (its index files list the other 24)."""

TASK_TYPES: tuple[str, ...] = (
    "boil",
    "change-the-state-of-matter-of",
    "chemistry-mix",
    "chemistry-mix-paint-secondary-color",
    "chemistry-mix-paint-tertiary-color",
    "find-animal",
    "find-living-thing",
    "find-non-living-thing",
    "find-plant",
    "freeze",
    "grow-fruit",
    "grow-plant",
    "identify-life-stages-1",
    "identify-life-stages-2",
    "lifespan-longest-lived",
    "lifespan-longest-lived-then-shortest-lived",
    "lifespan-shortest-lived",
    "measure-melting-point-known-substance",
    "melt",
    "power-component",
    "power-component-renewable-vs-nonrenewable-energy",
    "test-conductivity",
    "test-conductivity-of-unknown-substances",
    "use-thermometer",
)
"""The 24 task types ETO evaluates, in ScienceWorld's (alphabetical) order."""

SPLIT_MODES: tuple[str, ...] = ("scienceworld", "eto", "eto-leak-free")
ETO_FILES = {"train": "sciworld_train_indices.json", "seen": "sciworld_dev_indices.json",
             "unseen": "sciworld_test_indices.json"}
ETO_STEP_CAP_FILE = "sciworld_max_steps.json"

Variations = dict[str, dict[str, list[int]]]
"""task type -> ScienceWorld split ("train", "dev", "test") -> variation indices."""


class SplitFileError(ValueError):
    """An index file is missing or malformed; the message names the file and the entry."""


def task_id(task_type: str, variation: int) -> str:
    return f"{task_type}/{variation}"


def parse_task_id(tid: str) -> tuple[str, int]:
    task_type, sep, var = tid.rpartition("/")
    if not sep or not var.isdigit() or task_type not in TASK_TYPES and task_type not in EXCLUDED_TASK_TYPES:
        raise ValueError(
            f"not a ScienceWorld task id: {tid!r}; expected '<task type>/<variation>', e.g. 'find-animal/12'"
        )
    return task_type, int(var)


def canonical_task_type(name: str) -> str:
    """ScienceWorld's task name for ETO's ("task-3-find-animal", "task-10-...-(known-substance)")."""
    from scienceworld.utils import infer_task

    return str(infer_task(name))


def check_task_types(types: Iterable[str]) -> list[str]:
    out = []
    for t in types:
        name = canonical_task_type(t)
        if name not in TASK_TYPES:
            hint = "ETO leaves it out" if name in EXCLUDED_TASK_TYPES else "not a ScienceWorld task type"
            raise ValueError(f"env.kwargs.task_types: {t!r} ({hint}); choose from: {', '.join(TASK_TYPES)}")
        out.append(name)
    if len(set(out)) != len(out):
        raise ValueError(f"env.kwargs.task_types repeats a task type: {list(types)}")
    return out


def default_cache_dir() -> Path:
    base = os.environ.get("ETO_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "eto")
    return Path(base) / "sciworld"


def atomic_write_json(path: Path, data: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1, sort_keys=True)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_variations(
    task_types: Iterable[str], cache_file: Path, read_from_simulator: Callable[[str], dict[str, list[int]]]
) -> Variations:
    """Variation lists of the task types, from the cache file or (then cached) the simulator."""
    cached: Variations = {}
    if cache_file.exists():
        try:
            cached = json.loads(cache_file.read_text())
        except (OSError, ValueError) as exc:
            log.warning("ScienceWorld variation cache %s unreadable (%s); rebuilding it", cache_file, exc)
            cached = {}
    missing = [t for t in task_types if t not in cached]
    if missing:
        for t in missing:
            cached[t] = read_from_simulator(t)
        atomic_write_json(cache_file, cached)
    return {t: cached[t] for t in task_types}


def read_eto_split(folder: Path, split: str) -> list[tuple[str, int]]:
    """One of ETO's index files as (ScienceWorld task type, variation) items, in file order."""
    path = folder / ETO_FILES[split]
    if not path.is_file():
        raise SplitFileError(
            f"{path}: ETO split file not found; env.kwargs.eto_splits_dir must hold {sorted(ETO_FILES.values())}"
        )
    try:
        raw = json.loads(path.read_text())
    except ValueError as exc:
        raise SplitFileError(f"{path}: not valid JSON ({exc}); restore the file from ETO's release") from exc
    if not isinstance(raw, list):
        raise SplitFileError(f"{path}: expected a JSON list of [task name, variation] items")
    items: list[tuple[str, int]] = []
    for i, entry in enumerate(raw):
        if not (isinstance(entry, list) and len(entry) == 2 and isinstance(entry[0], str)
                and isinstance(entry[1], int) and entry[1] >= 0):
            raise SplitFileError(f"{path}: item {i} is {entry!r}; expected [task name, variation >= 0]")
        items.append((canonical_task_type(entry[0]), entry[1]))
    return items


def read_eto_step_caps(folder: Path) -> dict[str, int]:
    path = folder / ETO_STEP_CAP_FILE
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise SplitFileError(f"{path}: cannot read ETO's step caps ({exc})") from exc
    caps = {}
    for name, cap in raw.items():
        if not isinstance(cap, int) or cap < 1:
            raise SplitFileError(f"{path}: step cap of {name!r} is {cap!r}; expected a positive integer")
        caps[canonical_task_type(name)] = cap
    return caps


def eto_overlap(folder: Path) -> dict[str, list[tuple[str, int]]]:
    """Items of ETO's seen (dev) and unseen (test) lists that also occur in its train list."""
    train = set(read_eto_split(folder, "train"))
    return {split: [item for item in read_eto_split(folder, split) if item in train] for split in ("seen", "unseen")}


def interleave(per_type: dict[str, list[int]]) -> list[str]:
    """Task ids round-robin over the task types (first variation of each type, then the
    second, ...), so that the first N ids a recipe takes (``data.*_tasks``) span every type."""
    out: list[str] = []
    longest = max((len(v) for v in per_type.values()), default=0)
    for i in range(longest):
        out.extend(task_id(t, vs[i]) for t, vs in per_type.items() if i < len(vs))
    return out


def build_splits(
    mode: str,
    task_types: list[str],
    *,
    variations: Callable[[], Variations],
    eto_dir: Path | None,
    eval_per_type: int,
    train_per_type: int | None,
) -> dict[str, list[str]]:
    """Task ids per split ("train", "seen", "unseen"), deterministic, in a fixed order."""
    if mode not in SPLIT_MODES:
        raise ValueError(f"env.kwargs.splits = {mode!r}; choose one of {', '.join(SPLIT_MODES)}")
    wanted = set(task_types)
    if mode == "scienceworld":
        var = variations()
        return {
            "train": interleave({t: var[t]["train"][:train_per_type] for t in task_types}),
            "seen": interleave({t: var[t]["dev"][:eval_per_type] for t in task_types}),
            "unseen": interleave({t: var[t]["test"][:eval_per_type] for t in task_types}),
        }
    if eto_dir is None:
        raise ValueError(f"env.kwargs.splits = {mode!r} needs env.kwargs.eto_splits_dir (the folder of ETO's index files)")
    lists = {s: [item for item in read_eto_split(eto_dir, s) if item[0] in wanted] for s in ETO_FILES}
    if mode == "eto-leak-free":
        held = set(lists["seen"]) | set(lists["unseen"])
        dropped = [item for item in lists["train"] if item in held]
        if dropped:
            log.info("eto-leak-free: dropped %d train items that ETO also evaluates on", len(dropped))
        lists["train"] = [item for item in lists["train"] if item not in held]
    if train_per_type is not None:
        counts: dict[str, int] = {}
        kept = []
        for item in lists["train"]:
            counts[item[0]] = counts.get(item[0], 0) + 1
            if counts[item[0]] <= train_per_type:
                kept.append(item)
        lists["train"] = kept
    return {s: [task_id(t, v) for t, v in items] for s, items in lists.items()}
