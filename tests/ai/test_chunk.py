"""Chunking: token limits by the model's own tokenizer, overlaps, offsets and headings."""

from __future__ import annotations

import re
from itertools import pairwise
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from matrixos.ai.chunk import Chunk, chunk_document, chunk_text
from matrixos.ai.embed import MiniLMEmbedder, get_embedder
from matrixos.connectors.documents import Document, Section
from matrixos.errors import ConfigError, IngestError


@pytest.fixture(scope="module")
def minilm() -> MiniLMEmbedder:
    emb = get_embedder("minilm")
    assert isinstance(emb, MiniLMEmbedder)
    return emb


@pytest.fixture(scope="module")
def model_tok(minilm: MiniLMEmbedder) -> Any:
    """The tokenizer the loaded model itself uses (transformers), not the one chunking uses."""
    return minilm.model.tokenizer


def _model_len(model_tok: Any, text: str) -> int:
    """Positions the model needs for ``text``, [CLS] and [SEP] included."""
    return len(model_tok(text)["input_ids"])


def _sentences(n: int, topic: str = "lakehouse") -> str:
    line = "Sentence {} explains how the {} keeps tables consistent under load."
    return " ".join(line.format(i, topic) for i in range(n))


def _build(parts: list[tuple[tuple[str, ...], str]], title: str | None = None) -> Document:
    """A document whose sections are ``parts``, laid out with blank lines between them."""
    text, sections, pos = "", [], 0
    for headings, body in parts:
        if text:
            text += "\n\n"
            pos += 2
        sections.append(Section(headings, body, pos, pos + len(body), page=len(sections) + 1))
        text += body
        pos += len(body)
    return Document("mem://doc.md", "text/markdown", text, title=title, sections=sections)


def _check_offsets(doc: Document, chunks: list[Chunk]) -> None:
    for i, c in enumerate(chunks):
        assert c.index == i
        assert doc.text[c.start : c.end] == c.body
        assert c.body == c.body.strip() and c.body
        prefix = " > ".join(c.headings)
        assert c.text == (f"{prefix}\n\n{c.body}" if prefix else c.body)


# -- the token window -------------------------------------------------------------------------


def test_every_chunk_fits_the_minilm_window(minilm: MiniLMEmbedder, model_tok: Any) -> None:
    doc = _build(
        [
            (("Guide",), _sentences(40)),
            (("Guide", "Install"), "\n\n".join(_sentences(6, f"part {p}") for p in range(8))),
            (("Guide", "Install", "Linux"), "short section"),
        ],
        title="Guide",
    )
    chunks = chunk_document(doc, embedder_or_tokenizer=minilm)
    assert len(chunks) > 6
    _check_offsets(doc, chunks)
    for c in chunks:
        assert _model_len(model_tok, c.text) <= 256
        assert c.tokens == len(model_tok(c.text, add_special_tokens=False)["input_ids"])
        assert c.tokens <= 254
    # Chunks are not needlessly small: all but the last of a section fill most of the window.
    sizes = [c.tokens for c in chunks if c.headings == ("Guide",)]
    assert min(sizes[:-1]) > 254 // 2


def test_smaller_max_tokens_is_respected(minilm: MiniLMEmbedder, model_tok: Any) -> None:
    chunks = chunk_text(_sentences(30), embedder_or_tokenizer=minilm, max_tokens=64, overlap=8)
    assert len(chunks) >= 6  # about 360 tokens in all
    assert all(_model_len(model_tok, c.text) - 2 <= 64 for c in chunks)


def test_long_paragraph_without_punctuation_is_still_split(
    minilm: MiniLMEmbedder, model_tok: Any
) -> None:
    text = " ".join(f"token{i} alpha beta" for i in range(900))
    chunks = chunk_text(text, embedder_or_tokenizer=minilm)
    assert len(chunks) >= 10
    doc = Document("", "text/plain", text)
    _check_offsets(doc, chunks)
    for c in chunks:
        assert _model_len(model_tok, c.text) <= 256
        # Cut between words, never inside one.
        assert c.start == 0 or text[c.start - 1] == " "
        assert c.end == len(text) or text[c.end] == " "
    assert chunks[-1].body.endswith("token899 alpha beta")


def test_unicode_text(minilm: MiniLMEmbedder, model_tok: Any) -> None:
    text = "\n\n".join(
        [
            "数据湖仓把结构化数据和多模态数据放在一起。" * 40,
            "Crème brûlée à Zürich — naïve café, résumé: " * 30,
            "🚀 emoji ∑≤∞ " * 60 + "Ελληνικά κείμενα και русский текст. " * 20,
        ]
    )
    chunks = chunk_text(text, embedder_or_tokenizer=minilm, title="Überblick")
    doc = Document("", "text/plain", text, title="Überblick")
    _check_offsets(doc, chunks)
    assert len(chunks) > 4
    for c in chunks:
        assert c.headings == ("Überblick",)
        assert _model_len(model_tok, c.text) <= 256
    # Every character that is not whitespace is in some chunk.
    covered = set()
    for c in chunks:
        covered.update(range(c.start, c.end))
    assert all(i in covered for i, ch in enumerate(text) if not ch.isspace())


