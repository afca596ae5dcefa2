"""One ScienceWorld simulator in its own JVM, with a capped heap and a clean shutdown.

``scienceworld.ScienceWorldEnv`` starts its JVM without heap options and, on every ``step``,
also asks the simulator for every valid action/object combination (tens of milliseconds, and
thousands of strings over the py4j socket) plus ``look``/``inventory``. An ETO agent never
sees any of that, so this module talks to the simulator's ``PythonInterface`` directly: a step
is one ``step`` call plus the score and completion flags (see benchmarks/sciworld_step.py).

The JVM is started with ``die_on_exit``: it exits when this Python process's end of its stdin
pipe closes, so a crashed or killed pipeline leaves no JVM behind. ``close`` also kills it
explicitly, and a weakref finaliser does so when the object is garbage collected.
"""

from __future__ import annotations

import logging
import subprocess
import weakref
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

DEFAULT_HEAP = "256m"
DEFAULT_JVM_OPTIONS: tuple[str, ...] = ("-XX:+UseSerialGC",)
"""One simulator per JVM needs no parallel collector: the serial GC cut resident memory from
352 to 212 MB per JVM at the same step speed (20 find-animal variations, gold generation and
replay; C1-only JIT saved 26 MB more but ran 1.8x slower, so it is not used)."""


class SimulatorDied(RuntimeError):
    """The JVM behind a simulator went away (crashed, killed, out of memory)."""


@dataclass(frozen=True)
class StepOutcome:
    observation: str
    score: float
    """The simulator's score in [-1, 1]: negative once the task has failed for good."""
    completed: bool


def canonical(observation: str) -> str:
    """The observation with each run of tab-indented item lines sorted.

    ScienceWorld lists a container's contents in an order that depends on the JVM's history
    (how many objects earlier loads created), so the same state can print differently in two
    JVMs or after another load. Sorting the listed items keeps the text and makes it a
    function of the state: resets are deterministic and a replay in a fresh JVM can be
    checked line for line.
    """
    lines = observation.split("\n")
    out: list[str] = []
    run: list[str] = []
    for line in lines:
        if line.startswith("\t"):
            run.append(line)
            continue
        out.extend(sorted(run))
        run = []
        out.append(line)
    out.extend(sorted(run))
    return "\n".join(out)


def _py4j_errors() -> tuple[type[BaseException], ...]:
    from py4j.protocol import Py4JError

    # Py4JNetworkError (a dead JVM) subclasses Py4JError; a broken pipe or reset socket can
    # also surface as a plain OSError before py4j wraps it.
    return (Py4JError, OSError)


def _kill(proc: subprocess.Popen[bytes] | None, gateway: Any) -> None:
    try:
        if gateway is not None:
            gateway.shutdown()
    except Exception:  # a dead JVM cannot be shut down politely; kill it below
        pass
    if proc is not None and proc.poll() is None:
        proc.kill()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            log.warning("ScienceWorld JVM pid %s did not exit after SIGKILL", proc.pid)


class Simulator:
    """A lazily started ScienceWorld JVM; every call raises SimulatorDied if the JVM is gone."""

    def __init__(
        self, heap: str = DEFAULT_HEAP, jvm_options: tuple[str, ...] | list[str] = DEFAULT_JVM_OPTIONS,
        jar_path: str | None = None,
    ) -> None:
        self.heap = heap
        self.jvm_options = list(jvm_options)
        self.jar_path = jar_path
        self._gateway: Any = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._server: Any = None
        self._finalizer: weakref.finalize | None = None
        self.starts = 0
        """How many JVMs this simulator has started (restarts after a crash included)."""

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> None:
        if self.running:
            return
        self.close()
        from py4j.java_gateway import GatewayParameters, JavaGateway, launch_gateway
        from scienceworld.constants import BASEPATH, JAR_PATH

        try:
            port, proc = launch_gateway(
                classpath=self.jar_path or JAR_PATH,
                die_on_exit=True,
                cwd=BASEPATH,
                javaopts=[f"-Xmx{self.heap}", *self.jvm_options],
                return_proc=True,
            )
        except FileNotFoundError as exc:
            raise SimulatorDied(
                "ScienceWorld needs Java 17+ on PATH (`apt-get install openjdk-17-jre-headless`); "
                f"could not start it: {exc}"
            ) from exc
        self._proc = proc
        self._gateway = JavaGateway(gateway_parameters=GatewayParameters(auto_field=True, port=port), java_process=proc)
        self._server = self._gateway.jvm.scienceworld.runtime.pythonapi.PythonInterface()
        self._finalizer = weakref.finalize(self, _kill, proc, self._gateway)
        self.starts += 1
        log.debug("ScienceWorld JVM started: pid %s, heap %s", proc.pid, self.heap)

    def close(self) -> None:
        """Stop the JVM; safe to call twice and on a JVM that already died."""
        if self._finalizer is not None:
            self._finalizer()  # runs _kill once and detaches
        self._finalizer = None
        self._gateway = self._proc = self._server = None

    def _call(self, method: str, *args: Any) -> Any:
        if not self.running:
            if self._proc is not None:
                raise SimulatorDied(f"ScienceWorld JVM pid {self._proc.pid} exited with code {self._proc.returncode}")
            self.start()
        try:
            return getattr(self._server, method)(*args)
        except _py4j_errors() as exc:
            raise SimulatorDied(f"ScienceWorld JVM call {method} failed: {type(exc).__name__}: {exc}") from exc

    # The simulator's API, as far as the adapter needs it.
    def task_names(self) -> list[str]:
        return [str(n) for n in self._call("getTaskNames")]

    def load(self, task_name: str, variation: int, simplifications: str = "", gold: bool = False) -> None:
        self._call("load", task_name, variation, simplifications, gold)

    def variations(self) -> dict[str, list[int]]:
        """The loaded task type's variation indices per ScienceWorld split."""
        return {
            "train": [int(v) for v in self._call("getVariationsTrain")],
            "dev": [int(v) for v in self._call("getVariationsDev")],
            "test": [int(v) for v in self._call("getVariationsTest")],
        }

    def gold_actions(self) -> list[str]:
        return [str(a) for a in self._call("getGoldActionSequence")]

    def task_description(self) -> str:
        return str(self._call("getTaskDescription"))

    def reset(self) -> str:
        """Back to the first move; returns the room description ("look around")."""
        self._call("reset")
        return canonical(str(self._call("step", "look around")))

    def step(self, action: str) -> StepOutcome:
        observation = canonical(str(self._call("step", action)))
        score = float(self._call("getScore"))
        completed = bool(self._call("getCompleted"))
        return StepOutcome(observation, score, completed)
