"""The declared dependency ranges, checked before anything imports the packages they name.

pip keeps whatever already satisfies a requirement it does not re-resolve, so an environment can
hold a version older than `pyproject.toml` declares (an install with `--no-deps`, a package
downgraded later). The first import of a missing name would then end in an ImportError or
AttributeError traceback somewhere deep in a run; this check turns it into one line naming the
package and the version needed. The ranges are read from the installed distribution's own metadata,
so they are written once, in `pyproject.toml`. An optional extra that commands import (`peft` for
LoRA, `lm_eval` for bench) is checked only when it is installed; the dev extra's tools never are.
"""

from __future__ import annotations

from importlib import metadata

from packaging.requirements import InvalidRequirement, Requirement

from .errors import UserError

DISTRIBUTION = "sft-recipe"
RUNTIME_EXTRAS = ("lora", "qlora", "bench")  # extras that commands import (peft, bitsandbytes, lm_eval)


def unmet(distribution: str = DISTRIBUTION) -> str | None:
    """One line for the first declared requirement the environment does not meet, else None."""
    try:
        declared = metadata.requires(distribution) or []
    except metadata.PackageNotFoundError:  # run from a source tree that was never installed
        return None
    for line in declared:
        try:
            requirement = Requirement(line)
        except InvalidRequirement:
            continue
        optional = requirement.marker is not None and "extra" in str(requirement.marker)
        if optional and not any(requirement.marker.evaluate({"extra": e}) for e in RUNTIME_EXTRAS):
            continue  # the dev extra's tools (pytest, ...) are not the commands' business
        if requirement.marker is not None and not optional and not requirement.marker.evaluate():
            continue  # another platform's requirement
        try:
            installed = metadata.version(requirement.name)
        except metadata.PackageNotFoundError:
            if optional:
                continue
            return f"{requirement.name} is not installed; sft-recipe needs {requirement.name}{requirement.specifier}"
        if not requirement.specifier.contains(installed, prereleases=True):
            return (f"{requirement.name} {installed} is installed; sft-recipe needs "
                    f"{requirement.name}{requirement.specifier} (pip install '{requirement.name}"
                    f"{requirement.specifier}')")
    return None


def check_dependencies() -> None:
    problem = unmet()
    if problem is not None:
        raise UserError(problem)
