"""Documents parsed into text and heading-scoped sections: what RAG chunking consumes.

``parse_document`` reads PDF (pypdf), HTML (lxml), Markdown and plain text into a
:class:`Document`: the full extracted text, a title, a page count (PDF) and :class:`Section`\\ s —
runs of body text under one heading path, with their character offsets in ``Document.text``
(``doc.text[s.start:s.end] == s.text`` always holds). Heading lines are part of
``Document.text`` but not of any section: a section carries its headings in ``headings``.

``sniff_mime`` names a file's type from its first bytes, falling back to its extension.

The dataclasses are the contract between parsing (connectors) and chunking
(``matrixos.ai.chunk``). Unreadable or corrupt input raises
:class:`~matrixos.errors.IngestError` naming the file.

Example:
    >>> doc = parse_document(b"# Intro\\nHello.\\n## Usage\\nRun it.\\n", uri="readme.md")
    >>> doc.title, [(s.headings, s.text) for s in doc.sections]
    ('Intro', [(('Intro',), 'Hello.'), (('Intro', 'Usage'), 'Run it.')])
"""

from __future__ import annotations

import codecs
import io
import logging
import mimetypes
import os
import posixpath
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from matrixos.errors import IngestError, NotSupported

if TYPE_CHECKING:
    from lxml.html import HtmlElement

__all__ = ["DOCUMENT_MIMES", "Document", "Section", "parse_document", "sniff_mime"]


@dataclass(frozen=True)
class Section:
    """A run of body text under one heading path (outermost heading first).

    ``start``/``end`` are character offsets of ``text`` inside ``Document.text``.
    """

    headings: tuple[str, ...]
    text: str
    start: int
    end: int
    page: int | None = None


@dataclass
class Document:
    uri: str
    mime: str
    text: str
    title: str | None = None
    pages: int | None = None
    sections: list[Section] = field(default_factory=list)


#: The MIME types ``parse_document`` reads (any other ``text/*`` is read as plain text).
DOCUMENT_MIMES: tuple[str, ...] = (
    "application/pdf",
    "text/html",
    "application/xhtml+xml",
    "text/markdown",
    "text/plain",
)

_MEDIA_HINT = "pip install 'matrixos[media]'"

# --------------------------------------------------------------------------------------------
# Sniffing
# --------------------------------------------------------------------------------------------

# Extensions whose type the ``mimetypes`` tables lack or get wrong on some systems.
_EXTENSIONS: dict[str, str] = {
    ".md": "text/markdown",
    ".markdown": "text/markdown",
    ".mdown": "text/markdown",
    ".txt": "text/plain",
    ".text": "text/plain",
    ".log": "text/plain",
    ".rst": "text/x-rst",
    ".html": "text/html",
    ".htm": "text/html",
    ".xhtml": "application/xhtml+xml",
    ".pdf": "application/pdf",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".png": "image/png",
    ".gif": "image/gif",
    ".webp": "image/webp",
    ".bmp": "image/bmp",
    ".tif": "image/tiff",
    ".tiff": "image/tiff",
    ".wav": "audio/wav",
    ".mp3": "audio/mpeg",
    ".ogg": "audio/ogg",
    ".oga": "audio/ogg",
    ".opus": "audio/ogg",
    ".flac": "audio/flac",
    ".m4a": "audio/mp4",
    ".aac": "audio/aac",
    ".aiff": "audio/aiff",
    ".aif": "audio/aiff",
    ".csv": "text/csv",
    ".tsv": "text/tab-separated-values",
    ".json": "application/json",
}


