"""Cache keys are a contract with every artifact store already written: a refactor that moves key
code must not change them. These are the keys of the default and mini recipes on fixed inputs,
recorded when eto_core/pipeline.py was split into eto_core/stages/ (issue 26). A change here is
only right together with a STAGE_VERSIONS / CACHE_VERSION bump or a key setting that says why
(the sampled rollouts, best-of-n and RFT's exploration, changed with ``sampler: 2`` then ``3``, the per-row
sampler of eto_core.sampling)."""

from __future__ import annotations

from pathlib import Path

import pytest

from eto_core import stages
from eto_core.config import load_recipe
from eto_core.stages import keys
from eto_core.storage import ArtifactRef

ROOT = Path(__file__).resolve().parents[2]
A, B, C = (ArtifactRef(f"file:///x/{c}", c * 64) for c in "abc")

RECORDED = {
    "default.yaml": ("4e70f3a62e9c20dd 888b175705d82cb7 6808aa74d5ade31f b8027fa5296b8a5e 6f5392953de87df4 "
        "c42aaf3f1bc769b5 823d49e9d4a695c6 b4580dc878ce968d 9185a4af582185b4 f63bee469f6f68c4 "
        "6ecb5e91322f575f 2a644ed3a7628286 c1552570df763fae"),
    "mini.yaml": ("a6f56197c55bc567 545a1c0adcb4a401 8962f66f47e83da1 2b35dd53f43af64c 6f5392953de87df4 "
        "c42aaf3f1bc769b5 bae79ade3ef8c50c 3e424b83622ddd97 a28eb337ade63271 49b7eca32dadc791 "
        "ebf10cc0e8a4b637 fb7a032a7799a271 52f22e8a6dc81fb6"),
}


def _keys(recipe_name: str) -> str:
    r = load_recipe(ROOT / "recipes" / recipe_name)
    keys = [stages.expert_key(r), stages.model_init_key(r, A), stages.sft_key(r, A, B), stages.rft_key(r, A, B, C),
            stages.pairs_key(r, A, B, 1), stages.pairs_key(r, A, B, 2, C), stages.dpo_key(r, A, B, 1),
            stages.dpo_key(r, A, B, 2)]
    for stage, split in [("explore", "train"), ("evaluate", "seen"), ("evaluate", "unseen"), ("best_of_n", "seen"),
                         ("rft_explore", "train")]:
        keys.append(stages.rollout_key(r, A, stage=stage, split=split, iteration=1,  # type: ignore[arg-type]
                                       gen=stages.sampling(r, stage)))  # type: ignore[arg-type]
    return " ".join(k[:16] for k in keys)


@pytest.mark.parametrize("recipe_name", sorted(RECORDED))
def test_stage_keys_are_the_recorded_ones(recipe_name: str) -> None:
    assert _keys(recipe_name) == RECORDED[recipe_name]


@pytest.mark.parametrize(("backend", "sampled"), [("hf", True), ("vllm", False), ("openai", False)])
def test_only_the_hf_backends_sampled_rollouts_name_the_new_sampler(
    backend: str, sampled: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The per-row sampler replaced HF's in our policy only: vLLM's and a served model's sampled
    rollouts draw as before and keep their cached keys; greedy ones never name a sampler."""
    seen: list[dict[str, object]] = []

    def recording(stage: str, *, settings: dict[str, object], inputs: object = None) -> str:
        seen.append(dict(settings))
        return "k"

    monkeypatch.setattr(keys, "cache_key", recording)
    r = load_recipe(ROOT / "recipes" / "default.yaml", [f"policy.backend={backend}"]
                    + (["policy.base_url=http://127.0.0.1:1/v1", "policy.model=m"] if backend == "openai" else []))
    for stage in ("best_of_n", "evaluate"):
        stages.rollout_key(r, A, stage=stage, split="seen", iteration=1, gen=stages.sampling(r, stage))
    assert stages.sampling(r, "best_of_n").temperature > 0 and stages.sampling(r, "evaluate").temperature == 0
    assert [s.get("sampler") for s in seen] == [3 if sampled else None, None]
