"""BM25 product search (bm25s), built once per catalogue and cached on disk.

WebShop searches a Lucene (pyserini) index, which needs a JVM; bm25s scores the same
Lucene-style BM25 from sparse numpy matrices. Each product is one document: its title,
features, description and option values, in normal form minus Lucene's English stop words
(:mod:`environments.webshop.text`). k1 = 0.9 and b = 0.4 are pyserini's defaults.

A search returns up to 50 products (WebShop's ``SEARCH_RETURN_N``) with a positive score,
best first; equal scores keep catalogue order, so results never depend on sort internals.

The index lives in ``<cache_dir>/bm25/<key>/``, the key a hash of the products file's content,
the document recipe version and the bm25s version and parameters. A new index is written to
a temporary folder and renamed into place, so concurrent builders never see a half-written
one; later constructions (in any process) load it instead of rebuilding.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import tempfile
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import bm25s
import numpy as np

from environments.webshop.data import Product
from environments.webshop.text import document_tokens, search_tokens

INDEX_VERSION = "1"
"""Bump when the document text or tokenisation changes: it is part of the cache key."""
K1 = 0.9
B = 0.4
SEARCH_RETURN_N = 50
META_FILE = "eto_meta.json"

STATS = {"built": 0, "loaded": 0}
"""Index builds and disk loads in this process (tests assert the disk cache is reused)."""


def product_document(product: Product) -> str:
    values = " ".join(v for _, vs in product.options for v in vs)
    return " ".join((product.title, " ".join(product.features), product.description, values))


def index_key(products_digest: str) -> str:
    recipe = f"{INDEX_VERSION}|{bm25s.__version__}|k1={K1}|b={B}|{products_digest}"
    return hashlib.sha256(recipe.encode()).hexdigest()[:24]


def _asins_digest(products: Sequence[Product]) -> str:
    return hashlib.sha256("\n".join(p.asin for p in products).encode()).hexdigest()


class SearchIndex:
    def __init__(self, retriever: bm25s.BM25, num_docs: int) -> None:
        self._retriever = retriever
        self._vocab: dict[str, int] = retriever.vocab_dict
        self.num_docs = num_docs
        # Agents (and the expert) repeat the same searches; one env instance per live episode
        # shares this index, so the cache pays off across episodes too.
        self.search = lru_cache(maxsize=4096)(self.rank)

    def rank(self, keywords: str, k: int = SEARCH_RETURN_N) -> tuple[int, ...]:
        """Document numbers (catalogue positions) of the top ``k`` products, best first.
        ``search`` is the same, remembered."""
        ids = [self._vocab[t] for t in search_tokens(keywords) if t in self._vocab]
        if not ids:
            return ()
        scores = np.asarray(self._retriever.get_scores_from_ids(ids))
        hits = np.flatnonzero(scores > 0)
        if hits.size > k:
            # Keep everything scoring at least the k-th best, so ties at the cut are resolved
            # by catalogue order below rather than by argpartition's internals.
            kth = np.partition(scores[hits], hits.size - k)[hits.size - k]
            hits = hits[scores[hits] >= kth]
        order = np.lexsort((hits, -scores[hits]))
        return tuple(int(i) for i in hits[order][:k])


def build_index(products: Sequence[Product]) -> bm25s.BM25:
    retriever = bm25s.BM25(k1=K1, b=B, method="lucene")
    corpus = [document_tokens(product_document(p)) or [""] for p in products]
    retriever.index(corpus, show_progress=False)
    STATS["built"] += 1
    return retriever


def load_or_build(products: Sequence[Product], products_digest: str, cache_dir: Path) -> SearchIndex:
    folder = cache_dir / "bm25" / index_key(products_digest)
    expected = {"num_docs": len(products), "asins_sha256": _asins_digest(products)}
    meta_path = folder / META_FILE
    if meta_path.is_file():
        try:
            meta = json.loads(meta_path.read_text())
            if {k: meta.get(k) for k in expected} == expected:
                retriever = bm25s.BM25.load(str(folder), show_progress=False)
                STATS["loaded"] += 1
                return SearchIndex(retriever, len(products))
        except (OSError, ValueError):
            pass  # unreadable or stale: rebuilt below and replaced
    retriever = build_index(products)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".building-", dir=folder.parent))
    try:
        retriever.save(str(tmp), show_progress=False)
        (tmp / META_FILE).write_text(json.dumps({**expected, "bm25s": bm25s.__version__, "k1": K1, "b": B}))
        if folder.exists():
            shutil.rmtree(folder, ignore_errors=True)  # a stale index under this key
        with contextlib.suppress(OSError):  # another process renamed its (identical) index first
            tmp.rename(folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return SearchIndex(retriever, len(products))


_INDEXES: dict[tuple[str, str], SearchIndex] = {}


def shared_index(products: Sequence[Product], products_digest: str, cache_dir: Path) -> SearchIndex:
    """One index per (catalogue, cache dir) per process, shared by all env instances."""
    key = (products_digest, str(cache_dir))
    if key not in _INDEXES:
        if len(_INDEXES) >= 4:
            _INDEXES.pop(next(iter(_INDEXES)))
        _INDEXES[key] = load_or_build(products, products_digest, cache_dir)
    return _INDEXES[key]


def forget_loaded_indexes() -> None:
    """Drop the in-process indexes (the disk cache stays); for tests and benchmarks."""
    _INDEXES.clear()
