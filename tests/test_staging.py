"""Staged writes (diffrt.staging): a reader sees the old content or the new, never a half-written one, and what a
killed writer leaves behind is cleared without touching a live writer's work."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from diffrt.staging import (
    HOST,
    OLD,
    PARTIAL,
    publish_folder,
    remove_abandoned,
    staged_file,
    staged_folder,
    staging_folder,
    write_file,
)

OTHER_HOST = "0" * 8 if HOST != "0" * 8 else "1" * 8


def hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


@pytest.fixture(scope="module")
def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped), so no process runs under it."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_replace_keeps_the_old_folder_until_the_new_one_is_complete(tmp_path):
    target = tmp_path / "package"
    target.mkdir()
    (target / "model.onnx").write_text("old")
    with staged_folder(target) as new:
        (new / "model.onnx").write_text("new")
        assert (target / "model.onnx").read_text() == "old", "readers see the old folder while the new one is written"
        assert new.parent == tmp_path and new.name.startswith(f".package{PARTIAL}")
    assert (target / "model.onnx").read_text() == "new"
    assert hidden(tmp_path) == []


def test_replace_false_keeps_the_folder_of_the_first_writer(tmp_path):
    target = tmp_path / "entry"
    with staged_folder(target, replace=False) as first, staged_folder(target, replace=False) as second:
        (first / "graph").write_text("first")
        (second / "graph").write_text("second")
    # ``second`` finished first (its block closed first), so it won and the other copy was dropped.
    assert (target / "graph").read_text() == "second"
    assert hidden(tmp_path) == []


def test_publish_with_replace_false_reports_whether_it_published(tmp_path):
    target = tmp_path / "entry"
    staged = staging_folder(target)
    assert publish_folder(staged, target, replace=False) is True
    late = staging_folder(target)
    (late / "graph").write_text("late")
    assert publish_folder(late, target, replace=False) is False
    assert not late.exists() and not (target / "graph").exists()


def test_a_failing_block_leaves_nothing_and_keeps_the_old_folder(tmp_path):
    target = tmp_path / "package"
    target.mkdir()
    (target / "model.onnx").write_text("old")
    with pytest.raises(RuntimeError, match="export failed"), staged_folder(target) as new:
        (new / "model.onnx").write_text("half")
        raise RuntimeError("export failed")
    assert (target / "model.onnx").read_text() == "old"
    with pytest.raises(RuntimeError), staged_folder(tmp_path / "fresh"):
        raise RuntimeError
    assert sorted(p.name for p in tmp_path.iterdir()) == ["package"]


def test_staged_file_writes_whole_or_not_at_all(tmp_path):
    target = tmp_path / "unet.plan"
    write_file(target, b"old plan")
    with staged_file(target) as temporary:
        temporary.write_bytes(b"new plan, still being written")
        assert target.read_bytes() == b"old plan"
    assert target.read_bytes() == b"new plan, still being written"
    with pytest.raises(OSError, match="disk full"), staged_file(target) as temporary:
        temporary.write_bytes(b"half")
        raise OSError("disk full")
    assert target.read_bytes() == b"new plan, still being written"
    write_file(tmp_path / "engines" / "timing.cache", memoryview(b"timings"))  # its folder is made
    assert (tmp_path / "engines" / "timing.cache").read_bytes() == b"timings"
    assert hidden(tmp_path) == [] and hidden(tmp_path / "engines") == []


def test_remove_abandoned_clears_a_dead_writers_staging(tmp_path, dead_pid):
    (tmp_path / "package").mkdir()
    folder = tmp_path / f".package{PARTIAL}{dead_pid}-{HOST}-0badf00d"
    folder.mkdir()
    (folder / "model.onnx").write_text("half")
    file = tmp_path / f".package{PARTIAL}{dead_pid}-{HOST}-0badcafe"
    file.write_bytes(b"half")
    assert sorted(remove_abandoned(tmp_path, "package")) == sorted([folder, file])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["package"]


def test_remove_abandoned_puts_back_a_folder_moved_aside_by_a_writer_killed_mid_replace(tmp_path, dead_pid):
    aside = tmp_path / f".package{OLD}{dead_pid}-{HOST}-0badf00d"
    aside.mkdir()
    (aside / "model.onnx").write_text("old")
    assert remove_abandoned(tmp_path, "package") == [aside]
    assert (tmp_path / "package" / "model.onnx").read_text() == "old"
    again = tmp_path / f".package{OLD}{dead_pid}-{HOST}-0badcafe"  # the target is back: a leftover is removed
    again.mkdir()
    assert remove_abandoned(tmp_path, "package") == [again]
    assert not again.exists() and (tmp_path / "package" / "model.onnx").read_text() == "old"


def test_remove_abandoned_never_touches_live_or_foreign_work(tmp_path, dead_pid):
    with staged_folder(tmp_path / "package") as mine:
        (mine / "model.onnx").write_text("in progress")
        other_host = tmp_path / f".package{PARTIAL}{dead_pid}-{OTHER_HOST}-0badf00d"
        other_host.mkdir()  # a dead pid here may be a live writer on the machine sharing this folder
        unstamped = tmp_path / f".package{PARTIAL}not-a-pid"
        unstamped.mkdir()
        assert remove_abandoned(tmp_path, "package") == []
        assert (mine / "model.onnx").is_file() and other_host.is_dir() and unstamped.is_dir()
    assert (tmp_path / "package" / "model.onnx").read_text() == "in progress"


def test_a_new_staged_folder_first_clears_what_dead_writers_left(tmp_path, dead_pid):
    leftover = tmp_path / f".package{PARTIAL}{dead_pid}-{HOST}-0badf00d"
    leftover.mkdir()
    with staged_folder(tmp_path / "package") as new:
        assert not leftover.exists() and new.is_dir()


KILLED_WRITER = r"""
import sys, time
from pathlib import Path
from diffrt import staging

