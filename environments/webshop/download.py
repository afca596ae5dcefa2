"""Fetch WebShop's official data files (``eto data webshop``).

The files are the ones WebShop's own setup script downloads (Google Drive, public links):
the 1,000-product catalogue (``small``) or the full 1.18M-product one (``all``), plus the
human-instruction goals file. Each file is downloaded to a temporary name, checked to parse
as JSON, then renamed into place, so an interrupted download never leaves a file the
environment would read. Where the internet cannot be reached the command says where the
files go and how to fetch them by hand.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

DRIVE_URL = "https://drive.usercontent.google.com/download?id={id}&export=download&confirm=t"


@dataclass(frozen=True)
class RemoteFile:
    name: str
    drive_id: str
    what: str


FILES: dict[str, list[RemoteFile]] = {
    "small": [
        RemoteFile("items_shuffle_1000.json", "1EgHdxQ_YxqIQlvvq5iKlCrkEKR6-j0Ib", "products (1,000)"),
        RemoteFile("items_ins_v2_1000.json", "1IduG0xl544V_A_jv3tHXC0kyFi7PnyBu", "attributes (1,000)"),
    ],
    "all": [
        RemoteFile("items_shuffle.json", "1A2whVgOO0euk5O13n2iYDM0bQRkkRduB", "products (1.18M, ~5 GB)"),
        RemoteFile("items_ins_v2.json", "1s2j6NgHljiZzQNL3veZaAiyW_qDEgBNi", "attributes (1.18M)"),
    ],
}
GOALS = RemoteFile("items_human_ins.json", "14Kb5SPBk_jfdLZ_CDBNitW98QLDlKR5O", "human instructions (goals)")


class DownloadError(RuntimeError):
    """The files could not be fetched; the message says where they go and how to get them."""


def wanted(size: str) -> list[RemoteFile]:
    if size not in FILES:
        raise ValueError(f"size must be one of {sorted(FILES)}, got {size!r}")
    return [*FILES[size], GOALS]


def manual_instructions(dest: Path, size: str) -> str:
    lines = [f"Put these files in {dest} (then set env.kwargs.data_dir: {dest}):"]
    for f in wanted(size):
        lines.append(f"  {f.name:26s} {f.what}: {DRIVE_URL.format(id=f.drive_id)}")
    lines.append("e.g. `pip install gdown && gdown <id> -O <file>` on a machine with internet access.")
    return "\n".join(lines)


def _fetch(url: str, target: Path, timeout: float) -> None:
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as response:
            shutil.copyfileobj(response, out, length=1 << 20)
        with open(tmp, "rb") as check:
            head = check.read(1).strip()
        if head not in (b"[", b"{"):
            raise DownloadError(f"{url} did not return JSON (Google Drive may be rate limiting); try again later")
        with open(tmp) as check_json:
            json.load(check_json)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def download(dest: Path, size: str = "small", timeout: float = 30.0) -> list[Path]:
    """Download the files missing from ``dest``; returns every file's path."""
    dest.mkdir(parents=True, exist_ok=True)
    paths = []
    for f in wanted(size):
        target = dest / f.name
        if not target.is_file():
            try:
                _fetch(DRIVE_URL.format(id=f.drive_id), target, timeout)
            except (urllib.error.URLError, OSError, TimeoutError) as exc:
                raise DownloadError(f"cannot download {f.name} ({exc}).\n{manual_instructions(dest, size)}") from exc
        paths.append(target)
    return paths
