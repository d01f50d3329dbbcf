"""`loss_curve`: `output_dir/loss_curve.png`, train and eval loss against optimizer step."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from ...rundir.layout import LOSS_CURVE_FILENAME


class LossCurveCallback(TrainerCallback):
    def on_evaluate(self, args, state, control, **kwargs):
        self.write(args, state)

    def on_train_end(self, args, state, control, **kwargs):
        self.write(args, state)

    def write(self, args, state) -> None:
        if state.is_world_process_zero:
            plot_loss_curve(state.log_history, Path(args.output_dir) / LOSS_CURVE_FILENAME)


def plot_loss_curve(log_history: list[dict[str, Any]], path: Path) -> Path | None:
    """Plot the `loss` and `eval_loss` entries of a Trainer log history; None if there are none."""
    # A bare Figure renders with Agg: no display, no pyplot state. Imported here because matplotlib
    # costs about a second to import and most runs plot only at evaluations.
    from matplotlib.figure import Figure

    series = {name: [(e["step"], e[key]) for e in log_history if key in e and "step" in e]
              for name, key in (("train", "loss"), ("eval", "eval_loss"))}
    if not any(series.values()):
        return None
    fig = Figure(figsize=(6, 4), dpi=100)
    ax = fig.add_subplot()
    for name, points in series.items():
        if points:
            steps, losses = zip(*points)
            ax.plot(steps, losses, marker="o" if name == "eval" else None, markersize=3, label=f"{name} loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (trainable tokens)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path
