"""Thin Prefect tasks: one per ETO stage, wrapping eto_core.pipeline with explicit cache keys."""
