"""``ingest_media``: images, audio and documents into a table, one row per file.

Each file becomes a row of :data:`MEDIA_SCHEMA`: where its bytes live (``uri``), where it came
from (``source``), its size, SHA-256, MIME type, ``kind`` (image / audio / document / other),
last change, an ``error`` (null when it was read), and what could be extracted — image size,
format, EXIF and a PNG thumbnail (Pillow); audio duration, sample rate and channels (mutagen, or
the stdlib ``wave``); document title, page count and text (:func:`parse_document`). Fields that
do not apply to a file are null.

Where the bytes go, and why. Each file is copied into a *volume* (default
``<schema>.<table>_files``, created when missing) and the row keeps only its URI:

- the original file stays a plain file, openable by any tool (Pillow, ffmpeg, a PDF viewer,
  DuckDB) and governed by the catalog like any table (``lh.volume(…)``, ``lh.open_uri(uri)``);
- the table stays small — text and a thumbnail per row — so scans, filters and searches over it
  read kilobytes per file, not the megabytes of each original;
- a Lance blob column would instead put every original inside the table: each scan that does
  not carefully project it away would drag the bytes along, compaction would rewrite them, and
  the bytes would belong to that one table rather than to a folder other tables and tools share.

Files are stored content-addressed, ``<sha256[:2]>/<sha256>/<file name>``: identical files are
stored once, a changed file gets a new URI (so older table versions still point at the bytes
they described), and files copied for a table commit that then fails are harmless orphans —
never a changed file under an existing row.

Rules: a corrupt or unreadable file (a truncated JPEG, text named ``.png``, a damaged PDF, no
read permission, a dangling link) becomes a row with ``error`` set and is counted as failed; it
never aborts the batch. The table write is one commit: all rows or none. Re-ingesting skips a
file whose source, size and modification time are unchanged, and otherwise compares SHA-256, so
only new or changed files are written (files that failed before are retried).

Who may do it: the table and the volume are resolved and authorized through the
``TableService`` for the ``Principal`` who asks, before any file is read or copied. An existing
table needs ``SELECT`` (its rows say what is already there) and ``MODIFY``; a new one ``CREATE``
on its schema (its creator owns it and its default volume); the volume needs ``MODIFY``.

Example:
    >>> import tempfile, matrixos as mx
    >>> lh = mx.connect(tempfile.mkdtemp())
    >>> import os
    >>> os.makedirs("papers")
    >>> with open("papers/notes.md", "w") as f:
    ...     _ = f.write("# Notes\\nVACUUM removes old files.\\n")
    >>> with open("papers/broken.png", "w") as f:  # text named .png
    ...     _ = f.write("not a png")
    >>> summary = ingest_media(lh.service, lh.principal, ["./papers"], "media.files")
    >>> print(summary)
    main.media.files: 2 file(s): 1 added, 0 changed, 0 unchanged, 1 failed (version ..., ...s)
      failed: .../papers/broken.png: ValueError: not a readable image: ...
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import io
import json
import math
import os
import posixpath
import stat
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final, Literal

import pyarrow as pa

from matrixos.ai.embed import embed_rows
from matrixos.catalog import TableIdent, TableInfo, lineage, lineage_runs
from matrixos.catalog.access import Principal
from matrixos.catalog.service import TableService
from matrixos.connectors.documents import DOCUMENT_MIMES, parse_document, sniff_mime
from matrixos.connectors.ingest import table_schema, target_table
from matrixos.errors import (
    IngestError,
    NotSupported,
    SchemaMismatch,
    TableExists,
    VolumeNotFound,
)
from matrixos.storage.options import StorageOptions
from matrixos.storage.volume import Volume
from matrixos.storage.warehouse import filesystem_for, is_remote

__all__ = [
    "MEDIA_FORMAT",
    "MEDIA_SCHEMA",
    "MediaIngestSummary",
    "has_tabular_files",
    "ingest_media",
]

#: The table format of media tables.
MEDIA_FORMAT: Final[Literal["delta", "lance"]] = "lance"

#: One schema for every row; fields that do not apply to a file are null.
MEDIA_SCHEMA = pa.schema(
    [
        pa.field("uri", pa.string()),
        pa.field("source", pa.string(), nullable=False),
        pa.field("name", pa.string()),
        pa.field("size", pa.int64()),
        pa.field("sha256", pa.string()),
        pa.field("mime", pa.string()),
        pa.field("kind", pa.string()),
        pa.field("modified", pa.timestamp("us", tz="UTC")),
        pa.field("error", pa.string()),
        # images
        pa.field("width", pa.int32()),
        pa.field("height", pa.int32()),
        pa.field("format", pa.string()),
        pa.field("exif", pa.string()),
        pa.field("thumbnail", pa.binary()),
        # audio
        pa.field("duration_s", pa.float64()),
        pa.field("sample_rate", pa.int32()),
        pa.field("channels", pa.int32()),
        # documents (audio files fill ``title`` from their tags)
        pa.field("title", pa.string()),
        pa.field("pages", pa.int32()),
        pa.field("text", pa.string()),
    ]
)

_MEDIA_HINT = "pip install 'matrixos[media]'"
_TABULAR = (".csv", ".tsv", ".json", ".ndjson", ".jsonl", ".parquet")
_DOCUMENT_MIMES = frozenset({*DOCUMENT_MIMES, "text/x-markdown", "text/x-rst"})
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class MediaIngestSummary:
    """What an ``ingest_media`` did: every file is counted once as added, changed, unchanged
    or failed (a failed file still has its row, with ``error`` set)."""

    table: str
    volume: str
    files: int
    added: int
    changed: int
    unchanged: int
    failed: int
    version: int | None
    seconds: float
    errors: tuple[tuple[str, str], ...] = ()

    def __str__(self) -> str:
        version = "no commit" if self.version is None else f"version {self.version}"
        lines = [
            f"{self.table}: {self.files} file(s): {self.added} added, {self.changed} changed, "
            f"{self.unchanged} unchanged, {self.failed} failed ({version}, {self.seconds:.2f}s)"
        ]
        for source, message in self.errors[:10]:
            lines.append(f"  failed: {source}: {message}")
        if len(self.errors) > 10:
            lines.append(f"  … and {len(self.errors) - 10} more failure(s)")
        return "\n".join(lines)


@dataclass
class _File:
    path: str  # what to read
    source: str  # the canonical name stored in ``source``
    remote: bool
    info: dict[str, Any] | None = None  # an object store's listing entry


@dataclass(frozen=True)
class _Previous:
    size: int | None
    modified: datetime | None
    sha256: str | None
    error: str | None


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


def ingest_media(
    service: TableService,
    principal: Principal,
    paths: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    table: str,
    **options: Any,
) -> MediaIngestSummary:
    """Ingest media files (see ``ingest_media_files``), recording the paths read as the
    write's inputs in ``system.lineage.events``."""
    given = [os.fspath(p) for p in ([paths] if isinstance(paths, (str, os.PathLike)) else paths)]
    with lineage.run(
        service,
        "ingest",
        principal=principal.name,
        statement=f"ingest_media {' '.join(given)} into {table}",
        always=True,
    ):
        for p in given:
            lineage_runs.read_source(lineage_runs.file_dataset(p))
        return ingest_media_files(service, principal, paths, table, **options)


