"""ingest_media on real files: scikit-learn's sample photos, ALSA and freedesktop sounds,
Debian's PostgreSQL HTML manual and shared-mime-info PDF spec, plus broken copies of them."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import struct
import subprocess
import sys
import wave
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pypdf
import pytest
from PIL import Image
from typer.testing import CliRunner

import matrixos as mx
from matrixos.catalog import TableIdent
from matrixos.catalog.access import Principal
from matrixos.cli import app
from matrixos.connectors.media import (
    MEDIA_FORMAT,
    MEDIA_SCHEMA,
    has_tabular_files,
    ingest_media,
)
from matrixos.errors import AccessDenied, MatrixOSError, SchemaMismatch

SKLEARN_IMAGES = Path(__import__("sklearn").__file__).parent / "datasets" / "images"
WAV = Path("/usr/share/sounds/alsa/Front_Center.wav")
OGA = Path("/usr/share/sounds/freedesktop/stereo/bell.oga")
HTML = Path("/usr/share/doc/postgresql-doc-15/html/sql-select.html")
PDF = Path("/usr/share/doc/shared-mime-info/shared-mime-info-spec.pdf")
JUNK = bytes(range(256)) * 16  # no file signature starts like this

GOOD = {
    "china.jpg",
    "flower.jpg",
    "rotated.jpg",
    "Front_Center.wav",
    "bell.oga",
    "sql-select.html",
    "spec.pdf",
    "notes.md",
    "readme.txt",
    "data.bin",
}
BROKEN = {"trunc.jpg", "fake.png", "x.pdf", "noise.mp3", "gone.jpg"}


@pytest.fixture
def media_dir(tmp_path: Path) -> Path:
    root = tmp_path / "media"
    for sub in ("images", "sounds", "docs", "broken", ".cache"):
        (root / sub).mkdir(parents=True)
    shutil.copy(SKLEARN_IMAGES / "china.jpg", root / "images")
    shutil.copy(SKLEARN_IMAGES / "flower.jpg", root / "images")
    # A camera-style JPEG: EXIF tags, stored sideways (Orientation 6 = rotate 90° to view).
    with Image.open(SKLEARN_IMAGES / "flower.jpg") as im:
        exif = Image.Exif()
        exif[0x010F] = "MatrixOS Camera"  # Make
        exif[0x0110] = "MX-1"  # Model
        exif[0x0112] = 6  # Orientation
        im.crop((0, 0, 300, 200)).save(root / "images" / "rotated.jpg", "JPEG", exif=exif)
    shutil.copy(WAV, root / "sounds")
    shutil.copy(OGA, root / "sounds")
    shutil.copy(HTML, root / "docs")
    shutil.copy(PDF, root / "docs" / "spec.pdf")
    (root / "docs" / "notes.md").write_text("---\ndraft: true\n---\n# Field Notes\n\nDay one.\n")
    (root / "docs" / "readme.txt").write_text("Read me first\nThen the rest.\n")
    (root / "data.bin").write_bytes(JUNK)
    (root / "broken" / "trunc.jpg").write_bytes((SKLEARN_IMAGES / "china.jpg").read_bytes()[:20000])
    (root / "broken" / "fake.png").write_text("this is not a PNG\n")
    (root / "broken" / "x.pdf").write_bytes(JUNK)
    (root / "broken" / "noise.mp3").write_bytes(JUNK)
    os.symlink(root / "nowhere.jpg", root / "broken" / "gone.jpg")
    (root / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (root / ".cache" / "thumb.jpg").write_bytes((SKLEARN_IMAGES / "china.jpg").read_bytes())
    return root


def rows_by_name(lh: mx.Lakehouse, table: str, version: int | None = None) -> dict[str, dict]:
    return {r["name"]: r for r in lh.table(table).to_arrow(version=version).to_pylist()}


def ogg_duration(data: bytes) -> float:
    """Samples in the last Ogg page's granule position over the Vorbis sample rate."""
    last = data.rindex(b"OggS")
    granule = struct.unpack_from("<q", data, last + 6)[0]
    ident = data.index(b"\x01vorbis")
    rate = struct.unpack_from("<I", data, ident + 12)[0]
    return granule / rate


