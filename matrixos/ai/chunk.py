"""Token-aware chunking of parsed documents for embedding.

Each section of a ``Document`` is cut on its own (a chunk never spans two sections) into bodies
of at most ``max_tokens`` tokens of the embedder's own tokenizer, heading context included, with
``overlap`` tokens shared by consecutive chunks of a section. Cuts prefer, near the limit, a
paragraph break, then a sentence end, a line break, a clause mark, and a space, in that order.
The output depends only on the input, so re-indexing a document gives the same chunks.

    >>> from matrixos.ai.chunk import chunk_text
    >>> text = "Alpha beta gamma. Delta epsilon zeta eta. Theta iota kappa lambda mu."
    >>> [c.body for c in chunk_text(text, embedder_or_tokenizer="hash", max_tokens=8, overlap=0)]
    ['Alpha beta gamma. Delta epsilon zeta eta.', 'Theta iota kappa lambda mu.']
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from matrixos.ai.embed import Embedder, Tokenizer, get_embedder
from matrixos.connectors.documents import Document, Section
from matrixos.errors import ConfigError, IngestError

if TYPE_CHECKING:
    from collections.abc import Sequence

HEADING_SEP = " > "
"""Joins the heading path in a chunk's context prefix."""
PREFIX_SEP = "\n\n"
"""Separates the context prefix from the body in ``Chunk.text``."""

# A heading path may take at most this share of the window; longer ones are shortened.
_MAX_PREFIX_SHARE = 0.25
# Only cut points in the last part of the window are considered "near the limit".
_MIN_FILL = 0.5

# Full-width CJK marks and typographic quotes are written as escapes (they look like ASCII).
_SENTENCE_END = frozenset(".!?\u2026")  # … ellipsis
_CJK_SENTENCE_END = frozenset("\u3002\uff01\uff1f")  # full stop, exclamation, question
_CLAUSE_END = frozenset(",;:")
_CJK_CLAUSE_END = frozenset("\uff0c\uff1b\uff1a\u3001")  # comma, semicolon, colon, list comma
_CLOSERS = "\"')]}\u201d\u2019\u00bb"  # closing quotes and brackets
_PARAGRAPH = re.compile(r"\n[^\S\n]*\n")


@dataclass(frozen=True)
class Chunk:
    """One piece of a document, ready to embed.

    ``text`` is what gets embedded: the heading path joined by ``" > "``, a blank line, then
    ``body`` (just ``body`` when there are no headings). ``body`` is ``Document.text[start:end]``.
    ``tokens`` counts the tokens of ``text`` with the tokenizer it was cut for; ``index`` is the
    chunk's 0-based position in the document.
    """

    text: str
    body: str
    headings: tuple[str, ...]
    index: int
    start: int
    end: int
    tokens: int
    page: int | None = None


def _tokenizer_of(embedder_or_tokenizer: Embedder | Tokenizer | str | None) -> Tokenizer:
    if embedder_or_tokenizer is None or isinstance(embedder_or_tokenizer, str):
        return get_embedder(embedder_or_tokenizer).tokenizer
    if isinstance(embedder_or_tokenizer, Embedder):
        return embedder_or_tokenizer.tokenizer
    if not isinstance(embedder_or_tokenizer, Tokenizer):
        raise ConfigError(
            f"cannot chunk with a {type(embedder_or_tokenizer).__name__}",
            hint="pass an embedder, its name, or an object with count_tokens() and "
            "tokenize_offsets()",
        )
    return embedder_or_tokenizer


