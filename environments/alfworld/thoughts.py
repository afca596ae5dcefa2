"""A short ReAct thought for every expert action, by rule.

ETO's ALFWorld SFT data pairs each expert action with a thought written by an LLM. Without
one, this rule writes a thought from the action, the action that gives it its purpose (the
next take/put/heat/cool/clean/use), and what the agent is holding. It uses nothing the agent
could not know at that point, except the purpose itself, which is what a plan is:

- first action: "My task is to <task>." before the action's thought;
- go to Y, nothing in hand, next purpose "take X": "I need to find a X. Next I go to Y."
  (after a visit that found nothing: "No X there. Next I go to Y."; after one X was already
  put away: "another X");
- go to Y, holding X, next purpose put/heat/cool/clean/use: "I have the X. Next I go to Y to
  put it there." / "... to heat it with the microwave 1." / "Now I need light to look at the X.";
- open Y: "The Y is closed, so I open it."; close Y: "I close the Y.";
- take X from Y: "Here is the X. I take it."; put X in/on Y: "Now I put the X in/on the Y.";
- heat|cool|clean X with Y: "Now I <verb> the X with the Y."; use L: "Now I turn on the L."
- examine / look / inventory: a plain sentence of what it does.
"""

from __future__ import annotations

from collections.abc import Sequence

_PURPOSES = ("take ", "put ", "heat ", "cool ", "clean ", "use ", "slice ")


def _kind(name: str) -> str:
    """"cellphone 1" -> "cellphone"."""
    return name.rsplit(" ", 1)[0] if name.rsplit(" ", 1)[-1].isdigit() else name


def _a(word: str) -> str:
    return f"an {word}" if word[:1] in "aeiou" else f"a {word}"


def _next_purpose(actions: Sequence[str], i: int) -> str | None:
    return next((a for a in actions[i + 1 :] if a.startswith(_PURPOSES)), None)


def _object(action: str) -> str:
    """The object of a take/put/heat/cool/clean action: "put mug 1 in/on desk 1" -> "mug 1"."""
    rest = action.split(" ", 1)[1]
    for sep in (" from ", " in/on ", " with "):
        if sep in rest:
            return rest.split(sep, 1)[0]
    return rest


def _go_thought(place: str, purpose: str | None, held: str | None, searched: bool, placed: set[str]) -> str:
    go = f"Next I go to {place}."
    if purpose is None:
        return go
    verb = purpose.split(" ", 1)[0]
    if verb == "take" and held is None:
        kind = _kind(_object(purpose))
        if searched:
            return f"No {kind} there. {go}"
        return f"I need to find {'another ' + kind if kind in placed else _a(kind)}. {go}"
    if verb == "use":
        lamp = _kind(purpose.split(" ", 1)[1])
        if held is not None:
            return f"Now I need light to look at the {held}: I need to find {_a(lamp)}. {go}"
        return f"I need to find {_a(lamp)}. {go}"
    if held is None:
        return go
    if verb == "put":
        return f"I have the {held}. Next I go to {place} to put it there."
    if verb in ("heat", "cool", "clean"):
        return f"I have the {held}. Next I go to {place} to {verb} it."
    return go


def expert_thoughts(actions: Sequence[str], task: str) -> list[str]:
    """One thought per action (see the module docstring for the rule)."""
    thoughts: list[str] = []
    held: str | None = None
    placed: set[str] = set()
    searching_for: str | None = None  # the purpose of the last "go to" thought, until it happens
    for i, action in enumerate(actions):
        words = action.split(" ", 1)
        verb, rest = words[0], words[1] if len(words) > 1 else ""
        if action.startswith("go to "):
            purpose = _next_purpose(actions, i)
            thought = _go_thought(action[6:], purpose, held, purpose is not None and purpose == searching_for, placed)
            searching_for = purpose
        elif verb == "open":
            thought = f"The {rest} is closed, so I open it."
        elif verb == "close":
            thought = f"I close the {rest}."
        elif verb == "take":
            held = _object(action)
            thought = f"Here is the {held}. I take it."
        elif verb == "put":
            obj, target = _object(action), rest.split(" in/on ", 1)[-1]
            placed.add(_kind(obj))
            held = None
            thought = f"Now I put the {obj} in/on the {target}."
        elif verb in ("heat", "cool", "clean"):
            obj, tool = _object(action), rest.split(" with ", 1)[-1]
            thought = f"Now I {verb} the {obj} with the {tool}."
        elif verb == "use":
            thought = f"Now I turn on the {rest}."
        elif verb == "examine":
            thought = f"I examine the {rest}."
        elif action == "look":
            thought = "I look around."
        elif action == "inventory":
            thought = "I check what I am carrying."
        else:
            thought = f"Next I {action}."
        if verb != "go" and action == searching_for:
            searching_for = None
        if i == 0:
            thought = f"My task is to {task.strip().rstrip('.')}. {thought}"
        thoughts.append(thought)
    return thoughts
