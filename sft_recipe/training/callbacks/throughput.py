"""`throughput`: tokens/s (all and trainable), peak memory and ETA in every training log.

It only adds the figures to the logs; the console callback (`console.py`) shows them, so does
every logger (wandb, TensorBoard, `train_log.jsonl`).
"""

from __future__ import annotations

import time

import torch
from transformers import TrainerCallback

from ..host_memory import peak_resident_bytes


class ThroughputCallback(TrainerCallback):
    """Time counts training only: the gap before a step that follows an eval or a checkpoint save is
    left out. Token counts come from the logs: `num_input_tokens_seen` (non-padding tokens, the
    Trainer's count) and `trainable_tokens_seen` (tokens with a label, SFTTrainer's count), both
    summed over all processes.
    """

    edits_logs = True

    def __init__(self) -> None:
        self.train_seconds = 0.0
        self.mark = time.perf_counter()
        self.paused = False
        self.start_step = 0
        self.last: dict[str, float] = {}

    def on_train_begin(self, args, state, control, **kwargs):
        self.train_seconds, self.mark, self.paused = 0.0, time.perf_counter(), False
        self.start_step = state.global_step
        self.last = {"seconds": 0.0, "num_input_tokens_seen": state.num_input_tokens_seen or 0,
                     "trainable_tokens_seen": 0}

    def on_step_begin(self, args, state, control, **kwargs):
        if self.paused:  # an eval or save happened since the last step: don't count it
            self.mark, self.paused = time.perf_counter(), False

    def on_step_end(self, args, state, control, **kwargs):
        now = time.perf_counter()
        self.train_seconds += now - self.mark
        self.mark = now

    def on_evaluate(self, args, state, control, **kwargs):
        self.paused = True

    on_save = on_evaluate  # a save pauses the clock as an evaluation does

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs is None or "loss" not in logs:
            return
        added = throughput_metrics(logs, self.last, self.train_seconds)
        steps_done = state.global_step - self.start_step
        if steps_done > 0 and state.max_steps > 0:
            added["eta_seconds"] = self.train_seconds / steps_done * (state.max_steps - state.global_step)
        added.update(peak_memory_gb())
        logs.update(added)
        if state.log_history and state.log_history[-1].get("step") == state.global_step:
            state.log_history[-1].update(added)  # trainer_state.json keeps them too
        self.last = {"seconds": self.train_seconds, **{k: logs[k] for k in self.last if k in logs}}


def throughput_metrics(logs: dict[str, float], last: dict[str, float], seconds: float) -> dict[str, float]:
    """Rates since the previous log: `tokens_per_second` and `trainable_tokens_per_second`."""
    elapsed = seconds - last.get("seconds", 0.0)
    if elapsed <= 0:
        return {}
    return {rate_key: (logs[count_key] - last[count_key]) / elapsed
            for count_key, rate_key in (("num_input_tokens_seen", "tokens_per_second"),
                                        ("trainable_tokens_seen", "trainable_tokens_per_second"))
            if count_key in logs and count_key in last}


def peak_memory_gb() -> dict[str, float]:
    """Peak resident memory of this process and, on a GPU, peak memory allocated by PyTorch."""
    peak = {"peak_rss_gb": peak_resident_bytes() / 2**30}  # this process's own, not a parent's (ru_maxrss)
    if torch.cuda.is_available():
        peak["peak_cuda_gb"] = torch.cuda.max_memory_allocated() / 2**30
    return peak


def throughput_parts(m: dict[str, float]) -> list[str]:
    """`7,198 tok/s (485 trainable)`, `peak RSS 0.72 GB`, `ETA 0h03m42s`: whichever `m` holds."""
    parts = []
    if "tokens_per_second" in m:
        rate = f"{m['tokens_per_second']:,.0f} tok/s"
        if "trainable_tokens_per_second" in m:
            rate += f" ({m['trainable_tokens_per_second']:,.0f} trainable)"
        parts.append(rate)
    if "peak_rss_gb" in m:
        memory = f"peak RSS {m['peak_rss_gb']:.2f} GB"
        if "peak_cuda_gb" in m:
            memory += f", CUDA {m['peak_cuda_gb']:.2f} GB"
        parts.append(memory)
    if "eta_seconds" in m:
        minutes, seconds = divmod(int(m["eta_seconds"]), 60)
        parts.append(f"ETA {minutes // 60}h{minutes % 60:02d}m{seconds:02d}s")
    return parts
