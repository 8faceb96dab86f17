"""The one way every writer of the project publishes a folder: checked, locked, staged, swapped atomically.

Every artifact folder (a canonical dataset, a results bundle, an NSD conversion, the demo world, a converted
checkpoint, a training checkpoint) is written through :func:`begin`, which returns a :class:`Staging`::

    st = begin(root, kind="mindeye-dataset", manifest="manifest.json", overwrite=False,
               sources=[raw_dir], required_bytes=estimate)
    ...write files into st.partial...
    st.publish(manifest_text)          # or st.abort() on any error

What :func:`begin` guarantees, before any heavy work:

- **lock**: ``<root>.lock`` is held (``fcntl.flock``) until publish/abort; a second writer to the same
  destination gets :class:`~mindeye_core.errors.DestinationLockedError` naming the holder's pid, host,
  command and start time. The kernel releases the lock when its process dies, so the lock of a writer killed
  with ``kill -9`` is stale at once and simply taken over (the file left behind is rewritten).
- **destination**: ``root`` must not exist, be an empty folder, or (with ``overwrite``) hold an artifact of
  the same ``kind`` (its manifest's ``_class``, or a staging marker of the same kind: a partial write).
  Anything else (a project folder, a file, another kind of artifact) is refused with
  :class:`~mindeye_core.errors.DestinationError`. ``root`` may never be one of ``sources`` nor a folder
  above one of them (``--overwrite`` pointed at the NSD source itself).
- **storage**: the parent is created and must be writable, and when the writer can estimate its size
  (``required_bytes``) the free space is checked: :class:`~mindeye_core.errors.StorageError` otherwise.

While writing, everything goes into ``<root>.partial/`` (its first file is the marker
``.mindeye-partial.json``: kind, pid, start time); readers require the manifest, which is written last.
:meth:`Staging.publish` writes the manifest, then swaps the partial folder with ``root`` in one
``renameat2(RENAME_EXCHANGE)`` call (Linux; an atomic exchange of two directory entries), then deletes the
old folder. A crash at any instant therefore leaves ``root`` holding the old artifact or the new one, never
neither. Where the exchange is not available (another OS or file system) the fallback renames ``root`` to
``<root>.old`` first; :func:`begin` and :func:`recover` put ``<root>.old`` back if a crash fell between the
two renames.

:meth:`Staging.abort` (also called by every writer's ``__exit__`` on an exception) removes the partial folder
and releases the lock. Out-of-disk errors are turned into :class:`~mindeye_core.errors.StorageError` by
:func:`storage_error`; HDF5 files of an aborted write are closed through :func:`discard_h5` (a failing close
is ignored: the files are deleted).
"""

from __future__ import annotations

import contextlib
import ctypes
import datetime as _dt
import errno
import json
import logging
import os
import shutil
import socket
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

from .errors import DestinationError, DestinationLockedError, StorageError

__all__ = [
    "MARKER_NAME",
    "Staging",
    "WriterLock",
    "artifact_kind",
    "begin",
    "check_output_dir",
    "discard_h5",
    "exchange",
    "h5_writing",
    "lock_path",
    "partial_path",
    "raise_storage_error",
    "recover",
    "release_reserve",
    "require_free_space",
    "require_room",
    "storage_error",
    "swap_into_place",
]

log = logging.getLogger(__name__)

MARKER_NAME = ".mindeye-partial.json"
"""First file of every staging folder: ``{"_class": kind, "pid", "started"}`` (a partial artifact's kind)."""
FREE_MARGIN_BYTES = 1 << 20
"""Free space required on top of a writer's own estimate."""
RESERVE_NAME = ".mindeye-reserve"
"""A file of allocated blocks in every staging folder (:data:`RESERVE_MAX_BYTES`, at most a quarter of the free
space): deleted when a staged HDF5 file must be closed after a failed write, so that its final flush finds room
(HDF5 otherwise keeps a file whose flush failed open and crashes flushing it again at interpreter exit), and
deleted before :meth:`Staging.publish` writes the manifest."""
RESERVE_MAX_BYTES = 8 << 20
_RENAME_EXCHANGE = 2


def partial_path(root: str | Path) -> Path:
    """The staging folder of ``root``: ``<root>.partial`` next to it."""
    root = Path(root)
    return root.with_name(root.name + ".partial")