def test_ingest_media_extracts_each_kind(lh: mx.Lakehouse, media_dir: Path) -> None:
    summary = lh.ingest_media(str(media_dir), "media.files")
    assert (summary.files, summary.added, summary.changed, summary.unchanged, summary.failed) == (
        15,
        10,
        0,
        0,
        5,
    )
    assert summary.table == "main.media.files"
    assert summary.volume == "main.media.files_files"
    assert summary.version == lh.table("media.files").version
    text = str(summary)
    assert "10 added" in text and "5 failed" in text and "gone.jpg" in text
    assert {s.rsplit("/", 1)[-1] for s, _ in summary.errors} == BROKEN

    t = lh.table("media.files")
    assert t.schema.names == MEDIA_SCHEMA.names
    rows = rows_by_name(lh, "media.files")
    assert set(rows) == GOOD | BROKEN  # hidden files and folders skipped
    vol = lh.volume("media.files_files")
    for name in GOOD:
        r = rows[name]
        original = next(media_dir.rglob(name)).read_bytes()
        assert r["error"] is None, (name, r["error"])
        assert r["source"] == str(next(media_dir.rglob(name)))
        assert (r["size"], r["sha256"]) == (len(original), hashlib.sha256(original).hexdigest())
        assert r["uri"].startswith(vol.uri + "/")
        with lh.open_uri(r["uri"]) as f:
            assert f.read() == original
        mtime = datetime.fromtimestamp(next(media_dir.rglob(name)).stat().st_mtime, UTC)
        assert abs((r["modified"] - mtime).total_seconds()) < 0.001

    china = rows["china.jpg"]
    assert (china["kind"], china["mime"], china["format"]) == ("image", "image/jpeg", "JPEG")
    assert (china["width"], china["height"]) == (640, 427)
    assert json.loads(china["exif"]) == {}
    with Image.open(io.BytesIO(china["thumbnail"])) as thumb:
        assert (thumb.format, thumb.size) == ("PNG", (128, 85))
    assert china["duration_s"] is None and china["text"] is None and china["pages"] is None

    rotated = rows["rotated.jpg"]
    assert (rotated["width"], rotated["height"]) == (300, 200)  # as stored
    exif = json.loads(rotated["exif"])
    assert (exif["Make"], exif["Model"], exif["Orientation"]) == ("MatrixOS Camera", "MX-1", 6)
    with Image.open(io.BytesIO(rotated["thumbnail"])) as thumb:
        assert thumb.size == (85, 128)  # as viewed: turned upright

    center = rows["Front_Center.wav"]
    with wave.open(str(WAV)) as w:
        frames, rate, channels = w.getnframes(), w.getframerate(), w.getnchannels()
    assert (center["kind"], center["mime"]) == ("audio", "audio/wav")
    assert center["duration_s"] == pytest.approx(frames / rate)
    assert (center["sample_rate"], center["channels"]) == (rate, channels) == (48000, 1)
    assert center["width"] is None and center["thumbnail"] is None

    bell = rows["bell.oga"]
    assert (bell["kind"], bell["mime"]) == ("audio", "audio/ogg")
    assert bell["duration_s"] == pytest.approx(ogg_duration(OGA.read_bytes()), abs=1e-3)
    assert (bell["sample_rate"], bell["channels"]) == (44100, 2)

    html = rows["sql-select.html"]
    assert (html["kind"], html["mime"], html["title"]) == ("document", "text/html", "SELECT")
    assert "Synopsis" in html["text"] and "<" not in html["title"]
    pdf = rows["spec.pdf"]
    assert (pdf["kind"], pdf["title"]) == ("document", "Shared MIME-info Database")
    assert pdf["pages"] == len(pypdf.PdfReader(PDF).pages) == 17
    assert "magic" in pdf["text"].lower()
    notes = rows["notes.md"]
    assert (notes["mime"], notes["title"]) == ("text/markdown", "Field Notes")
    assert "draft" not in notes["text"] and "Day one." in notes["text"]
    assert rows["readme.txt"]["title"] == "Read me first"
    blob = rows["data.bin"]
    assert (blob["kind"], blob["mime"], blob["error"]) == (
        "other",
        "application/octet-stream",
        None,
    )

    assert "truncated" in rows["trunc.jpg"]["error"]
    assert "not a readable image" in rows["fake.png"]["error"]
    assert "not a readable PDF" in rows["x.pdf"]["error"]
    assert "not a readable audio" in rows["noise.mp3"]["error"]
    gone = rows["gone.jpg"]
    assert "No such file" in gone["error"]
    assert (gone["uri"], gone["size"], gone["sha256"]) == (None, None, None)
    # A corrupt file's bytes are still kept, for whoever wants to look at them.
    with lh.open_uri(rows["trunc.jpg"]["uri"]) as f:
        assert len(f.read()) == 20000

    # SQL sees the rows like any table's.
    kinds = dict(
        lh.sql(
            "SELECT kind, count(*) FROM media.files WHERE error IS NULL GROUP BY kind"
        ).fetchall()
    )
    assert kinds == {"image": 3, "audio": 2, "document": 4, "other": 1}


