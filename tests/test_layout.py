"""The package's floor plan: layers that only import downwards, no cycles, short modules.

The layers are the folders of `sft_recipe/`, lowest first (docs/development.md, "Architecture"); a
module may import its own layer or lower:
0. errors, console;
1. formats/: each data format an adapter onto one internal form (pure Python over rows);
2. recipe/: what a recipe says, checked (pure data: no torch);
3. data/: files -> rows in one internal form (formats/) -> tokens and masks -> batches;
4. rundir/: a run's output directory: layout, lock, checkpoints, resume rules, best/ and its card;
5. model/: loading, LoRA, the chunked loss kernel, generation;
6. training/: TrainingArguments, the Trainer, its loss path, callbacks, signals;
7. publish/: the hub, merged exports, the summary;
8. commands/: build, train, evaluate, chat;
9. cli (the one place allowed to import lazily, to keep `sft-recipe --help` fast).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "sft_recipe"
LAYERS = {
    0: ["errors", "console", "dependencies"],
    1: ["formats"],
    2: ["recipe"],
    3: ["data"],
    4: ["rundir"],
    5: ["model"],
    6: ["training"],
    7: ["publish"],
    8: ["commands"],
    9: ["cli", "__main__"],
}
MAX_TOP_LEVEL_MODULES = 8
MAX_LINES = 300
MAX_WIDTH = 120


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def layer_of(module: str) -> int:
    top = module.split(".")[1] if "." in module else ""
    for layer, names in LAYERS.items():
        if top in names:
            return layer
    raise AssertionError(f"{module} is in no layer: add it to LAYERS (and to docs/development.md)")


def own_imports(path: Path) -> list[tuple[str, bool]]:
    """(imported sft_recipe module, imported inside a function?) for every import in `path`."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    local = {id(n) for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
             for n in ast.walk(f)}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            names = [f"{target}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            target, names = "", [a.name for a in node.names]
        else:
            continue
        for name in [target, *names]:
            module = resolve(name)
            if module:
                found.append((module, id(node) in local))
    return found


def resolve(name: str) -> str | None:
    """The sft_recipe module `name` refers to (a module, or a name inside one), else None."""
    while name.startswith("sft_recipe"):
        parts = name.split(".")
        if (PACKAGE.parent.joinpath(*parts).with_suffix(".py")).is_file() or \
                (PACKAGE.parent.joinpath(*parts) / "__init__.py").is_file():
            return name
        name = ".".join(parts[:-1])
    return None


MODULES = sorted(p for p in PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_module_imports_only_its_layer_or_lower_at_module_top(path):
    name = module_name(path)
    for target, in_function in own_imports(path):
        if target == name or target == "sft_recipe":
            continue
        assert layer_of(target) <= layer_of(name), f"{name} (layer {layer_of(name)}) imports {target} " \
                                                   f"(layer {layer_of(target)})"
        assert not in_function or name == "sft_recipe.cli", f"{name} imports {target} inside a function"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_module_is_short(path):
    lines = path.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= MAX_LINES, f"{path.name} has {len(lines)} lines"
    wide = [n for n, line in enumerate(lines, 1) if len(line) > MAX_WIDTH]
    assert not wide, f"{path.name}: lines {wide} are longer than {MAX_WIDTH} characters"


def test_no_import_cycle():
    graph = {module_name(p): {t for t, _ in own_imports(p) if t != module_name(p)} for p in MODULES}
    # A package imports its `__init__` first: an edge to a parent package is an edge to that module.
    state: dict[str, int] = {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if nxt.startswith(node + "."):  # a package importing its own submodule
                continue
            assert state.get(nxt) != 1, "import cycle: " + " -> ".join(stack + [node, nxt])
            if nxt not in state:
                visit(nxt, stack + [node])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [])


def test_top_level_is_the_layers():
    """`ls sft_recipe` shows the flow: a handful of modules, every other one inside a layer folder."""
    modules = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(modules) <= MAX_TOP_LEVEL_MODULES, modules
    folders = sorted(p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file())
    named = {n for names in LAYERS.values() for n in names}
    assert set(folders) <= named, set(folders) - named
