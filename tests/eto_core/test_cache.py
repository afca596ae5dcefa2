"""Cache keys move when any input, setting or version changes, and not otherwise."""

from __future__ import annotations

import pytest

from eto_core import cache
from eto_core.cache import cache_key
from eto_core.dpo import DPOSettings
from eto_core.storage import ArtifactRef

A = ArtifactRef("file:///x/a", "d" * 64)
B = ArtifactRef("file:///x/b", "e" * 64)


def key(**over: object) -> str:
    args: dict = {"settings": {"dpo": DPOSettings(), "iteration": 1}, "inputs": {"model": A, "pairs": B}}
    args.update(over)
    return cache_key("dpo", **args)


def test_stable() -> None:
    assert key() == key()
    # the URI does not matter, only the content digest: a moved artifact stays cached
    moved = ArtifactRef("s3://bucket/a", A.digest)
    assert key(inputs={"model": moved, "pairs": B}) == key()


def test_moves_with_inputs_settings_and_versions(monkeypatch: pytest.MonkeyPatch) -> None:
    base = key()
    assert key(inputs={"model": B, "pairs": A}) != base
    assert key(inputs={"model": A, "pairs": ArtifactRef(B.uri, "f" * 64)}) != base
    assert key(settings={"dpo": DPOSettings(beta=0.7), "iteration": 1}) != base
    assert key(settings={"dpo": DPOSettings(), "iteration": 2}) != base
    assert key(version="2") != base
    assert cache_key("sft", settings={"dpo": DPOSettings(), "iteration": 1}, inputs={"model": A, "pairs": B}) != base
    monkeypatch.setitem(cache.STAGE_VERSIONS, "dpo", cache.STAGE_VERSIONS["dpo"] + 1)
    assert key() != base


def test_unknown_stage() -> None:
    with pytest.raises(KeyError, match="unknown stage 'nope'; add it to STAGE_VERSIONS"):
        cache_key("nope", settings={})
