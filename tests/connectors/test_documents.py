"""parse_document and sniff_mime on real documents: Debian's PostgreSQL HTML manual and PDF
specs, PDFs written here byte by byte and by pypdf, Markdown and text written by the tests."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pypdf
import pytest

from matrixos.connectors.documents import Document, parse_document, sniff_mime
from matrixos.errors import IngestError, NotSupported

PG_HTML = Path("/usr/share/doc/postgresql-doc-15/html")
MIME_SPEC_PDF = Path("/usr/share/doc/shared-mime-info/shared-mime-info-spec.pdf")
SKLEARN_IMAGES = Path(__import__("sklearn").__file__).parent / "datasets" / "images"
ALSA = Path("/usr/share/sounds/alsa")
FREEDESKTOP = Path("/usr/share/sounds/freedesktop/stereo")


def make_pdf(pages: list[list[str]], title: str | None = None) -> bytes:
    """A minimal, valid PDF: one Helvetica text line per string, one page per list."""

    def esc(s: str) -> str:
        return s.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")

    objects: list[bytes] = []  # object n is objects[n - 1]
    n_pages = len(pages)
    kids = " ".join(f"{4 + 2 * i} 0 R" for i in range(n_pages))
    objects.append(b"<< /Type /Catalog /Pages 2 0 R >>")
    objects.append(f"<< /Type /Pages /Kids [{kids}] /Count {n_pages} >>".encode())
    objects.append(b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>")
    for i, lines in enumerate(pages):
        ops = "BT /F1 12 Tf 72 720 Td 14 TL " + " ".join(f"({esc(t)}) Tj T*" for t in lines)
        stream = (ops + " ET").encode("latin-1")
        objects.append(
            f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] "
            f"/Resources << /Font << /F1 3 0 R >> >> /Contents {5 + 2 * i} 0 R >>".encode()
        )
        objects.append(b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream")
    info = None
    if title is not None:
        objects.append(f"<< /Title ({esc(title)}) /Producer (matrixos tests) >>".encode())
        info = len(objects)
    out = bytearray(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % off for off in offsets)
    trailer = f"<< /Size {len(objects) + 1} /Root 1 0 R"
    trailer += f" /Info {info} 0 R >>" if info else " >>"
    out += b"trailer\n" + trailer.encode() + b"\nstartxref\n%d\n%%%%EOF\n" % xref
    return bytes(out)


def check_offsets(doc: Document) -> None:
    for s in doc.sections:
        assert doc.text[s.start : s.end] == s.text
        assert s.text.strip() == s.text and s.text


# -- PDF --------------------------------------------------------------------------------------
def test_pdf_pages_title_and_sections() -> None:
    data = make_pdf(
        [["Quarterly report", "Revenue grew (a lot)."], [], ["Appendix", "Tables follow."]],
        title="Q3 Report",
    )
    doc = parse_document(data, uri="reports/q3.pdf")
    assert (doc.mime, doc.pages, doc.title) == ("application/pdf", 3, "Q3 Report")
    assert [s.page for s in doc.sections] == [1, 3]  # the empty page has no section
    assert "Revenue grew (a lot)." in doc.sections[0].text
    assert "Tables follow." in doc.sections[1].text
    assert "Quarterly report" in doc.text and "Appendix" in doc.text
    check_offsets(doc)


def test_pdf_title_falls_back_to_first_line() -> None:
    doc = parse_document(make_pdf([["  Field notes  ", "day one"]]), uri="notes.pdf")
    assert doc.title == "Field notes"
    assert doc.pages == 1


def test_pdf_written_by_pypdf() -> None:
    writer = pypdf.PdfWriter()
    for _ in range(4):
        writer.add_blank_page(width=200, height=200)
    writer.add_metadata({"/Title": "Blank Pages"})
    buf = io.BytesIO()
    writer.write(buf)
    doc = parse_document(buf.getvalue(), uri="blank.pdf")
    assert (doc.pages, doc.title, doc.text, doc.sections) == (4, "Blank Pages", "", [])


def test_real_pdf_outline_gives_headings() -> None:
    data = MIME_SPEC_PDF.read_bytes()
    doc = parse_document(data, uri=str(MIME_SPEC_PDF))
    reader = pypdf.PdfReader(io.BytesIO(data))
    assert doc.pages == len(reader.pages) > 10
    assert doc.title == "Shared MIME-info Database"
    assert "magic" in doc.text.lower()
    check_offsets(doc)
    assert all(s.page is not None and 1 <= s.page <= doc.pages for s in doc.sections)
    assert any(h.startswith("2.") for s in doc.sections for h in s.headings)


@pytest.mark.parametrize(
    "data",
    [
        os.urandom(4096),
        b"%PDF-1.4\n1 0 obj << /Type /Catalog >> garbage",
        b"",
    ],
    ids=["random", "header-then-garbage", "empty"],
)
def test_corrupt_pdf_names_the_file(data: bytes) -> None:
    with pytest.raises(IngestError) as err:
        parse_document(data, uri="/data/broken.pdf", mime="application/pdf")
    assert err.value.path == "/data/broken.pdf"
    assert "/data/broken.pdf" in str(err.value)


# -- HTML -------------------------------------------------------------------------------------
def test_real_html_page_sections_follow_headings() -> None:
    path = PG_HTML / "sql-select.html"
    doc = parse_document(path.read_bytes(), uri=str(path))
    assert doc.mime == "text/html"
    assert doc.title == "SELECT"
    check_offsets(doc)
    by_heading = {s.headings[-1]: s for s in doc.sections if s.headings}
    assert {"Synopsis", "Description", "Examples"} <= set(by_heading)
    # <pre> keeps its line breaks: the synopsis is one clause per line.
    synopsis = by_heading["Synopsis"].text
    assert "SELECT [ ALL | DISTINCT [ ON ( expression [, ...] ) ] ]\n" in synopsis
    # Nested headings carry their parents.
    nested = [s.headings for s in doc.sections if len(s.headings) >= 2]
    assert ("Parameters", "WHERE Clause") in nested
    # Inline <code>/<literal> text is kept, in place.
    assert "The optional WHERE clause has the general form" in doc.text


def test_every_page_of_the_postgres_manual_parses() -> None:
    pages = sorted(PG_HTML.glob("*.html"))
    assert len(pages) > 1000
    for path in pages:
        doc = parse_document(path.read_bytes(), uri=str(path))
        assert doc.title, path
        check_offsets(doc)
        assert "<" not in doc.title


def test_html_drops_script_style_nav_keeps_code() -> None:
    html = """<!doctype html><html><head><title> Guide  </title>
    <style>body { color: red }</style><script>var secret = 1;</script></head>
    <body><nav><a href="/">Home</a> | <a href="/docs">Docs</a></nav>
    <h1>Install</h1><p>Run <code>pip install matrixos</code> first.<br>Then restart.</p>
    <pre>