def ingest_media_files(
    service: TableService,
    principal: Principal,
    paths: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    table: str,
    *,
    volume: str | Volume | None = None,
    recursive: bool = True,
    thumbnail_size: int | None = 128,
    progress: bool = False,
    workers: int | None = None,
) -> MediaIngestSummary:
    """Turn files (images, audio, PDF/HTML/Markdown/text, anything) into rows of ``table``.

    Args:
        service: the table service that resolves, authorizes and writes the table and volume.
        principal: who is asking (see the module's docs for the privileges needed).
        paths: files, folders or glob patterns, local or ``s3://``. Hidden files and folders
            (``.name``) below a folder are skipped.
        table: ``[catalog.]schema.table``; created (format :data:`MEDIA_FORMAT`) when missing,
            else upserted on ``source``.
        volume: where the files' bytes are copied; default ``<schema>.<table>_files``. Created
            when missing.
        recursive: walk folders recursively (default) or only their top level.
        thumbnail_size: the longest side of image thumbnails; 0 or None for none.
        progress: print one line per file to stderr.
        workers: threads reading and parsing files (default: 2 x CPUs, at most 8).

    Returns:
        A :class:`MediaIngestSummary`.

    Raises:
        AccessDenied: ``principal`` lacks a privilege on the table or the volume (nothing
            read, nothing written).
        IngestError: a path does not exist or nothing was found (nothing written).
        NotSupported: the ``media`` extra (Pillow, pypdf, mutagen, lxml) is missing.
        MatrixOSError: the volume or the table could not be written, or ``table`` is not a
            media table (``SchemaMismatch``); the table is unchanged.

    Example:
        >>> import tempfile, matrixos as mx
        >>> lh = mx.connect(tempfile.mkdtemp())
        >>> import os
        >>> os.makedirs("scans")
        >>> with open("scans/page1.txt", "w") as f:
        ...     _ = f.write("scanned text")
        >>> ingest_media(lh.service, lh.principal, "./scans", "media.scans").added
        1
        >>> again = ingest_media(lh.service, lh.principal, "./scans", "media.scans")
        >>> again.unchanged  # nothing new: nothing written
        1
    """
    start = time.perf_counter()
    if isinstance(paths, str | os.PathLike):
        paths = [paths]
    names = [os.fspath(p) for p in paths]
    if not names:
        raise IngestError("no paths given", path="")
    ident = TableIdent.parse(table)
    existing = target_table(service, principal, ident, "SELECT", "MODIFY")
    options = service.warehouse.options
    files = _discover(names, options, recursive)
    previous = _previous_rows(service, existing) if existing is not None else {}
    vol = _volume_for(service, principal, ident, volume)
    counts = {"added": 0, "changed": 0, "unchanged": 0, "failed": 0}
    errors: list[tuple[str, str]] = []
    rows: list[dict[str, Any]] = []
    size = thumbnail_size or 0
    n_workers = workers or min(8, 2 * (os.cpu_count() or 1))

    def work(f: _File) -> tuple[dict[str, Any] | None, str]:
        return _process(f, previous.get(f.source), vol, options, size)

    with concurrent.futures.ThreadPoolExecutor(max_workers=n_workers) as pool:
        for i, (f, (row, status)) in enumerate(zip(files, pool.map(work, files), strict=True)):
            counts[status] += 1
            if status == "failed" and row is not None:
                errors.append((f.source, str(row["error"])))
            elif status == "failed":
                prev = previous[f.source]
                errors.append((f.source, str(prev.error)))
            if row is not None:
                rows.append(row)
            if progress:
                print(f"[{i + 1}/{len(files)}] {status:<9} {f.source}", file=sys.stderr)
    version: int | None = None
    if rows:
        data = pa.Table.from_pylist(rows, schema=MEDIA_SCHEMA)
        version = _write(service, principal, ident, data, existing)
    elif existing is not None:
        version = service.store(existing).version()
    return MediaIngestSummary(
        table=str(ident),
        volume=vol.name,
        files=len(files),
        added=counts["added"],
        changed=counts["changed"],
        unchanged=counts["unchanged"],
        failed=counts["failed"],
        version=version,
        seconds=time.perf_counter() - start,
        errors=tuple(errors),
    )


