"""A pytest plugin: with ETO_FAIL_ON_SKIP=1 a run that skipped any test fails.

CI installs every extra, Java and Chromium (.ci/run sets the variable), so a test that skips
there tests nothing while the run looks green: a bug. Locally skips stay allowed. tests/conftest.py
imports ``pytest_configure`` from here; tests/test_skip_policy.py loads the module with ``-p``.

Skips at collection (a module-level ``pytest.skip`` or ``importorskip``) count as well as skips
in setup or in the test; an expected failure (xfail) is not a skip.
"""

from __future__ import annotations

import os

import pytest

ENV_VAR = "ETO_FAIL_ON_SKIP"


def enabled() -> bool:
    return os.environ.get(ENV_VAR, "") not in ("", "0")


def _reason(report: pytest.CollectReport | pytest.TestReport) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:  # (path, line, "Skipped: reason")
        return str(longrepr[2]).removeprefix("Skipped: ")
    return str(longrepr)


class FailOnSkip:
    """Records every skip; at the end of the session, fails the run and lists them."""

    def __init__(self) -> None:
        self.skips: list[tuple[str, str]] = []

    def _record(self, report: pytest.CollectReport | pytest.TestReport) -> None:
        if report.skipped and not hasattr(report, "wasxfail"):
            self.skips.append((report.nodeid, _reason(report)))

    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        self._record(report)

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        self._record(report)

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        # main() returns session.exitstatus after this hook: a run that was green turns red.
        if self.skips and session.exitstatus in (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED):
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        if not self.skips:
            return
        terminalreporter.section(f"{ENV_VAR}: {len(self.skips)} skipped, which fails this run", red=True)
        for nodeid, reason in self.skips:
            terminalreporter.line(f"SKIPPED {nodeid}: {reason}", red=True)
        terminalreporter.line(
            f"Every extra, Java and Chromium are installed where {ENV_VAR} is set (CI): install what "
            "the reasons name, or fix the test."
        )


def pytest_configure(config: pytest.Config) -> None:
    if enabled() and not config.pluginmanager.has_plugin("eto-fail-on-skip"):
        config.pluginmanager.register(FailOnSkip(), "eto-fail-on-skip")
