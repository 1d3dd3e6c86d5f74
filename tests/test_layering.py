"""The project's import structure, read from the sources: no import circles, and the layers the design sets.

- no module imports (at the top or inside a function) a module that imports it back, directly or around a circle;
- ``runtime`` never imports ``export``; ``export`` takes from the runtime only its errors, the networks' shape
  contracts, the package schema, and the torch-free readers of LoRA and safetensors files (which the runtime needs
  itself for LoRA at run time) with the LDM names they resolve kohya's SDXL keys by;
- no function outside the model builders (``export/models``) runs much past 100 lines, and none of the pipeline
  layer takes more than 8 arguments by position (call arguments travel by name, in one object).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FOLDERS = {"diffrt": "diffrt", "runtime": "diffrt.runtime", "export": "diffrt.export", "kernels": "diffrt.kernels"}
EXPORT_MAY_IMPORT = {
    "diffrt.runtime.errors",
    "diffrt.runtime.networks",
    "diffrt.runtime.schema",
    "diffrt.runtime.lora",
    "diffrt.runtime.mmdit_lora",  # SD3 / Flux LoRA layouts: one reading for export --lora and run-time adapters
    "diffrt.runtime.safetensors_file",
    "diffrt.runtime.ldm_names",
    # CogVideoX's position tables are transformer inputs: one NumPy definition for training, export and runtime.
    "diffrt.runtime.pipelines.cogvideox_positions",
}
LONGEST_FUNCTION = 100


def project_modules() -> dict[str, Path]:
    modules = {}
    for folder, package in FOLDERS.items():
        for path in (ROOT / folder).rglob("*.py"):
            parts = list(path.relative_to(ROOT / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join([package, *parts])] = path
    return modules


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The project modules ``name`` imports anywhere in its file (``from . import x`` counts as module x when x is
    a module, else as the package)."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        targets = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(
                    package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else [])
                )
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        for target in targets:
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    modules = project_modules()
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for other in sorted(graph.get(node, ())):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            group = []
            while True:
                other = stack.pop()
                group.append(other)
                if other == node:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_module_imports_a_module_that_imports_it_back(graph):
    assert circles(graph) == []


def test_the_circle_finder_finds_a_circle():
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_the_runtime_never_imports_export(graph):
    wrong = {name: sorted(t for t in targets if t.startswith("diffrt.export")) for name, targets in graph.items()}
    assert {name: t for name, t in wrong.items() if name.startswith("diffrt.runtime") and t} == {}


def test_export_takes_only_errors_networks_the_package_schema_and_file_readers_from_the_runtime(graph):
    taken = {
        name: sorted(t for t in targets if t.startswith("diffrt.runtime") and t not in EXPORT_MAY_IMPORT)
        for name, targets in graph.items()
        if name.startswith("diffrt.export")
    }
    assert {name: t for name, t in taken.items() if t} == {}


def test_no_function_outside_the_model_builders_is_longer_than_about_100_lines():
    long = []
    for name, path in project_modules().items():
        if name.startswith("diffrt.export.models"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > LONGEST_FUNCTION:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({length} lines)")
    assert long == []


def test_no_function_of_the_pipeline_layer_takes_more_than_8_arguments_by_position():
    crowded = []
    for name, path in project_modules().items():
        if not name.startswith("diffrt.runtime.pipelines"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                positional = [a.arg for a in (*node.args.posonlyargs, *node.args.args) if a.arg not in ("self", "cls")]
                if len(positional) > 8:
                    crowded.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({len(positional)})")
    assert crowded == []