def has_tabular_files(
    paths: Sequence[str | os.PathLike[str]], options: StorageOptions | None = None
) -> bool:
    """Whether ``paths`` hold any CSV/TSV/JSON/NDJSON/Parquet file (the ``ingest`` formats).

    The CLI sends paths without any to :func:`ingest_media`. Paths that do not exist count as
    tabular, so that the tabular ingest reports them.
    """
    opts = options or StorageOptions.from_mapping(None)
    try:
        files = _discover([os.fspath(p) for p in paths], opts, recursive=True)
    except IngestError:
        return True
    return any(_strip_compression(f.source).lower().endswith(_TABULAR) for f in files)


# --------------------------------------------------------------------------------------------
# Finding files
# --------------------------------------------------------------------------------------------


def _strip_compression(name: str) -> str:
    for ext in (".gz", ".bz2", ".zst"):
        if name.lower().endswith(ext):
            return name[: -len(ext)]
    return name


def _hidden(rel: str) -> bool:
    return any(part.startswith(".") for part in rel.split("/") if part)


def _discover(paths: list[str], options: StorageOptions, recursive: bool) -> list[_File]:
    found: dict[str, _File] = {}
    for path in paths:
        items = _discover_remote(path, options, recursive) if is_remote(path) else None
        if items is None:
            items = _discover_local(path, recursive)
        for item in items:
            found.setdefault(item.source, item)
    if not found:
        raise IngestError("no files found", path=", ".join(paths))
    return list(found.values())


