"""Where ``diffrt export`` and ``diffrt lora apply`` may write, checked before any work starts.

An output never destroys what the user did not ask to replace: it may not be, contain, or lie inside a source (the
checkpoint, its config folder, a LoRA file); ``--force`` replaces only an engine package (a folder holding
``model_index.json``, as diffrt and Optimum write them) or an empty folder, never a plain file, a symbolic link or
an unrelated folder. One writer at a time per output (:func:`writing`): a second export to the same folder fails
at once instead of silently replacing the first. The replacement itself is atomic from a reader's view
(:func:`diffrt.staging.staged_folder`).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

from ..runtime.errors import CheckpointError
from ..runtime.schema import INDEX_NAME
from ..staging import Busy, locked


def check_output(
    out: str | os.PathLike,
    force: bool,
    sources: Sequence[str | os.PathLike] = (),
    in_place: str | os.PathLike | None = None,
) -> Path:
    """``out`` as a path export may write, or a CheckpointError saying why not. ``in_place`` is a package that
    ``out`` may be with ``force`` (``lora apply PKG PKG --force`` rewrites it whole)."""
    out = Path(out)
    if out.is_symlink():
        raise CheckpointError(
            f"{out} is a symbolic link; accepted: the path of a new folder, or of a package folder with --force."
        )
    resolved = out.resolve()
    for source in sources:
        source = Path(source).resolve()
        if in_place is not None and source == Path(in_place).resolve() and resolved == source:
            if not force:
                raise CheckpointError(f"{out} is the package itself; pass --force to rewrite it in place.")
            continue
        if resolved == source or resolved in source.parents or source in resolved.parents:
            what = "is" if resolved == source else "contains" if resolved in source.parents else "lies inside"
            raise CheckpointError(
                f"{out} {what} the source {source}; writing there would destroy what is being read; accepted: an "
                "output folder apart from every source."
            )
    if out.exists():
        _check_replaceable(out, force, in_place)
    _check_writable(out)
    return out


def _check_replaceable(out: Path, force: bool, in_place: str | os.PathLike | None) -> None:
    if not out.is_dir():
        raise CheckpointError(
            f"{out} is a file; accepted: the path of a new folder, or of a package folder with --force."
        )
    empty = not any(out.iterdir())
    if empty or (in_place is not None and out.resolve() == Path(in_place).resolve()):
        return
    if not force:
        raise CheckpointError(f"{out} already exists; choose a new folder or pass --force to replace it.")
    if not (out / INDEX_NAME).is_file():
        raise CheckpointError(
            f"{out} is not an engine package (no {INDEX_NAME}) and --force replaces only packages; accepted: a new "
            "or empty folder, or a package folder."
        )


def _check_writable(out: Path) -> None:
    """The folder the output goes in must take a new entry (a read-only disk fails here, not after the export)."""
    parent = out.parent
    while not parent.exists():
        parent = parent.parent
    try:
        Path(tempfile.mkdtemp(prefix=f".{out.name}.probe-", dir=parent)).rmdir()
    except OSError as error:
        raise CheckpointError(
            f"{out} cannot be written: {parent} does not take new files ({error.strerror or error}); accepted: a "
            "folder you can write in."
        ) from None


@contextlib.contextmanager
def writing(out: Path) -> Iterator[None]:
    """Hold ``out``'s writer lock for the export; a concurrent writer of the same folder is refused at once."""
    try:
        with locked(out):
            yield
    except Busy:
        raise CheckpointError(
            f"{out} is being written by another export or lora apply right now; accepted: wait for it, or choose "
            "another output folder."
        ) from None
