"""BM25 search: the on-disk index cache, deterministic ties, queries with no known word."""

from __future__ import annotations

from pathlib import Path

from environments.webshop import WebShopEnv
from environments.webshop.search import META_FILE, STATS, build_index, forget_loaded_indexes, index_key
from environments.webshop.search import SearchIndex as Index
from environments.webshop.synthetic import generate
from tests.environments.webshop.builders import product


def test_index_is_built_once_then_loaded_from_disk(tmp_path: Path) -> None:
    generate(tmp_path / "shop", products=150, seed=5)
    cache = tmp_path / "cache"
    built, loaded = STATS["built"], STATS["loaded"]
    first = WebShopEnv(tmp_path / "shop", seen_size=5, dev_size=5, unseen_size=5, cache_dir=cache)
    assert (STATS["built"], STATS["loaded"]) == (built + 1, loaded)
    (folder,) = (cache / "bm25").iterdir()
    assert folder.name == index_key(first.catalogue.products_digest)
    stamp = (folder / META_FILE).stat().st_mtime_ns

    forget_loaded_indexes()  # as a fresh process would: nothing in memory, the index on disk
    second = WebShopEnv(tmp_path / "shop", seen_size=5, dev_size=5, unseen_size=5, cache_dir=cache)
    assert (STATS["built"], STATS["loaded"]) == (built + 1, loaded + 1)
    assert (folder / META_FILE).stat().st_mtime_ns == stamp
    assert [p.name for p in (cache / "bm25").iterdir()] == [folder.name]
    for goal in first.catalogue.goals[:20]:
        assert second.search(goal.request) == first.search(goal.request)

    third = WebShopEnv(tmp_path / "shop", seen_size=5, dev_size=5, unseen_size=5, cache_dir=cache)
    assert (STATS["built"], STATS["loaded"]) == (built + 1, loaded + 1)  # shared in memory
    assert third.index is second.index


def test_ties_keep_catalogue_order_and_unknown_words_find_nothing() -> None:
    twins = [product(asin=f"B0TWIN{i:04d}", title="Plain Mug", description="", features=(), options=())
             for i in range(60)]  # fmt: skip
    docs = [*twins[:30], product(asin="B0BEST0001", title="Plain Mug Mug", description="", features=(), options=()),
            *twins[30:]]  # fmt: skip
    index = Index(build_index(docs), len(docs))
    hits = index.search("plain mug")
    assert len(hits) == 50  # WebShop shows at most 50 results
    assert hits[0] == 30  # the best score first, then equal scores in catalogue order
    assert list(hits[1:]) == [i for i in range(61) if i != 30][:49]
    assert index.search("the of and") == () and index.search("zebra") == ()