def lock_path(root: str | Path) -> Path:
    """The lock file of ``root``: ``<root>.lock`` next to it."""
    root = Path(root)
    return root.with_name(root.name + ".lock")


def _old_path(root: Path) -> Path:
    return root.with_name(root.name + ".old")


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


# ----------------------------------------------------------------------------------------------- errors
_STAGED = "nothing was published and the partial folder was removed"


def storage_error(exc: BaseException, root: str | Path, *, left: str = _STAGED) -> StorageError | None:
    """A :class:`StorageError` describing ``exc`` when it is an out-of-disk / read-only / quota error, else None.

    h5py reports a full disk as ``OSError`` with ``errno`` 28 (or only in its text), and when closing a file
    as a ``RuntimeError`` whose text names errno 28; all are recognised. ``left`` says what the failed write
    left behind (default: a staged write's).
    """
    if not isinstance(exc, (OSError, RuntimeError)) or isinstance(exc, StorageError):
        return None
    text = str(exc)
    code = exc.errno if isinstance(exc, OSError) else None
    if isinstance(exc, RuntimeError) and "errno = 28" not in text and "No space left on device" not in text:
        return None
    if code in (errno.ENOSPC, errno.EDQUOT) or "No space left on device" in text or "errno = 28" in text:
        where = Path(root).parent
        try:
            free = f"{shutil.disk_usage(where).free / 2**20:.1f} MiB free now"
        except OSError:
            free = "free space unknown"
        return StorageError(f"out of disk space while writing {root} (on {where}: {free}); {left}: free some space "
                            "or choose another destination")
    if code == errno.EROFS or "Read-only file system" in text:
        return StorageError(f"cannot write {root}: the file system is read-only")
    return None


def raise_storage_error(exc: BaseException | None, root: str | Path, *, left: str = _STAGED) -> None:
    """For a writer's ``__exit__``: re-raise an out-of-disk / read-only ``exc`` as :class:`StorageError`."""
    err = None if exc is None else storage_error(exc, root, left=left)
    if err is not None:
        raise err from exc


def require_room(folder: str | Path, nbytes: int, root: str | Path) -> None:
    """Before a streaming write of about ``nbytes`` into the staging folder ``folder`` of ``root``: raise the
    out-of-disk :class:`StorageError` (the same message as :func:`storage_error`) unless that much plus
    :data:`FREE_MARGIN_BYTES` is free. HDF5 reports a full disk met inside its chunk cache only as ignored
    errors and then crashes the process, so streaming writers check first (one ``statvfs`` per batch)."""
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return
    if free < int(nbytes) + FREE_MARGIN_BYTES:
        raise StorageError(f"out of disk space while writing {root} (on {Path(root).parent}: "
                           f"{free / 2**20:.1f} MiB free, the next batch needs about {nbytes / 2**20:.1f} MiB); "
                           f"{_STAGED}: free some space or choose another destination")


def require_free_space(root: str | Path, required_bytes: int) -> None:
    """Raise :class:`StorageError` unless the file system of ``root``'s parent has ``required_bytes`` plus
    :data:`FREE_MARGIN_BYTES` free (checked before a write whose size is known)."""
    root = Path(root)
    free = shutil.disk_usage(root.parent).free
    if free < required_bytes + FREE_MARGIN_BYTES:
        raise StorageError(f"not enough disk space for {root}: about {required_bytes / 2**20:.1f} MiB "
                           f"needed, {free / 2**20:.1f} MiB free on {root.parent}")


@contextlib.contextmanager
def _as_storage_error(root: Path, action: str) -> Iterator[None]:
    try:
        yield
    except OSError as exc:
        err = storage_error(exc, root)
        if err is not None:
            raise err from exc
        if isinstance(exc, PermissionError) or exc.errno in (errno.EACCES, errno.EPERM):
            raise StorageError(f"cannot {action}: permission denied ({exc})") from exc
        raise


