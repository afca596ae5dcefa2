"""ALFWorld helpers that need neither the alfworld package nor the game data: data extraction,
the action-variant rule, the expert-thought rule and the prompt texts."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest

from environments.alfworld.actions import resolve_action
from environments.alfworld.data import JSON_DIR, SPLIT_DIRS, prepare_data
from environments.alfworld.prompt import example_rounds, instruction
from environments.alfworld.thoughts import expert_thoughts


def write_archive(path: Path, folder: str, content: str) -> None:
    with tarfile.open(path, "w:gz") as tar:
        data = content.encode()
        info = tarfile.TarInfo(f"{JSON_DIR}/{folder}/task-A/trial_1/game.tw-pddl")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))


@pytest.fixture()
def archives(tmp_path: Path) -> Path:
    folder = tmp_path / "archives"
    folder.mkdir()
    for split in SPLIT_DIRS.values():
        write_archive(folder / f"alfworld_{split}.tgz", split, f"{split} v1")
    return folder


def game_text(dest: Path, split: str) -> str:
    return (dest / JSON_DIR / split / "task-A" / "trial_1" / "game.tw-pddl").read_text()


def test_prepare_data_extracts_once_and_again_when_an_archive_changes(archives: Path, tmp_path: Path) -> None:
    dest = tmp_path / "cache"
    assert prepare_data(archives, dest) == dest
    assert [game_text(dest, s) for s in SPLIT_DIRS.values()] == ["train v1", "valid_seen v1", "valid_unseen v1"]
    marker = dest / JSON_DIR / "train" / ".eto-extracted"
    stamp = marker.stat().st_mtime_ns

    prepare_data(archives, dest)  # idempotent: nothing is rewritten
    assert marker.stat().st_mtime_ns == stamp

    write_archive(archives / "alfworld_train.tgz", "train", "train v2 longer")
    os.utime(archives / "alfworld_train.tgz", ns=(1, 1))
    prepare_data(archives, dest)
    assert game_text(dest, "train") == "train v2 longer"
    assert game_text(dest, "valid_seen") == "valid_seen v1"
    assert not [p for p in dest.iterdir() if p.name.startswith(".extract-")]  # no temp folders left


def test_prepare_data_leaves_no_half_split_when_an_archive_is_wrong(archives: Path, tmp_path: Path) -> None:
    write_archive(archives / "alfworld_valid_unseen.tgz", "somewhere_else", "x")
    dest = tmp_path / "cache"
    with pytest.raises(ValueError, match="does not hold json_2.1.1/valid_unseen"):
        prepare_data(archives, dest)
    assert not (dest / JSON_DIR / "valid_unseen").exists()
    assert not [p for p in dest.iterdir() if p.name.startswith(".extract-")]
    with pytest.raises(FileNotFoundError, match="alfworld-download"):
        prepare_data(tmp_path / "nowhere", dest)


ADMISSIBLE = [
    "examine safe 1",
    "go to bed 1",
    "put cellphone 1 in/on safe 1",
    "take pen 1 from desk 1",
    "use desklamp 1",
]


@pytest.mark.parametrize(
    ("action", "command"),
    [
        ("put cellphone 1 in/on safe 1", "put cellphone 1 in/on safe 1"),
        ("  Put cellphone 1 in safe 1. ", "put cellphone 1 in/on safe 1"),
        ("put cellphone 1 on safe 1", "put cellphone 1 in/on safe 1"),
        ("place cellphone 1 into safe 1", "put cellphone 1 in/on safe 1"),
        ("'Go  to bed 1'", "go to bed 1"),
        ("toggle desklamp 1 desk 1", "use desklamp 1"),
        ("turn on desklamp 1", "use desklamp 1"),
        ("pick up pen 1 from desk 1", "take pen 1 from desk 1"),
        ("take pen 1", "take pen 1 from desk 1"),
        ("put cellphone 1 in safe 2", None),  # the variant must itself be admissible
        ("go to bed", None),
        ("xyzzy", None),
        ("", None),
    ],
)
def test_action_variants(action: str, command: str | None) -> None:
    assert resolve_action(action, ADMISSIBLE) == command


def test_strict_actions_accept_only_the_exact_command() -> None:
    assert resolve_action(" use desklamp 1 ", ADMISSIBLE, strict=True) == "use desklamp 1"
    assert resolve_action("put cellphone 1 in safe 1", ADMISSIBLE, strict=True) is None
    assert resolve_action("Use desklamp 1", ADMISSIBLE, strict=True) is None


def test_take_without_source_needs_a_unique_source() -> None:
    assert resolve_action("take pen 1", ["take pen 1 from desk 1", "take pen 1 from bed 1"]) is None


def test_expert_thoughts_rule() -> None:
    """Each expected thought is the clause of the rule in environments/alfworld/thoughts.py's
    module docstring that the action and the state before it select (written down from that
    docstring, not from the function's output). The one departure: the docstring's example for
    going somewhere to heat reads "... to heat it with the microwave 1", while the rule writes
    "Next I go to Y to heat it." (the tool is named in the heat step's own thought)."""
    task = "heat some mug and put it in shelf."
    steps = [
        # (action, expected thought), then the clause that gives it and the state before the action
        ("go to drawer 1",
         "My task is to heat some mug and put it in shelf. I need to find a mug. Next I go to drawer 1."),
        # first action: the task first; go, hands empty, next purpose "take mug 1", no visit yet
        ("open drawer 1", "The drawer 1 is closed, so I open it."),  # open Y
        ("close drawer 1", "I close the drawer 1."),  # close Y
        ("go to desk 1", "No mug there. Next I go to desk 1."),
        # go, hands empty, the same purpose as the last go: that visit found nothing
        ("take mug 1 from desk 1", "Here is the mug 1. I take it."),  # take X from Y
        ("go to microwave 1", "I have the mug 1. Next I go to microwave 1 to heat it."),
        # go, holding X, next purpose heat
        ("heat mug 1 with microwave 1", "Now I heat the mug 1 with the microwave 1."),  # heat X with Y
        ("go to shelf 1", "I have the mug 1. Next I go to shelf 1 to put it there."),
        # go, holding X, next purpose put
        ("put mug 1 in/on shelf 1", "Now I put the mug 1 in/on the shelf 1."),  # put X in/on Y
        ("go to desk 1", "I need to find another mug. Next I go to desk 1."),
        # go, hands empty, next purpose "take mug 2", a mug already put away: "another"
        ("take mug 2 from desk 1", "Here is the mug 2. I take it."),  # take X from Y
        ("go to desk 2", "Now I need light to look at the mug 2: I need to find a desklamp. Next I go to desk 2."),
        # go, holding X, next purpose use L
        ("use desklamp 1", "Now I turn on the desklamp 1."),  # use L
    ]
    actions = [action for action, _ in steps]
    assert expert_thoughts(actions, task) == [thought for _, thought in steps]


def test_prompt_texts() -> None:
    text = instruction(40)
    for phrase in (
        "go to {recep}",
        "take {obj} from {recep}",
        "put {obj} in/on {recep}",
        "open {recep}",
        "close {recep}",
        "use {obj}",
        "clean {obj} with {recep}",
        "heat {obj} with {recep}",
        "cool {obj} with {recep}",
        "examine",
        "look",
        "inventory",
        "Nothing happens.",
        "40 actions",
        "Thought: <your thoughts>\nAction: <your next action>",
    ):
        assert phrase in text, phrase
    example = example_rounds(["room. Your task is to: put a mug in/on desk.", "On the desk 1, you see a mug 1."],
                             ["go to desk 1", "take mug 1 from desk 1"], "put a mug in/on desk.")
    assert [obs for obs, _ in example] == ["room. Your task is to: put a mug in/on desk.", "On the desk 1, you see a mug 1."]
    assert all(r.startswith("Thought: ") for _, r in example)
    assert example[1][1].endswith("\nAction: take mug 1 from desk 1")
