"""Artifact storage: stage outputs as folders with a manifest, local or on S3, written atomically.

An artifact is a folder ``<root>/<stage>/<cache key>/`` holding the stage's files and a
``manifest.json`` with the sha256 of each file. The manifest is written last (a rename on a
local disk, a single PUT on S3), so a folder without one is an unfinished write that no later
stage reads; readers check the hashes. The manifest's own digest is the artifact's content
hash, which downstream cache keys include.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from eto_core.locks import file_lock

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"


class ArtifactError(RuntimeError):
    """A missing, partial or corrupt artifact, or an unusable store; the message says which and what to do."""


# S3 calls fail fast: a refused or silent endpoint costs seconds, not botocore's minutes.
S3_CONNECT_TIMEOUT = 3.0
S3_READ_TIMEOUT = 60.0
S3_MAX_ATTEMPTS = 3
_BAD_CREDENTIALS = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "InvalidToken",
                    "ExpiredToken", "InvalidClientTokenId", "403", "Forbidden"}


@dataclass(frozen=True)
class ArtifactRef:
    """A finished artifact: where it is and the digest of its content."""

    uri: str
    digest: str

    def to_dict(self) -> dict[str, str]:
        return {"uri": self.uri, "digest": self.digest}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def build_manifest(folder: Path, meta: dict[str, Any] | None = None) -> dict[str, Any]:
    files = {
        p.relative_to(folder).as_posix(): sha256_file(p)
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != MANIFEST
    }
    digest = hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()
    return {"files": files, "digest": digest, "meta": meta or {}}


class ArtifactStore:
    """Publishes local folders under a root (local path, file:// or s3://) and fetches them back."""

    def __init__(
        self,
        root: str,
        *,
        cache_dir: str | Path = ".eto/cache",
        s3_endpoint_url: str | None = None,
        s3_region: str = "us-east-1",
    ) -> None:
        parsed = urlparse(root)
        self.scheme = parsed.scheme if parsed.scheme in ("s3", "file") else ""
        if self.scheme == "s3":
            self.bucket = parsed.netloc
            self.prefix = parsed.path.strip("/")
            self.root = f"s3://{self.bucket}/{self.prefix}".rstrip("/")
            self._s3_endpoint_url = s3_endpoint_url
            self._s3_region = s3_region
            self._client: Any = None
        else:
            local = Path(parsed.path if self.scheme == "file" else root).expanduser().resolve()
            self.local_root = local
            self.root = local.as_uri()
        self.cache_dir = Path(cache_dir).resolve()

    # -- addressing ---------------------------------------------------------------------------
    def uri_for(self, stage: str, key: str) -> str:
        return f"{self.root}/{stage}/{key}"

    def _local_path(self, uri: str) -> Path:
        return Path(urlparse(uri).path)

    def __getstate__(self) -> dict[str, Any]:
        # Shards travel to Dask/Ray workers with their store: a boto3 client cannot be pickled,
        # and a worker must build its own from its own environment's credentials anyway.
        state = dict(self.__dict__)
        if "_client" in state:
            state["_client"] = None
        return state

    # -- S3 -------------------------------------------------------------------------------------
    @property
    def s3(self) -> Any:
        if self._client is None:
            import boto3  # only S3 users need it at import time
            from botocore.config import Config

            # A session per store: credentials are read when the store first talks to S3, not
            # taken from boto3's process-wide default session cached by an earlier client.
            self._client = boto3.session.Session().client(
                "s3", endpoint_url=self._s3_endpoint_url, region_name=self._s3_region,
                config=Config(connect_timeout=S3_CONNECT_TIMEOUT, read_timeout=S3_READ_TIMEOUT,
                              retries={"max_attempts": S3_MAX_ATTEMPTS, "mode": "standard"}),
            )
        return self._client

    def check(self) -> None:
        """Fail now, with the setting to fix, when an S3 root cannot be listed (no-op locally)."""
        if self.scheme != "s3":
            return
        with self._s3_errors():
            self.s3.list_objects_v2(Bucket=self.bucket, Prefix=self.prefix, MaxKeys=1)

    @contextmanager
    def _s3_errors(self) -> Iterator[None]:
        """botocore's exceptions -> one ArtifactError that names the setting or variable to fix."""
        from botocore.exceptions import (
            ClientError,
            ConnectionClosedError,
            ConnectTimeoutError,
            EndpointConnectionError,
            NoCredentialsError,
            PartialCredentialsError,
            ReadTimeoutError,
        )

        endpoint = self._s3_endpoint_url or "the default AWS endpoint"
        try:
            yield
        except (EndpointConnectionError, ConnectTimeoutError, ConnectionClosedError, ReadTimeoutError) as exc:
            raise ArtifactError(
                f"{self.root}: cannot reach the S3 endpoint {endpoint} ({type(exc).__name__}); check "
                "storage.s3_endpoint_url and that the S3 server is up (local stack: `eto stack status`)."
            ) from None
        except (NoCredentialsError, PartialCredentialsError):
            raise ArtifactError(
                f"{self.root}: no S3 credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
                '(local stack: eval "$(eto stack env)").'
            ) from None
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code in _BAD_CREDENTIALS:
                raise ArtifactError(
                    f"{self.root}: the S3 endpoint {endpoint} rejected the credentials ({code}); check "
                    'AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (local stack: eval "$(eto stack env)").'
                ) from None
            if code == "NoSuchBucket":
                raise ArtifactError(
                    f"{self.root}: bucket '{self.bucket}' does not exist at {endpoint}; create it or fix storage.root."
                ) from None
            raise

    def _s3_key(self, uri: str, rel: str = "") -> str:
        key = urlparse(uri).path.lstrip("/")
        return f"{key}/{rel}" if rel else key

    # -- reading --------------------------------------------------------------------------------
    def read_manifest(self, uri: str) -> dict[str, Any] | None:
        """The manifest of a finished artifact, or None when it is absent or unfinished."""
        if self.scheme == "s3":
            from botocore.exceptions import ClientError

            with self._s3_errors():
                try:
                    body = self.s3.get_object(Bucket=self.bucket, Key=self._s3_key(uri, MANIFEST))["Body"].read()
                except ClientError as exc:  # NoSuchKey, or a bare 404 on some servers
                    if str(exc.response.get("Error", {}).get("Code", "")) in ("NoSuchKey", "404"):
                        return None
                    raise
            return dict(json.loads(body))
        path = self._local_path(uri) / MANIFEST
        if not path.is_file():
            return None
        try:
            return dict(json.loads(path.read_text()))
        except json.JSONDecodeError:
            raise ArtifactError(f"{path}: corrupt manifest; delete the folder {path.parent} and rerun.") from None

    def find(self, uri: str) -> ArtifactRef | None:
        manifest = self.read_manifest(uri)
        return None if manifest is None else ArtifactRef(uri, manifest["digest"])

    def fetch(self, ref: ArtifactRef) -> Path:
        """A local folder with the artifact's files, checked against the manifest."""
        manifest = self.read_manifest(ref.uri)
        if manifest is None:
            raise ArtifactError(f"{ref.uri}: artifact is missing or unfinished (no {MANIFEST}); rerun its stage.")
        if manifest["digest"] != ref.digest:
            raise ArtifactError(
                f"{ref.uri}: content digest {manifest['digest'][:12]} differs from the expected "
                f"{ref.digest[:12]}; the artifact was replaced: rerun the stages after it."
            )
        if self.scheme == "s3":
            folder = self.cache_dir / ref.digest
            if not (folder / MANIFEST).is_file():
                tmp = Path(tempfile.mkdtemp(dir=self._ensure(self.cache_dir), prefix=".fetch-"))
                with self._s3_errors():
                    for rel in manifest["files"]:
                        target = tmp / rel
                        target.parent.mkdir(parents=True, exist_ok=True)
                        self.s3.download_file(self.bucket, self._s3_key(ref.uri, rel), str(target))
                (tmp / MANIFEST).write_text(json.dumps(manifest))
                self._verify(tmp, manifest, ref.uri)
                shutil.rmtree(folder, ignore_errors=True)
                tmp.rename(folder)
            return folder
        folder = self._local_path(ref.uri)
        self._verify(folder, manifest, ref.uri)
        return folder

    def _verify(self, folder: Path, manifest: dict[str, Any], uri: str) -> None:
        for rel, expected in manifest["files"].items():
            path = folder / rel
            # A finished artifact is reused as it is, so rerunning alone would hit the same files:
            # the fix is to delete the artifact first.
            if not path.is_file():
                raise ArtifactError(
                    f"{uri}: file '{rel}' listed in the manifest is missing; delete {uri} and rerun its stage."
                )
            if sha256_file(path) != expected:
                raise ArtifactError(
                    f"{uri}: file '{rel}' does not match its manifest hash (corrupt); delete {uri} and rerun its stage."
                )

    # -- writing --------------------------------------------------------------------------------
    @staticmethod
    def _ensure(path: Path) -> Path:
        path.mkdir(parents=True, exist_ok=True)
        return path

    def staging_dir(self) -> Path:
        """A fresh local folder to write a stage's output into before publishing; its name holds
        this process's id, so a crashed process's folders can be told apart and removed."""
        return Path(tempfile.mkdtemp(dir=self._ensure(self.cache_dir / "staging"), prefix=f"stage-{os.getpid()}-"))

    def remove_stale_staging(self) -> list[Path]:
        """Delete staging folders left by processes that are gone (a killed run's half-written
        model can be gigabytes). Folders of live processes, and unnamed ones, are kept."""
        removed: list[Path] = []
        staging = self.cache_dir / "staging"
        for folder in sorted(staging.glob("stage-*")) if staging.is_dir() else []:
            pid = folder.name.split("-")[1]
            if not pid.isdigit() or _alive(int(pid)):
                continue
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
        return removed

    @contextmanager
    def claim(self, uri: str) -> Iterator[bool]:
        """Hold this machine's lock on computing ``uri``; yields whether another run held it first.

        Two runs that reach the same stage at once would both compute it, and the later publish
        would replace the earlier artifact under its readers (with another digest wherever
        training is not bit-for-bit repeatable). A stage holds the claim from its cache check to
        its publish, so the second run waits and then reuses the artifact. The lock lives in
        this store's cache_dir: runs on other machines sharing an S3 root are not held back."""
        name = hashlib.sha256(uri.encode()).hexdigest()[:32] + ".lock"

        def waiting(holder: str) -> None:
            log.warning("another run (%s) is computing %s; waiting to reuse it", holder, uri)

        with file_lock(self.cache_dir / "locks" / name, on_wait=waiting) as waited:
            yield waited

    def publish(self, folder: Path, uri: str, meta: dict[str, Any] | None = None) -> ArtifactRef:
        """Move/upload ``folder`` to ``uri``; the manifest goes last so readers never see half."""
        manifest = build_manifest(folder, meta)
        if self.scheme == "s3":
            with self._s3_errors():
                for rel in manifest["files"]:
                    self.s3.upload_file(str(folder / rel), self.bucket, self._s3_key(uri, rel))
                self.s3.put_object(
                    Bucket=self.bucket, Key=self._s3_key(uri, MANIFEST), Body=json.dumps(manifest).encode()
                )
            shutil.rmtree(folder, ignore_errors=True)
        else:
            target = self._local_path(uri)
            target.parent.mkdir(parents=True, exist_ok=True)
            (folder / MANIFEST).write_text(json.dumps(manifest, indent=1))
            if target.exists():
                # An unfinished earlier attempt (no manifest): replace it whole.
                shutil.rmtree(target)
            try:
                os.replace(folder, target)
            except OSError:
                # Staging and root on different file systems: copy beside the target, then rename.
                tmp = target.with_name(f".{target.name}.partial")
                shutil.rmtree(tmp, ignore_errors=True)
                shutil.copytree(folder, tmp)
                os.replace(tmp, target)
                shutil.rmtree(folder, ignore_errors=True)
        return ArtifactRef(uri, manifest["digest"])
