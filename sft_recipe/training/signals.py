"""Preemption and Ctrl-C: finish the step, save a checkpoint, exit non-zero with how to resume.

A scheduler's SIGTERM (SLURM, Kubernetes, spot instances) or a Ctrl-C (SIGINT) during training
sets a flag; at the next optimizer-step boundary `StopOnSignal` asks the Trainer to save and
stop, so the checkpoint is a clean one that re-running the same command resumes from. A second
signal while that save is under way gives up at once (the default behaviour).

With several processes, the flag is combined over all ranks at each step end (one tiny
all-reduce), so every rank stops at the same step even if only one received the signal: a rank
that went ahead alone would hang the others in the next collective.

The exit code is the shell convention 128 + signal number: 143 for SIGTERM, 130 for SIGINT.
"""

from __future__ import annotations

import contextlib
import logging
import re
import signal
import threading
from pathlib import Path
from typing import Iterator

import torch
import torch.distributed as dist
from transformers import TrainerCallback

from ..rundir.checkpoints import last_complete_checkpoint
from ..errors import PeerLost, TrainingInterrupted, one_line

log = logging.getLogger("sft_recipe")
HANDLED_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopOnSignal(TrainerCallback):
    def __init__(self) -> None:
        self.received: int | None = None

    @contextlib.contextmanager
    def handling_signals(self) -> Iterator["StopOnSignal"]:
        """Install the handlers for the duration of `trainer.train()` only, then restore the old ones.

        Python allows signal handlers only in the main thread; elsewhere this does nothing.
        """
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous = {sig: signal.getsignal(sig) for sig in HANDLED_SIGNALS}

        def handle(signum, frame):
            if self.received is not None:  # second signal: stop waiting for the save
                signal.signal(signum, previous[signum] if callable(previous[signum]) else signal.SIG_DFL)
                signal.raise_signal(signum)
                return
            self.received = signum
            print(f"\nsft-recipe: received {signal.Signals(signum).name}; saving a checkpoint at the end of "
                  f"this step, then stopping (send it again to quit without saving)", flush=True)

        for sig in HANDLED_SIGNALS:
            signal.signal(sig, handle)
        try:
            yield self
        finally:
            for sig, old in previous.items():
                signal.signal(sig, old)

    def on_step_end(self, args, state, control, **kwargs):
        signum = self._agreed_signal(args)
        if signum is not None:
            self.received = signum
            control.should_save = control.should_training_stop = True
        return control

    def _agreed_signal(self, args) -> int | None:
        """The signal any rank received (max over ranks; 0 = none)."""
        local = self.received or 0
        if args.world_size <= 1:
            return local or None
        flag = torch.tensor([local], device=args.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return int(flag.item()) or None

    def raise_if_stopped(self, output_dir: str) -> None:
        """After `trainer.train()`: if a signal stopped it, raise `TrainingInterrupted` with the way back."""
        if self.received is None:
            return
        checkpoint = last_complete_checkpoint(Path(output_dir))
        raise TrainingInterrupted(self.received, f"stopped by {signal.Signals(self.received).name}; checkpoint saved "
                                  f"to {checkpoint}; re-run the same command (same output_dir) to resume from it")


# What gloo and NCCL raise when a peer dies or a collective times out.
_PEER_FAILURE = re.compile(r"closed by peer|reset by peer|broken pipe|timed out|timeout|connection refused|"
                           r"nccl|gloo|processgroup|socket|watchdog", re.IGNORECASE)
_PEER_ADDRESS = re.compile(r"\[([0-9a-fA-F:.]+)\]:\d+")


def is_peer_failure(exc: BaseException) -> bool:
    """A collective failed because another process is gone (not a bug of this one)."""
    distributed = (getattr(dist, "DistError", ()), getattr(dist, "DistBackendError", ()))
    return isinstance(exc, tuple(t for t in distributed if isinstance(t, type))) or \
        (isinstance(exc, (RuntimeError, OSError, ConnectionError)) and bool(_PEER_FAILURE.search(str(exc))))


@contextlib.contextmanager
def peers_watched(output_dir: str) -> Iterator[None]:
    """A distributed run that loses a process ends here, on every survivor, in one line that names
    the machine it lost and how to resume (instead of a collective's traceback)."""
    try:
        yield
    except Exception as exc:
        if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1 and is_peer_failure(exc)):
            raise
        address = _PEER_ADDRESS.search(str(exc))
        who = f"the process at {address.group(1)}" if address else "another process"
        last = last_complete_checkpoint(Path(output_dir))
        resume = f"resumes from {last}" if last else "starts over (no complete checkpoint yet)"
        raise PeerLost(f"rank {dist.get_rank()}: lost {who} of this run ({one_line(exc)[:160]}); every process stops "
                       f"now. Run the same launch command on every machine again: it {resume}") from None
