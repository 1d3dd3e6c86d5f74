"""Writes that readers never see half done: build under a hidden name beside the target, then rename it into place.

One mechanism for every file and folder diffrt publishes: exported packages and ``lora apply`` outputs (replace the
target), the ONNX Runtime graph cache and fp16 conversions (keep whichever writer finished first), TensorRT plans
and timing caches (single files). A staging name is ``.<target>.partial-<pid>-<host>-<random>`` so that what a
killed writer left behind can be told apart from another live writer's work (:func:`remove_abandoned`).

Shared by export and runtime; imports nothing of either.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

PARTIAL = ".partial-"
OLD = ".old-"
# A pid tells whether its writer still runs only on the machine that wrote it, and caches may sit on a file system
# that several machines (or containers, each with its own pids) share: staging names carry their host.
HOST = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]


def staging_name(target: Path, kind: str = PARTIAL) -> Path:
    """A hidden sibling of ``target`` named after it, ``kind`` (staging or moved aside), this process and host, and
    a random suffix."""
    return target.parent / f".{target.name}{kind}{os.getpid()}-{HOST}-{uuid.uuid4().hex[:8]}"


def staging_folder(target: str | os.PathLike) -> Path:
    """An empty hidden folder beside ``target`` to write into and then :func:`publish_folder`; what killed writers
    left beside ``target`` is cleared first. For callers that must tell a staging folder they cannot make from a
    failure while writing it (:func:`staged_folder` is the usual way)."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_abandoned(target.parent, target.name)
    staging = staging_name(target)
    staging.mkdir()
    return staging


@contextlib.contextmanager
def staged_folder(target: str | os.PathLike, replace: bool = True) -> Iterator[Path]:
    """Yield an empty hidden folder beside ``target`` to write into; when the block succeeds it becomes ``target``.

    ``replace=True``: an existing ``target`` is moved aside first and removed after, so a reader sees the old folder
    or the new one, and a kill leaves at most a hidden folder, never a half-deleted ``target``.
    ``replace=False`` (caches): an existing ``target`` — another writer finished first — is kept and the staged
    copy dropped. When the block raises, the staged folder is removed and the error propagates.
    """
    target = Path(target)
    staging = staging_folder(target)
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    publish_folder(staging, target, replace)


def publish_folder(staging: Path, target: Path, replace: bool = True) -> bool:
    """Rename ``staging`` to ``target`` (see :func:`staged_folder`); True when it was published, False when
    ``replace=False`` found ``target`` already there (the staged folder is then removed)."""
    if target.exists() and not replace:
        shutil.rmtree(staging, ignore_errors=True)
        return False
    old = None
    if target.exists():
        old = staging_name(target, OLD)
        target.rename(old)
    try:
        staging.rename(target)
    except OSError:
        if old is not None and not target.exists():
            old.rename(target)  # put the previous folder back: the caller sees the error and loses nothing
        shutil.rmtree(staging, ignore_errors=True)
        if not replace and target.exists():  # a writer that raced us between the check and the rename
            return False
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return True


@contextlib.contextmanager
def staged_file(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a hidden path beside ``target`` to write; when the block succeeds the file is flushed to disk and
    renamed over ``target`` (atomic on one file system). When the block raises, the temporary file is removed."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = staging_name(target)
    try:
        yield temporary
        flush_to_disk(temporary)
        os.replace(temporary, target)
    finally:
        temporary.unlink(missing_ok=True)


def flush_to_disk(path: Path) -> None:
    """Wait until the data written to ``path`` is on disk. :func:`staged_file` does it before its rename; a block
    that does more after writing (several files renamed in an order) calls it itself."""
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def write_file(target: str | os.PathLike, data: bytes | memoryview) -> None:
    """``target`` holding ``data``, written whole or not at all."""
    with staged_file(target) as temporary:
        temporary.write_bytes(data)


def remove_abandoned(folder: str | os.PathLike, name: str) -> list[Path]:
    """Clear what killed writers of this host left beside ``folder/name``, never touching a live process's work:
    their staging folders and files are removed; a previous ``name`` they had moved aside is put back if ``name`` is
    missing (a kill between the two renames of a replace), else removed. Returns the paths dealt with."""
    folder, handled = Path(folder), []
    for kind in (PARTIAL, OLD):
        for path in sorted(folder.glob(f".{glob_escape(name)}{kind}*")):
            pid, _, rest = path.name[len(name) + 1 + len(kind) :].partition("-")
            if not pid.isdigit() or rest.partition("-")[0] != HOST or _alive(int(pid)):
                continue
            if kind == OLD and not (folder / name).exists():
                path.rename(folder / name)
            elif path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
            handled.append(path)
    return handled


class Busy(OSError):
    """Another writer holds the lock of the target (:func:`locked`)."""


@contextlib.contextmanager
def locked(target: str | os.PathLike) -> Iterator[None]:
    """Hold ``target``'s writer lock for the block: an exclusive ``flock`` on the hidden file ``.<target>.lock``
    beside it. A second writer of the same target (another process, or another open in this one) gets :class:`Busy`
    at once instead of waiting; the kernel drops the lock of a killed writer, so none is ever left stale. The lock
    file is removed when the block ends (a writer that locked a file just removed finds it gone and counts as busy)."""
    import fcntl

    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    lock_path = target.parent / f".{target.name}.lock"
    with open(lock_path, "a+") as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            if not lock_path.exists() or os.stat(lock_path).st_ino != os.fstat(handle.fileno()).st_ino:
                raise BlockingIOError  # the holder removed this file as we opened it: it was busy
        except BlockingIOError:
            raise Busy(f"{target} is being written by another process") from None
        try:
            yield
        finally:
            lock_path.unlink(missing_ok=True)
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def glob_escape(name: str) -> str:
    return "".join(f"[{c}]" if c in "*?[" else c for c in name)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # it exists but belongs to someone else
        return True
    return True
