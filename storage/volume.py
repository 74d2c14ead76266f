"""Volumes: governed folders of raw files (images, audio, PDFs…) inside the warehouse.

A volume has a three-level name like a table (``lh.volume("raw.docs")`` is ``main.raw.docs``),
an entry in the catalog, and a managed location::

    <warehouse>/<catalog>/<schema>/.volumes/<volume>/<file name>

Tables live at ``<warehouse>/<catalog>/<schema>/<table>/`` and a table name is an identifier
(letters, digits, underscores), so no table can ever be called ``.volumes``: the two never
collide, whatever the names. (``_volumes`` would be a valid table name.)

A file's URI is its full location — an absolute local path or ``s3://bucket/…`` — so a table
can hold it in a ``uri`` column and any tool (Pillow, DuckDB, a browser via a presigned URL)
can open it; :meth:`Volume.open_uri` and ``Lakehouse.open_uri`` read it back through the
catalog.

Writes are atomic: on a local disk a file is written under a temporary name in the target
folder and renamed into place; on S3 an object appears only when its (single or multipart)
upload completes. Readers never see half a file.

Example:
    >>> import tempfile, matrixos as mx
    >>> lh = mx.connect(tempfile.mkdtemp())
    >>> vol = lh.create_volume("raw.docs")
    >>> with open("report.pdf", "wb") as f:
    ...     _ = f.write(b"%PDF-1.4 ...")
    >>> uri = vol.put("report.pdf")
    >>> [f.name for f in vol.list()]
    ['report.pdf']
"""

from __future__ import annotations

import builtins
import contextlib
import os
import posixpath
import re
import shutil
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import IO, TYPE_CHECKING, Any

from matrixos.errors import AccessDenied, FileNotFound, NotSupported
from matrixos.storage._errors import storage_error
from matrixos.storage.warehouse import filesystem_for, is_remote, normalize_uri

if TYPE_CHECKING:
    import fsspec

    from matrixos.storage.options import StorageOptions
    from matrixos.storage.warehouse import Warehouse

__all__ = ["VOLUMES_DIR", "FileInfo", "Volume", "volume_location"]

#: The folder, inside a schema's folder, that holds its volumes (not a valid table name).
VOLUMES_DIR = ".volumes"

# In-flight local uploads; ``list`` hides them and names may not start with it.
_TMP_PREFIX = ".mx-upload-"


def volume_location(warehouse: Warehouse, catalog: str, schema: str, name: str) -> str:
    """Where a managed volume lives: ``<warehouse>/<catalog>/<schema>/.volumes/<volume>``.

    Example:
        >>> import tempfile
        >>> from matrixos.storage.warehouse import Warehouse
        >>> wh = Warehouse(tempfile.mkdtemp())
        >>> volume_location(wh, "main", "raw", "docs") == wh.uri + "/main/raw/.volumes/docs"
        True
    """
    return warehouse.join(catalog, schema, VOLUMES_DIR, name)


@dataclass(frozen=True)
class FileInfo:
    """One file in a volume: its name inside the volume, full URI, size and last change."""

    name: str
    uri: str
    size: int
    modified: datetime


def check_file_name(name: str) -> str:
    """``name`` if it is a relative path that stays inside a volume; else ``AccessDenied``.

    Example:
        >>> check_file_name("2024/scan.pdf")
        '2024/scan.pdf'
    """
    if not isinstance(name, str) or not name:
        raise AccessDenied(f"invalid file name {name!r}: give a relative path such as 'a/b.pdf'")
    why = None
    if "\x00" in name:
        why = "it contains a NUL character"
    elif "\\" in name:
        why = "use '/' to separate folders"
    elif name.startswith("/") or "://" in name or re.match(r"^[A-Za-z]:(/|$)", name):
        why = "absolute paths and URIs are not allowed; give a path relative to the volume"
    else:
        parts = name.split("/")
        if any(p == ".." for p in parts):
            why = "'..' would leave the volume"
        elif any(p in ("", ".") for p in parts):
            why = "empty or '.' path segments are not allowed"
        elif any(p.startswith(_TMP_PREFIX) for p in parts):
            why = f"names starting with {_TMP_PREFIX!r} are reserved"
    if why:
        raise AccessDenied(f"invalid file name {name!r}: {why}")
    return name


def _modified(info: dict[str, Any]) -> datetime:
    for key in ("LastModified", "last_modified", "mtime", "created"):
        value = info.get(key)
        if isinstance(value, datetime):
            return value if value.tzinfo else value.replace(tzinfo=UTC)
        if isinstance(value, int | float):
            return datetime.fromtimestamp(value, UTC)
    return datetime.fromtimestamp(0, UTC)


