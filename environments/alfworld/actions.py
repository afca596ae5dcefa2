"""From an agent's free-text action to the admissible command it means.

TextWorld's PDDL engine accepts a command only if it equals one of the admissible commands
(after stripping spaces); anything else is "Nothing happens." ETO's own ALFWorld env passes
the agent's action through unchanged, so its agent must write the json_2.1.1 grammar exactly,
e.g. "put mug 1 in/on coffeemachine 1". The rule here maps a few unambiguous variants onto an
admissible command, and never turns an action into one that is not admissible:

1. the action as written (stripped);
2. lower-cased, inner whitespace collapsed, a trailing period and wrapping quotes dropped;
3. "put|place X in|on|into|onto|inside Y" -> "put X in/on Y" (the 2.1.1 grammar has one
   put command for both prepositions; older ALFWorld and the ReAct prompts split them);
4. "toggle|turn on|switch on X [...]" -> "use X" (ETO's prompt calls it "toggle {obj} {recep}";
   the grammar only has "use X", e.g. "use desklamp 1");
5. "pick up X from Y" -> "take X from Y", and "take X" -> the only admissible "take X from ...".

``strict=True`` keeps step 1 only: ETO's exact behaviour.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection

_PUT = re.compile(r"^(?:put|place) (\S+ \d+) (?:in/on|in|on|into|onto|inside) (\S+ \d+)$")
_USE = re.compile(r"^(?:toggle|turn on|switch on) (\S+ \d+)(?: .*)?$")
_PICK = re.compile(r"^pick up (\S+ \d+) from (\S+ \d+)$")
_TAKE = re.compile(r"^take (\S+ \d+)$")


def canonical(action: str) -> str:
    text = " ".join(action.strip().lower().split())
    text = text.strip("\"'`").strip()
    return text.removesuffix(".").strip()


def _variants(text: str, admissible: Collection[str]) -> list[str]:
    rules: list[tuple[re.Pattern[str], Callable[[re.Match[str]], str]]] = [
        (_PUT, lambda m: f"put {m[1]} in/on {m[2]}"),
        (_USE, lambda m: f"use {m[1]}"),
        (_PICK, lambda m: f"take {m[1]} from {m[2]}"),
    ]
    out = [build(m) for pattern, build in rules if (m := pattern.match(text))]
    if m := _TAKE.match(text):
        sources = [c for c in admissible if c.startswith(f"take {m[1]} from ")]
        if len(sources) == 1:
            out.append(sources[0])
    return out


def resolve_action(action: str, admissible: Collection[str], *, strict: bool = False) -> str | None:
    """The admissible command ``action`` means, or None when it means none (an invalid action)."""
    text = action.strip()
    if text in admissible:
        return text
    if strict:
        return None
    text = canonical(text)
    if text in admissible:
        return text
    return next((v for v in _variants(text, admissible) if v in admissible), None)
