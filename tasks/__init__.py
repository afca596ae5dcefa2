"""Thin Prefect tasks: one per ETO stage, wrapping eto_core.stages with explicit cache keys."""