# -- overlap, sections, boundaries ------------------------------------------------------------


def test_consecutive_chunks_of_a_section_overlap(minilm: MiniLMEmbedder) -> None:
    text = _sentences(60)
    chunks = chunk_text(text, embedder_or_tokenizer=minilm, overlap=32)
    assert len(chunks) > 3
    for a, b in pairwise(chunks):
        assert a.start < b.start < a.end < b.end
        shared = minilm.count_tokens(text[b.start : a.end])
        assert 0 < shared <= 32
    none = chunk_text(text, embedder_or_tokenizer=minilm, overlap=0)
    for a, b in pairwise(none):
        assert a.end <= b.start


def test_chunks_never_cross_sections_and_carry_headings(minilm: MiniLMEmbedder) -> None:
    parts = [
        (("Manual",), _sentences(25, "catalog")),
        (("Manual", "Storage"), _sentences(25, "warehouse")),
        (("Manual", "Storage", "S3"), _sentences(3, "bucket")),
    ]
    doc = _build(parts, title="Manual")
    chunks = chunk_document(doc, embedder_or_tokenizer=minilm, overlap=16)
    _check_offsets(doc, chunks)
    for c in chunks:
        owners = [s for s in doc.sections if s.start <= c.start and c.end <= s.end]
        assert len(owners) == 1
        # The title leads the path once, even though the sections already start with it.
        assert c.headings == owners[0].headings
        assert c.page == owners[0].page
    assert {c.headings for c in chunks} == {p[0] for p in parts}
    assert chunks[-1].text.startswith("Manual > Storage > S3\n\n")
    # Sections are chunked in order.
    assert [c.start for c in chunks] == sorted(c.start for c in chunks)


def test_cuts_prefer_sentence_and_paragraph_ends(minilm: MiniLMEmbedder) -> None:
    paragraphs = [_sentences(4, f"topic {p}") for p in range(12)]  # about 70 tokens each
    text = "\n\n".join(paragraphs)
    chunks = chunk_text(text, embedder_or_tokenizer=minilm, overlap=0)
    assert len(chunks) > 2
    for c in chunks:
        assert c.end == len(text) or text[c.end : c.end + 2] == "\n\n"
        assert c.start == 0 or text[c.start - 2 : c.start] == "\n\n"
    one_paragraph = _sentences(50)
    for c in chunk_text(one_paragraph, embedder_or_tokenizer=minilm, overlap=20):
        assert c.body.endswith(".")
        assert c.body.startswith("Sentence ")


def test_documents_without_sections() -> None:
    text = "Plain text with no headings at all."
    titled = chunk_document(
        Document("", "text/plain", text, title="Notes"), embedder_or_tokenizer="hash"
    )
    assert [(c.headings, c.text, c.body) for c in titled] == [
        (("Notes",), f"Notes\n\n{text}", text)
    ]
    untitled = chunk_document(Document("", "text/plain", text), embedder_or_tokenizer="hash")
    assert [(c.headings, c.text) for c in untitled] == [((), text)]


def test_empty_and_blank_inputs_give_no_chunks() -> None:
    assert chunk_text("", embedder_or_tokenizer="hash") == []
    assert chunk_text(" \n\t\n ", embedder_or_tokenizer="hash") == []
    doc = _build([(("A",), "   "), (("B",), "real text here"), (("C",), "\n\n")])
    chunks = chunk_document(doc, embedder_or_tokenizer="hash")
    assert [(c.headings, c.body, c.index) for c in chunks] == [(("B",), "real text here", 0)]


def test_chunking_is_deterministic(minilm: MiniLMEmbedder) -> None:
    doc = _build([(("X",), _sentences(50)), (("X", "Y"), _sentences(30))], title="T")
    assert chunk_document(doc, embedder_or_tokenizer=minilm) == chunk_document(
        doc, embedder_or_tokenizer=get_embedder("minilm")
    )


def test_a_very_long_heading_path_is_shortened_to_fit(
    minilm: MiniLMEmbedder, model_tok: Any
) -> None:
    headings = tuple(f"Chapter {i} " + "word " * 40 for i in range(5))
    doc = _build([(headings, _sentences(30))])
    chunks = chunk_document(doc, embedder_or_tokenizer=minilm)
    assert chunks
    for c in chunks:
        assert c.headings == tuple(h.strip() for h in headings)
        assert _model_len(model_tok, c.text) <= 256
        assert c.text.endswith(c.body)
        assert minilm.count_tokens(c.text[: -len(c.body)]) <= 254 // 4 + 1


