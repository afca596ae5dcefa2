"""How the agent fails, per model: the kinds of wasted steps in its episodes, from the artifacts.

For ETO's diagnosis: are the failures the pairs contrast (the rejected side: the SFT policy's
own failed exploration) the failures SFT makes on evaluation, and did DPO change them there?
Counts, over the agent's steps:

- invalid: the environment answered "Nothing happens." (an action that does not apply here,
  e.g. taking an object the agent imagined) or rejected the format;
- repeated: the exact action the agent already took earlier in the episode (loops, revisits);
- unparsed: no "Action:" line.

Models are named like ``benchmarks/paired_rewards.py``: an artifact root and a substring of the
model URI (give the stage key, e.g. ``/sft/<key>``, where several seeds share a root). ``--pairs``
adds the rejected sides of a pairs artifact folder (what DPO pushes down).

    .venv/bin/python benchmarks/failure_modes.py --root .eto/artifacts --model sft=/sft/<key> \\
        --model eto1=/dpo/<key> --pairs .eto/artifacts/pairs/<key> --quote 1 --changed
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
from paired_rewards import evaluation_frames

from environments.tidy.room import NOTHING_HAPPENS
from eto_core.prompts import INVALID_FORMAT_OBSERVATION, parse_action


def step_kinds(messages: Sequence[dict[str, Any]], num_prompt_messages: int) -> dict[str, int]:
    """Counts of the agent's steps by kind in one episode (turns after the prompt)."""
    turns = list(messages)[num_prompt_messages:]
    seen: set[str] = set()
    out = {"steps": 0, "invalid": 0, "repeated": 0, "unparsed": 0}
    for i in range(0, len(turns), 2):
        if turns[i]["role"] != "assistant":
            continue
        out["steps"] += 1
        action = parse_action(turns[i]["content"])
        observation = turns[i + 1]["content"] if i + 1 < len(turns) else ""
        if action is None:
            out["unparsed"] += 1
        elif action in seen:
            out["repeated"] += 1
        if action is not None:
            seen.add(action)
        if NOTHING_HAPPENS in observation or INVALID_FORMAT_OBSERVATION in observation:
            out["invalid"] += 1
    return out


def summarise(label: str, episodes: Iterable[tuple[Sequence[dict[str, Any]], int, bool]]) -> str:
    total = {"episodes": 0, "failed": 0, "steps": 0, "invalid": 0, "repeated": 0, "unparsed": 0}
    for messages, n_prompt, success in episodes:
        total["episodes"] += 1
        if success:
            continue
        total["failed"] += 1
        for k, v in step_kinds(messages, n_prompt).items():
            total[k] += v
    steps = max(total["steps"], 1)
    return (f"| {label} | {total['episodes']} | {total['failed']} | {total['steps'] / max(total['failed'], 1):.1f} | "
            f"{total['invalid'] / steps:.1%} | {total['repeated'] / steps:.1%} | {total['unparsed'] / steps:.1%} |")


def model_episodes(root: str, model: str, split: str) -> list[tuple[Any, int, bool]]:
    return [(r.messages, int(r.num_prompt_messages), bool(r.success))
            for df in evaluation_frames(root, model) if df.split.iloc[0] == split for r in df.itertuples()]


def agent_turns(root: str, model: str) -> dict[tuple[str, str], list[str]]:
    """(split, task) -> the agent's turns, over a model's evaluation episodes."""
    return {(df.split.iloc[0], r.task_id): [m["content"] for m in list(r.messages)[int(r.num_prompt_messages):]
                                            if m["role"] == "assistant"]
            for df in evaluation_frames(root, model) for r in df.itertuples()}


def changed_episodes(ref: dict[tuple[str, str], list[str]], other: dict[tuple[str, str], list[str]]) -> str:
    """How many of the shared episodes differ from the reference's, and at which turn they first do."""
    firsts = []
    for key in ref.keys() & other.keys():
        a, b = ref[key], other[key]
        if a != b:
            firsts.append(next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b))) + 1)
    median = f", first at turn {statistics.median(firsts):g} (median)" if firsts else ""
    return f"{len(firsts)} of {len(ref.keys() & other.keys())} episodes differ{median}"


def quote(messages: Sequence[dict[str, Any]], num_prompt_messages: int, turns: int) -> str:
    body = list(messages)[num_prompt_messages - 1 : num_prompt_messages + 2 * turns]
    return "\n".join(f"    {m['role']}: {m['content'].strip()}".replace("\n", " / ") for m in body)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", required=True, help="artifact root (the folder holding evaluate/)")
    parser.add_argument("--model", action="append", default=[], metavar="LABEL=URI_PART", required=True)
    parser.add_argument("--pairs", help="a pairs artifact folder: its rejected sides are summarised too")
    parser.add_argument("--changed", action="store_true",
                        help="how many episodes of each model differ from the first --model's, and where")
    parser.add_argument("--quote", type=int, default=0, metavar="N", help="quote N failed seen episodes per model")
    args = parser.parse_args()
    print("| episodes | n | failed | steps per failed episode | invalid | repeated | unparsed |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    quotes = []
    for spec in args.model:
        label, _, part = spec.partition("=")
        for split in ("seen", "unseen"):
            eps = model_episodes(args.root, part, split)
            if eps:
                print(summarise(f"{label} {split}", eps))
            if split == "seen":
                quotes += [(label, e) for e in [e for e in eps if not e[2]][: args.quote]]
    if args.pairs:
        df = pd.read_parquet(Path(args.pairs, "pairs.parquet"))
        rejected = [([*r.prompt, *r.rejected], len(r.prompt), False) for r in df.itertuples()
                    if r.kind == "lose"]
        print(summarise("pairs: rejected (lose) sides", rejected))
    if args.changed:
        (ref_label, _, ref_part), *others = [spec.partition("=") for spec in args.model]
        ref = agent_turns(args.root, ref_part)
        for label, _, part in others:
            print(f"\n{label} vs {ref_label}: {changed_episodes(ref, agent_turns(args.root, part))}")
    for label, (messages, n_prompt, _) in quotes:
        print(f"\n{label}, a failed seen episode (first turns):\n\n{quote(messages, n_prompt, 6)}")


if __name__ == "__main__":
    main()
