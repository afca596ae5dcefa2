"""Artifacts damaged after they were published: the store refuses to hand them out, naming the
artifact and file, and keeps the damaged folder for inspection (eto_core/storage.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from eto_core.storage import MANIFEST, ArtifactError, ArtifactRef, ArtifactStore
from tests.reliability.conftest import Fault

KEPT = "nothing: the damaged artifact stays in place; no stage reads it"


@pytest.fixture
def published(tmp_path: Path) -> tuple[ArtifactStore, ArtifactRef, Path]:
    store = ArtifactStore(str(tmp_path / "artifacts"), cache_dir=tmp_path / "cache")
    folder = store.staging_dir()
    (folder / "trajectories.parquet").write_bytes(b"PAR1 pretend records PAR1")
    (folder / "model").mkdir()
    (folder / "model" / "config.json").write_text('{"hidden_size": 32}')
    ref = store.publish(folder, store.uri_for("expert", "abc123"))
    return store, ref, store._local_path(ref.uri)


def test_file_changed_after_publish(published: tuple[ArtifactStore, ArtifactRef, Path], fault: Fault) -> None:
    store, ref, folder = published
    (folder / "trajectories.parquet").write_bytes(b"PAR1 flipped bits PAR1")
    with fault("artifacts", "artifact file whose bytes changed (hash mismatch)", ArtifactError,
               r"expert/abc123: file 'trajectories\.parquet' does not match its manifest hash \(corrupt\); "
               r"delete .*expert/abc123 and rerun", lost=KEPT):
        store.fetch(ref)
    assert (folder / "trajectories.parquet").is_file()


def test_file_deleted_after_publish(published: tuple[ArtifactStore, ArtifactRef, Path], fault: Fault) -> None:
    store, ref, folder = published
    (folder / "model" / "config.json").unlink()
    with fault("artifacts", "artifact file deleted", ArtifactError,
               r"expert/abc123: file 'model/config\.json' listed in the manifest is missing; delete", lost=KEPT):
        store.fetch(ref)


def test_corrupt_manifest(published: tuple[ArtifactStore, ArtifactRef, Path], fault: Fault) -> None:
    store, ref, folder = published
    (folder / MANIFEST).write_text('{"files": {')
    with fault("artifacts", "truncated manifest.json", ArtifactError,
               r"abc123/manifest\.json: corrupt manifest; delete the folder .*abc123 and rerun", lost=KEPT):
        store.fetch(ref)


def test_artifact_replaced_under_a_downstream_key(
    published: tuple[ArtifactStore, ArtifactRef, Path], fault: Fault
) -> None:
    store, ref, folder = published
    manifest = json.loads((folder / MANIFEST).read_text())
    manifest["digest"] = "0" * 64
    (folder / MANIFEST).write_text(json.dumps(manifest))
    with fault("artifacts", "artifact replaced (digest differs from the one a later stage recorded)", ArtifactError,
               r"expert/abc123: content digest 000000000000 differs from the expected .*rerun the stages after it",
               lost=KEPT):
        store.fetch(ref)


def test_unfinished_artifact(tmp_path: Path, fault: Fault) -> None:
    store = ArtifactStore(str(tmp_path / "artifacts"), cache_dir=tmp_path / "cache")
    uri = store.uri_for("sft", "k1")
    store._local_path(uri).mkdir(parents=True)  # a crash before the manifest was written
    with fault("artifacts", "artifact folder without manifest (crash mid-write)", ArtifactError,
               r"sft/k1: artifact is missing or unfinished \(no manifest\.json\); rerun its stage"):
        store.fetch(ArtifactRef(uri, "d" * 64))