# -- other tokenizers and bad input -----------------------------------------------------------


class WhitespaceTokenizer:
    """A tokenizer that is neither an embedder nor registered: any object with these works."""

    max_tokens = 10

    def count_tokens(self, text: str) -> int:
        return len(text.split())

    def tokenize_offsets(self, text: str) -> list[tuple[int, int]]:
        return [m.span() for m in re.finditer(r"\S+", text)]


def test_any_tokenizer_object_works_and_caps_max_tokens() -> None:
    text = " ".join(f"w{i}" for i in range(35))
    tok = WhitespaceTokenizer()
    chunks = chunk_text(text, embedder_or_tokenizer=tok, max_tokens=500, overlap=2)
    assert all(c.tokens <= 10 for c in chunks)
    assert [c.tokens for c in chunks] == [len(c.body.split()) for c in chunks]
    assert chunks[0].body == "w0 w1 w2 w3 w4 w5 w6 w7 w8 w9"
    assert chunks[1].body.startswith("w8 w9 w10")


class NoWindowTokenizer:
    def count_tokens(self, text: str) -> int:
        return len(text.split())

    def tokenize_offsets(self, text: str) -> list[tuple[int, int]]:
        return [m.span() for m in re.finditer(r"\S+", text)]


def test_a_tokenizer_without_a_window_uses_max_tokens() -> None:
    text = " ".join(f"w{i}" for i in range(100))
    chunks = chunk_text(text, embedder_or_tokenizer=NoWindowTokenizer(), max_tokens=30, overlap=0)
    assert [c.tokens for c in chunks] == [30, 30, 30, 10]


def test_bad_arguments_and_bad_sections() -> None:
    with pytest.raises(ConfigError, match="max_tokens"):
        chunk_text("some text", embedder_or_tokenizer="hash", max_tokens=4)
    with pytest.raises(ConfigError, match="overlap"):
        chunk_text("some text", embedder_or_tokenizer="hash", overlap=-1)
    with pytest.raises(ConfigError, match="cannot chunk with a int"):
        chunk_text("some text", embedder_or_tokenizer=42)  # type: ignore[arg-type]
    # The section says characters 0..3, but its text sits at 4..7.
    wrong = Document(
        "s3://b/x.pdf", "application/pdf", "abc def", sections=[Section((), "def", 0, 3)]
    )
    with pytest.raises(IngestError, match=r"s3://b/x\.pdf"):
        chunk_document(wrong, embedder_or_tokenizer="hash")


# -- properties -------------------------------------------------------------------------------

_pieces = st.sampled_from(
    ["alpha", "beta", "Gamma", "δέλτα", "数据", "x9", ".", ",", "!", " ", " ", " ", "\n", "\n\n"]
)
_texts = st.lists(_pieces, max_size=300).map("".join)


@settings(max_examples=150, deadline=None)
@given(text=_texts, max_tokens=st.integers(8, 40), overlap=st.integers(0, 12))
def test_hash_chunks_fit_cover_and_map_back(text: str, max_tokens: int, overlap: int) -> None:
    emb = get_embedder("hash")
    chunks = chunk_text(text, embedder_or_tokenizer=emb, max_tokens=max_tokens, overlap=overlap)
    doc = Document("", "text/plain", text)
    _check_offsets(doc, chunks)
    assert all(c.tokens == emb.count_tokens(c.text) <= max_tokens for c in chunks)
    covered = [False] * len(text)
    for c in chunks:
        covered[c.start : c.end] = [True] * (c.end - c.start)
    assert all(covered[s] and covered[e - 1] for s, e in emb.tokenize_offsets(text))
    for a, b in pairwise(chunks):
        assert a.start < b.start and a.end < b.end


# Long words glued together are cut between word pieces, and a cut-off piece can re-tokenize
# into more tokens than it had inside the whole word: the chunker must re-count.
_glued = st.lists(
    st.sampled_from(
        [
            *("supercalifragilistic", "antidisestablishmentarianism", "Zürichsee", "xqzvwkjh"),
            *("ab", "数据", " ", ". "),
        ]
    ),
    max_size=60,
).map("".join)


@settings(max_examples=60, deadline=None)
@given(text=_texts | _glued, max_tokens=st.integers(8, 64), overlap=st.integers(0, 16))
def test_minilm_chunks_fit_the_real_tokenizer(
    minilm: MiniLMEmbedder, model_tok: Any, text: str, max_tokens: int, overlap: int
) -> None:
    chunks = chunk_text(text, embedder_or_tokenizer=minilm, max_tokens=max_tokens, overlap=overlap)
    _check_offsets(Document("", "text/plain", text), chunks)
    for c in chunks:
        assert _model_len(model_tok, c.text) - 2 <= max_tokens