def _magic(head: bytes) -> str | None:
    """The type announced by a file's first bytes, when they announce one."""
    if head.startswith(b"%PDF-"):
        return "application/pdf"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if head.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if head.startswith((b"GIF87a", b"GIF89a")):
        return "image/gif"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    if head[:4] == b"RIFF" and head[8:12] == b"WAVE":
        return "audio/wav"
    if head.startswith((b"II*\x00", b"MM\x00*")):
        return "image/tiff"
    if head.startswith(b"BM") and len(head) >= 14 and head[6:10] == b"\x00\x00\x00\x00":
        return "image/bmp"
    if head.startswith(b"OggS"):
        return "audio/ogg"
    if head.startswith(b"fLaC"):
        return "audio/flac"
    if head.startswith(b"ID3"):
        return "audio/mpeg"
    if head[:4] == b"FORM" and head[8:12] in (b"AIFF", b"AIFC"):
        return "audio/aiff"
    if head[4:8] == b"ftyp" and head[8:11] in (b"M4A", b"M4B"):
        return "audio/mp4"
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if text.startswith((b"<!doctype html", b"<html")) or (
        text.startswith(b"<?xml") and b"<html" in text
    ):
        return "text/html"
    return None


def _looks_like_text(head: bytes) -> bool:
    if not head or b"\x00" in head:
        return False
    try:
        # A multi-byte character cut at the end of ``head`` is not a reason to say binary.
        codecs.getincrementaldecoder("utf-8")().decode(head, final=False)
    except UnicodeDecodeError:
        return False
    return True


def sniff_mime(path_or_name: str | os.PathLike[str], head_bytes: bytes = b"") -> str:
    """The MIME type of a file: from its first bytes when they are telling, else its name.

    A signature in ``head_bytes`` (PDF, PNG, JPEG, GIF, WebP, TIFF, BMP, WAV, Ogg, FLAC, MP3,
    HTML) wins over the extension, so a JPEG named ``.png`` is ``image/jpeg``; a file whose
    bytes announce nothing gets the type of its extension (so a text file named ``.png`` is
    still ``image/png``, and fails later as the image it claims to be). Unknown names are
    ``text/plain`` when the bytes decode as UTF-8 text, else ``application/octet-stream``.

    Example:
        >>> sniff_mime("notes.md", b"# Title")
        'text/markdown'
        >>> sniff_mime("photo.png", b"\\xff\\xd8\\xff\\xe0")
        'image/jpeg'
    """
    found = _magic(head_bytes[:1024])
    if found:
        return found
    name = posixpath.basename(os.fspath(path_or_name).replace("\\", "/"))
    ext = posixpath.splitext(name)[1].lower()
    if ext in _EXTENSIONS:
        return _EXTENSIONS[ext]
    guessed, _ = mimetypes.guess_type(name, strict=False)
    if guessed:
        return guessed
    return "text/plain" if _looks_like_text(head_bytes) else "application/octet-stream"


# --------------------------------------------------------------------------------------------
# Parsing
# --------------------------------------------------------------------------------------------


def parse_document(data: bytes, *, uri: str, mime: str | None = None) -> Document:
    """Extract text, title, pages and heading-scoped sections from a document's bytes.

    Args:
        data: the file's bytes.
        uri: where it came from (kept on the Document; named in errors; its extension picks the
            type when ``mime`` is None and the bytes carry no signature).
        mime: ``application/pdf``, ``text/html``, ``text/markdown``, ``text/plain`` (or any
            ``text/*``); default: :func:`sniff_mime`.

    Returns:
        A :class:`Document`. PDF sections are pages (``Section.page`` set, headings from the
        outline); HTML sections follow ``h1``-``h6`` (``script``, ``style`` and ``nav`` dropped,
        ``pre``/``code`` kept verbatim); Markdown sections follow ATX (``#``) and setext
        headings (front matter dropped, fenced code kept); plain text is one section.

    Raises:
        IngestError: the bytes are not a readable document of that type (names ``uri``).
        NotSupported: the type is not a document, or the ``media`` extra is missing.
    """
    mime = (mime or sniff_mime(uri, data[:1024])).split(";")[0].strip().lower()
    if mime == "application/pdf":
        return _parse_pdf(data, uri)
    if mime in ("text/html", "application/xhtml+xml"):
        return _parse_html(data, uri, mime)
    if mime in ("text/markdown", "text/x-markdown"):
        return _parse_markdown(_decode_text(data, uri), uri, mime)
    if mime.startswith("text/") or mime == "application/json":
        return _parse_plain(_decode_text(data, uri), uri, mime)
    raise NotSupported(
        f"{uri}: cannot parse {mime} as a document",
        hint="documents are PDF, HTML, Markdown or text",
    )