def test_reingest_writes_only_new_and_changed(lh: mx.Lakehouse, media_dir: Path) -> None:
    first = ingest_media(lh.service, lh.principal, media_dir, "media.files")
    v1 = first.version
    again = ingest_media(lh.service, lh.principal, [str(media_dir)], "media.files")
    assert (again.added, again.changed, again.unchanged, again.failed) == (0, 0, 10, 5)
    assert again.version == v1  # nothing new: no commit (the same failures are not rewritten)
    assert lh.table("media.files").version == v1

    old_notes = rows_by_name(lh, "media.files")["notes.md"]
    with (media_dir / "docs" / "notes.md").open("a") as f:
        f.write("\n## Day two\n\nRain.\n")
    shutil.copy(SKLEARN_IMAGES / "flower.jpg", media_dir / "images" / "flower_copy.jpg")
    readme = media_dir / "docs" / "readme.txt"
    st = readme.stat()
    os.utime(readme, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))  # touched, same bytes
    with Image.open(SKLEARN_IMAGES / "china.jpg") as im:  # the broken PNG gets fixed
        im.resize((64, 43)).save(media_dir / "broken" / "fake.png", "PNG")

    third = ingest_media(lh.service, lh.principal, str(media_dir), "media.files")
    assert (third.files, third.added, third.changed, third.unchanged, third.failed) == (
        16,
        1,
        2,
        9,
        4,
    )
    assert third.version is not None and v1 is not None and third.version > v1
    rows = rows_by_name(lh, "media.files")
    assert len(rows) == 16 == lh.table("media.files").count()
    assert "Rain." in rows["notes.md"]["text"]
    assert rows["notes.md"]["uri"] != old_notes["uri"]
    assert rows["fake.png"]["error"] is None and rows["fake.png"]["width"] == 64
    assert rows["readme.txt"]["modified"] > old_notes["modified"]
    assert rows["flower_copy.jpg"]["sha256"] == rows["flower.jpg"]["sha256"]

    # The previous version still describes, and can still open, the previous bytes.
    before = rows_by_name(lh, "media.files", version=v1)["notes.md"]
    with lh.open_uri(before["uri"]) as f:
        assert b"Rain." not in f.read()


def test_failed_write_changes_nothing(lh: mx.Lakehouse, media_dir: Path) -> None:
    # A media table someone extended with a required column: the commit of the new rows
    # (which lack it) fails after every file was read, and must leave the table as it was.
    schema = pa.schema([*MEDIA_SCHEMA, pa.field("reviewed", pa.bool_(), nullable=False)])
    row = dict.fromkeys(schema.names)
    row.update(source="/elsewhere/x.jpg", reviewed=True)
    t = lh.create_table(
        "media.strict", pa.Table.from_pylist([row], schema=schema), format=MEDIA_FORMAT
    )
    version = t.version
    with pytest.raises(MatrixOSError):
        ingest_media(lh.service, lh.principal, media_dir, "media.strict")
    assert lh.table("media.strict").version == version
    assert lh.table("media.strict").to_arrow().column("source").to_pylist() == ["/elsewhere/x.jpg"]


def test_refuses_a_table_that_is_not_media(lh: mx.Lakehouse, media_dir: Path) -> None:
    t = lh.create_table("media.other", pa.table({"source": [1], "note": ["not media"]}))
    with pytest.raises(SchemaMismatch, match="not a media table"):
        ingest_media(lh.service, lh.principal, media_dir, "media.other")
    assert lh.table("media.other").version == t.version


