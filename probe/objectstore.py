"""Store paths that are fsspec URLs (``s3://``, ``gs://``, ``memory://``...): where they point.

A store path is either a local path (the default; ``file://`` URLs too) or an object-store URL.
Local stores keep their POSIX bookkeeping (``flock``, atomic ``rename``, :mod:`probe.store`).
An object store has neither, so its bookkeeping relies only on what S3 and GCS guarantee:

* a PUT of one object is atomic (a reader sees the whole old object or the whole new one);
* strong read-after-write consistency, listings included (S3 since December 2020, GCS).

On top of that every writer writes its chunks first and one small object *last* (the root
``zarr.json`` of a one-process run, or a block's done-marker in a distributed run), so an
object that says "done" is only ever written after what it vouches for (:mod:`probe.distributed`).

Credentials and endpoints (``storage_options`` of fsspec) come from an argument or from the
``EMOPROBE_STORAGE_OPTIONS`` environment variable (JSON), e.g.
``{"endpoint_url": "http://localhost:9000", "key": "...", "secret": "..."}``; the CLI option
``--storage-options`` sets that variable (so worker processes inherit it). They are never written
into a store or a run record.

>>> is_remote("s3://bucket/stores/big.zarr"), is_remote("cache/x.zarr"), is_remote("file:///x")
(True, False, False)
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from probe.errors import EmoprobeError

#: JSON ``storage_options`` for every object-store URL (credentials, ``endpoint_url``...).
ENV_OPTIONS = "EMOPROBE_STORAGE_OPTIONS"
#: Internal (tests): ``1`` sends ``file://`` URLs through the object-store code path (no
#: ``flock``, no ``rename`` in the bookkeeping), on a local filesystem that emulates an object
#: store's atomic PUT. Plain paths are never affected.
ENV_FILE_AS_OBJECT_STORE = "EMOPROBE_FILE_AS_OBJECT_STORE"
#: Protocols whose first path component is a bucket (checked before a store is created).
BUCKET_PROTOCOLS = ("s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "oss", "r2")
#: fsspec's own backend for a protocol, to name in an error.
BACKENDS = {"s3": "s3fs", "s3a": "s3fs", "gs": "gcsfs", "gcs": "gcsfs", "az": "adlfs",
            "abfs": "adlfs", "abfss": "adlfs", "oss": "ossfs", "hf": "huggingface_hub",
            "http": "aiohttp", "https": "aiohttp"}


class ObjectStoreError(EmoprobeError, RuntimeError):
    """An object-store URL cannot be used (no backend, no bucket, bad options)."""


def protocol(path: str | Path) -> str | None:
    """The URL scheme of a store path (``"s3"``), or None for a plain local path."""
    text = str(path)
    if "://" not in text:
        return None
    return text.split("::")[0].split("://", 1)[0].lower()


def is_remote(path: str | Path) -> bool:
    """True when ``path`` is handled as an object store (not a local directory)."""
    proto = protocol(path)
    if proto is None or isinstance(path, Path):
        return False
    if proto in ("file", "local"):
        return os.environ.get(ENV_FILE_AS_OBJECT_STORE) == "1"
    return True


def local_path(path: str | Path) -> Path:
    """A local store path (``file://`` stripped, ``~`` expanded), absolute."""
    text = str(path)
    if protocol(text) in ("file", "local"):
        text = text.split("://", 1)[1]
    return Path(text).expanduser().absolute()


def normalize(path: str | Path) -> Path | str:
    """A store path as the toolkit records it: an absolute local Path, or the URL as a string."""
    return str(path).rstrip("/") if is_remote(path) else local_path(path)


def storage_options(options: Mapping[str, Any] | str | None = None) -> dict:
    """``options`` as a dict; by default from ``$EMOPROBE_STORAGE_OPTIONS`` (JSON) or empty."""
    if options is None:
        options = os.environ.get(ENV_OPTIONS) or {}
    if isinstance(options, str):
        try:
            options = json.loads(options)
        except json.JSONDecodeError as exc:
            raise ObjectStoreError(f"storage options (--storage-options or ${ENV_OPTIONS}) must be "
                                   f'a JSON object such as {{"endpoint_url": "http://..."}}: {exc}'
                                   ) from None
    if not isinstance(options, Mapping):
        raise ObjectStoreError("storage options must be a JSON object, not "
                               f"{type(options).__name__}")
    return dict(options)


@dataclass(frozen=True, eq=False)
class Remote:
    """A store at an object-store URL: its fsspec filesystem and the store's root in it."""

    url: str
    fs: Any  # fsspec.AbstractFileSystem (synchronous)
    root: str
    options: dict

    @classmethod
    def at(cls, url: str, options: Mapping[str, Any] | str | None = None) -> Remote:
        """Resolve ``url`` (raising a clear error when its backend is not installed)."""
        try:
            import fsspec
        except ImportError:  # pragma: no cover - fsspec comes with the scale extra
            raise ObjectStoreError(f"{url}: store URLs need fsspec: pip install 'emoprobe[scale]' "
                                   "(or pip install fsspec) and the protocol's backend") from None

        url = str(url).rstrip("/")
        opts = storage_options(options)
        proto = protocol(url)
        if proto in ("file", "local"):
            return cls(url, atomic_local_fs(), str(local_path(url)), opts)
        try:
            fs, root = fsspec.url_to_fs(url, **opts)
        except ImportError as exc:
            pkg = BACKENDS.get(proto or "", f"the fsspec backend for {proto}://")
            raise ObjectStoreError(f"{url}: {proto}:// needs an fsspec backend that is not "
                                   f"installed: pip install {pkg} ({exc})") from None
        except ValueError as exc:
            if "Protocol not known" in str(exc):
                raise ObjectStoreError(f"{url}: fsspec knows no protocol {proto!r} (a typo? "
                                       "s3://, gs://, az://, memory://, file:// ...)") from None
            raise ObjectStoreError(f"{url}: {exc}") from None
        except TypeError as exc:
            raise ObjectStoreError(f"{url}: storage options not accepted by {proto}:// ({exc}); "
                                   f"check --storage-options / ${ENV_OPTIONS}") from None
        return cls(url, fs, root.rstrip("/"), opts)

    def __str__(self) -> str:
        return self.url

    def key(self, name: str) -> str:
        return f"{self.root}/{name}"

    def zarr_store(self, *, read_only: bool = False):
        """A ``zarr.storage.FsspecStore`` rooted at the store."""
        from zarr.storage import FsspecStore

        if self.fs.async_impl:
            return FsspecStore.from_url(self.url, storage_options=self.options, read_only=read_only)
        from fsspec.implementations.asyn_wrapper import AsyncFileSystemWrapper

        return FsspecStore(fs=AsyncFileSystemWrapper(self.fs, asynchronous=True), path=self.root,
                           read_only=read_only)

    def exists(self, name: str = "") -> bool:
        path = self.key(name) if name else self.root
        self.fs.invalidate_cache(path.rsplit("/", 1)[0])  # s3fs answers from cached listings
        return bool(self.fs.exists(path))

    def read_json(self, name: str) -> dict:
        return json.loads(self.fs.cat_file(self.key(name)))

    def write_json(self, name: str, obj) -> None:
        """One PUT of the whole object (atomic on an object store)."""
        self.fs.pipe_file(self.key(name), json.dumps(obj).encode())

    def listdir(self, name: str = "") -> list[str]:
        """Names directly under ``name`` (fresh: the filesystem's listing cache is dropped)."""
        path = self.key(name) if name else self.root
        self.fs.invalidate_cache(path)
        try:
            entries = self.fs.ls(path, detail=False)
        except FileNotFoundError:
            return []
        return sorted(str(e).rstrip("/").rsplit("/", 1)[-1] for e in entries)

    def size(self) -> int:
        self.fs.invalidate_cache(self.root)
        return int(self.fs.du(self.root, total=True))

    def check_writable_location(self) -> None:
        """Fail clearly before creating a store in a bucket that does not exist."""
        proto = protocol(self.url)
        if proto not in BUCKET_PROTOCOLS:
            return
        bucket = self.root.lstrip("/").split("/", 1)[0]
        try:
            found = self.fs.exists(bucket)
        except PermissionError as exc:
            raise ObjectStoreError(f"{self.url}: no access to bucket {bucket!r} ({exc}); check the "
                                   f"credentials (--storage-options / ${ENV_OPTIONS})") from None
        if not found:
            raise ObjectStoreError(f"{self.url}: bucket {bucket!r} does not exist (or these "
                                   "credentials cannot see it); create it first or fix the URL")


def check(path: str | Path | None) -> None:
    """Fail fast (before a model loads) on a URL whose backend is missing or options are bad."""
    if path is not None and is_remote(path):
        Remote.at(str(path))


def where(path: str | Path, options: Mapping[str, Any] | str | None = None) -> Path | Remote:
    """A store path resolved: a local :class:`Path`, or a :class:`Remote` for a URL."""
    if isinstance(path, Remote):
        return path
    return Remote.at(str(path), options) if is_remote(path) else local_path(path)


def atomic_local_fs():
    """fsspec's local filesystem whose whole-file writes are atomic, like an object store's PUT.

    Used only for ``file://`` URLs under ``EMOPROBE_FILE_AS_OBJECT_STORE=1`` (tests of the
    object-store bookkeeping across processes). Its rename emulates the backend's atomic PUT;
    the bookkeeping above it never renames.
    """
    from fsspec.implementations.local import LocalFileSystem

    class AtomicLocalFileSystem(LocalFileSystem):
        cachable = False

        def pipe_file(self, path, value, mode="overwrite", **kwargs):
            path = self._strip_protocol(path)
            folder, name = os.path.split(path)
            os.makedirs(folder, exist_ok=True)
            tmp = os.path.join(folder, f".{name}.{os.getpid()}.put")
            with open(tmp, "wb") as fh:
                fh.write(value)
            os.replace(tmp, path)

    return AtomicLocalFileSystem()
