"""Every reliance on a private name of transformers, accelerate, datasets, peft or torch is written down.

A private method or attribute can change in any release without notice. Each use must say, next to
it, why no public API does the job and on which version it was checked:
- an `SFTTrainer` override of a private `Trainer` method: its docstring holds
  "Private hook (checked on transformers X.Y...)" and names the public API that was tried;
- any other use (an import of a private name, `torch._x`, `getattr(obj, "_x")`, `self._x` of the
  Trainer's): a `# private (checked on PACKAGE X.Y...)` comment on the statement or the line above.
"""

from __future__ import annotations

import ast
import inspect
import re
from pathlib import Path

from transformers import Trainer

from sft_recipe.training.trainer import SFTTrainer

PACKAGE = Path(__file__).resolve().parents[1] / "sft_recipe"
UPSTREAM = ("torch", "transformers", "accelerate", "datasets", "peft", "evaluate")
CHECKED = re.compile(r"[Pp]rivate(?: hook)? \(checked on (transformers|accelerate|datasets|peft|torch|evaluate) \d+\.\d+")
TRAINER_SOURCE = inspect.getsource(Trainer)


# A namedtuple's public methods, and markers this package puts on objects itself.
NOT_PRIVATE = {"_replace", "_asdict", "_fields", "_make"}


def is_private(name: str) -> bool:
    return (name.startswith("_") and not name.startswith("__") and name not in NOT_PRIVATE
            and not name.startswith("_sft_recipe"))


def private_uses(path: Path) -> list[tuple[int, int, str]]:
    """(first line, last line, what) of every use of an upstream private name in one module."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    upstream_names: set[str] = set()  # local names bound to upstream modules or objects
    own = {n.name for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in UPSTREAM:
                    upstream_names.add((alias.asname or alias.name).split(".")[0])
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in UPSTREAM:
            for alias in node.names:
                upstream_names.add(alias.asname or alias.name)
                if any(is_private(p) for p in node.module.split(".")) or is_private(alias.name):
                    found.append((node.lineno, node.end_lineno, f"import {node.module}.{alias.name}"))
    trainer_module = any(isinstance(n, ast.ClassDef) and any(getattr(b, "id", "") == "Trainer" for b in n.bases)
                         for n in ast.walk(tree))
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and is_private(node.attr):
            root = node.value
            while isinstance(root, ast.Attribute):
                root = root.value
            name = getattr(root, "id", "")
            if name in upstream_names:
                found.append((node.lineno, node.end_lineno, f"{name}...{node.attr}"))
            elif (trainer_module and name == "self" and node.attr not in own
                  and re.search(rf"\bself\.{node.attr}\b", TRAINER_SOURCE)):
                found.append((node.lineno, node.end_lineno, f"Trainer's self.{node.attr}"))
        elif (isinstance(node, ast.Call) and getattr(node.func, "id", "") in ("getattr", "hasattr", "setattr")
              and len(node.args) > 1 and isinstance(node.args[1], ast.Constant)
              and isinstance(node.args[1].value, str) and is_private(node.args[1].value)):
            found.append((node.lineno, node.end_lineno, f"{node.func.id}(..., {node.args[1].value!r})"))
    return found


def test_every_private_upstream_use_says_why_and_when():
    missing = []
    for path in sorted(PACKAGE.rglob("*.py")):
        lines = path.read_text(encoding="utf-8").splitlines()
        for first, last, what in private_uses(path):
            window = "\n".join(lines[max(0, first - 3):last])  # the statement and the two lines above it
            if not CHECKED.search(window):
                missing.append(f"{path.relative_to(PACKAGE.parent)}:{first}: {what}")
    assert not missing, "private upstream names without a '# private (checked on PKG X.Y): why' note:\n" + \
        "\n".join(missing)


def test_private_trainer_overrides_say_why_and_when():
    overrides = [name for name, value in vars(SFTTrainer).items()
                 if is_private(name) and callable(value) and hasattr(Trainer, name)]
    assert overrides, "the check found no override at all: it is looking in the wrong place"
    for name in overrides:
        doc = inspect.getdoc(getattr(SFTTrainer, name)) or ""
        assert CHECKED.search(doc) and "public" in doc, \
            f"SFTTrainer.{name} overrides a private Trainer method without 'Private hook (checked on " \
            f"transformers X.Y)' and the public API tried, in its docstring"


def test_the_scan_sees_each_kind_of_use(tmp_path):
    """The scanner itself: each kind of private use is found, and a note clears it."""
    module = tmp_path / "m.py"
    module.write_text("import torch\nfrom transformers.utils import _secret\n"
                      "from accelerate._inner import thing\n"
                      "x = torch._assert_async\ny = getattr(obj, '_orig_mod', None)\nz = obj._mine\n")
    kinds = [what for _, _, what in private_uses(module)]
    assert kinds == ["import transformers.utils._secret", "import accelerate._inner.thing",
                     "torch..._assert_async", "getattr(..., '_orig_mod')"] or sorted(kinds) == sorted(
        ["import transformers.utils._secret", "import accelerate._inner.thing", "torch..._assert_async",
         "getattr(..., '_orig_mod')"])
    assert CHECKED.search("# private (checked on torch 2.13): no public assert that stays on the device")