def test_ingest_from_object_store_or_folder_uri(
    lh: mx.Lakehouse, warehouse_root, media_dir
) -> None:
    # Beside the warehouse: s3://bucket/wh_src on S3, a sibling folder locally.
    src = f"{warehouse_root.uri}_src"
    fs = lh.warehouse.fs
    for name in ("images/china.jpg", "sounds/bell.oga", "docs/notes.md"):
        fs.makedirs(f"{src}/{name.split('/')[0]}", exist_ok=True)
        fs.put_file(str(media_dir / name), f"{src}/{name}")
    summary = ingest_media(
        lh.service, lh.principal, src, "media.remote", volume="media.inbox", thumbnail_size=32
    )
    assert (summary.added, summary.failed, summary.volume) == (3, 0, "main.media.inbox")
    rows = rows_by_name(lh, "media.remote")
    assert rows["china.jpg"]["source"] == f"{src}/images/china.jpg"
    assert rows["china.jpg"]["width"] == 640
    with Image.open(io.BytesIO(rows["china.jpg"]["thumbnail"])) as thumb:
        assert max(thumb.size) == 32
    assert rows["bell.oga"]["channels"] == 2
    assert lh.volume("media.inbox").uri in rows["notes.md"]["uri"]
    again = ingest_media(lh.service, lh.principal, src, "media.remote", volume="media.inbox")
    assert (again.added, again.changed, again.unchanged) == (0, 0, 3)


