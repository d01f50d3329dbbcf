"""`sft-recipe launch [accelerate launch options] COMMAND ...`: accelerate's launcher, with ends a person can read.

The options are `accelerate launch`'s own (`--config_file`, `--num_machines`, `--machine_rank`,
`--main_process_ip`, `--main_process_port`, ...), then an sft-recipe command (`train RECIPE ...`).
It runs `accelerate launch -m sft_recipe COMMAND ...` in this process and changes three things:
- a run that fails ends with the workers' own line (a lost machine: `peers_watched`), then one line
  from the launcher, instead of torch elastic's `ChildFailedError` report and its tracebacks;
- the agent's exit barrier (once its workers finished, each machine's agent waits for the other
  machines') gives up after `EXIT_BARRIER_SECONDS`, not 300 s, so a machine that disappears after
  training holds the others for seconds, not minutes;
- c10d's C++ socket warnings are not printed (`TORCH_CPP_LOG_LEVEL=ERROR`).
"""

from __future__ import annotations

import logging
import os

from accelerate.commands.launch import launch_command, launch_command_parser
from torch.distributed.elastic.agent.server import local_elastic_agent
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

from ..errors import UserError

EXIT_BARRIER_SECONDS = 30
COMMANDS = ("train", "preprocess", "eval")


def split(argv: list[str]) -> tuple[list[str], list[str]]:
    """(launcher options, the sft-recipe command and its arguments)."""
    for i, word in enumerate(argv):
        if word in COMMANDS and (i == 0 or not argv[i - 1].startswith("--") or "=" in argv[i - 1]):
            return argv[:i], argv[i:]
    raise UserError(f"launch: name an sft-recipe command after the launcher options ({', '.join(COMMANDS)}), "
                    f"e.g. sft-recipe launch --num_processes 2 train recipe.yaml")


def short_exit_barrier() -> None:
    """Every LocalElasticAgent made from now on waits at most EXIT_BARRIER_SECONDS at its exit barrier.

    Replacing a public class's `__init__` (checked on torch 2.13.0 and accelerate 1.16.0): the agent
    takes `exit_barrier_timeout`, but neither `accelerate launch` nor torchrun's `LaunchConfig` passes
    it on, so a keyword default is the narrowest change; a torch that renames it fails in the test."""
    agent = local_elastic_agent.LocalElasticAgent
    if getattr(agent.__init__, "_sft_recipe", False):
        return
    original = agent.__init__

    def init(self, *args, **kwargs):
        kwargs.setdefault("exit_barrier_timeout", EXIT_BARRIER_SECONDS)
        original(self, *args, **kwargs)

    init._sft_recipe = True  # type: ignore[attr-defined]
    agent.__init__ = init


def launch(argv: list[str]) -> int:
    options, command = split(argv)
    os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "ERROR")
    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)
    short_exit_barrier()
    args = launch_command_parser().parse_args([*options, "-m", "sft_recipe", *command])
    try:
        launch_command(args)
    except ChildFailedError as exc:
        codes = sorted({f.exitcode for f in exc.failures.values()})
        print(f"sft-recipe launch: {len(exc.failures)} process(es) on this machine ended with exit code "
              f"{', '.join(map(str, codes))}; the line above says why", flush=True)
        return codes[-1] if codes and codes[-1] > 0 else 1
    except SystemExit as exc:  # the single-process launcher exits with its child's code
        return int(exc.code or 0)
    return 0