out, phase, marker = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
real_rename = Path.rename

def rename(self, target):
    result = real_rename(self, target)
    if phase == "between-renames" and staging.OLD in Path(target).name:
        marker.write_text("old moved aside")
        time.sleep(60)  # killed here: the old package aside, the new one staged, OUT absent
    return result

Path.rename = rename
with staging.staged_folder(out) as staged:
    for i in range(50):
        (staged / f"file{i}").write_text("new")
    (staged / "model_index.json").write_text("{}")
    if phase == "while-writing":
        marker.write_text("half written")
        time.sleep(60)  # killed here: the new package half written
"""


def old_package(out: Path) -> dict[str, str]:
    out.mkdir()
    for i in range(50):
        (out / f"file{i}").write_text("old")
    (out / "model_index.json").write_text("{}")
    return {p.name: p.read_text() for p in out.iterdir()}


@pytest.mark.parametrize("phase", ["while-writing", "between-renames"])
def test_a_writer_killed_while_replacing_leaves_a_complete_package_never_a_half_one(tmp_path, phase):
    import os
    import signal
    import time

    out, marker = tmp_path / "pkg", tmp_path / "marker"
    before = old_package(out)
    child = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(out), phase, str(marker)])
    deadline = time.monotonic() + 60
    while not marker.exists() and time.monotonic() < deadline and child.poll() is None:
        time.sleep(0.02)
    assert marker.exists(), "the writer never reached the kill point"
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    # What a reader sees right after the kill: the old package whole, or (between the renames) no package at all.
    if out.exists():
        assert {p.name: p.read_text() for p in out.iterdir()} == before
    else:
        assert phase == "between-renames"
    # The next writer (or reader tidying up) restores the old package whole and clears the rest.
    remove_abandoned(tmp_path, "pkg")
    assert {p.name: p.read_text() for p in out.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".pkg")] == []


def test_a_target_has_one_writer_at_a_time_and_the_lock_leaves_no_file(tmp_path):
    from diffrt.staging import Busy, locked

    out = tmp_path / "pkg"
    with locked(out):
        with pytest.raises(Busy, match="being written by another process"):
            with locked(out):
                pass
        with locked(tmp_path / "other"):  # another target is free
            pass
    with locked(out):  # free again
        pass
    assert list(tmp_path.iterdir()) == []