class _TextBuilder:
    """Concatenates blocks with blank lines between them and records sections' offsets."""

    def __init__(self) -> None:
        self._parts: list[str] = []
        self._length = 0
        self.sections: list[Section] = []

    def add(self, text: str) -> tuple[int, int]:
        if self._length:
            self._parts.append("\n\n")
            self._length += 2
        start = self._length
        self._parts.append(text)
        self._length += len(text)
        return start, self._length

    def section(self, headings: tuple[str, ...], text: str, page: int | None = None) -> None:
        start, end = self.add(text)
        self.sections.append(Section(headings, text, start, end, page))

    @property
    def text(self) -> str:
        return "".join(self._parts)


def _first_line(text: str, limit: int = 200) -> str | None:
    for line in text.splitlines():
        line = " ".join(line.split())
        if line:
            return line[:limit]
    return None


def _decode_text(data: bytes, uri: str) -> str:
    if b"\x00" in data[:8192]:
        raise IngestError("binary data, not text", path=uri)
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return data.decode("utf-16")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        # Not UTF-8: legacy files are overwhelmingly Windows-1252/Latin-1, which never fails.
        return data.decode("cp1252", errors="replace")


def _parse_plain(text: str, uri: str, mime: str) -> Document:
    body = text.strip()
    sections = [Section((), body, 0, len(body))] if body else []
    return Document(uri=uri, mime=mime, text=body, title=_first_line(body), sections=sections)


# ---- Markdown -------------------------------------------------------------------------------

_FRONT_MATTER = re.compile(
    r"\A(?:---|\+\+\+)[ \t]*\r?\n.*?\r?\n(?:---|\+\+\+|\.\.\.)[ \t]*(?:\r?\n|\Z)", re.S
)
_ATX = re.compile(r"^ {0,3}(#{1,6})(?:[ \t]+(.*?))?(?:[ \t]+#+)?[ \t]*$")
_SETEXT = re.compile(r"^ {0,3}(=+|-+)[ \t]*$")
_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
_BLOCK_START = re.compile(r"^ {0,3}(?:[-*+>|]|\d+[.)]|#)")


def _trimmed(text: str, start: int, end: int) -> tuple[int, int]:
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return start, end


def _parse_markdown(source: str, uri: str, mime: str) -> Document:
    m = _FRONT_MATTER.match(source)
    text = source[m.end() :] if m else source
    sections: list[Section] = []
    stack: list[tuple[int, str]] = []
    first_h1: str | None = None
    first_heading: str | None = None
    body_start = 0  # where the current heading's body begins
    fence: str | None = None
    offset = 0
    # The paragraph being read: (offset of its first line, its lines); a setext underline
    # turns it into a heading.
    para: tuple[int, list[str]] | None = None

    def close(end: int) -> None:
        s, e = _trimmed(text, body_start, end)
        if e > s:
            sections.append(Section(tuple(t for _, t in stack), text[s:e], s, e))

    def open_heading(level: int, title: str) -> None:
        nonlocal first_h1, first_heading
        while stack and stack[-1][0] >= level:
            stack.pop()
        stack.append((level, title))
        first_heading = first_heading or title
        if level == 1:
            first_h1 = first_h1 or title

    for line in text.splitlines(keepends=True):
        start, offset = offset, offset + len(line)
        content = line.rstrip("\r\n")
        fm = _FENCE.match(content)
        if fence is not None:
            marker = fm.group(1) if fm else ""
            same = marker[:1] == fence[0] and len(marker) >= len(fence)
            if same and not content.strip().strip(fence[0]):
                fence = None
            continue
        if fm:
            fence, para = fm.group(1), None
            continue
        atx = _ATX.match(content)
        if atx:
            close(start)
            open_heading(len(atx.group(1)), (atx.group(2) or "").strip())
            body_start, para = offset, None
            continue
        setext = _SETEXT.match(content)
        if setext and para is not None:
            close(para[0])
            heading = " ".join(" ".join(para[1]).split())
            open_heading(1 if setext.group(1)[0] == "=" else 2, heading)
            body_start, para = offset, None
            continue
        if not content.strip():
            para = None
        elif para is not None:
            para[1].append(content)
        elif not _BLOCK_START.match(content):
            # Lists, quotes and tables never become setext headings.
            para = (start, [content])
    close(len(text))
    title = first_h1 or first_heading or _first_line(text)
    return Document(uri=uri, mime=mime, text=text, title=title or None, sections=sections)


