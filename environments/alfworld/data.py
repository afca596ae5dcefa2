"""ALFWorld game files: where they live, which games each split plays, and a one-time extraction.

The layout is ALFWorld's ``json_2.1.1`` (what ``alfworld-download`` fetches, and what the
archives in ``../shared/data/alfworld`` hold)::

    <data root>/json_2.1.1/{train,valid_seen,valid_unseen}/<task folder>/<trial>/
        game.tw-pddl     PDDL domain + problem + text grammar (what TextWorld plays)
        traj_data.json   task type and parameters
        gt_traj.json     expert conversation, where available (not in every copy of the data)

A split plays exactly the games ALFWorld's ``AlfredTWEnv.collect_game_files`` keeps: a
``traj_data.json`` of one of the six task types, no movable-receptacle or sliced-object
folder, a game file, and ``"solvable": true`` in it. That gives 140 seen and 134 unseen games,
the test sets of the ETO paper.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import re
import shutil
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

JSON_DIR = "json_2.1.1"
GAME_FILE = "game.tw-pddl"
TRAJ_FILE = "traj_data.json"
EXPERT_FILE = "gt_traj.json"

SPLIT_DIRS: dict[str, str] = {"train": "train", "seen": "valid_seen", "unseen": "valid_unseen"}
"""Our split name -> ALFWorld's folder (ETO: seen = eval_in_distribution, unseen = out of it)."""

TASK_TYPES: frozenset[str] = frozenset(
    {
        "pick_and_place_simple",
        "look_at_obj_in_light",
        "pick_clean_then_place_in_recep",
        "pick_heat_then_place_in_recep",
        "pick_cool_then_place_in_recep",
        "pick_two_obj_and_place",
    }
)
"""AlfredTWEnv's TASK_TYPES; pick_and_place_with_movable_recep games are never played."""

DATA_HELP = (
    "ALFWorld game files are needed: pass data_root=<dir holding json_2.1.1> (or set ALFWORLD_DATA), "
    "or archive_dir=<dir with alfworld_{train,valid_seen,valid_unseen}.tgz> to extract them once into "
    "a cache. Online, `pip install alfworld==0.4.2 && alfworld-download` fetches the official files "
    "into $ALFWORLD_DATA."
)

_MARKER = ".eto-extracted"
_SOLVABLE_TAIL = re.compile(rb'"solvable"\s*:\s*(true|false)\s*}\s*$')


def default_cache_dir() -> Path:
    """Where ``archive_dir`` data is extracted unless a cache_dir is given."""
    return Path.home() / ".cache" / "eto" / "alfworld"


ALFWORLD_DEFAULT_ROOT = Path.home() / ".cache" / "alfworld"
"""Where ``alfworld-download`` puts the files when ALFWORLD_DATA is unset."""


def resolve_data_root(
    data_root: str | os.PathLike[str] | None,
    archive_dir: str | os.PathLike[str] | None,
    cache_dir: str | os.PathLike[str] | None,
) -> Path:
    """The folder holding ``json_2.1.1``: given, extracted from archives, or ALFWorld's own
    data root ($ALFWORLD_DATA, default ~/.cache/alfworld).

    ALFWORLD_DATA is ALFWorld's convention (``import alfworld`` even sets it to the default),
    so it is honoured as the last resort rather than a new setting invented here.
    """
    if data_root is not None and archive_dir is not None:
        raise ValueError("alfworld: pass data_root or archive_dir, not both")
    if archive_dir is not None:
        root = prepare_data(archive_dir, cache_dir if cache_dir is not None else default_cache_dir())
    elif data_root is not None:
        root = Path(data_root)
    else:
        root = Path(os.environ.get("ALFWORLD_DATA") or ALFWORLD_DEFAULT_ROOT)
    root = root.expanduser().resolve()
    if not (root / JSON_DIR).is_dir():
        raise FileNotFoundError(f"alfworld: {root} has no {JSON_DIR} folder. {DATA_HELP}")
    return root


# --- one-time extraction ----------------------------------------------------------------------


def _fingerprint(archive: Path) -> str:
    stat = archive.stat()
    return f"{archive.name} {stat.st_size} {stat.st_mtime_ns}"


