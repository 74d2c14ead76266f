"""Volumes: governed folders of raw files, on a local warehouse and on S3 (moto), registered in
the catalog (SQLite and PostgreSQL)."""

from __future__ import annotations

import ast
import hashlib
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pytest

import matrixos as mx
from matrixos.catalog import TableIdent, open_catalog
from matrixos.catalog.access import Principal
from matrixos.catalog.store import VolumeInfo
from matrixos.errors import (
    AccessDenied,
    FileNotFound,
    SchemaNotFound,
    TableExists,
    TableNotFound,
    VolumeNotFound,
)
from matrixos.storage import volume as volume_module
from matrixos.storage.volume import VOLUMES_DIR, Volume, volume_location
from matrixos.storage.warehouse import Warehouse

WAV = Path("/usr/share/sounds/alsa/Front_Center.wav")
OGA = Path("/usr/share/sounds/freedesktop/stereo/bell.oga")


def test_put_list_open_delete(lh: mx.Lakehouse, tmp_path: Path) -> None:
    vol = lh.create_volume("raw.docs", comment="scans and sounds")
    assert vol.name == "main.raw.docs"
    assert vol.uri == f"{lh.warehouse.uri}/main/raw/{VOLUMES_DIR}/docs"
    assert vol.list() == []

    before = datetime.now(UTC) - timedelta(minutes=5)
    wav_uri = vol.put(WAV)
    assert wav_uri == f"{vol.uri}/Front_Center.wav"
    assert vol.put(b"hello volume", "notes/2024/hello.txt") == f"{vol.uri}/notes/2024/hello.txt"
    assert vol.put(str(OGA), "notes/bell.oga").endswith("/notes/bell.oga")

    files = vol.list()
    assert [f.name for f in files] == ["Front_Center.wav", "notes/2024/hello.txt", "notes/bell.oga"]
    sizes = {f.name: f.size for f in files}
    assert sizes["Front_Center.wav"] == WAV.stat().st_size
    assert sizes["notes/2024/hello.txt"] == len(b"hello volume")
    assert all(f.uri == f"{vol.uri}/{f.name}" for f in files)
    assert all(f.modified.tzinfo is not None and f.modified > before for f in files)
    assert [f.name for f in vol.list("notes/")] == ["notes/2024/hello.txt", "notes/bell.oga"]
    assert [f.name for f in vol.list("notes/b")] == ["notes/bell.oga"]
    assert vol.list("nothing/") == []

    assert vol.read_bytes("Front_Center.wav") == WAV.read_bytes()
    with vol.open("notes/2024/hello.txt") as f:
        assert f.read() == b"hello volume"
    with vol.open_uri(wav_uri) as f:
        assert hashlib.sha256(f.read()).digest() == hashlib.sha256(WAV.read_bytes()).digest()
    with lh.open_uri(f"{vol.uri}/notes/bell.oga") as f:
        assert f.read() == OGA.read_bytes()

    # Replacing a file is a put of the same name.
    vol.put(b"v2", "notes/2024/hello.txt")
    assert vol.read_bytes("notes/2024/hello.txt") == b"v2"

    assert vol.exists("notes/bell.oga")
    vol.delete("notes/bell.oga")
    assert not vol.exists("notes/bell.oga")
    assert [f.name for f in vol.list()] == ["Front_Center.wav", "notes/2024/hello.txt"]
    with pytest.raises(FileNotFound):
        vol.delete("notes/bell.oga")
    vol.delete("notes/bell.oga", missing_ok=True)
    with pytest.raises(FileNotFound):
        vol.read_bytes("notes/bell.oga")
    with pytest.raises(FileNotFound):
        vol.put(tmp_path / "does-not-exist.bin")
    assert not vol.exists("does-not-exist.bin")


def test_put_folder_keeps_relative_paths(lh: mx.Lakehouse, tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "a" / "b").mkdir(parents=True)
    (src / "top.txt").write_text("top")
    (src / "a" / "b" / "deep.txt").write_text("deep")
    (src / ".hidden").write_text("skip me")
    vol = lh.create_volume("raw.tree")
    uris = vol.put_folder(src, prefix="import/")
    assert [u.removeprefix(vol.uri + "/") for u in uris] == [
        "import/a/b/deep.txt",
        "import/top.txt",
    ]
    assert vol.read_bytes("import/a/b/deep.txt") == b"deep"


@pytest.mark.parametrize(
    "name",
    [
        "../escape.txt",
        "a/../../escape.txt",
        "/etc/passwd",
        "s3://other-bucket/x",
        "",
        "a//b",
        "./a",
    ],
)
def test_names_escaping_the_volume_are_refused(lh: mx.Lakehouse, name: str) -> None:
    vol = lh.create_volume("raw.safe")
    with pytest.raises(AccessDenied, match="invalid file name"):
        vol.put(b"x", name)
    with pytest.raises(AccessDenied):
        vol.open(name)
    with pytest.raises(AccessDenied):
        vol.delete(name)
    assert vol.list() == []
    # Nothing was written anywhere in the warehouse either (only the catalog may be there).
    written = lh.warehouse.fs.find(lh.warehouse.uri)
    assert [p for p in written if "/_catalog.db" not in p and "/_catalog/" not in p] == []


