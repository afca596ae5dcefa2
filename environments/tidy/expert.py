"""The tidy expert: a searcher that knows only what it has seen, and the privileged optimum.

The expert is deliberately not optimal. It has to search like an agent does, so its
demonstrations are imitable from observations alone, and a lucky or smarter agent can beat
its reward, which is what gives ETO "win" preference pairs against it.
"""

from __future__ import annotations

from environments.tidy.room import Room
from environments.tidy.world import World, article, obj_type, preposition

STEPS_PER_OBJECT = 4
"""go to the object, take it, go to the target, put it: nothing shorter exists, because the
agent holds one object at a time and required objects never start in the target."""


def optimal_steps(world: World) -> int:
    """Length of the shortest solution, with privileged knowledge of where everything is."""
    return STEPS_PER_OBJECT * len(world.required)


def optimal_plan(world: World) -> list[str]:
    """A shortest solution (the privileged "lucky" path), used by tests and analysis."""
    where = {o: r for r, objs in world.contents for o in objs}
    actions: list[str] = []
    for kind in world.required:
        obj = next(o for o in where if obj_type(o) == kind)
        actions += [
            f"go to {where[obj]}",
            f"take {obj} from {where[obj]}",
            f"go to {world.target}",
            f"put {obj} {preposition(world.target)} {world.target}",
        ]
    return actions


def expert_plan(world: World) -> list[tuple[str, str]]:
    """(thought, action) per step. Search order is the room description's order; the
    target is never searched because the task implies the objects are elsewhere."""
    room = Room.start(world)
    seen: dict[str, str] = {}  # object -> receptacle where the expert last saw it
    visited: set[str] = set()
    steps: list[tuple[str, str]] = []

    def act(thought: str, action: str) -> None:
        _, valid = room.apply(action)
        if not valid:  # a bug here would silently poison every demonstration
            raise AssertionError(f"tidy expert produced an invalid action {action!r}")
        steps.append((thought, action))

    def arrive(recep: str, thought: str) -> None:
        act(thought, f"go to {recep}")
        visited.add(recep)
        for obj in room.contents[recep]:
            seen[obj] = recep

    # Thoughts carry the agent's state forward (what it needs, where it has not looked yet), so
    # each decision can be read off the previous turn instead of the whole history: good ReAct
    # practice, and what makes the task learnable for a small model trained from scratch.
    target = world.target
    prep = preposition(target)
    for kind in world.required:
        a_kind = f"{article(kind)} {kind}"
        known = next((o for o, r in seen.items() if obj_type(o) == kind), None)
        if known is not None and seen[known] != room.location:
            arrive(seen[known], f"I need {a_kind} for the {target}. I saw {article(known)} {known} at {seen[known]}.")
        while known is None:
            unchecked = [r for r in world.receptacles if r not in visited and r != target]
            arrive(unchecked[0], f"I need {a_kind} for the {target}. Not checked yet: {', '.join(unchecked)}.")
            known = next((o for o in room.contents[unchecked[0]] if obj_type(o) == kind), None)
        here = room.location
        assert here is not None
        act(f"I see {article(known)} {known} here, I take it.", f"take {known} from {here}")
        seen.pop(known, None)
        arrive(target, f"I have the {known}, now I go to the {target}.")
        act(f"I am at the {target}, I put the {known} {prep} it.", f"put {known} {prep} {target}")
    if not room.done():
        raise AssertionError("tidy expert finished without solving the task")
    return steps
