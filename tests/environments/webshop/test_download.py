from __future__ import annotations

import functools
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from environments.webshop import download as dl


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    root = tmp_path / "served"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a, **k: None  # type: ignore[method-assign]
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/{{id}}", root
    finally:
        httpd.shutdown()


def test_download_writes_each_file_once_complete(server: tuple[str, Path], tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    url, root = server
    monkeypatch.setattr(dl, "DRIVE_URL", url)
    for f in dl.wanted("small"):
        (root / f.drive_id).write_text('[{"asin": "B0"}]' if "shuffle" in f.name else "{}")
    dest = tmp_path / "data"
    paths = dl.download(dest, "small")
    assert sorted(p.name for p in paths) == sorted(f.name for f in dl.wanted("small"))
    assert not list(dest.glob(".*.part"))


def test_a_non_json_answer_leaves_no_file(server: tuple[str, Path], tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    url, root = server
    monkeypatch.setattr(dl, "DRIVE_URL", url)
    for f in dl.wanted("small"):
        (root / f.drive_id).write_text("<html>quota exceeded</html>")
    dest = tmp_path / "data"
    with pytest.raises(dl.DownloadError, match="did not return JSON"):
        dl.download(dest, "small")
    assert list(dest.iterdir()) == []


def test_unreachable_host_says_where_files_go(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dl, "DRIVE_URL", "http://127.0.0.1:9/{id}")  # discard port: connection refused
    dest = tmp_path / "data"
    with pytest.raises(dl.DownloadError) as info:
        dl.download(dest, "small", timeout=5)
    message = str(info.value)
    assert str(dest) in message and "items_human_ins.json" in message and "data_dir" in message
