"""Export and ``lora apply`` never destroy what the user did not ask to replace, never publish non-finite weights,
and refuse bad outputs with one sentence before any work."""

from __future__ import annotations

import json
import os
import shutil
import threading

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from safetensors.numpy import load_file, save_file

from diffrt.cli import main
from diffrt.export.onnx_export import Reference, compare_graph
from diffrt.runtime.errors import CheckpointError
from diffrt.runtime.networks import Network, TensorSpec
from diffrt.staging import HOST, locked


def export(capsys, *args: str) -> tuple[int, str]:
    rc = main(["export", *map(str, args), "--no-check"])
    return rc, capsys.readouterr().err.strip()


def last_line(err: str) -> str:
    return err.splitlines()[-1] if err else ""


def tree(folder) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def ddpm_copy(tiny_models, tmp_path):
    source = tmp_path / "models" / "ddpm"
    shutil.copytree(tiny_models["ddpm"], source)
    return source


# ----- never destroy what the user did not ask to replace -------------------------------------------------------------
def test_the_source_itself_as_output_is_refused_and_left_intact(ddpm_copy, capsys):
    before = tree(ddpm_copy)
    rc, err = export(capsys, ddpm_copy, ddpm_copy, "--force")
    assert rc == 1 and "is the source" in last_line(err)
    assert tree(ddpm_copy) == before


def test_an_output_holding_the_source_is_refused_and_nothing_is_deleted(ddpm_copy, capsys):
    parent = ddpm_copy.parent
    (parent / "notes.txt").write_text("mine")
    rc, err = export(capsys, ddpm_copy, parent, "--force")
    assert rc == 1 and "contains the source" in last_line(err)
    assert (parent / "notes.txt").read_text() == "mine" and (ddpm_copy / "model_index.json").is_file()


def test_an_output_inside_the_source_is_refused(ddpm_copy, capsys):
    rc, err = export(capsys, ddpm_copy, ddpm_copy / "out")
    assert rc == 1 and "lies inside the source" in last_line(err)
    assert not (ddpm_copy / "out").exists()


def test_force_replaces_only_packages(ddpm_copy, tmp_path, capsys):
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "holiday.jpg").write_bytes(b"precious")
    rc, err = export(capsys, ddpm_copy, folder, "--force")
    assert rc == 1 and "is not an engine package" in last_line(err)
    assert (folder / "holiday.jpg").read_bytes() == b"precious"
    a_file = tmp_path / "file"
    a_file.write_text("x")
    rc, err = export(capsys, ddpm_copy, a_file, "--force")
    assert rc == 1 and "is a file" in last_line(err) and a_file.read_text() == "x"
    link = tmp_path / "link"
    link.symlink_to(folder)
    rc, err = export(capsys, ddpm_copy, link, "--force")
    assert rc == 1 and "is a symbolic link" in last_line(err)
    assert (folder / "holiday.jpg").read_bytes() == b"precious"
    assert "exporting" not in err  # refused before any work


def test_force_replaces_a_package_whole(ddpm_copy, tmp_path, capsys):
    out = tmp_path / "pkg"
    assert export(capsys, ddpm_copy, out)[0] == 0
    (out / "stale.txt").write_text("from the old package")
    assert export(capsys, ddpm_copy, out, "--force")[0] == 0
    assert not (out / "stale.txt").exists() and (out / "diffrt.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no staging, lock or old copy


def test_a_second_writer_of_the_same_output_is_refused_at_once(ddpm_copy, tmp_path, capsys):
    out = tmp_path / "pkg"
    holding, release = threading.Event(), threading.Event()

    def first_writer() -> None:
        with locked(out):  # what a running export holds
            holding.set()
            release.wait(30)

    thread = threading.Thread(target=first_writer)
    thread.start()
    try:
        assert holding.wait(30)
        rc, err = export(capsys, ddpm_copy, out)
        assert rc == 1 and "is being written by another export" in last_line(err)
    finally:
        release.set()
        thread.join()
    assert export(capsys, ddpm_copy, out)[0] == 0  # free again once the first writer is done


def test_partial_folders_of_dead_writers_are_removed_by_the_next_export(ddpm_copy, tmp_path, capsys):
    import subprocess
    import sys

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)
    leftover = tmp_path / f".pkg.partial-{pid}-{HOST}-deadbeef"
    leftover.mkdir()
    (leftover / "model.onnx.data").write_bytes(b"\0" * 1024)
    assert export(capsys, ddpm_copy, tmp_path / "pkg")[0] == 0
    assert not leftover.exists()


