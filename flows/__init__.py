"""Prefect flows composing the stage tasks, and the ``eto`` command line."""
