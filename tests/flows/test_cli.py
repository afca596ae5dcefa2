"""The eto command line: help texts, recipe help, and clear failures on bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from flows.cli import main
from infra.runtime_env import RUNTIME_DEFAULTS

ROOT = Path(__file__).resolve().parents[2]

# A fresh interpreter runs the real command handler, which imports its flow (and so Prefect) and
# then hands over to _run_flow; the stand-in prints what Prefect's settings say at that point.
_SETTINGS_PROBE = """
import sys
import flows.cli as cli

def report(*args, **kwargs):
    from prefect.settings import PREFECT_LOCAL_STORAGE_PATH, PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS
    print(PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS.value(), PREFECT_LOCAL_STORAGE_PATH.value())
    return 0

cli._run_flow = report
sys.exit(cli.main(sys.argv[1:]))
"""


@pytest.mark.parametrize("command", [["run"], ["baseline", "rft"]])
def test_prefect_sees_the_runtime_defaults(command: list[str], tmp_path: Path) -> None:
    """The defaults reach Prefect before it is imported: set later, it ignores them, and results
    go to ~/.prefect/storage instead of the state dir, with a 20 s server start-up timeout."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    state = tmp_path / "state"
    done = subprocess.run([sys.executable, "-c", _SETTINGS_PROBE, *command, "--state-dir", str(state)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    timeout, storage = done.stdout.split()
    assert float(timeout) == float(RUNTIME_DEFAULTS["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"])
    assert Path(storage) == (state / "prefect" / "storage").resolve()


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
