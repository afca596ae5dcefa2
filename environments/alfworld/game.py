"""One ALFWorld game at a time in TextWorld's PDDL engine, as ALFWorld's AlfredTWEnv plays it.

AlfredTWEnv registers a batch of game files with ``textworld.gym``; per game, that stack does
no more than this module: a ``textworld.envs.PddlEnv`` (the game's PDDL domain, problem and
text grammar, run by fast-downward) wrapped in ALFWorld's ``AlfredDemangler`` (so objects read
"apple 1", not PDDL ids), ``load(game_file)``, then ``reset()`` / ``step(command)`` with the
``won`` and ``admissible_commands`` infos. Doing it directly lets one session play any game.

Costs measured on the 2-core dev machine: TextWorld translates the PDDL problem with
fast-downward twice per game state, and ``load`` builds a state that ``reset`` at once
replaces, so a new game took 0.9-3.9 s to load and reset, a second reset of it 0.6-1.6 s. The
translation is a pure function of the PDDL text, so this module memoises it
(:func:`_translate`): 0.5-1.6 s and 0.1-0.3 s. A step takes 50-100 ms (TextWorld recomputes the
admissible commands after every step).
"""

from __future__ import annotations

import functools
import re
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fast_downward
import textworld
from alfworld.agents.environment.alfred_tw_env import AlfredDemangler
from textworld.envs import PddlEnv

from environments.base import EnvError

_pddl2sas = fast_downward.pddl2sas


@functools.lru_cache(maxsize=32)
def _translate(domain: str, problem: str, verbose: bool = False, optimize: bool = False) -> Any:
    """fast-downward's PDDL -> SAS translation, memoised for the last 16 games (~1 MB each).

    Safe to share: TextWorld only reads the translated task, and the SAS text is copied into
    the planner library. fast-downward's translator also overwrites ``sys.argv`` (it parses
    options from it); the caller's argv is put back.
    """
    argv = list(sys.argv)
    try:
        return _pddl2sas(domain, problem, verbose=verbose, optimize=optimize)
    finally:
        sys.argv[:] = argv


# TextWorld's PddlState calls fast_downward.pddl2sas through the module attribute.
fast_downward.pddl2sas = _translate

INVALID_OBSERVATION = "Nothing happens."
"""TextWorld's answer to a command that is not admissible (the PDDL engine's own text)."""

TASK_PREFIX = "Your task is to: "

_ARRIVAL = re.compile(r"^You arrive at loc \d+\. ")


def clean_observation(text: str) -> str:
    """Drop the "You arrive at loc 12. " prefix of ``go to`` feedback, as ETO and ReAct do:
    location numbers mean nothing to the agent (ALFWorld's gt_traj.json has them removed too)."""
    return _ARRIVAL.sub("", text.strip(), count=1)


def split_intro(text: str) -> tuple[str, str]:
    """(first observation, task sentence) from the game's intro.

    The intro is "-= Welcome to TextWorld, ALFRED! =-\\n\\n<room>\\n\\n<Your task is to: ...>";
    ETO (like ReAct) drops the banner paragraph and joins the rest with single newlines.
    """
    paragraphs = text.strip().split("\n\n")
    observation = "\n".join(paragraphs[1:]) if len(paragraphs) > 1 else paragraphs[0]
    if TASK_PREFIX not in observation:
        raise ValueError(f"no {TASK_PREFIX!r} in the game intro {text[:200]!r}")
    return observation, observation.split(TASK_PREFIX, 1)[1].strip()


@dataclass(frozen=True)
class GameState:
    feedback: str
    """The engine's raw text for the last command (intro after a reset)."""
    won: bool
    admissible: tuple[str, ...]
    """Sorted, as TextWorld returns them."""
    plan: tuple[str, ...] | None = None
    """The PDDL planner's solution from this state, only when asked for at reset."""


# PddlEnvs of closed sessions, reused by new ones. Every PddlEnv loads its own copy of
# fast-downward's library (the planner keeps global state, so concurrent games need separate
# copies). Unloading a copy (fast_downward.close_lib) is not safe: with two copies loaded,
# dlclose-ing both crashed the process at exit, and never unloading leaks ~2 MB per session
# (both measured). Reusing closed sessions' engines bounds the copies by the most open at once.
_idle_engines: list[Any] = []
_idle_lock = threading.Lock()


def _take_engine() -> Any:
    with _idle_lock:
        if _idle_engines:
            return _idle_engines.pop()
    return PddlEnv(textworld.EnvInfos(won=True, admissible_commands=True))


class GameSession:
    """A TextWorld PDDL env for ALFWorld games; load any game with :meth:`start`."""

    def __init__(self) -> None:
        self._pddl: Any = _take_engine()
        self._infos: Any = self._pddl.request_infos
        self._env: Any = AlfredDemangler(shuffle=False)(self._pddl)  # shuffle only for training DAgger
        self.game_file: Path | None = None
        self._faulted = False

    def start(self, game_file: Path, *, plan: bool = False) -> GameState:
        """Reset ``game_file`` to its initial state (loading it unless it is the current game);
        with ``plan``, also ask fast-downward for a solution (ALFWorld's "planner" expert)."""
        if self._env is None:
            raise RuntimeError("alfworld: game session used after close()")
        try:
            if game_file != self.game_file:
                self.game_file = None  # a failed load leaves no game to reset
                self._env.load(str(game_file))
                self.game_file = game_file
            # Planning costs a search per state: request it for this reset only.
            self._infos.policy_commands = plan
            try:
                state = self._env.reset()
            finally:
                self._infos.policy_commands = False
            result = self._state(state)
            if plan:
                result = GameState(result.feedback, result.won, result.admissible, tuple(state["policy_commands"]))
        except Exception as exc:  # any engine failure on a game is a fault of that game file
            self.game_file, self._faulted = None, True
            raise EnvError(f"alfworld: cannot load game {game_file}: {type(exc).__name__}: {exc}") from exc
        return result

    def step(self, command: str) -> GameState:
        if self._env is None or self.game_file is None:
            raise RuntimeError("alfworld: step() without a started game")
        try:
            state, _, _ = self._env.step(command)
            return self._state(state)
        except Exception as exc:
            game, self.game_file, self._faulted = self.game_file, None, True  # reload next time
            raise EnvError(f"alfworld: game {game} crashed on {command!r}: {type(exc).__name__}: {exc}") from exc

    @staticmethod
    def _state(state: Any) -> GameState:
        return GameState(str(state.feedback), bool(state["won"]), tuple(state["admissible_commands"]))

    def close(self) -> None:
        """Free the game and hand the engine to the next session; safe to call twice."""
        pddl, self._pddl, self._env, self.game_file = self._pddl, None, None, None
        if pddl is None or self._faulted:
            return  # an engine that failed is dropped (one library copy leaked), never reused
        try:
            pddl.downward_lib.cleanup()  # frees the game's planner state; a later load starts afresh
        except Exception:  # noqa: BLE001 - an engine that cannot clean up is dropped, not reused
            return
        self._infos.policy_commands = False
        with _idle_lock:
            _idle_engines.append(pddl)