# ---- HTML -----------------------------------------------------------------------------------

_DROP = frozenset({"script", "style", "nav", "noscript", "template", "svg", "iframe", "head"})
_HEADINGS = {f"h{i}": i for i in range(1, 7)}
_BLOCKS = frozenset(
    {
        "address", "article", "aside", "blockquote", "body", "caption", "dd", "details", "div",
        "dl", "dt", "fieldset", "figcaption", "figure", "footer", "form", "header", "hr", "li",
        "main", "ol", "p", "pre", "section", "summary", "table", "tbody", "tfoot", "thead", "tr",
        "ul",
    }
)  # fmt: skip
_CELLS = frozenset({"td", "th"})
_CHARSET = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?\s*([A-Za-z0-9_.:-]+)""", re.I)
_XML_ENCODING = re.compile(rb"""^\s*<\?xml[^>]+encoding\s*=\s*["']([A-Za-z0-9_.:-]+)""", re.I)
_BR = "\x00"  # a <br> inside a paragraph (NUL never survives text decoding)


def _html_encoding(data: bytes) -> str:
    if data.startswith(codecs.BOM_UTF8):
        return "utf-8"
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return "utf-16"
    head = data[:4096]
    for pattern in (_XML_ENCODING, _CHARSET):
        m = pattern.search(head)
        if m:
            name = m.group(1).decode("ascii")
            try:
                return codecs.lookup(name).name
            except LookupError:
                break
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return "cp1252"
    return "utf-8"


class _HtmlWalker:
    """Walks the body in document order, cutting text into sections at h1-h6."""

    def __init__(self) -> None:
        self.builder = _TextBuilder()
        self.stack: list[tuple[int, str]] = []
        self.paragraphs: list[str] = []
        self.fragments: list[str] = []
        self.first_h1: str | None = None

    def walk(self, el: HtmlElement, pre: bool) -> None:
        tag = el.tag if isinstance(el.tag, str) else ""
        tag = tag.lower()
        if tag in _DROP or not tag:  # comments and processing instructions have no text
            return
        if tag in _HEADINGS:
            self.heading(_HEADINGS[tag], " ".join(el.text_content().split()))
            return
        block = tag in _BLOCKS
        pre = pre or tag in ("pre", "textarea", "listing", "xmp")
        if block:
            self.flush(pre)
        if tag == "br":
            self.fragments.append("\n" if pre else _BR)
        elif tag in _CELLS:
            self.fragments.append(" ")
        if el.text:
            self.fragments.append(el.text)
        for child in el:
            self.walk(child, pre)
            if child.tail:
                self.fragments.append(child.tail)
        if block:
            self.flush(pre)
        elif tag in _CELLS:
            self.fragments.append(" ")

    def flush(self, pre: bool) -> None:
        raw = "".join(self.fragments)
        self.fragments = []
        if pre:
            text = raw.strip("\n").rstrip()
        else:
            lines = (" ".join(part.split()) for part in raw.split(_BR))
            text = "\n".join(line for line in lines if line)
        if text.strip():
            self.paragraphs.append(text)

    def close_section(self) -> None:
        self.flush(False)
        if self.paragraphs:
            self.builder.section(tuple(t for _, t in self.stack), "\n\n".join(self.paragraphs))
            self.paragraphs = []

    def heading(self, level: int, title: str) -> None:
        if not title:
            return
        self.close_section()
        while self.stack and self.stack[-1][0] >= level:
            self.stack.pop()
        self.stack.append((level, title))
        self.builder.add(title)
        if level == 1 and self.first_h1 is None:
            self.first_h1 = title