def test_open_uri_refuses_files_outside_volumes(lh: mx.Lakehouse) -> None:
    lh.create_table("raw.t", pa.table({"a": [1]}))
    vol = lh.create_volume("raw.v")
    vol.put(b"x", "x.bin")
    with pytest.raises(AccessDenied, match="not a file in any volume"):
        lh.open_uri(f"{lh.warehouse.uri}/main/raw/t/_delta_log/00000000000000000000.json")
    with pytest.raises(AccessDenied):
        lh.open_uri(f"{vol.uri}/../other/x.bin")
    with pytest.raises(AccessDenied):
        vol.open_uri(f"{lh.warehouse.uri}/main/raw/t/x.bin")


def test_volume_visible_from_a_second_connection(warehouse_root) -> None:
    with mx.connect(warehouse_root.uri, storage_options=warehouse_root.storage_options) as one:
        uri = one.create_volume("shared.inbox").put(WAV, "sounds/center.wav")
    with mx.connect(warehouse_root.uri, storage_options=warehouse_root.storage_options) as two:
        assert two.volumes() == ["main.shared.inbox"]
        assert two.volumes("shared") == ["main.shared.inbox"]
        assert two.volumes("other") == []
        vol = two.volume("main.shared.inbox")
        assert [f.name for f in vol.list()] == ["sounds/center.wav"]
        with two.open_uri(uri) as f:
            assert f.read() == WAV.read_bytes()


def test_drop_volume_deletes_its_files(lh: mx.Lakehouse) -> None:
    vol = lh.create_volume("raw.tmp")
    vol.put(WAV)
    vol.put(b"x", "a/b/c.txt")
    fs = lh.warehouse.fs
    assert fs.exists(f"{vol.uri}/a/b/c.txt")
    lh.drop_volume("raw.tmp")
    assert not fs.exists(f"{vol.uri}/a/b/c.txt")
    assert not fs.exists(f"{vol.uri}/Front_Center.wav")
    assert lh.volumes() == []
    with pytest.raises(VolumeNotFound):
        lh.volume("raw.tmp")
    with pytest.raises(TableNotFound):  # VolumeNotFound is a TableNotFound (and a LookupError)
        lh.drop_volume("raw.tmp")
    lh.drop_volume("raw.tmp", if_exists=True)
    # A new volume of the same name starts empty.
    assert lh.create_volume("raw.tmp").list() == []


def test_volumes_are_not_tables(lh: mx.Lakehouse) -> None:
    lh.create_table("media.photos", pa.table({"id": [1]}))
    lh.create_volume("media.photos_files")
    assert lh.tables("media") == ["main.media.photos"]
    assert lh.volumes("media") == ["main.media.photos_files"]
    with pytest.raises(TableNotFound):
        lh.table("media.photos_files")
    with pytest.raises(VolumeNotFound):
        lh.volume("media.photos")
    # create_volume returns the existing one by default; refuses with if_not_exists=False.
    assert lh.create_volume("media.photos_files").name == "main.media.photos_files"
    with pytest.raises(TableExists):
        lh.create_volume("media.photos_files", if_not_exists=False)
    lh.drop_table("media.photos")
    with pytest.raises(TableExists, match="volume"):
        lh.drop_schema("media")
    lh.drop_volume("media.photos_files")
    lh.drop_schema("media")


def test_sql_create_and_drop_volume(lh: mx.Lakehouse) -> None:
    assert lh.sql("CREATE VOLUME raw.landing COMMENT 'drop zone'").fetchall() == [
        ("CREATE VOLUME",)
    ]
    assert lh.volumes() == ["main.raw.landing"]
    info = lh.catalog.get_volume(TableIdent.parse("raw.landing"))
    assert (info.comment, info.external) == ("drop zone", False)
    lh.sql("CREATE VOLUME IF NOT EXISTS raw.landing")
    with pytest.raises(TableExists):
        lh.sql("CREATE VOLUME raw.landing")
    lh.volume("raw.landing").put(b"x", "x.txt")
    lh.sql("DROP VOLUME raw.landing")
    assert lh.volumes() == []
    lh.sql("DROP VOLUME IF EXISTS raw.landing")
    with pytest.raises(VolumeNotFound):
        lh.sql("DROP VOLUME raw.landing")


def test_failed_put_leaves_nothing_behind(tmp_path: Path) -> None:
    lh = mx.connect(str(tmp_path / "wh"))
    vol = lh.create_volume("raw.atomic")
    folder = tmp_path / "a-folder"
    folder.mkdir()
    with pytest.raises(mx.MatrixOSError):
        vol.put(folder, "x.bin")  # a folder is not a file
    with pytest.raises(FileNotFound):
        vol.put(tmp_path / "missing.bin", "x.bin")
    assert vol.list() == []
    assert os.listdir(vol.uri) == []  # no temporary files either


