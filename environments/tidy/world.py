"""Tidy worlds: what is in the room, and how a task id turns into one.

A world is generated from a seed that is a SHA-256 of the task id (never Python's salted
``hash()``), so a task id means the same room on every machine and every run. Worlds are
immutable; the mutable episode state lives in :class:`environments.tidy.room.Room`.

Generalisation split: a fixed set of (object type, target receptacle type) combinations is
held out. Train, dev and seen tasks never ask for a held-out combination; every unseen task
asks for at least one, so "unseen" measures transfer to object/target pairings the agent
never practised rather than just new layouts.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from functools import lru_cache

RECEPTACLE_TYPES: dict[str, str] = {
    # type -> the preposition used when putting things there and describing its contents
    "cabinet": "in",
    "drawer": "in",
    "fridge": "in",
    "box": "in",
    "shelf": "on",
    "desk": "on",
    "table": "on",
    "sofa": "on",
    "countertop": "on",
    "bed": "on",
}
OBJECT_TYPES: tuple[str, ...] = (
    "apple",
    "mug",
    "book",
    "key",
    "pen",
    "plate",
    "cup",
    "sponge",
    "remote",
    "towel",
)
# One held-out object per target type and one held-out target per object type, so every
# object and every receptacle type still appears in training, only the pairing is new.
HELD_OUT_COMBOS: frozenset[tuple[str, str]] = frozenset(
    {
        ("apple", "drawer"),
        ("mug", "sofa"),
        ("book", "fridge"),
        ("key", "shelf"),
        ("pen", "box"),
        ("plate", "desk"),
        ("cup", "cabinet"),
        ("sponge", "table"),
        ("remote", "countertop"),
        ("towel", "bed"),
    }
)
_HELD_OUT_BY_TARGET: dict[str, str] = {recep: obj for obj, recep in HELD_OUT_COMBOS}

MIN_RECEPTACLES = 5
MAX_RECEPTACLES = 8
MAX_SAME_TYPE = 2
# Weighted towards single-object tasks so a small model gets a foothold, with enough
# multi-object tasks that it cannot succeed by always doing the same four steps.
NUM_OBJECTS_WEIGHTS: tuple[tuple[int, int], ...] = ((1, 50), (2, 35), (3, 15))
MIN_DISTRACTORS = 2
MAX_DISTRACTORS = 4
# Generation order fixes which split wins a (vanishingly rare) signature collision.
GENERATION_ORDER: tuple[str, ...] = ("train", "dev", "seen", "unseen")


def recep_type(name: str) -> str:
    return name.rsplit(" ", 1)[0]


def obj_type(name: str) -> str:
    return name.rsplit(" ", 1)[0]


def preposition(recep: str) -> str:
    return RECEPTACLE_TYPES[recep_type(recep)]


def article(name: str) -> str:
    return "an" if name[0] in "aeiou" else "a"


def join_listing(names: list[str]) -> str:
    """ALFWorld's listing style: "a key 1, and a pen 2"."""
    items = [f"{article(n)} {n}" for n in names]
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + ", and " + items[-1]


@dataclass(frozen=True)
class World:
    receptacles: tuple[str, ...]
    """In the order the room description lists them (the expert searches in this order)."""
    contents: tuple[tuple[str, tuple[str, ...]], ...]
    """(receptacle, objects on/in it) for every receptacle, in listing order."""
    target: str
    required: tuple[str, ...]
    """Object types to bring to ``target``, in the order the task sentence names them."""

    def task_sentence(self) -> str:
        names = [f"the {t}" for t in self.required]
        if len(names) == 1:
            what = names[0]
        elif len(names) == 2:
            what = f"{names[0]} and {names[1]}"
        else:
            what = ", ".join(names[:-1]) + ", and " + names[-1]
        return f"put {what} {preposition(self.target)} the {self.target}."

    def combos(self) -> frozenset[tuple[str, str]]:
        """(object type, target receptacle type) pairs this task asks for."""
        return frozenset((t, recep_type(self.target)) for t in self.required)

    def signature(self) -> str:
        """Content identity, used to keep splits from sharing a world under different ids."""
        rooms = ";".join(f"{r}:{','.join(objs)}" for r, objs in self.contents)
        return f"{rooms}|{self.target}|{','.join(self.required)}"