# ----- finite or refused -----------------------------------------------------------------------------------------
def test_non_finite_weights_are_refused_when_read_naming_the_tensor(tiny_models, tmp_path, capsys):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_models["ddpm"], broken)
    weights = broken / "unet" / "diffusion_pytorch_model.safetensors"
    tensors = load_file(str(weights))
    name = sorted(k for k in tensors if k.endswith("weight"))[0]
    tensors[name] = tensors[name].copy()
    tensors[name].flat[0] = np.nan
    save_file(tensors, str(weights))
    rc, err = export(capsys, broken, tmp_path / "out")
    assert rc == 1 and f"tensor {name!r} holds NaN or infinite values" in last_line(err)
    assert not (tmp_path / "out").exists()


def test_a_lora_with_non_finite_factors_or_weight_is_refused(lora_files, packages, tmp_path, capsys):
    tensors = load_file(str(lora_files["kohya"]))
    key = sorted(k for k in tensors if k.endswith("lora_up.weight"))[0]
    tensors[key] = np.full_like(tensors[key], np.inf)
    bad = tmp_path / "bad.safetensors"
    save_file(tensors, str(bad))
    for spec, message in (
        (str(bad), f"tensor {key!r} holds NaN or infinite values"),
        (f"{lora_files['kohya']}:1e30", "accepted: a finite number from -1000 to 1000"),
        (f"{lora_files['kohya']}:nan", "accepted: a finite number"),
    ):
        rc = main(["lora", "apply", str(packages["sd1"]), str(tmp_path / "out"), "--lora", spec])
        err = capsys.readouterr().err.strip()
        assert rc == 1 and message in last_line(err), err
        assert not (tmp_path / "out").exists()


def test_the_graph_check_fails_on_nan_instead_of_reporting_zero_error(tmp_path):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])
    graph = helper.make_graph([helper.make_node("Sqrt", ["x"], ["y"])], "g", [x], [y])
    path = tmp_path / "model.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    network = Network("root", (TensorSpec("x", "float32", (2,)),), (TensorSpec("y", "float32", (2,)),))
    feeds = {"x": np.array([4.0, -1.0], np.float32)}
    with pytest.raises(CheckpointError, match="root: the exported graph's 'y' holds NaN"):
        compare_graph(path, network, [Reference((1, 2, 2), feeds, [np.array([2.0, 0.0], np.float32)])])


# ----- sentences, not tracebacks ----------------------------------------------------------------------------------
def test_a_corrupt_weights_map_is_one_sentence(packages, lora_files, tmp_path, capsys):
    package = tmp_path / "pkg"
    shutil.copytree(packages["sd1"], package)
    (package / "unet" / "weights.json").write_text("{not json")
    rc = main(["lora", "apply", str(package), str(tmp_path / "out"), "--lora", str(lora_files["kohya"])])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and len(err) == 1 and "weights.json is not a readable weights map" in err[0]


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders: permissions cannot be tested")
def test_a_read_only_destination_is_refused_before_the_export(ddpm_copy, tmp_path, capsys):
    locked_folder = tmp_path / "ro"
    locked_folder.mkdir()
    locked_folder.chmod(0o555)
    try:
        rc, err = export(capsys, ddpm_copy, locked_folder / "pkg")
        assert rc == 1 and "cannot be written" in last_line(err)
    finally:
        locked_folder.chmod(0o755)


def test_lora_apply_in_place_stays_allowed_with_force(packages, lora_files, tmp_path, capsys):
    package = tmp_path / "pkg"
    shutil.copytree(packages["sd1"], package)
    assert main(["lora", "apply", str(package), str(package), "--lora", str(lora_files["kohya"])]) == 1
    assert "pass --force to rewrite it in place" in capsys.readouterr().err
    assert main(["lora", "apply", str(package), str(package), "--force", "--lora", str(lora_files["kohya"])]) == 0
    record = json.loads((package / "diffrt.json").read_text())
    assert record["loras"] and record["lora_applied"]["by"] == "diffrt lora apply"
    nested = package / "inner"
    rc = main(["lora", "apply", str(package), str(nested), "--lora", str(lora_files["kohya"])])
    assert rc == 1 and "lies inside the source" in capsys.readouterr().err
