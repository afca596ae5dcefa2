"""The mutable state of one tidy episode and the action grammar that changes it.

Kept apart from the env so the expert can plan by acting in a scratch copy of the room and
so read what an agent would read, which keeps its plan honest (non-privileged) and its
observations identical to the ones the env later produces.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from environments.tidy.world import World, join_listing, obj_type, preposition

NOTHING_HAPPENS = "Nothing happens."

_GO = re.compile(r"go to (.+)")
_TAKE = re.compile(r"take (.+) from (.+)")
# Either preposition is accepted: the grammar shows "in/on" and a wrong one is no real mistake.
_PUT = re.compile(r"put (.+?) (?:in/on|in|on) (.+)")


def normalize_action(action: str) -> str:
    """Forgive case, spacing and a trailing full stop; the words themselves must be exact."""
    return " ".join(action.strip().lower().split()).rstrip(".").strip()


@dataclass
class Room:
    world: World
    location: str | None = None
    """None while standing in the middle of the room (the start)."""
    holding: str | None = None
    contents: dict[str, list[str]] = field(default_factory=dict)

    @classmethod
    def start(cls, world: World) -> Room:
        return cls(world=world, contents={r: list(objs) for r, objs in world.contents})

    def room_description(self) -> str:
        return (
            "You are in the middle of a room. Looking quickly around you, you see "
            f"{join_listing(list(self.world.receptacles))}."
        )

    def initial_observation(self) -> str:
        return f"{self.room_description()}\nYour task is to: {self.world.task_sentence()}"

    def describe(self, recep: str) -> str:
        objs = self.contents[recep]
        seen = join_listing(objs) if objs else "nothing"
        return f"{preposition(recep).capitalize()} the {recep}, you see {seen}."

    def placed(self) -> int:
        """How many required object types are in the target right now."""
        there = {obj_type(o) for o in self.contents[self.world.target]}
        return sum(1 for kind in self.world.required if kind in there)

    def done(self) -> bool:
        return self.placed() == len(self.world.required)

    def snapshot(self) -> tuple[str | None, str | None, tuple[tuple[str, tuple[str, ...]], ...]]:
        return (
            self.location,
            self.holding,
            tuple((r, tuple(objs)) for r, objs in self.contents.items()),
        )

    def apply(self, action: str) -> tuple[str, bool]:
        """Run one action; returns (observation, whether it was valid). Invalid: no change."""
        act = normalize_action(action)
        if act == "look":
            if self.location is None:
                return self.room_description(), True
            return f"You are at {self.location}. {self.describe(self.location)}", True
        if act == "inventory":
            if self.holding is None:
                return "You are not carrying anything.", True
            return f"You are carrying: {self.holding}.", True
        if m := _GO.fullmatch(act):
            recep = m.group(1)
            if recep not in self.contents:
                return NOTHING_HAPPENS, False
            self.location = recep
            return f"You arrive at {recep}. {self.describe(recep)}", True
        if m := _TAKE.fullmatch(act):
            obj, recep = m.group(1), m.group(2)
            if self.holding is not None or recep != self.location or obj not in self.contents[recep]:
                return NOTHING_HAPPENS, False
            self.contents[recep].remove(obj)
            self.holding = obj
            return f"You pick up the {obj} from the {recep}.", True
        if m := _PUT.fullmatch(act):
            obj, recep = m.group(1), m.group(2)
            if obj != self.holding or recep != self.location:
                return NOTHING_HAPPENS, False
            self.contents[recep].append(obj)
            self.holding = None
            return f"You put the {obj} {preposition(recep)} the {recep}.", True
        return NOTHING_HAPPENS, False