def _parse_html(data: bytes, uri: str, mime: str) -> Document:
    try:
        import lxml.etree
        import lxml.html
    except ImportError as e:
        raise NotSupported("parsing HTML needs lxml", hint=_MEDIA_HINT) from e
    if b"\x00" in data[:8192] and not data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        raise IngestError("binary data, not HTML", path=uri)
    encoding = _html_encoding(data)
    try:
        if encoding.startswith("utf-16"):
            text = data.decode("utf-16")
            text = re.sub(r"^\s*<\?xml[^>]*>", "", text)  # lxml refuses str with a declaration
            root = lxml.html.document_fromstring(text)
        else:
            parser = lxml.html.HTMLParser(encoding=encoding, remove_comments=True)
            root = lxml.html.document_fromstring(data, parser=parser)
    except (lxml.etree.ParserError, lxml.etree.XMLSyntaxError, ValueError) as e:
        raise IngestError(f"not a readable HTML document: {e}", path=uri) from None
    titles = root.xpath("//title")
    title = " ".join(titles[0].text_content().split()) if titles else ""
    body = root.find("body")
    walker = _HtmlWalker()
    walker.walk(body if body is not None else root, False)
    walker.close_section()
    return Document(
        uri=uri,
        mime=mime,
        text=walker.builder.text,
        title=title or walker.first_h1,
        sections=walker.builder.sections,
    )


# ---- PDF ------------------------------------------------------------------------------------


def _quiet_pypdf() -> None:
    # pypdf logs every repair of a damaged file as a warning; with no handler configured they
    # would reach stderr through logging's last resort. A damaged file already becomes an
    # IngestError (or a row's ``error``), so they are noise unless the application asks.
    log = logging.getLogger("pypdf")
    if not log.handlers:
        log.addHandler(logging.NullHandler())


def _outline(reader: Any) -> list[tuple[int, int, str]]:
    """(page index, depth, title) of every outline entry, in outline order."""
    out: list[tuple[int, int, str]] = []

    def visit(items: Iterable[Any], depth: int) -> None:
        for item in items:
            if isinstance(item, list):
                visit(item, depth + 1)
                continue
            try:
                page = reader.get_destination_page_number(item)
            except Exception:  # a broken destination loses its heading, not the document
                continue
            title = " ".join(str(getattr(item, "title", "") or "").split())
            if page is not None and page >= 0 and title:
                out.append((page, depth, title))

    try:
        visit(reader.outline, 0)
    except Exception:
        return []
    return out


def _parse_pdf(data: bytes, uri: str) -> Document:
    try:
        import pypdf
    except ImportError as e:
        raise NotSupported("parsing PDF needs pypdf", hint=_MEDIA_HINT) from e
    _quiet_pypdf()
    # pypdf raises a zoo of exception types on damaged files (PdfReadError, ValueError,
    # KeyError, struct.error, …); all of them mean the same thing here: unreadable.
    try:
        reader = pypdf.PdfReader(io.BytesIO(data), strict=False)
        if reader.is_encrypted and not reader.decrypt(""):
            raise IngestError("the PDF is encrypted", path=uri)
        count = len(reader.pages)
        meta = reader.metadata
        meta_title = " ".join(str(meta.title or "").split()) if meta is not None else ""
        texts = [page.extract_text() or "" for page in reader.pages]
    except IngestError:
        raise
    except Exception as e:
        raise IngestError(f"not a readable PDF: {type(e).__name__}: {e}", path=uri) from None
    marks = sorted(_outline(reader), key=lambda m: m[0])
    builder = _TextBuilder()
    stack: list[tuple[int, str]] = []
    i = 0
    for number, page_text in enumerate(texts):
        while i < len(marks) and marks[i][0] <= number:
            _, depth, title = marks[i]
            while stack and stack[-1][0] >= depth:
                stack.pop()
            stack.append((depth, title))
            i += 1
        body = page_text.strip()
        if body:
            builder.section(tuple(t for _, t in stack), body, page=number + 1)
    text = builder.text
    return Document(
        uri=uri,
        mime="application/pdf",
        text=text,
        title=meta_title or _first_line(text),
        pages=count,
        sections=builder.sections,
    )
