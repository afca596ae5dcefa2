"""The ``alfworld`` environment: ALFWorld 2.1.1 text games through the PyPI package ``alfworld``.

The adapter is :class:`environments.alfworld.env.AlfworldEnv`. This package module imports
nothing, so the data, action and prompt helpers load without TextWorld/ALFWorld installed;
``env`` and ``game`` import them.
"""
