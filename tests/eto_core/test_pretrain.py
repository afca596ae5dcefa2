"""Domain pre-training: windows cover every token; a few steps lower the LM loss."""

from __future__ import annotations

from pathlib import Path

from eto_core.pretrain import PretrainSettings, pretrain_lm, windows


def test_windows_overlap_and_cover() -> None:
    seq = list(range(10))
    got = windows([seq], 4)
    assert got[0] == [0, 1, 2, 3] and got[1] == [2, 3, 4, 5]
    assert {t for w in got for t in w} == set(seq)
    assert windows([[1]], 4) == []  # a single token has nothing to predict


def test_pretrain_lowers_loss(tmp_path: Path, tiny_tokenizer, tiny_model, toy_trajectories) -> None:  # type: ignore[no-untyped-def]
    trajs = toy_trajectories
    before = [p.detach().clone() for p in tiny_model.parameters()]
    result = pretrain_lm(tiny_model, tiny_tokenizer, trajs,
                         PretrainSettings(max_steps=30, window=64, batch_size=4, learning_rate=3e-3), str(tmp_path))
    assert result.num_steps == 30 and result.last_loss < result.first_loss
    assert any((a != b).any() for a, b in zip(before, tiny_model.parameters(), strict=True))
    assert tiny_tokenizer.padding_side == "left"  # restored for generation
