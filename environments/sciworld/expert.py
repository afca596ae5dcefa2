"""ReAct thoughts for ScienceWorld's gold action sequences.

ScienceWorld's gold paths are bare actions. ETO's expert trajectories carry a thought before
each action; ours are made by rule from the action alone (its verb and objects), plus the
task's focus target for ``focus on`` — short, true statements of intent that never reveal
information the agent has not seen. The rules, in order, are in ``_RULES``; anything else gets
"Next I will <action>.".
"""

from __future__ import annotations

import re

_RULES: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(pattern), thought)
    for pattern, thought in (
        (r"^open door to (?P<x>.+)$", "The door to the {x} is closed. I open it so I can go there."),
        (r"^go to (?P<x>.+)$", "Now I can go to the {x}."),
        (r"^teleport to (?P<x>.+)$", "I go straight to the {x}."),
        (r"^look around$", "I look around to see what is here."),
        (r"^look at (?P<x>.+)$", "I look at the {x} more closely."),
        (r"^look in (?P<x>.+)$", "I check what is inside the {x}."),
        (r"^focus on (?P<x>.+)$", "The {x} is what the task is about, so I focus on it."),
        (r"^pick up (?P<x>.+)$", "I will need the {x}, so I pick it up."),
        (r"^open (?P<x>.+)$", "I open the {x} to get at what is inside."),
        (r"^close (?P<x>.+)$", "I close the {x}."),
        (r"^move (?P<x>.+) to (?P<y>.+)$", "I move the {x} to the {y}."),
        (r"^put down (?P<x>.+)$", "I put down the {x}."),
        (r"^pour (?P<x>.+) in (?P<y>.+)$", "I pour the {x} into the {y}."),
        (r"^dunk (?P<x>.+) in (?P<y>.+)$", "I dunk the {x} in the {y}."),
        (r"^mix (?P<x>.+)$", "I mix the {x} to combine what is in it."),
        (r"^activate (?P<x>.+)$", "I turn on the {x}."),
        (r"^deactivate (?P<x>.+)$", "I turn off the {x}."),
        (r"^connect (?P<x>.+) to (?P<y>.+)$", "I connect the {x} to the {y} to build the circuit."),
        (r"^disconnect (?P<x>.+)$", "I disconnect the {x}."),
        (r"^use (?P<x>.+) on (?P<y>.+)$", "I use the {x} on the {y} to measure it."),
        (r"^use (?P<x>.+)$", "I use the {x}."),
        (r"^(?:wait|wait1|wait \d+)$", "I wait for things to change."),
        (r"^read (?P<x>.+)$", "I read the {x}."),
        (r"^examine (?P<x>.+)$", "I examine the {x}."),
        (r"^inventory$", "I check what I am carrying."),
        (r"^eat (?P<x>.+)$", "I eat the {x}."),
        (r"^flush (?P<x>.+)$", "I flush the {x}."),
        (r"^\d+$", "Several objects match; I pick option {0}."),
    )
)


def thought_for(action: str) -> str:
    text = action.strip()
    for pattern, thought in _RULES:
        m = pattern.match(text)
        if m:
            groups = m.groupdict()
            return thought.format(text, **groups) if "{0}" in thought else thought.format(**groups)
    return f"Next I will {text}."


def thoughts_for(actions: list[str]) -> list[str]:
    return [thought_for(a) for a in actions]