def test_unreadable_file_is_a_row_not_a_crash(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(SKLEARN_IMAGES / "china.jpg", src / "ok.jpg")
    secret = src / "secret.jpg"
    shutil.copy(SKLEARN_IMAGES / "flower.jpg", secret)
    secret.chmod(0)
    wh = tmp_path / "wh"
    code = (
        "import sys, matrixos as mx; "
        "print(mx.connect(sys.argv[1]).ingest_media(sys.argv[2], 'media.p'))"
    )
    cmd = [sys.executable, "-c", code, str(wh), str(src)]
    if os.geteuid() == 0:
        # root reads anything: drop the capabilities that bypass file permissions.
        cmd = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", *cmd]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    secret.chmod(0o644)
    assert done.returncode == 0, done.stderr
    assert "1 added" in done.stdout and "1 failed" in done.stdout
    rows = rows_by_name(mx.connect(str(wh)), "media.p")
    assert rows["ok.jpg"]["error"] is None
    assert rows["secret.jpg"]["error"] == "cannot read file: Permission denied"
    assert rows["secret.jpg"]["size"] == (SKLEARN_IMAGES / "flower.jpg").stat().st_size


def test_progress_and_no_files(lh: mx.Lakehouse, tmp_path: Path, capsys) -> None:
    (tmp_path / "a.txt").write_text("alpha\n")
    lh.ingest_media(str(tmp_path / "a.txt"), "media.one", progress=True)
    assert "[1/1] added" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(MatrixOSError, match="no files found"):
        lh.ingest_media(str(empty), "media.none")
    with pytest.raises(MatrixOSError, match="no such file"):
        lh.ingest_media(str(tmp_path / "missing"), "media.none")
    assert "main.media.none" not in lh.tables()


def test_cli_ingests_media_folders(tmp_path: Path, media_dir: Path) -> None:
    runner = CliRunner()
    wh = str(tmp_path / "wh")
    assert not has_tabular_files([str(media_dir)])
    first = runner.invoke(app, ["--warehouse", wh, "ingest", str(media_dir), "-t", "media.cli"])
    assert first.exit_code == 0, first.output
    assert "10 added" in first.output and "5 failed" in first.output
    second = runner.invoke(app, ["--warehouse", wh, "ingest", str(media_dir), "-t", "media.cli"])
    assert second.exit_code == 0, second.output
    assert "0 added, 0 changed, 10 unchanged, 5 failed" in second.output

    # A folder with a CSV is tabular ingest, unless --format media says otherwise.
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    (mixed / "people.csv").write_text("id,name\n1,ada\n2,bob\n")
    shutil.copy(WAV, mixed)
    assert has_tabular_files([str(mixed / "people.csv")])
    tab = runner.invoke(
        app, ["--warehouse", wh, "ingest", str(mixed / "people.csv"), "-t", "raw.people"]
    )
    assert tab.exit_code == 0, tab.output
    assert "2 rows" in tab.output
    forced = runner.invoke(
        app, ["--warehouse", wh, "ingest", str(mixed), "-t", "media.mixed", "--format", "media"]
    )
    assert forced.exit_code == 0, forced.output
    assert "2 added" in forced.output
    refused = runner.invoke(
        app, ["--warehouse", wh, "ingest", str(media_dir), "-t", "media.cli", "--mode", "merge"]
    )
    assert refused.exit_code == 1
    with mx.connect(wh) as lh:
        kinds = dict(lh.sql("SELECT name, kind FROM media.mixed").fetchall())
        assert kinds == {"people.csv": "other", "Front_Center.wav": "audio"}
        assert lh.table("media.cli").count() == 15


def test_ingest_media_checks_privileges(lh: mx.Lakehouse, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("alpha\n")
    first = lh.ingest_media(str(src), "media.files")
    (src / "b.txt").write_text("beta\n")
    vol = lh.volume("media.files_files")
    stored = [f.name for f in vol.list()]

    def unchanged() -> None:
        assert lh.table("media.files").version == first.version
        assert lh.table("media.files").to_arrow(columns=["name"]).column(0).to_pylist() == ["a.txt"]
        assert [f.name for f in vol.list()] == stored  # no file was copied either

    reader = lh.with_principal(
        Principal(
            "bob",
            frozenset(
                {"USE CATALOG ON main", "USE SCHEMA ON CATALOG main", "SELECT ON main.media.*"}
            ),
        )
    )
    with pytest.raises(AccessDenied, match=r"bob has no MODIFY privilege on main\.media\.files"):
        reader.ingest_media(str(src), "media.files")
    unchanged()
    # MODIFY on the table, but only SELECT on the volume its files go to.
    table_only = Principal(
        "tom",
        frozenset(
            {
                "USE CATALOG ON main",
                "USE SCHEMA ON CATALOG main",
                "SELECT ON main.media.*",
                "MODIFY ON main.media.files",
            }
        ),
    )
    with pytest.raises(
        AccessDenied, match=r"tom has no MODIFY privilege on main\.media\.files_files"
    ):
        lh.with_principal(table_only).ingest_media(str(src), "media.files")
    unchanged()
    # Without SELECT its previous rows cannot be read, so nothing is.
    blind = Principal(
        "ben",
        frozenset({"USE CATALOG ON main", "USE SCHEMA ON CATALOG main", "MODIFY ON main.media.*"}),
    )
    with pytest.raises(AccessDenied, match=r"ben has no SELECT privilege on main\.media\.files"):
        lh.with_principal(blind).ingest_media(str(src), "media.files")
    unchanged()
    # A new table needs CREATE on its schema: no table, no volume appears.
    with pytest.raises(AccessDenied, match=r"bob has no CREATE privilege on main\.media"):
        reader.ingest_media(str(src), "media.new")
    assert (lh.tables(), lh.volumes()) == (
        ["main.media.files"],
        ["main.media.files_files"],
    )

    editor = Principal(
        "eve",
        frozenset(
            {
                "USE CATALOG ON main",
                "USE SCHEMA ON CATALOG main",
                "SELECT ON main.media.*",
                "MODIFY ON main.media.*",
            }
        ),
    )
    again = lh.with_principal(editor).ingest_media(str(src), "media.files")
    assert (again.added, again.unchanged) == (1, 1)
    assert lh.table("media.files").count() == 2

    carol = lh.with_principal(
        Principal(
            "carol",
            frozenset(
                {"USE CATALOG ON main", "USE SCHEMA ON CATALOG main", "CREATE ON main.media"}
            ),
        )
    )
    mine = carol.ingest_media(str(src), "media.carols")
    assert (mine.added, mine.volume) == (2, "main.media.carols_files")
    assert lh.table("media.carols").info.owner == "carol"
    assert lh.catalog.get_volume(TableIdent.parse("media.carols_files")).owner == "carol"
    assert carol.ingest_media(str(src), "media.carols").unchanged == 2  # its owner reads it


def test_reingest_embeds_new_rows_of_a_table_with_an_embedding(
    lh: mx.Lakehouse, tmp_path: Path
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("vacuum removes old files\n")
    lh.ingest_media(str(src), "media.kb")
    lh.table("media.kb").set_embedding("text", embedder="hash")  # type: ignore[attr-defined]
    (src / "b.txt").write_text("optimize compacts small files\n")
    assert lh.ingest_media(str(src), "media.kb").added == 1
    t = lh.table("media.kb")
    vectors = dict(zip(*t.to_arrow(columns=["name", "vector"]).to_pydict().values(), strict=True))
    assert vectors["b.txt"] is not None and len(vectors["b.txt"]) == 64
    hits = t.search("optimize compacts small files", k=1)  # type: ignore[attr-defined]
    assert hits.column("name").to_pylist() == ["b.txt"]