def prepare_data(archive_dir: str | os.PathLike[str], dest: str | os.PathLike[str]) -> Path:
    """Extract ``alfworld_<split>.tgz`` from ``archive_dir`` into ``dest/json_2.1.1``; returns dest.

    Idempotent: a split whose marker matches its archive (name, size, mtime) is left alone, so
    every env construction can call this. Atomic: each archive is unpacked into a temporary
    folder beside the target and renamed into place, so a crash or a concurrent process never
    leaves a half-extracted split that looks complete.
    """
    archive_dir, dest = Path(archive_dir).expanduser(), Path(dest).expanduser()
    (dest / JSON_DIR).mkdir(parents=True, exist_ok=True)
    for folder in SPLIT_DIRS.values():
        archive = archive_dir / f"alfworld_{folder}.tgz"
        if not archive.is_file():
            raise FileNotFoundError(f"alfworld: archive {archive} not found. {DATA_HELP}")
        target = dest / JSON_DIR / folder
        fingerprint = _fingerprint(archive)
        if _marker_matches(target, fingerprint):
            continue
        log.info("alfworld: extracting %s into %s", archive, target)
        tmp = Path(tempfile.mkdtemp(dir=dest, prefix=".extract-"))
        try:
            with tarfile.open(archive) as tar:
                tar.extractall(tmp, filter="data")  # "data" refuses absolute paths and links out
            unpacked = tmp / JSON_DIR / folder
            if not unpacked.is_dir():
                raise ValueError(f"alfworld: archive {archive} does not hold {JSON_DIR}/{folder}")
            (unpacked / _MARKER).write_text(fingerprint)
            if target.exists():  # stale: the archive changed since it was extracted
                target.rename(tmp / "stale")
            try:
                unpacked.rename(target)
            except OSError:
                if not _marker_matches(target, fingerprint):  # not a concurrent twin: a real error
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return dest


def _marker_matches(target: Path, fingerprint: str) -> bool:
    marker = target / _MARKER
    return marker.is_file() and marker.read_text() == fingerprint


# --- split listing ----------------------------------------------------------------------------


def _solvable(game: Path) -> bool:
    """The game file's "solvable" flag, read from its tail (the key comes last in json_2.1.1),
    so listing 4,600 training games reads kilobytes instead of half a gigabyte of JSON."""
    with game.open("rb") as f:
        f.seek(max(0, game.stat().st_size - 256))
        found = _SOLVABLE_TAIL.search(f.read())
    if found:
        return found.group(1) == b"true"
    return json.loads(game.read_text()).get("solvable") is True


@functools.cache
def list_games(root: Path, split: str) -> tuple[str, ...]:
    """``<task folder>/<trial>`` of every playable game of a split, sorted by path.

    Cached per process: the files do not change under a run, and every rollout slot builds
    its own env instance.
    """
    base = root / JSON_DIR / SPLIT_DIRS[split]
    if not base.is_dir():
        raise FileNotFoundError(f"alfworld: split folder {base} not found. {DATA_HELP}")
    games: list[str] = []
    for task_dir in sorted(p for p in base.iterdir() if p.is_dir()):
        if "movable" in task_dir.name or "Sliced" in task_dir.name:
            continue  # AlfredTWEnv skips these: TextWorld's ALFRED domain does not model them
        for trial in sorted(p for p in task_dir.iterdir() if p.is_dir()):
            traj, game = trial / TRAJ_FILE, trial / GAME_FILE
            if not traj.is_file() or not game.is_file():
                continue
            try:
                if json.loads(traj.read_text()).get("task_type") in TASK_TYPES and _solvable(game):
                    games.append(f"{task_dir.name}/{trial.name}")
            except (OSError, ValueError) as exc:
                log.warning("alfworld: skipping unreadable game %s: %s", trial, exc)
    return tuple(games)


def game_dir(root: Path, split: str, game: str) -> Path:
    return root / JSON_DIR / SPLIT_DIRS[split] / game


# --- recorded expert --------------------------------------------------------------------------


@dataclass(frozen=True)
class RecordedExpert:
    """The expert conversation of ``gt_traj.json``: the actions and the task sentence."""

    actions: tuple[str, ...]
    task: str


def read_recorded_expert(trial: Path) -> RecordedExpert | None:
    """The trial's gt_traj.json as actions, or None when absent or malformed (logged)."""
    path = trial / EXPERT_FILE
    if not path.is_file():
        return None
    try:
        turns = json.loads(path.read_text())
        actions = tuple(str(t["value"]).strip() for t in turns if t["from"] == "gpt")
        first = str(turns[0]["value"])
        task = first.split("Your task is to: ", 1)[1].strip()
    except (OSError, ValueError, KeyError, IndexError, TypeError) as exc:
        log.warning("alfworld: ignoring malformed %s: %s", path, exc)
        return None
    if not actions or not all(actions):
        log.warning("alfworld: ignoring %s: empty actions", path)
        return None
    return RecordedExpert(actions, task)
