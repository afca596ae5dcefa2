"""ScienceWorld adapter (optional extra: ``pip install -e '.[sciworld]'``, needs Java 17+)."""

from environments.sciworld.env import DEFAULT_STEP_CAPS, SciWorldEnv

__all__ = ["DEFAULT_STEP_CAPS", "SciWorldEnv"]