class Volume:
    """A governed folder of raw files, local or on S3.

    Get one from the session (``lh.volume("raw.docs")``, ``lh.create_volume(...)``); file names
    are relative POSIX paths (``"2024/scan.pdf"``) that may not leave the volume.

    Example:
        >>> import tempfile, matrixos as mx
        >>> lh = mx.connect(tempfile.mkdtemp())
        >>> vol = lh.create_volume("raw.docs")
        >>> vol.put(b"%PDF-1.4 ...", "a/b.pdf")
        '.../main/raw/.volumes/docs/a/b.pdf'
        >>> vol.read_bytes("a/b.pdf")[:4]
        b'%PDF'
    """

    def __init__(
        self,
        name: str,
        location: str,
        options: StorageOptions,
        *,
        check_write: Callable[[], None] | None = None,
    ) -> None:
        """The volume called ``name`` (``catalog.schema.volume``) whose files are under
        ``location``, reached with the warehouse's storage ``options``. ``check_write`` raises
        ``AccessDenied`` when whoever holds this volume may not add or delete files (the table
        service passes its principal's ``MODIFY`` check); None allows writes."""
        self._name = name
        self._check_write = check_write
        self.uri = normalize_uri(location)
        self._options = options
        self.fs: fsspec.AbstractFileSystem = filesystem_for(self.uri, options)
        self._root = self.fs._strip_protocol(self.uri).rstrip("/")

    def __repr__(self) -> str:
        return f"Volume({self.name!r}, uri={self.uri!r})"

    @property
    def name(self) -> str:
        """The fully qualified name, ``catalog.schema.volume``."""
        return self._name

    @property
    def is_remote(self) -> bool:
        return is_remote(self.uri)

    # -- names and URIs ---------------------------------------------------------------------
    def uri_of(self, name: str) -> str:
        """The full URI of file ``name`` (whether or not it exists)."""
        return f"{self.uri}/{check_file_name(name)}"

    def name_of(self, uri: str) -> str:
        """The file name inside this volume of a full ``uri``; ``AccessDenied`` if outside."""
        full = normalize_uri(uri)
        if not full.startswith(self.uri + "/"):
            raise AccessDenied(f"{uri} is not a file of volume {self.name}")
        return check_file_name(full[len(self.uri) + 1 :])

    # -- writing ----------------------------------------------------------------------------
    def _writing(self) -> None:
        if self._check_write is not None:
            self._check_write()

    def put(
        self,
        src: str | os.PathLike[str] | bytes | bytearray | memoryview,
        dest_name: str | None = None,
    ) -> str:
        """Copy a file (a local path, an ``s3://`` URI or bytes) into the volume, atomically.

        Args:
            src: what to store; bytes need ``dest_name``.
            dest_name: the relative name in the volume; default the source's base name.
                An existing file of that name is replaced.

        Returns:
            The stored file's full URI.

        Raises:
            AccessDenied: ``dest_name`` would leave the volume (``..``, an absolute path), or
                the caller may not write to this volume (no ``MODIFY`` privilege).
            FileNotFound: ``src`` does not exist.
            StorageError: the copy failed; nothing was left at ``dest_name``.
        """
        self._writing()
        if isinstance(src, bytes | bytearray | memoryview):
            if dest_name is None:
                raise AccessDenied("put(bytes) needs dest_name")
            data: bytes | None = bytes(src)
            source = None
        else:
            data, source = None, os.fspath(src)
            if dest_name is None:
                dest_name = posixpath.basename(source.replace("\\", "/").rstrip("/"))
        dest = self.uri_of(dest_name)
        try:
            if self.is_remote:
                self._put_remote(dest, data, source)
            else:
                self._put_local(dest, data, source)
        except FileNotFoundError as e:
            raise FileNotFound(f"no such file: {source}") from e
        except OSError as e:
            raise storage_error(
                e,
                f"cannot write {dest_name} to volume {self.name}",
                self.uri,
                options=self._options,
            ) from e
        return dest

    def _put_local(self, dest: str, data: bytes | None, source: str | None) -> None:
        folder, base = os.path.split(dest)
        os.makedirs(folder, exist_ok=True)
        # Same folder, so the rename cannot cross file systems and is atomic.
        tmp = os.path.join(folder, f"{_TMP_PREFIX}{uuid.uuid4().hex}-{base}")
        try:
            if data is not None:
                with open(tmp, "wb") as f:
                    f.write(data)
            elif source is not None and is_remote(source):
                filesystem_for(source, self._options).get_file(source, tmp)
            elif source is not None:
                if os.path.isdir(source):
                    raise IsADirectoryError(f"{source} is a folder; use put_folder")
                shutil.copyfile(source, tmp)
            os.replace(tmp, dest)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    def _put_remote(self, dest: str, data: bytes | None, source: str | None) -> None:
        if data is not None:
            self.fs.pipe_file(dest, data)  # one PUT: the object appears whole or not at all
        elif source is not None and is_remote(source):
            src_fs = filesystem_for(source, self._options)
            if type(src_fs) is type(self.fs):
                self.fs.copy(source, dest)  # server-side copy
            else:
                self.fs.pipe_file(dest, src_fs.cat_file(source))
        elif source is not None:
            if os.path.isdir(source):
                raise IsADirectoryError(f"{source} is a folder; use put_folder")
            if not os.path.exists(source):
                raise FileNotFoundError(source)
            # A multipart upload becomes visible only when it completes.
            self.fs.put_file(source, dest)

    def put_folder(self, path: str | os.PathLike[str], prefix: str = "") -> builtins.list[str]:
        """Copy every file below a local or ``s3://`` folder, keeping relative paths.

        Hidden files and folders (``.name``) are skipped. ``prefix`` is prepended to each
        name (``"2024/"`` puts ``a.pdf`` at ``2024/a.pdf``). Returns the URIs, sorted by name.
        """
        self._writing()
        folder = os.fspath(path).rstrip("/")
        fs = filesystem_for(folder, self._options)
        if not fs.isdir(folder):
            raise FileNotFound(f"no such folder: {folder}")
        root = fs._strip_protocol(folder).rstrip("/")
        scheme = folder.split("://", 1)[0] + "://" if "://" in folder else ""
        uris = []
        for item in sorted(fs.find(folder, withdirs=False)):
            rel = item[len(root) + 1 :]
            if not rel or item.endswith("/") or any(p.startswith(".") for p in rel.split("/")):
                continue
            uris.append(self.put(scheme + item, prefix + rel))
        return uris

    def delete(self, name: str, *, missing_ok: bool = False) -> None:
        """Remove file ``name``; ``FileNotFound`` if it is not there (unless ``missing_ok``)."""
        self._writing()
        path = self.uri_of(name)
        if not self.fs.isfile(path):
            if missing_ok:
                return
            raise FileNotFound(f"no file {name!r} in volume {self.name}")
        try:
            self.fs.rm_file(path)
        except FileNotFoundError:
            if not missing_ok:
                raise FileNotFound(f"no file {name!r} in volume {self.name}") from None
        except OSError as e:
            raise storage_error(
                e, f"cannot delete {name} from volume {self.name}", self.uri, options=self._options
            ) from e

    # -- reading ----------------------------------------------------------------------------
    def exists(self, name: str) -> bool:
        """Whether file ``name`` is in the volume."""
        return bool(self.fs.isfile(self.uri_of(name)))

    def list(self, prefix: str = "") -> builtins.list[FileInfo]:
        """The files whose name starts with ``prefix`` (all by default), sorted by name.

        ``prefix`` is a string prefix of names, as on S3: ``"2024/"`` lists a folder,
        ``"2024/scan_"`` the files in it starting with ``scan_``.
        """
        if prefix:
            check_file_name(prefix.rstrip("/") or "x")
        folder = posixpath.dirname(prefix)
        base = f"{self._root}/{folder}" if folder else self._root
        try:
            found = self.fs.find(base, withdirs=False, detail=True)
        except FileNotFoundError:
            return []
        except OSError as e:
            raise storage_error(
                e, f"cannot list volume {self.name}", self.uri, options=self._options
            ) from e
        out = []
        for path, info in found.items():
            if not path.startswith(self._root + "/") or path.endswith("/"):
                continue
            name = path[len(self._root) + 1 :]
            if not name.startswith(prefix) or posixpath.basename(name).startswith(_TMP_PREFIX):
                continue
            out.append(
                FileInfo(
                    name=name,
                    uri=f"{self.uri}/{name}",
                    size=int(info.get("size") or 0),
                    modified=_modified(info),
                )
            )
        return sorted(out, key=lambda f: f.name)

    def open(self, name: str, mode: str = "rb") -> IO[Any]:
        """Open file ``name`` for reading (``rb`` or ``r``); write with :meth:`put`."""
        if mode not in ("rb", "r"):
            raise NotSupported(
                f"volumes open files for reading only, not mode {mode!r}",
                hint="write with Volume.put(), which is atomic",
            )
        path = self.uri_of(name)
        try:
            if not self.fs.isfile(path):
                raise FileNotFoundError(path)
            return self.fs.open(path, mode)  # type: ignore[no-any-return]
        except FileNotFoundError:
            raise FileNotFound(f"no file {name!r} in volume {self.name}") from None
        except OSError as e:
            raise storage_error(
                e, f"cannot open {name} in volume {self.name}", self.uri, options=self._options
            ) from e

    def read_bytes(self, name: str) -> bytes:
        """The whole content of file ``name``."""
        with self.open(name) as f:
            return f.read()  # type: ignore[no-any-return]

    def open_uri(self, uri: str, mode: str = "rb") -> IO[Any]:
        """Open a file by its full URI (as stored in a table's ``uri`` column)."""
        return self.open(self.name_of(uri), mode)
