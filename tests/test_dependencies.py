"""The declared ranges are checked at startup: an older package is one line naming it and the version needed."""

from __future__ import annotations

from importlib import metadata

import pytest

from sft_recipe import dependencies
from sft_recipe.cli import main


def test_this_environment_meets_the_declared_ranges():
    assert metadata.requires("sft-recipe"), "the project is not installed: pip install -e ."
    assert dependencies.unmet() is None


@pytest.fixture
def environment(monkeypatch):
    """A fake installed set: `declared` are the project's requirements, `installed` the versions present."""
    state = {"declared": ["transformers<6,>=5.17", "datasets>=4.0", 'peft>=0.14; extra == "lora"',
                          'pywin32>=1; sys_platform == "win32"', 'pytest>=8; extra == "dev"'],
             "installed": {"transformers": "5.17.0", "datasets": "4.0.0"}}

    real = metadata.version
    faked = ("transformers", "datasets", "peft", "pywin32", "pytest")

    def version(name):
        if name not in faked:  # other libraries ask too (httpx for its own metadata)
            return real(name)
        if name not in state["installed"]:
            raise metadata.PackageNotFoundError(name)
        return state["installed"][name]

    monkeypatch.setattr(dependencies.metadata, "requires", lambda name: state["declared"])
    monkeypatch.setattr(dependencies.metadata, "version", version)
    return state


def test_the_floors_themselves_pass_and_a_missing_extra_is_not_required(environment):
    assert dependencies.unmet() is None
    environment["installed"]["pytest"] = "7.4.0"  # a test tool of the dev extra never blocks a command
    assert dependencies.unmet() is None


@pytest.mark.parametrize("installed,expected", [
    ({"transformers": "5.16.2", "datasets": "4.0.0"}, "transformers 5.16.2 is installed; sft-recipe needs transformers<6,>=5.17"),
    ({"transformers": "6.0.0", "datasets": "4.0.0"}, "transformers 6.0.0 is installed; sft-recipe needs transformers<6,>=5.17"),
    ({"transformers": "5.17.0", "datasets": "3.6.0"}, "datasets 3.6.0 is installed; sft-recipe needs datasets>=4.0"),
    ({"transformers": "5.17.0"}, "datasets is not installed; sft-recipe needs datasets>=4.0"),
    ({"transformers": "5.17.0", "datasets": "4.0.0", "peft": "0.13.2"}, "peft 0.13.2 is installed; sft-recipe needs peft>=0.14"),
], ids=["below-floor", "next-major", "other-package", "missing", "installed-extra-too-old"])
def test_an_unmet_range_is_one_line_naming_the_package(environment, installed, expected):
    environment["installed"] = installed
    assert dependencies.unmet().startswith(expected)


def test_the_first_command_stops_at_once_with_one_line(environment, capsys, tmp_path):
    environment["installed"] = {"transformers": "5.16.2", "datasets": "4.0.0"}
    assert main(["train", str(tmp_path / "never-read.yaml")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "transformers 5.16.2 is installed" in err and ">=5.17" in err
