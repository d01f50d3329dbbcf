"""How `train` sets up glibc for tensors: freed tensor memory goes back to the system, and user settings win."""

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
    RELEASE_THRESHOLD_BYTES,
    release_unused_memory,
    tune_host_memory,
)

linux_glibc = pytest.mark.skipif(host_memory.glibc() is None, reason="glibc only")

# Growing transients of SIZE floats (like activations of batches of varying length), each followed
# by a small tensor that outlives it: with glibc's moving threshold the holes cannot be reused and
# the heap grows; prints how many MiB the process kept.
PROBE = textwrap.dedent("""
    import sys
    if sys.argv[1] != "untuned":
        from sft_recipe.training.host_memory import tune_host_memory
        tune_host_memory(release=sys.argv[1] == "release")
    import torch
    size = int(sys.argv[2])

    def rss():
        return int(open("/proc/self/statm").read().split()[1]) * 4096 // 2**20

    x = torch.ones(4 * 2**20); del x  # a freed 16 MiB block raises glibc's mmap threshold to 16 MiB
    before, kept = rss(), []
    for i in range(64):
        big = torch.ones(size + i * size // 64)
        kept.append(torch.ones(2**10))
        del big
    print(rss() - before)
""")


def kept_mib(mode: str, size: int) -> int:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "GLIBC_TUNABLES", "THP_"))}
    out = subprocess.run([sys.executable, "-c", PROBE, mode, str(size)], env=env, capture_output=True, text=True,
                         check=True)
    return int(out.stdout.split()[-1])


def probe_mib(size: int) -> int:
    """MiB the probe's 64 growing transients of `size` floats come to."""
    return 64 * size * 4 // 2**20


@linux_glibc
@pytest.mark.parametrize("mode, size", [("default", 2**18), ("release", 2**15)])  # 1 MiB, 128 KiB tensors
def test_freed_tensor_memory_goes_back_to_the_system(mode, size):
    without = kept_mib("untuned", size)
    if without < probe_mib(size) // 2:
        pytest.skip(f"this C library kept only {without} MiB without the setting: nothing to fix")
    assert kept_mib(mode, size) < probe_mib(size) // 4, f"the pinned threshold should return freed {size * 4} B tensors"


@linux_glibc
def test_the_default_keeps_small_tensors_on_the_heap():
    """Below 1 MiB, tensors keep coming from the heap by default (no fault per tensor: small models
    pay for faults the most); `release_host_memory` returns them too."""
    half = probe_mib(2**15) // 2
    if kept_mib("untuned", 2**15) < half:
        pytest.skip("this C library returns them anyway")
    assert kept_mib("default", 2**15) >= half > kept_mib("release", 2**15)


class FakeLibc:
    def __init__(self):
        self.calls = []

    def mallopt(self, param, value):
        self.calls.append((param, value))
        return 1

    def malloc_trim(self, pad):
        self.calls.append(("trim", pad))
        return 1


@pytest.fixture
def libc(monkeypatch):
    fake = FakeLibc()
    monkeypatch.setattr(host_memory, "glibc", lambda: fake)
    monkeypatch.setattr(host_memory.sys, "platform", "linux")
    return fake


@pytest.mark.parametrize("release, threshold", [(False, MMAP_THRESHOLD_BYTES), (True, RELEASE_THRESHOLD_BYTES)])
def test_applies_both_settings_before_torch_loads(libc, monkeypatch, release, threshold):
    monkeypatch.delitem(sys.modules, "torch", raising=False)
    environ: dict[str, str] = {}
    assert tune_host_memory(release, environ) == ["THP_MEM_ALLOC_ENABLE=1", f"M_MMAP_THRESHOLD={threshold}"]
    assert environ == {"THP_MEM_ALLOC_ENABLE": "1"}
    assert libc.calls == [(M_MMAP_THRESHOLD, threshold)]


def test_huge_pages_are_not_claimed_once_torch_has_loaded(libc):
    import torch  # noqa: F401 - torch reads the variable once, while it loads

    environ: dict[str, str] = {}
    assert tune_host_memory(True, environ) == [f"M_MMAP_THRESHOLD={RELEASE_THRESHOLD_BYTES}"]
    assert environ == {}


@pytest.mark.parametrize("environ", [
    {"MALLOC_MMAP_THRESHOLD_": "65536", "THP_MEM_ALLOC_ENABLE": "0"},
    {"GLIBC_TUNABLES": "glibc.malloc.mmap_threshold=65536", "THP_MEM_ALLOC_ENABLE": "0"},
])
def test_the_users_own_settings_win(libc, environ):
    before = dict(environ)
    assert tune_host_memory(True, environ) == [] and tune_host_memory(False, environ) == []
    assert environ == before and libc.calls == []


def test_other_systems_change_nothing(libc, monkeypatch):
    monkeypatch.setattr(host_memory.sys, "platform", "darwin")
    assert tune_host_memory(True, {}) == [] and libc.calls == []


@pytest.mark.parametrize("release", [False, True])
def test_the_command_line_applies_it_before_torch_loads(tmp_path, release):
    """Through `sft-recipe train`: the recipe key is read, and applied, before torch is imported."""
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"model_name: {tmp_path / 'no-model'}\ndataset: {tmp_path / 'none.jsonl'}\n"
                      f"output_dir: {tmp_path / 'out'}\nrelease_host_memory: {str(release).lower()}\n")
    script = textwrap.dedent(f"""
        import sys
        from sft_recipe import cli
        from sft_recipe.training import host_memory
        def spy(release, *args, **kwargs):
            print("torch loaded:", "torch" in sys.modules, "release:", release)
            return []
        host_memory.tune_host_memory = spy
        cli.main(["train", {str(recipe)!r}])
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert f"torch loaded: False release: {release}" in out.stdout, out.stdout + out.stderr


def test_before_training_arrows_pool_and_the_heap_are_handed_back(libc, monkeypatch):
    released = []
    pool = type("Pool", (), {"release_unused": lambda self: released.append(True)})()
    monkeypatch.setattr(host_memory.pyarrow, "default_memory_pool", lambda: pool)
    release_unused_memory()
    assert released == [True] and libc.calls == [("trim", 0)]