# ----------------------------------------------------------------------------------------------- lock
@dataclass
class WriterLock:
    """An exclusive, process-scoped lock on ``<root>.lock`` (``fcntl.flock``).

    The file holds JSON naming the holder (``pid``, ``host``, ``started``, ``command``). The kernel drops the
    lock when the holder's process ends in any way, so a lock left by a killed writer is stale and
    :meth:`acquire` takes it over (and logs it).

    Attributes:
        path: the lock file.
        what: how messages name the destination.
    """

    path: Path
    what: str = ""
    _fd: int | None = field(default=None, repr=False)
    took_over: dict[str, Any] | None = None

    @staticmethod
    def holder(path: str | Path) -> dict[str, Any]:
        """The JSON written by the lock's holder (empty when unreadable)."""
        try:
            data = json.loads(Path(path).read_text() or "{}")
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def acquire(self) -> WriterLock:
        """Take the lock or raise :class:`DestinationLockedError` naming the holder."""
        import fcntl

        what = self.what or str(self.path.with_suffix(""))
        while True:
            with _as_storage_error(self.path, f"create the lock file {self.path}"):
                self.path.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                h = self.holder(self.path)
                raise DestinationLockedError(
                    f"{what} is being written by another process (pid {h.get('pid', '?')} on {h.get('host', '?')}, "
                    f"started {h.get('started', '?')}: {h.get('command', '?')}); wait for it to finish or choose "
                    f"another destination (lock file {self.path})") from None
            # the file may have been unlinked by a holder releasing it between our open and flock: retry
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        previous = self.holder(self.path)
        if previous.get("pid") and previous.get("pid") != os.getpid():
            self.took_over = previous
            log.warning("%s: taking over the stale lock of pid %s (started %s), which is no longer running",
                        what, previous.get("pid"), previous.get("started"))
        info = {"pid": os.getpid(), "host": socket.gethostname(), "started": _now(),
                "command": " ".join(sys.argv)[:300]}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
        self._fd = fd
        return self

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        """Delete the lock file and drop the lock (unlink first: a waiting writer then retries on a new file)."""
        if self._fd is None:
            return
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> WriterLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


# ----------------------------------------------------------------------------------------------- kinds
def artifact_kind(folder: str | Path, manifest: str) -> str | None:
    """What ``folder`` holds: the ``_class`` (or legacy ``format``) of its ``manifest``, else the kind named by
    a staging marker (a partial artifact), else ``None``."""
    folder = Path(folder)
    for name in (manifest, MARKER_NAME):
        path = folder / name
        if path.is_file():
            try:
                data = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            if isinstance(data, dict):
                kind = data.get("_class", data.get("format"))
                if isinstance(kind, str):
                    return kind
    return None


def _is_within(inner: Path, outer: Path) -> bool:
    return inner == outer or outer in inner.parents


def _check_replaceable(root: Path, kind: str, manifest: str, overwrite: bool, exists_error: type[Exception]) -> None:
    if root.is_symlink() or (root.exists() and not root.is_dir()):
        raise DestinationError(f"{root} exists and is not a folder; choose a folder path for the output")
    if not root.exists() or not any(root.iterdir()):
        return
    found = artifact_kind(root, manifest)
    if not overwrite:
        raise exists_error(f"{'folder' if found is None else kind + ' folder'} already exists: {root} "
                           "(pass overwrite=True / --overwrite to replace it)")
    if found != kind:
        held = f"a {found!r} artifact" if found else f"files that are not a {kind!r} artifact (no {manifest})"
        raise DestinationError(f"refusing to overwrite {root}: it holds {held}; --overwrite only replaces a folder "
                               f"holding a {kind!r} artifact (complete or partial) or nothing")


def check_output_dir(path: str | Path, *, what: str = "--out") -> Path:
    """Check early that ``path`` can be a folder we write into: not a file, and its nearest existing ancestor
    writable. Returns the path. Raises :class:`DestinationError` / :class:`StorageError`."""
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise DestinationError(f"{what} {path} is a file, not a folder")
    probe = path
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise DestinationError(f"{what} {path}: {probe} is a file, not a folder")
    try:
        read_only = bool(os.statvfs(probe).f_flag & os.ST_RDONLY)
    except OSError:
        read_only = False
    if read_only:
        raise StorageError(f"{what} {path} is not writable: {probe} is on a read-only file system")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise StorageError(f"{what} {path} is not writable ({probe}: permission denied)")
    return path


def recover(root: str | Path) -> bool:
    """Undo a crash inside the fallback swap: ``root`` missing but ``<root>.old`` present -> renamed back.
    Returns True if something was recovered."""
    root = Path(root)
    old = _old_path(root)
    if not root.exists() and old.is_dir():
        old.rename(root)
        log.warning("recovered %s from %s (a replacement was interrupted)", root, old)
        return True
    if root.exists() and old.is_dir():
        shutil.rmtree(old, ignore_errors=True)
    return False