def chunk_document(
    doc: Document,
    *,
    embedder_or_tokenizer: Embedder | Tokenizer | str | None = None,
    max_tokens: int = 256,
    overlap: int = 32,
) -> list[Chunk]:
    """Cut ``doc`` into chunks of at most ``max_tokens`` tokens (heading prefix included).

    Args:
        doc: a parsed document; without sections its whole text is one section, headed by its
            title when it has one.
        embedder_or_tokenizer: whose tokenizer counts tokens: an ``Embedder``, its registered
            name, or any ``Tokenizer``; ``None`` means the default embedder. ``max_tokens`` is
            lowered to the tokenizer's window when that is smaller (254 word pieces for MiniLM).
        max_tokens: the most tokens in one chunk's ``text``.
        overlap: tokens repeated at the start of the next chunk of the same section (at most
            half of what is left after the heading prefix).

    Returns:
        The chunks in document order; ``[]`` for a document with no text.

    Raises:
        ConfigError: ``max_tokens`` below 8 or ``overlap`` negative.
        IngestError: a section's offsets do not point at its text in ``doc.text``.

    >>> from matrixos.connectors.documents import Document, Section
    >>> text = "Intro text.\\nSetup steps here."
    >>> doc = Document("mem://a.md", "text/markdown", text, title="Guide", sections=[
    ...     Section(("Guide",), "Intro text.", 0, 11), Section(("Guide", "Setup"),
    ...     "Setup steps here.", 12, 29)])
    >>> [c.text for c in chunk_document(doc, embedder_or_tokenizer="hash")]
    ['Guide\\n\\nIntro text.', 'Guide > Setup\\n\\nSetup steps here.']
    """
    tok = _tokenizer_of(embedder_or_tokenizer)
    window: int | None = getattr(tok, "max_tokens", None)
    limit = max_tokens if window is None else min(max_tokens, window)
    if limit < 8:
        raise ConfigError(f"max_tokens must be at least 8, not {max_tokens}")
    if overlap < 0:
        raise ConfigError(f"overlap must be >= 0, not {overlap}")

    chunks: list[Chunk] = []
    for section in _sections(doc):
        path = _heading_path(doc, section.headings)
        prefix = _prefix(path, tok, int(limit * _MAX_PREFIX_SHARE))
        for start, end, tokens in _cut(section.text, tok, prefix, limit, overlap):
            body = section.text[start:end]
            text = f"{prefix}{PREFIX_SEP}{body}" if prefix else body
            chunks.append(
                Chunk(
                    text=text,
                    body=body,
                    headings=path,
                    index=len(chunks),
                    start=section.start + start,
                    end=section.start + end,
                    tokens=tokens,
                    page=section.page,
                )
            )
    return chunks


def chunk_text(
    text: str,
    *,
    embedder_or_tokenizer: Embedder | Tokenizer | str | None = None,
    max_tokens: int = 256,
    overlap: int = 32,
    title: str | None = None,
) -> list[Chunk]:
    """Chunk a plain ``text`` as a one-section document (headed by ``title`` when given).

    >>> [c.text for c in chunk_text("Hello there.", embedder_or_tokenizer="hash", title="Hi")]
    ['Hi\\n\\nHello there.']
    """
    doc = Document(uri="", mime="text/plain", text=text, title=title)
    return chunk_document(
        doc, embedder_or_tokenizer=embedder_or_tokenizer, max_tokens=max_tokens, overlap=overlap
    )


# -- sections and headings --------------------------------------------------------------------


def _sections(doc: Document) -> list[Section]:
    if not doc.sections:
        return [Section((), doc.text, 0, len(doc.text))] if doc.text.strip() else []
    out = []
    for s in doc.sections:
        if not s.text.strip():
            continue
        if doc.text[s.start : s.end] != s.text:
            raise IngestError(
                f"section {HEADING_SEP.join(s.headings) or '(untitled)'!r} says it is at "
                f"characters {s.start}..{s.end} of the document text, but its text is not there",
                path=doc.uri or "<document>",
                hint="a parser bug: Section.start/end must index Document.text",
            )
        out.append(s)
    return out


def _heading_path(doc: Document, headings: Sequence[str]) -> tuple[str, ...]:
    """The section's headings, led by the document title unless they already start with it."""
    path = tuple(h.strip() for h in headings if h and h.strip())
    title = (doc.title or "").strip()
    if title and (not path or path[0] != title):
        path = (title, *path)
    return path


def _prefix(path: tuple[str, ...], tok: Tokenizer, budget: int) -> str:
    """The heading path as text, within ``budget`` tokens: outer headings go first, then the
    innermost is cut."""
    parts = list(path)
    while parts:
        prefix = HEADING_SEP.join(parts)
        if tok.count_tokens(prefix) <= budget:
            return prefix
        if len(parts) == 1:
            spans = tok.tokenize_offsets(prefix)
            keep = min(budget, len(spans))
            return prefix[: spans[keep - 1][1]].rstrip() if keep > 0 else ""
        parts.pop(0)
    return ""


# -- cutting one section ----------------------------------------------------------------------