line one
    indented line
</pre>
    <h2>On Linux</h2><ul><li>apt</li><li>pip &amp; venv</li></ul>
    <h3>Debian</h3><p>Use apt.</p><h2>On macOS</h2><p>Use brew.</p>
    <script>alert("x")</script></body></html>"""
    doc = parse_document(html.encode(), uri="guide.html")
    assert doc.title == "Guide"
    check_offsets(doc)
    for gone in ("color: red", "secret", "alert", "Home", "Docs"):
        assert gone not in doc.text
    assert [s.headings for s in doc.sections] == [
        ("Install",),
        ("Install", "On Linux"),
        ("Install", "On Linux", "Debian"),
        ("Install", "On macOS"),
    ]
    install = doc.sections[0].text
    assert "Run pip install matrixos first.\nThen restart." in install
    assert "line one\n    indented line" in install
    assert doc.sections[1].text == "apt\n\npip & venv"


def test_html_title_from_h1_and_declared_charset() -> None:
    html = '<html><head><meta charset="iso-8859-1"></head><body><h1>Caf\xe9</h1><p>cr\xe8me</p>'
    doc = parse_document(html.encode("latin-1"), uri="menu.htm")
    assert doc.title == "Café"
    assert doc.sections[0].text == "crème"


def test_empty_html_is_an_error() -> None:
    with pytest.raises(IngestError, match=r"empty\.html"):
        parse_document(b"   ", uri="empty.html")


# -- Markdown and text ------------------------------------------------------------------------
def test_markdown_headings_front_matter_and_fences() -> None:
    md = """---