# ----------------------------------------------------------------------------------------------- swap
def exchange(a: str | Path, b: str | Path) -> bool:
    """Atomically exchange two existing paths (``renameat2(RENAME_EXCHANGE)``); False where unsupported."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd = -100
    if fn(at_fdcwd, os.fsencode(str(a)), at_fdcwd, os.fsencode(str(b)), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EXDEV):
        return False
    raise OSError(code, f"renameat2(RENAME_EXCHANGE) {a} <-> {b}: {os.strerror(code)}")


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def swap_into_place(new: str | Path, root: str | Path) -> Path:
    """Replace ``root`` (absent, or a folder) by the complete folder ``new`` so that a crash at any instant
    leaves the old or the new ``root``; the old one is deleted afterwards. Returns ``root``."""
    new, root = Path(new), Path(root)
    if root.exists():
        if exchange(new, root):
            _fsync_dir(root.parent)
            shutil.rmtree(new)  # now holds the old artifact
        else:
            old = _old_path(root)
            if old.exists():
                shutil.rmtree(old)
            root.rename(old)
            new.rename(root)
            _fsync_dir(root.parent)
            shutil.rmtree(old)
    else:
        new.rename(root)
        _fsync_dir(root.parent)
    return root


# ----------------------------------------------------------------------------------------------- HDF5
def _make_reserve(folder: Path) -> None:
    try:
        size = min(RESERVE_MAX_BYTES, shutil.disk_usage(folder).free // 4)
        if size <= 0:
            return
        fd = os.open(folder / RESERVE_NAME, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.posix_fallocate(fd, 0, size)
        finally:
            os.close(fd)
    except (OSError, AttributeError) as exc:  # no fallocate here, or no room even for that: write without one
        log.debug("no space reserve in %s: %s", folder, exc)
        with contextlib.suppress(OSError):
            (folder / RESERVE_NAME).unlink()


def release_reserve(folder: str | Path) -> None:
    """Delete the space reserve of a staging folder (:data:`RESERVE_NAME`), if it has one."""
    with contextlib.suppress(OSError):
        (Path(folder) / RESERVE_NAME).unlink()


def discard_h5(h5: Any, folder: str | Path | None = None) -> None:
    """Close an HDF5 file of an aborted write, ignoring a failing close (the file is deleted next).

    ``folder``: the staging folder the file is in; its space reserve (:data:`RESERVE_NAME`) is deleted first,
    so that the close's final flush finds room after a full disk. (The file's own name is not read from
    ``h5``: after a failed flush h5py can crash on it.)

    HDF5 that met a full disk inside its chunk cache can crash on the next call to the file (signal 11); the
    streaming writers therefore check the room before each batch (:func:`require_room`), so that this close
    normally finds a file whose writes all succeeded (docs/reliability.md).
    """
    if folder is not None:
        release_reserve(folder)
    if h5 is None or not h5.id.valid:
        return
    with contextlib.suppress(OSError, RuntimeError, ValueError):
        h5.close()


@contextlib.contextmanager
def h5_writing(path: str | Path) -> Iterator[Any]:
    """``h5py.File(path, "w")`` for a staged file: closed normally on success, through :func:`discard_h5`
    (which first frees the staging folder's space reserve) when the block or the close itself fails."""
    import h5py

    folder = Path(path).parent
    f = h5py.File(path, "w")
    try:
        yield f
    except BaseException:
        discard_h5(f, folder)
        raise
    try:
        f.close()
    except (OSError, RuntimeError):  # h5py raises RuntimeError when the final flush hits a full disk
        discard_h5(f, folder)
        raise


# ----------------------------------------------------------------------------------------------- staging
@dataclass
class Staging:
    """One write in progress (see the module docstring); created by :func:`begin`.

    Attributes:
        root: the destination folder.
        kind: the artifact kind (its manifest's ``_class``).
        manifest: the manifest file name (written last, by :meth:`publish`).
        partial: the staging folder ``<root>.partial``.
        lock: the held :class:`WriterLock`.
    """

    root: Path
    kind: str
    manifest: str
    partial: Path
    lock: WriterLock
    done: bool = False

    def publish(self, manifest_text: str) -> Path:
        """Write the manifest, swap the staging folder into place, release the lock. Returns ``root``."""
        if self.done:
            raise RuntimeError(f"{self.root}: this staging was already published or aborted")
        with _as_storage_error(self.root, f"publish {self.root}"):
            release_reserve(self.partial)
            path = self.partial / self.manifest
            with open(path, "w") as fh:
                fh.write(manifest_text)
                fh.flush()
                os.fsync(fh.fileno())
            (self.partial / MARKER_NAME).unlink()
            _check_replaceable(self.root, self.kind, self.manifest, True, DestinationError)
            swap_into_place(self.partial, self.root)
        self.done = True
        self.lock.release()
        return self.root

    def abort(self) -> None:
        """Remove the staging folder and release the lock (idempotent)."""
        if not self.done:
            try:
                shutil.rmtree(self.partial)
            except FileNotFoundError:
                pass
            except OSError as exc:
                log.warning("could not remove the partial folder %s: %s", self.partial, exc)
            self.done = True
        self.lock.release()

    def __enter__(self) -> Staging:
        return self

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        if not self.done:
            self.abort()
        raise_storage_error(exc, self.root)


def begin(
    root: str | Path,
    *,
    kind: str,
    manifest: str,
    overwrite: bool = False,
    sources: Iterable[str | Path] = (),
    required_bytes: int = 0,
    exists_error: type[Exception] = DestinationError,
) -> Staging:
    """Check the destination, take its lock, create ``<root>.partial`` (see the module docstring).

    Args:
        root: destination folder.
        kind: the artifact kind; ``overwrite`` only replaces a folder holding the same kind.
        manifest: the manifest file name that makes a folder complete (``manifest.json``, ``config.json``).
        overwrite: allow replacing an existing artifact of the same kind (only once the new one is complete).
        sources: folders or files this write reads; ``root`` may be neither one of them nor above one.
        required_bytes: the writer's estimate of its size (0: unknown); checked against the free space.
        exists_error: exception raised when ``root`` holds something and ``overwrite`` is False (writers keep
            their historical type; it must accept one message argument).

    Raises:
        DestinationError: ``root`` is a file, a source or above one, or holds something ``overwrite`` may not
            replace (``exists_error`` when ``overwrite`` is False).
        DestinationLockedError: another live process is writing ``root``.
        StorageError: the destination is read-only / not writable, or has less free space than needed.
    """
    root = Path(root).expanduser()
    absolute = Path(os.path.abspath(root))
    for src in sources:
        s = Path(os.path.abspath(Path(src).expanduser()))
        if _is_within(s, absolute):
            what = "is" if s == absolute else "is a folder above"
            raise DestinationError(f"refusing to write {root}: it {what} the source {src} of this run; "
                                   "choose an output folder outside the source")
    if root.exists() and not root.is_dir():
        raise DestinationError(f"{root} exists and is not a folder; choose a folder path for the output")
    check_output_dir(root.parent, what=f"the parent folder of {root}")
    lock = WriterLock(lock_path(root), what=str(root)).acquire()
    try:
        recover(root)
        _check_replaceable(root, kind, manifest, overwrite, exists_error)
        partial = partial_path(root)
        if partial.exists():
            found = artifact_kind(partial, manifest)
            # an interrupted write of ours (its writer is dead: we hold the lock); staging folders written before
            # markers existed have none, and any other kind of artifact there is left alone
            if partial.is_dir() and found in (None, kind):
                shutil.rmtree(partial)
            else:
                raise DestinationError(f"{partial} exists and is not a partial {kind!r} write; move it away")
        if required_bytes:
            require_free_space(root, required_bytes)
        with _as_storage_error(root, f"create {partial}"):
            partial.mkdir(parents=True)
            (partial / MARKER_NAME).write_text(json.dumps({"_class": kind, "pid": os.getpid(), "started": _now()}) + "\n")
        _make_reserve(partial)
    except BaseException as exc:
        lock.release()
        with contextlib.suppress(OSError):
            if partial_path(root).is_dir() and artifact_kind(partial_path(root), manifest) == kind:
                shutil.rmtree(partial_path(root))
        err = storage_error(exc, root)
        if err is not None:
            raise err from exc
        raise
    return Staging(root=root, kind=kind, manifest=manifest, partial=partial, lock=lock)
