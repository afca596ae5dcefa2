"""Artifacts: published whole or not at all, verified on read."""

from __future__ import annotations

from pathlib import Path

import pytest

from eto_core.storage import ArtifactError, ArtifactStore


def _store(tmp_path: Path) -> ArtifactStore:
    return ArtifactStore(str(tmp_path / "root"), cache_dir=tmp_path / "cache")


def test_publish_fetch(tmp_path: Path) -> None:
    store = _store(tmp_path)
    d = store.staging_dir()
    (d / "a.txt").write_text("hello")
    ref = store.publish(d, store.uri_for("sft", "k"))
    assert store.find(ref.uri) == ref
    assert (store.fetch(ref) / "a.txt").read_text() == "hello"
    assert not d.exists()


def test_unfinished_artifact_is_invisible_and_replaced(tmp_path: Path) -> None:
    store = _store(tmp_path)
    uri = store.uri_for("sft", "k")
    partial = tmp_path / "root" / "sft" / "k"
    partial.mkdir(parents=True)
    (partial / "half.bin").write_text("x")  # a crashed writer left this, with no manifest
    assert store.find(uri) is None
    d = store.staging_dir()
    (d / "a.txt").write_text("ok")
    ref = store.publish(d, uri)
    assert not (partial / "half.bin").exists() and store.find(uri) == ref


def test_corruption_detected(tmp_path: Path) -> None:
    store = _store(tmp_path)
    d = store.staging_dir()
    (d / "a.txt").write_text("hello")
    ref = store.publish(d, store.uri_for("sft", "k"))
    (store.fetch(ref) / "a.txt").write_text("tampered")
    with pytest.raises(ArtifactError, match="does not match its manifest"):
        store.fetch(ref)


def test_staging_left_by_a_dead_process_is_removed_and_live_ones_are_kept(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    store = ArtifactStore(str(tmp_path / "root"), cache_dir=tmp_path / "cache")
    mine = store.staging_dir()
    (mine / "model.safetensors").write_text("half")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / "cache" / "staging" / f"stage-{int(dead.stdout)}-abc"
    stale.mkdir()
    (stale / "model.safetensors").write_text("half")
    assert mine.name.startswith(f"stage-{os.getpid()}-")
    assert store.remove_stale_staging() == [stale]
    assert mine.is_dir() and not stale.exists()


def test_a_claim_makes_the_next_claimant_wait_and_says_who_holds_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import os
    import threading

    store = _store(tmp_path)
    uri = store.uri_for("sft", "k")
    got: list[bool] = []

    def second() -> None:
        with store.claim(uri) as waited:
            got.append(waited)

    with store.claim(uri) as waited, caplog.at_level("WARNING", logger="eto_core.storage"):
        assert not waited
        other = threading.Thread(target=second)
        other.start()
        other.join(timeout=0.5)
        assert other.is_alive() and not got  # held back while the first claim lasts
        assert f"pid {os.getpid()}" in caplog.text and uri in caplog.text
    other.join(timeout=10)
    assert got == [True]


def test_a_claim_dies_with_its_holder(tmp_path: Path) -> None:
    import signal
    import subprocess
    import sys

    store = _store(tmp_path)
    uri = store.uri_for("sft", "k")
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time; from eto_core.storage import ArtifactStore\n"
         f"s = ArtifactStore({str(tmp_path / 'root')!r}, cache_dir={str(tmp_path / 'cache')!r})\n"
         f"with s.claim({uri!r}):\n    print('held', flush=True); time.sleep(600)"],
        stdout=subprocess.PIPE, text=True,
    )
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=10)
    with store.claim(uri) as waited:  # a killed run leaves no lock behind
        assert not waited