def _rank(text: str, spans: list[tuple[int, int]], k: int) -> int:
    """How good a cut between tokens ``k - 1`` and ``k`` is: 5 paragraph break, 4 sentence
    end, 3 line break, 2 clause mark, 1 space (or CJK character), 0 inside a word."""
    prev_end, next_start = spans[k - 1][1], spans[k][0]
    gap = text[prev_end:next_start]
    if _PARAGRAPH.search(gap):
        return 5
    spaced = any(ch.isspace() for ch in gap)
    # The previous token plus any punctuation glued to it (tokenizers that skip punctuation
    # leave it in the gap).
    tail = (text[spans[k - 1][0] : prev_end] + re.split(r"\s", gap, maxsplit=1)[0]).rstrip(_CLOSERS)
    last = tail[-1:] if tail else ""
    if last in _CJK_SENTENCE_END or (spaced and last in _SENTENCE_END):
        return 4
    if "\n" in gap:
        return 3
    if last in _CJK_CLAUSE_END or (spaced and last in _CLAUSE_END):
        return 2
    if spaced or _is_cjk(text[prev_end - 1]) or _is_cjk(text[next_start]):
        return 1
    return 0


def _is_cjk(ch: str) -> bool:
    o = ord(ch)
    return 0x3040 <= o <= 0x30FF or 0x3400 <= o <= 0x9FFF or 0xAC00 <= o <= 0xD7AF


def _body_span(text: str, spans: list[tuple[int, int]], i: int, k: int) -> tuple[int, int]:
    """Characters of tokens ``i..k-1``, widened over punctuation glued to either end that the
    tokenizer does not count (a regex word tokenizer drops the period of "end.")."""
    start, end = spans[i][0], spans[k - 1][1]
    floor = spans[i - 1][1] if i > 0 else 0
    ceil = spans[k][0] if k < len(spans) else len(text)
    while start > floor and not text[start - 1].isspace():
        start -= 1
    while end < ceil and not text[end].isspace():
        end += 1
    return start, end


def _cut(
    text: str, tok: Tokenizer, prefix: str, limit: int, overlap: int
) -> list[tuple[int, int, int]]:
    """``(start, end, tokens)`` of the chunks of one section's ``text``: character span of the
    body and token count of the chunk text (``prefix`` + body)."""
    spans = [s for s in tok.tokenize_offsets(text) if s[1] > s[0]]
    n = len(spans)
    if n == 0 or not text.strip():
        return []
    budget = max(limit - (tok.count_tokens(prefix) if prefix else 0), 1)
    overlap = min(overlap, budget // 2)
    out: list[tuple[int, int, int]] = []
    i = 0
    while i < n:
        hi = min(i + budget, n)
        while True:
            k = hi if hi == n else _best_cut(text, spans, i, hi, budget)
            start, end = _body_span(text, spans, i, k)
            body = text[start:end]
            tokens = tok.count_tokens(f"{prefix}{PREFIX_SEP}{body}" if prefix else body)
            # Tokenizing a slice can give more tokens than the slice's share of the whole
            # (a word piece cut off its word); shrink until the real count fits.
            excess = tokens - limit
            if excess <= 0 or k == i + 1:
                break
            hi = max(i + 1, k - excess)
        out.append((start, end, tokens))
        if k >= n:
            break
        i = _overlap_start(text, spans, max(k - overlap, i + 1), k) if overlap else k
    return out


def _overlap_start(text: str, spans: list[tuple[int, int]], first: int, k: int) -> int:
    """Where the next chunk starts when the previous one was cut before token ``k``: at or
    after ``first``, preferring a sentence start in the first half of the overlap (the
    earliest of the best), else the first word start, else ``first``."""
    if first >= k:
        return k
    half = first + max(1, (k - first) // 2)
    ranks = [_rank(text, spans, j) for j in range(first, half)]
    best = max(ranks)
    if best >= 1:
        return first + ranks.index(best)
    return next((j for j in range(half, k) if _rank(text, spans, j) >= 1), first)


def _best_cut(text: str, spans: list[tuple[int, int]], i: int, hi: int, budget: int) -> int:
    """The token index to cut before, in ``(i, hi]``: the best-ranked boundary in the last
    part of the window, the latest among equals."""
    lo = min(hi, i + max(1, int(budget * _MIN_FILL)))
    best_k, best_rank = hi, -1
    for k in range(hi, lo - 1, -1):
        r = _rank(text, spans, k)
        if r > best_rank:
            best_k, best_rank = k, r
            if r == 5:
                break
    return best_k


__all__ = ["HEADING_SEP", "PREFIX_SEP", "Chunk", "chunk_document", "chunk_text"]
