"""release_host_memory: freed tensor memory goes back to the system, and user settings win."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from sft_recipe.training import host_memory
from sft_recipe.training.host_memory import (
    M_MMAP_THRESHOLD,
    MMAP_THRESHOLD_BYTES,
    release_host_memory,
)

linux_glibc = pytest.mark.skipif(host_memory.glibc() is None, reason="glibc only")

# Growing ~1 MiB transients (like activations of batches of varying length), each followed by a
# small tensor that outlives it: with glibc's moving threshold the holes cannot be reused and the
# heap grows; prints how many MiB the process kept.
PROBE = textwrap.dedent("""
    import sys
    if sys.argv[1] == "release":
        from sft_recipe.training.host_memory import release_host_memory
        release_host_memory()
    import torch

    def rss():
        return int(open("/proc/self/statm").read().split()[1]) * 4096 // 2**20

    x = torch.ones(4 * 2**20); del x  # a freed 16 MiB block raises glibc's mmap threshold to 16 MiB
    before, kept = rss(), []
    for i in range(64):
        big = torch.ones(2**18 + i * 2**12)
        kept.append(torch.ones(2**10))
        del big
    print(rss() - before)
""")


def kept_mib(mode: str) -> int:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "GLIBC_TUNABLES", "THP_"))}
    out = subprocess.run([sys.executable, "-c", PROBE, mode], env=env, capture_output=True, text=True, check=True)
    return int(out.stdout.split()[-1])


@linux_glibc
def test_freed_tensor_memory_goes_back_to_the_system():
    without = kept_mib("default")
    if without < 32:
        pytest.skip(f"this C library kept only {without} MiB without the setting: nothing to fix")
    assert kept_mib("release") < 8, "the pinned mmap threshold should return every freed MiB-sized tensor"


class FakeLibc:
    def __init__(self):
        self.calls = []

    def mallopt(self, param, value):
        self.calls.append((param, value))
        return 1


@pytest.fixture
def libc(monkeypatch):
    fake = FakeLibc()
    monkeypatch.setattr(host_memory, "glibc", lambda: fake)
    monkeypatch.setattr(host_memory.sys, "platform", "linux")
    return fake


def test_applies_both_settings_before_torch_loads(libc, monkeypatch):
    monkeypatch.delitem(sys.modules, "torch", raising=False)
    environ: dict[str, str] = {}
    assert release_host_memory(environ) == ["THP_MEM_ALLOC_ENABLE=1", f"M_MMAP_THRESHOLD={MMAP_THRESHOLD_BYTES}"]
    assert environ == {"THP_MEM_ALLOC_ENABLE": "1"}
    assert libc.calls == [(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)]


def test_huge_pages_are_not_claimed_once_torch_has_loaded(libc):
    import torch  # noqa: F401 - torch reads the variable once, while it loads

    environ: dict[str, str] = {}
    assert release_host_memory(environ) == [f"M_MMAP_THRESHOLD={MMAP_THRESHOLD_BYTES}"]
    assert environ == {}


@pytest.mark.parametrize("environ", [
    {"MALLOC_MMAP_THRESHOLD_": "65536", "THP_MEM_ALLOC_ENABLE": "0"},
    {"GLIBC_TUNABLES": "glibc.malloc.mmap_threshold=65536", "THP_MEM_ALLOC_ENABLE": "0"},
])
def test_the_users_own_settings_win(libc, environ):
    before = dict(environ)
    assert release_host_memory(environ) == []
    assert environ == before and libc.calls == []


def test_other_systems_change_nothing(libc, monkeypatch):
    monkeypatch.setattr(host_memory.sys, "platform", "darwin")
    assert release_host_memory({}) == [] and libc.calls == []


def test_the_command_line_applies_it_before_torch_loads(tmp_path):
    """Through `sft-recipe train`: the recipe key is read, and applied, before torch is imported."""
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"model_name: {tmp_path / 'no-model'}\ndataset: {tmp_path / 'none.jsonl'}\n"
                      f"output_dir: {tmp_path / 'out'}\nrelease_host_memory: true\n")
    script = textwrap.dedent(f"""
        import sys
        from sft_recipe import cli
        from sft_recipe.training import host_memory
        def spy(*args, **kwargs):
            print("torch loaded:", "torch" in sys.modules)
            return []
        host_memory.release_host_memory = spy
        cli.main(["train", {str(recipe)!r}])
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert "torch loaded: False" in out.stdout, out.stdout + out.stderr
