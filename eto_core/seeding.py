"""Seeding: one recipe seed that varies model init, data order and sampling."""

from __future__ import annotations

import random
from typing import TypeVar

import torch
from pydantic import BaseModel

from eto_core.config import Recipe

_S = TypeVar("_S", bound=BaseModel)


def seeded(settings: _S, recipe: Recipe) -> _S:
    """Component settings with the recipe's global seed added to their own seed, so one
    ``seed`` in a recipe (or ``eto run --seed``) varies model init, data order and sampling."""
    return settings.model_copy(update={"seed": settings.seed + recipe.seed})  # type: ignore[attr-defined]  # every seeded settings model has `seed`


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