def _discover_local(path: str, recursive: bool) -> list[_File]:
    import glob

    if path.startswith("file://"):
        path = path[len("file://") :]
    path = os.path.expanduser(path)
    if any(ch in path for ch in "*?["):
        matches = sorted(glob.glob(path, recursive=True))
        if not matches:
            raise IngestError("no files match this pattern", path=path)
        out: list[_File] = []
        for match in matches:
            out.extend(_discover_local(match, recursive))
        return out
    if os.path.isdir(path):
        root = os.path.abspath(path)
        out = []
        for folder, dirs, files in os.walk(root):
            dirs[:] = sorted(d for d in dirs if not d.startswith(".")) if recursive else []
            for name in sorted(files):
                if not name.startswith("."):
                    full = os.path.join(folder, name)
                    out.append(_File(path=full, source=full, remote=False))
        return out
    if os.path.lexists(path):  # a dangling link is still a file to report
        full = os.path.abspath(path)
        return [_File(path=full, source=full, remote=False)]
    raise IngestError("no such file or folder", path=path)


def _discover_remote(path: str, options: StorageOptions, recursive: bool) -> list[_File]:
    fs = filesystem_for(path, options)
    scheme = path.split("://", 1)[0] + "://"
    if any(ch in path for ch in "*?["):
        matches = sorted(fs.glob(path))
        if not matches:
            raise IngestError("no files match this pattern", path=path)
        out: list[_File] = []
        for match in matches:
            out.extend(_discover_remote(scheme + match, options, recursive))
        return out
    if fs.isdir(path):
        root = fs._strip_protocol(path).rstrip("/")
        listing = fs.find(path, withdirs=False, detail=True, maxdepth=None if recursive else 1)
        out = []
        for key, info in sorted(listing.items()):
            rel = key[len(root) + 1 :]
            if not rel or key.endswith("/") or _hidden(rel):
                continue
            out.append(_File(path=scheme + key, source=scheme + key, remote=True, info=info))
        return out
    if fs.exists(path):
        return [_File(path=path, source=path.rstrip("/"), remote=True)]
    raise IngestError("no such file or folder", path=path)


# --------------------------------------------------------------------------------------------
# One file
# --------------------------------------------------------------------------------------------


