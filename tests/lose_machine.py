"""A callback that takes a whole "machine" down mid-run, for the multi-node tests: on the machine
launched with LOSE_MACHINE_AT_STEP=N, at the end of step N, SIGKILL to its launcher's process
group (the launcher and its workers, as a machine that loses power)."""

from __future__ import annotations

import os
import signal

from transformers import TrainerCallback


class LoseMachine(TrainerCallback):
    def on_step_end(self, args, state, control, **kwargs):
        at = os.environ.get("LOSE_MACHINE_AT_STEP")
        if at and state.global_step == int(at):
            os.killpg(os.getpgid(0), signal.SIGKILL)
