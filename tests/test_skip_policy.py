"""The ETO_FAIL_ON_SKIP hook (tests/skip_policy.py): a skip fails the run only where it is set."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]

SKIPPING_TESTS = {
    "test_some.py": """
        import pytest

        def test_passes():
            pass

        def test_skips_in_the_test():
            pytest.skip("no widget on this machine")

        @pytest.mark.skipif(True, reason="needs a gadget")
        def test_skips_by_mark():
            pass

        @pytest.mark.xfail(reason="known bug", strict=True)
        def test_expected_failure():
            assert False
    """,
    "test_module_skip.py": """
        import pytest

        pytest.importorskip("no_such_module_for_eto_tests", reason="the gizmo package is not installed")

        def test_never_collected():
            pass
    """,
}


def _run(folder: Path, files: dict[str, str], env_value: str | None) -> subprocess.CompletedProcess[str]:
    for name, body in files.items():
        (folder / name).write_text(textwrap.dedent(body))
    (folder / "pytest.ini").write_text("[pytest]\n")  # rootdir here, not the repository's config
    env = {k: v for k, v in os.environ.items() if k != "ETO_FAIL_ON_SKIP"}
    if env_value is not None:
        env["ETO_FAIL_ON_SKIP"] = env_value
    # The plugin is loaded the way tests/conftest.py would, but on a tiny suite of its own.
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), env.get("PYTHONPATH", "")])
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "tests.skip_policy", "-p", "no:cacheprovider", "-q",
         "-c", str(folder / "pytest.ini"), str(folder)],
        capture_output=True, text=True, env=env, cwd=folder, timeout=120,
    )


@pytest.mark.parametrize("env_value", [None, "0"], ids=["unset", "zero"])
def test_skips_are_allowed_without_the_variable(tmp_path: Path, env_value: str | None) -> None:
    result = _run(tmp_path, SKIPPING_TESTS, env_value)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 passed, 3 skipped, 1 xfailed" in result.stdout
    assert "ETO_FAIL_ON_SKIP" not in result.stdout


def test_with_the_variable_a_skip_fails_the_run_and_every_reason_is_listed(tmp_path: Path) -> None:
    result = _run(tmp_path, SKIPPING_TESTS, "1")
    assert result.returncode == pytest.ExitCode.TESTS_FAILED, result.stdout + result.stderr
    out = result.stdout
    assert "ETO_FAIL_ON_SKIP: 3 skipped, which fails this run" in out
    assert "SKIPPED test_some.py::test_skips_in_the_test: no widget on this machine" in out
    assert "SKIPPED test_some.py::test_skips_by_mark: needs a gadget" in out
    assert "SKIPPED test_module_skip.py: the gizmo package is not installed" in out
    assert "test_expected_failure" not in out.split("ETO_FAIL_ON_SKIP:", 1)[1]  # an xfail is no skip


def test_with_the_variable_a_run_without_skips_passes(tmp_path: Path) -> None:
    result = _run(tmp_path, {"test_fine.py": "def test_passes():\n    pass\n"}, "1")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ETO_FAIL_ON_SKIP" not in result.stdout