def _stat(f: _File, options: StorageOptions) -> tuple[int, datetime]:
    if not f.remote:
        st = os.stat(f.path)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(f"not a regular file: {f.path}")
        return st.st_size, _EPOCH + timedelta(microseconds=st.st_mtime_ns // 1000)
    info = f.info or filesystem_for(f.path, options).info(f.path)
    modified = info.get("LastModified") or info.get("mtime") or _EPOCH
    if isinstance(modified, int | float):
        modified = datetime.fromtimestamp(modified, UTC)
    if modified.tzinfo is None:
        modified = modified.replace(tzinfo=UTC)
    return int(info.get("size") or 0), modified


def _read(f: _File, options: StorageOptions) -> bytes:
    if not f.remote:
        with open(f.path, "rb") as handle:
            return handle.read()
    return bytes(filesystem_for(f.path, options).cat_file(f.path))


def _reason(e: BaseException) -> str:
    if isinstance(e, OSError) and e.strerror:
        return f"cannot read file: {e.strerror}"
    if isinstance(e, IngestError):
        # The row names the file already.
        prefix = e.path + ": "
        return e.message[len(prefix) :] if e.message.startswith(prefix) else e.message
    text = str(e).strip() or type(e).__name__
    return f"{type(e).__name__}: {text}" if type(e).__name__ not in text else text


def _kind(mime: str) -> str:
    if mime.startswith("image/") and mime != "image/svg+xml":
        return "image"
    if mime.startswith("audio/"):
        return "audio"
    if mime in _DOCUMENT_MIMES:
        return "document"
    return "other"


def _process(
    f: _File,
    prev: _Previous | None,
    vol: Volume,
    options: StorageOptions,
    thumbnail_size: int,
) -> tuple[dict[str, Any] | None, str]:
    """(the row to write or None, and added / changed / unchanged / failed)."""
    name = posixpath.basename(f.source.replace("\\", "/"))
    row: dict[str, Any] = {"source": f.source, "name": name}
    usable = prev is not None and prev.error is None
    try:
        size, modified = _stat(f, options)
    except OSError as e:
        row["error"] = _reason(e)
        return _failed(row, prev)
    row["size"], row["modified"] = size, modified
    if usable and prev is not None and (prev.size, prev.modified) == (size, modified):
        return None, "unchanged"
    try:
        data = _read(f, options)
    except OSError as e:
        row["error"] = _reason(e)
        return _failed(row, prev)
    row["size"] = len(data)
    sha = hashlib.sha256(data).hexdigest()
    mime = sniff_mime(name, data[:1024])
    kind = _kind(mime)
    row.update(sha256=sha, mime=mime, kind=kind)
    # Content-addressed: see the module docstring. A stored blob is never rewritten.
    blob = f"{sha[:2]}/{sha}/{name.replace(chr(92), '_')}"
    if not vol.exists(blob):
        vol.put(data, blob)
    row["uri"] = vol.uri_of(blob)
    try:
        if kind == "image":
            row.update(_image(data, thumbnail_size))
        elif kind == "audio":
            row.update(_audio(data, mime))
        elif kind == "document":
            doc = parse_document(data, uri=f.source, mime=mime)
            row.update(title=doc.title, pages=doc.pages, text=doc.text)
    except NotSupported:
        raise  # a missing extra, not a bad file: stop rather than fill a table with errors
    except Exception as e:  # parsers of untrusted bytes raise anything; the file is the problem
        row["error"] = _reason(e)
        return _failed(row, prev)
    if prev is None:
        return row, "added"
    if usable and prev.sha256 == sha:
        return row, "unchanged"  # touched, same bytes: the row's new ``modified`` is kept
    return row, "changed"


def _failed(row: dict[str, Any], prev: _Previous | None) -> tuple[dict[str, Any] | None, str]:
    same = prev is not None and (prev.size, prev.modified, prev.sha256, prev.error) == (
        row.get("size"),
        row.get("modified"),
        row.get("sha256"),
        row.get("error"),
    )
    # The same failure as last time: nothing new to write (it is still counted and reported).
    return (None if same else row), "failed"


# ---- images ---------------------------------------------------------------------------------


def _exif_value(value: Any) -> Any:
    if isinstance(value, bytes):
        try:
            text = value.decode("utf-8").strip("\x00 ")
        except UnicodeDecodeError:
            return None
        return text if text.isprintable() else None
    if isinstance(value, str):
        return value.strip("\x00 ")
    if isinstance(value, bool | int):
        return value
    if isinstance(value, tuple | list):
        items = [_exif_value(v) for v in value]
        return None if any(v is None for v in items) else items
    try:
        number = float(value)  # IFDRational, Fraction
    except (TypeError, ValueError, ZeroDivisionError):
        return None
    return number if math.isfinite(number) else None


def _exif_json(im: Any) -> str:
    from PIL import ExifTags

    exif = im.getexif()
    out: dict[str, Any] = {}

    def add(ifd: Any, names: dict[int, str]) -> None:
        for tag, value in ifd.items():
            name = names.get(tag)
            if name and name not in ("ExifOffset", "GPSInfo", "MakerNote", "PrintImageMatching"):
                readable = _exif_value(value)
                if readable is not None and readable != "":
                    out[name] = readable

    add(exif, ExifTags.TAGS)
    for ifd_id, names in ((ExifTags.IFD.Exif, ExifTags.TAGS), (ExifTags.IFD.GPSInfo, None)):
        try:
            sub = exif.get_ifd(ifd_id)
        except Exception:  # a damaged sub-IFD loses its tags, not the image
            continue
        if names is None:
            out.update(
                {
                    ExifTags.GPSTAGS.get(k, f"GPS{k}"): v
                    for k, raw in sub.items()
                    if (v := _exif_value(raw)) is not None
                }
            )
        else:
            add(sub, names)
    return json.dumps(out, ensure_ascii=False, sort_keys=True)


def _image(data: bytes, thumbnail_size: int) -> dict[str, Any]:
    try:
        from PIL import Image, ImageOps
    except ImportError as e:
        raise NotSupported("reading images needs Pillow", hint=_MEDIA_HINT) from e
    try:
        opened = Image.open(io.BytesIO(data))
    except Image.UnidentifiedImageError:
        # Pillow's message names a BytesIO object; say what it means instead.
        raise ValueError("not a readable image: unknown format or corrupt header") from None
    with opened as im:
        width, height = im.size
        out: dict[str, Any] = {
            "width": width,
            "height": height,
            "format": im.format,
            "exif": _exif_json(im),
        }
        if thumbnail_size > 0 and im.format == "JPEG":
            # Decode at a reduced scale (never below the thumbnail's size): far less work.
            im.draft("RGB", (thumbnail_size, thumbnail_size))
        im.load()  # a truncated or corrupt image fails here, not silently later
        if thumbnail_size > 0:
            # The size comes from the full image: a draft's rounded size would skew the aspect.
            scale = min(1.0, thumbnail_size / max(width, height, 1))
            size = (max(1, round(width * scale)), max(1, round(height * scale)))
            if im.getexif().get(0x0112) in (5, 6, 7, 8):  # Orientation: stored sideways
                size = (size[1], size[0])
            thumb = ImageOps.exif_transpose(im) or im
            if thumb.size != size:
                thumb = thumb.resize(size, Image.Resampling.LANCZOS)
            if thumb.mode not in ("1", "L", "LA", "P", "RGB", "RGBA"):
                thumb = thumb.convert("RGBA" if "A" in thumb.getbands() else "RGB")
            buf = io.BytesIO()
            thumb.save(buf, "PNG", optimize=True)
            out["thumbnail"] = buf.getvalue()
    return out


# ---- audio ----------------------------------------------------------------------------------


def _audio(data: bytes, mime: str) -> dict[str, Any]:
    try:
        import mutagen
    except ImportError:
        if mime in ("audio/wav", "audio/x-wav"):
            return _wave(data)
        raise NotSupported("reading audio needs mutagen", hint=_MEDIA_HINT) from None
    parsed = mutagen.File(io.BytesIO(data))
    if parsed is None or parsed.info is None:
        if mime in ("audio/wav", "audio/x-wav"):
            return _wave(data)
        raise ValueError(f"not a readable audio file ({mime})")
    info = parsed.info
    length = float(getattr(info, "length", 0.0) or 0.0)
    out: dict[str, Any] = {
        "duration_s": length if math.isfinite(length) else None,
        "sample_rate": getattr(info, "sample_rate", None),
        "channels": getattr(info, "channels", None),
    }
    tags = parsed.tags
    title = None
    if tags is not None:
        for key in ("title", "TITLE", "TIT2", "\xa9nam"):
            try:
                value = tags.get(key)
            except (KeyError, ValueError, TypeError):
                value = None
            if value:
                title = str(value[0] if isinstance(value, list) else value).strip()
                break
    out["title"] = title or None
    return out


def _wave(data: bytes) -> dict[str, Any]:
    import wave

    with wave.open(io.BytesIO(data)) as w:
        rate = w.getframerate()
        return {
            "duration_s": w.getnframes() / rate if rate else None,
            "sample_rate": rate,
            "channels": w.getnchannels(),
        }


# --------------------------------------------------------------------------------------------
# The table and the volume
# --------------------------------------------------------------------------------------------


def _volume_for(
    service: TableService, principal: Principal, ident: TableIdent, volume: str | Volume | None
) -> Volume:
    """The volume the files go to, checked for ``MODIFY``; created when missing (which needs
    ``CREATE`` on its schema, an existing one does not)."""
    if isinstance(volume, Volume):
        return service.volume(principal, volume.name, "MODIFY")
    name = volume or f"{ident.catalog}.{ident.schema}.{ident.name}_files"
    try:
        return service.volume(principal, name, "MODIFY")
    except VolumeNotFound:
        comment = f"files of table {ident}" if volume is None else None
        service.create_volume(principal, name, comment=comment)
    return service.volume(principal, name, "MODIFY")


def _previous_rows(service: TableService, info: TableInfo) -> dict[str, _Previous]:
    missing = [n for n in MEDIA_SCHEMA.names if n not in table_schema(service, info).names]
    if missing:
        raise SchemaMismatch(
            f"table {info.ident} is not a media table: it lacks {', '.join(missing)}",
            hint="ingest media into a new table, or one an earlier ingest_media created",
        )
    columns = ["source", "size", "modified", "sha256", "error"]
    rows = service.store(info).scan(columns=columns).to_pylist()
    out = {}
    for r in rows:
        modified = r["modified"]
        if isinstance(modified, datetime) and modified.tzinfo is None:
            modified = modified.replace(tzinfo=UTC)
        out[r["source"]] = _Previous(r["size"], modified, r["sha256"], r["error"])
    return out


def _write(
    service: TableService,
    principal: Principal,
    ident: TableIdent,
    data: pa.Table,
    existing: TableInfo | None,
) -> int:
    if existing is None:
        try:
            info = service.create_table(principal, ident, data, format=MEDIA_FORMAT)
            return service.store(info).version()
        except TableExists:
            # Another ingest created it a moment ago: upsert into it instead.
            existing = service.resolve(principal, ident, "MODIFY")
    rows = embed_rows(existing.properties, data)  # a media table may name an embedding of text
    result = service.store(existing).merge(rows, ["source"])
    service.touch(existing)
    return result.version
