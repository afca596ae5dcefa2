"""The eto command line: help texts, recipe help, and clear failures on bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from flows.cli import main


def test_help_lists_every_option(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["run", "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--config", "--set", "--iterations", "--seed", "--artifact-root", "--mlflow-uri", "--state-dir", "--json"):
        assert flag in out


def test_recipe_help_and_envs(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["recipe-help"]) == 0
    assert "dpo.beta" in capsys.readouterr().out
    assert main(["envs"]) == 0
    assert "tidy" in capsys.readouterr().out


def test_bad_recipe_exits_2_with_the_field(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("dpo: {beta: -0.5}\n")
    assert main(["run", "--config", str(bad), "--state-dir", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err
    assert "bad.yaml" in err and "dpo.beta" in err


def test_import_eto(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "eto.json"
    src.write_text(json.dumps([{"id": "a", "conversations": [
        {"from": "human", "value": "instr"}, {"from": "gpt", "value": "OK"},
        {"from": "human", "value": "task"}, {"from": "gpt", "value": "Thought: t\nAction: a"}]}]))
    out = tmp_path / "t.parquet"
    assert main(["import-eto", str(src), "--env", "webshop", "--out", str(out)]) == 0
    assert out.is_file()
    src.write_text(json.dumps([{"id": "a", "conversations": [{"from": "robot", "value": "x"}]}]))
    assert main(["import-eto", str(src), "--env", "webshop", "--out", str(out)]) == 2
    assert "robot" in capsys.readouterr().err