def _seed(split: str, index: int, attempt: int) -> int:
    digest = hashlib.sha256(f"tidy:{split}:{index}:{attempt}".encode()).digest()
    return int.from_bytes(digest[:8], "big")


def _pick_receptacles(rng: random.Random) -> list[str]:
    count = rng.randint(MIN_RECEPTACLES, MAX_RECEPTACLES)
    used: dict[str, int] = {}
    names: list[str] = []
    types = sorted(RECEPTACLE_TYPES)
    while len(names) < count:
        kind = rng.choice(types)
        if used.get(kind, 0) >= MAX_SAME_TYPE:
            continue
        used[kind] = used.get(kind, 0) + 1
        names.append(f"{kind} {used[kind]}")
    rng.shuffle(names)
    return names


def _pick_required(rng: random.Random, target_type: str, held_out: bool) -> list[str]:
    sizes, weights = zip(*NUM_OBJECTS_WEIGHTS, strict=True)
    k = rng.choices(sizes, weights=weights)[0]
    banned = _HELD_OUT_BY_TARGET[target_type]
    others = [t for t in OBJECT_TYPES if t != banned]
    if not held_out:
        return rng.sample(others, k)
    required = [banned, *rng.sample(others, k - 1)]
    rng.shuffle(required)
    return required


def generate_world(split: str, index: int, attempt: int = 0) -> World:
    """The world for one (split, index); ``attempt`` > 0 only re-draws after a collision."""
    rng = random.Random(_seed(split, index, attempt))
    receptacles = _pick_receptacles(rng)
    target = rng.choice(receptacles)
    required = _pick_required(rng, recep_type(target), held_out=split == "unseen")

    placed: dict[str, list[str]] = {r: [] for r in receptacles}
    counters: dict[str, int] = {}

    def new_object(kind: str) -> str:
        counters[kind] = counters.get(kind, 0) + 1
        return f"{kind} {counters[kind]}"

    # Required objects never start in the target: that would make the task partly done.
    sources = [r for r in receptacles if r != target]
    for kind in required:
        placed[rng.choice(sources)].append(new_object(kind))
    # Distractors use other types only, so "the apple" always names exactly one object.
    distractor_types = [t for t in OBJECT_TYPES if t not in required]
    for _ in range(rng.randint(MIN_DISTRACTORS, MAX_DISTRACTORS)):
        placed[rng.choice(receptacles)].append(new_object(rng.choice(distractor_types)))
    for objs in placed.values():
        rng.shuffle(objs)

    return World(
        receptacles=tuple(receptacles),
        contents=tuple((r, tuple(placed[r])) for r in receptacles),
        target=target,
        required=tuple(required),
    )


@lru_cache(maxsize=8)
def build_splits(sizes: tuple[tuple[str, int], ...]) -> dict[str, tuple[World, ...]]:
    """Every split's worlds, with no world (by signature) appearing twice anywhere.

    Cached because one env instance is made per concurrent episode and all of them share
    the same (immutable) worlds.
    """
    size_of = dict(sizes)
    # The in-context example must never double as an evaluation task.
    seen: set[str] = {EXAMPLE_WORLD.signature()}
    out: dict[str, tuple[World, ...]] = {}
    for split in GENERATION_ORDER:
        worlds: list[World] = []
        for index in range(size_of.get(split, 0)):
            attempt = 0
            world = generate_world(split, index, attempt)
            while world.signature() in seen:
                attempt += 1
                world = generate_world(split, index, attempt)
            seen.add(world.signature())
            worlds.append(world)
        out[split] = tuple(worlds)
    return out


# The fixed in-context example: not drawn from any split (build_splits excludes it), uses no
# held-out combination, and needs both a search and a remembered sighting, so one example
# shows every expert behaviour.
EXAMPLE_WORLD = World(
    receptacles=("cabinet 1", "table 1", "drawer 1", "shelf 1", "fridge 1"),
    contents=(
        ("cabinet 1", ("towel 1",)),
        ("table 1", ("key 1", "pen 1")),
        ("drawer 1", ()),
        ("shelf 1", ("remote 1",)),
        ("fridge 1", ()),
    ),
    target="drawer 1",
    required=("pen", "key"),
)
