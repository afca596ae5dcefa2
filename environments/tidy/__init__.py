"""The built-in ``tidy`` environment: procedurally generated household tidy-up tasks."""

from environments.tidy.env import DEFAULT_MAX_STEPS, TidyEnv, held_out_combos

__all__ = ["DEFAULT_MAX_STEPS", "TidyEnv", "held_out_combos"]