title: ignored
tags: [a, b]
---
Intro line before any heading.

# Guide

Welcome.

## Setup ##

```bash
# not a heading
pip install matrixos
```

### Linux
Use apt.

Other notes
-----------
Setext heading body.

# Reference
#hashtag is not a heading
"""
    doc = parse_document(md.encode(), uri="docs/guide.md")
    assert doc.mime == "text/markdown"
    assert doc.title == "Guide"
    assert "ignored" not in doc.text and doc.text.startswith("Intro line")
    check_offsets(doc)
    assert [(s.headings, s.text.splitlines()[0]) for s in doc.sections] == [
        ((), "Intro line before any heading."),
        (("Guide",), "Welcome."),
        (("Guide", "Setup"), "```bash"),
        (("Guide", "Setup", "Linux"), "Use apt."),
        (("Guide", "Other notes"), "Setext heading body."),
        (("Reference",), "#hashtag is not a heading"),
    ]
    assert "# not a heading\npip install matrixos" in doc.sections[2].text


def test_markdown_without_headings_titles_from_first_line() -> None:
    doc = parse_document(b"\n\nJust some notes\nand more.\n", uri="n.markdown")
    assert doc.title == "Just some notes"
    assert [s.headings for s in doc.sections] == [()]


def test_plain_text_encodings() -> None:
    doc = parse_document("\ufeffHello wörld\n\nsecond para\n".encode(), uri="a.txt")
    assert (doc.text, doc.title) == ("Hello wörld\n\nsecond para", "Hello wörld")
    check_offsets(doc)
    legacy = parse_document("naïve café".encode("cp1252"), uri="old.txt")
    assert legacy.text == "naïve café"
    with pytest.raises(IngestError, match="binary"):
        parse_document(b"\x00\x01\x02binary", uri="blob.txt")


def test_not_a_document() -> None:
    with pytest.raises(NotSupported):
        parse_document((SKLEARN_IMAGES / "china.jpg").read_bytes(), uri="china.jpg")


# -- sniffing ---------------------------------------------------------------------------------
def test_sniff_mime_prefers_signatures_over_names() -> None:
    jpg = (SKLEARN_IMAGES / "china.jpg").read_bytes()[:64]
    wav = (ALSA / "Front_Center.wav").read_bytes()[:64]
    oga = (FREEDESKTOP / "bell.oga").read_bytes()[:64]
    html = (PG_HTML / "index.html").read_bytes()[:512]
    assert sniff_mime("china.jpg", jpg) == "image/jpeg"
    assert sniff_mime("renamed.png", jpg) == "image/jpeg"
    assert sniff_mime("x", wav) == "audio/wav"
    assert sniff_mime("bell.oga", oga) == "audio/ogg"
    assert sniff_mime("page", html) == "text/html"
    assert sniff_mime("doc.bin", make_pdf([["x"]])[:64]) == "application/pdf"
    assert sniff_mime("README.md", b"# hi") == "text/markdown"
    assert sniff_mime(Path("fake.png"), b"just text") == "image/png"  # fails later, as an image
    assert sniff_mime("LICENSE", b"MIT License\n") == "text/plain"
    assert sniff_mime("blob", os.urandom(8) + b"\x00\xff") == "application/octet-stream"
