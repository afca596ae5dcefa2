"""Environment names and their constructors.

A plain dict on purpose: adding a benchmark adapter (sciworld, alfworld, webshop) is one
line here. Register a heavy adapter through a small function that imports it inside, so its
dependencies load only when that environment is actually asked for.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from environments.base import TextEnv
from environments.tidy import TidyEnv


def _sciworld(**kwargs: Any) -> TextEnv:
    from environments.sciworld import SciWorldEnv

    return SciWorldEnv(**kwargs)


def _alfworld(**kwargs: Any) -> TextEnv:
    from environments.alfworld.env import AlfworldEnv

    return AlfworldEnv(**kwargs)


def _webshop(**kwargs: Any) -> TextEnv:
    from environments.webshop import WebShopEnv

    return WebShopEnv(**kwargs)


_CONSTRUCTORS: dict[str, Callable[..., TextEnv]] = {
    "tidy": TidyEnv,
    "alfworld": _alfworld,
    "sciworld": _sciworld,
    "webshop": _webshop,
}

ENV_NAMES: tuple[str, ...] = tuple(sorted(_CONSTRUCTORS))


def make_env(name: str, **kwargs: Any) -> TextEnv:
    """A new environment instance; keyword arguments go to its constructor."""
    try:
        constructor = _CONSTRUCTORS[name]
    except KeyError:
        raise ValueError(
            f"unknown environment {name!r}; set env.name to one of: {', '.join(ENV_NAMES)} (`eto envs` lists them)"
        ) from None
    return constructor(**kwargs)