def test_catalog_volume_entries(catalog_url: str) -> None:
    cat = open_catalog(catalog_url)
    try:
        ident = TableIdent("main", "raw", "docs")
        with pytest.raises(SchemaNotFound):
            cat.create_volume(VolumeInfo(ident=ident, location="/wh/x"))
        cat.create_schema("main", "raw")
        cat.create_volume(VolumeInfo(ident=ident, location="/wh/x", comment="c", owner="me"))
        with pytest.raises(TableExists):
            cat.create_volume(VolumeInfo(ident=ident, location="/wh/y"))
        got = cat.get_volume(ident)
        assert (got.location, got.comment, got.owner, got.external) == ("/wh/x", "c", "me", False)
        assert got.created_at.tzinfo is not None
        assert [v.name for v in cat.list_volumes()] == ["main.raw.docs"]
        assert cat.list_volumes("main", "other") == []
        assert cat.list_tables() == []
        assert cat.drop_volume(ident).location == "/wh/x"
        assert cat.find_volume(ident) is None
        with pytest.raises(VolumeNotFound):
            cat.drop_volume(ident)
    finally:
        cat.close()


def test_volume_privileges(lh: mx.Lakehouse, tmp_path: Path) -> None:
    vol = lh.create_volume("raw.docs")
    vol.put(b"%PDF-1.4", "a.pdf")
    bob = Principal(
        "bob",
        frozenset({"USE CATALOG ON main", "USE SCHEMA ON CATALOG main", "SELECT ON main.raw.*"}),
    )
    bobs = lh.with_principal(bob).volume("raw.docs")
    assert bobs.read_bytes("a.pdf") == b"%PDF-1.4"
    assert lh.with_principal(bob).volumes() == ["main.raw.docs"]
    # Reading is not writing: every way of changing its files needs MODIFY.
    folder = tmp_path / "more"
    folder.mkdir()
    (folder / "b.pdf").write_bytes(b"%PDF-1.5")
    for write in (
        lambda: bobs.put(b"%PDF-1.7", "a.pdf"),
        lambda: bobs.put(folder / "b.pdf"),
        lambda: bobs.put_folder(folder),
        lambda: bobs.delete("a.pdf"),
    ):
        with pytest.raises(AccessDenied, match=r"bob has no MODIFY privilege on main\.raw\.docs"):
            write()
    assert [f.name for f in vol.list()] == ["a.pdf"] and vol.read_bytes("a.pdf") == b"%PDF-1.4"
    with pytest.raises(AccessDenied, match=r"bob has no MODIFY privilege on main\.raw\.docs"):
        lh.service.volume(bob, "raw.docs", "MODIFY")
    with pytest.raises(AccessDenied, match=r"bob has no CREATE privilege on schema main\.raw"):
        lh.with_principal(bob).create_volume("raw.more")
    with pytest.raises(AccessDenied, match=r"bob has no MANAGE privilege on main\.raw\.docs"):
        lh.with_principal(bob).drop_volume("raw.docs")
    stranger = lh.with_principal(Principal("sam", frozenset()))
    with pytest.raises(AccessDenied):
        stranger.volume("raw.docs")
    with pytest.raises(AccessDenied):
        stranger.open_uri(f"{vol.uri}/a.pdf")
    assert stranger.volumes() == []
    assert lh.volumes() == ["main.raw.docs"] and vol.exists("a.pdf")
    # Its creator owns it: MODIFY without a grant.
    carol = Principal(
        "carol",
        frozenset({"USE CATALOG ON main", "USE SCHEMA ON CATALOG main", "CREATE ON main.raw"}),
    )
    lh.with_principal(carol).create_volume("raw.carols")
    lh.with_principal(carol).volume("raw.carols").put(b"x", "x.txt")
    assert lh.volume("raw.carols").list()[0].name == "x.txt"
    assert lh.catalog.get_volume(TableIdent.parse("raw.carols")).owner == "carol"


def test_volume_needs_no_catalog(tmp_path: Path) -> None:
    # storage/ sits below the catalog: a volume is a name, a location and storage options.
    tree = ast.parse(Path(volume_module.__file__).read_text())
    imported = {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    above = [m for m in imported if m.startswith("matrixos.")]
    assert all(m.startswith(("matrixos.errors", "matrixos.storage.")) for m in above), above
    wh = Warehouse(str(tmp_path / "wh"))
    location = volume_location(wh, "main", "raw", "docs")
    assert location == f"{wh.uri}/main/raw/{VOLUMES_DIR}/docs"
    vol = Volume("main.raw.docs", location, wh.options)
    assert vol.put(b"hello", "a/b.txt") == f"{location}/a/b.txt"
    assert (vol.name, [f.name for f in vol.list()]) == ("main.raw.docs", ["a/b.txt"])
