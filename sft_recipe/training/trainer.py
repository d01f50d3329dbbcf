"""`SFTTrainer`: a thin `transformers.Trainer` whose loss only looks at trainable tokens.

What it overrides, and why:
- `compute_loss`: the loss path `loss.LossPath` picked (the chunked trainable-token loss, or the
  model's own loss when `loss_chunk_size` is 0 or the model is not a plain causal LM), divided by `num_items_in_batch`,
  the trainable-token count of the whole optimizer step across accumulation steps and devices
  (the Trainer gathers it), so batch 8 x accumulation 1 and batch 2 x accumulation 4 give the
  same loss and gradients. Under DDP it is multiplied by the number of processes, which DDP's
  gradient averaging divides back out.
  Under FSDP or ZeRO-3 the loss is computed inside the head's forward, where the sharding wrapper
  has gathered the head's weight; FSDP2 averages gradients like DDP.
- `prediction_step`: in a loss-only evaluation, adds each batch's sums to `eval_counts`.
- `_get_train_sampler`: padded rows get `sampling.StepBalancedSampler` (each optimizer step's random
  rows, split into micro-batches by length); `SamplerEpoch`, a callback, tells it the epoch.
- `get_batch_samples` and `log`: a running count of trainable tokens, logged as
  `trainable_tokens_seen` for the throughput callback.
- `_save_checkpoint`, `_load_best_model`, `_issue_warnings_after_load`: see their docstrings.
- `evaluation_loop`: eval loss as the mean over every held-out trainable token on all processes
  (not the Trainer's average of per-batch means), plus perplexity and next-token accuracy, and the
  same figures for a fixed training sample (`train_sample_*`) and, for a mixture, per source
  (`eval_<name>_loss`: one more pass over each source's held-out rows).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import torch
from accelerate.data_loader import prepare_data_loader
from accelerate.utils import DistributedType
from torch.utils.data import DataLoader, RandomSampler
from transformers import Trainer, TrainerCallback
from transformers.integrations import is_deepspeed_zero3_enabled

from ..rundir.layout import CHECKPOINT_PREFIX
from ..rundir.checkpoints import saving
from ..data.mask import IGNORE_INDEX
from ..errors import UserError, one_line
from .loss import LOGITS, OWN, EvalCounts, LossPath, router_aux_loss
from .sampling import StepBalancedSampler, set_sampler_epoch

log = logging.getLogger("sft_recipe")


def tied_parameter_names(model) -> set[str]:
    """Names of parameters that share their tensor with another parameter (tied weights)."""
    by_tensor: dict[int, list[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        by_tensor.setdefault(id(param), []).append(name)
    return {n for names in by_tensor.values() if len(names) > 1 for n in names}


PROBE_TOKENS = 128  # full logits of this many tokens per row: a few tens of MiB even at a 150k vocabulary


def probe_window(row: dict[str, Any]) -> dict[str, Any]:
    """The last PROBE_TOKENS tokens of a row (where its answer is), for the one-forward loss check."""
    return {"input_ids": row["input_ids"][-PROBE_TOKENS:], "labels": row["labels"][-PROBE_TOKENS:]}


class SamplerEpoch(TrainerCallback):
    """The epoch reaches the step sampler however deep the loader wraps it. On a resume the Trainer
    wraps it twice (accelerate's shard, then its batch skipping) and its own `set_epoch` stopped one
    level short, which replayed epoch 0's order on a multi-process resume (seen on transformers 5.16;
    5.17+ reaches one level down). The skipping wrapper shares our sampler object, so setting it on
    the loader the callbacks are given is enough."""

    def on_epoch_begin(self, args, state, control, train_dataloader=None, **kwargs):
        set_sampler_epoch(train_dataloader, math.floor((state.epoch or 0) + 1e-6))  # a float: 1.0 after epoch 0


class SFTTrainer(Trainer):
    def __init__(self, *args: Any, loss_chunk_size: int = 1024, train_sample: Any = None, recipe: Any = None,
                 eval_parts: dict[str, Any] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.recipe = recipe  # the SFTConfig, for save-failure messages
        self.eval_parts = eval_parts  # a mixture's held-out rows per source: eval_<name>_loss
        self.loss_chunk_size = loss_chunk_size
        # Count trainable tokens as `labels[:, 1:]`, as both losses here shift: the Trainer decides from
        # the model's `loss_type`, which GPT-2 leaves unset, and would then count one token too many
        # per row of raw text (a loss 1/max_length too low).
        # Private (checked on transformers 5.25.0): set from the model's `loss_type` in `__init__`, read by
        # `get_batch_samples`; the public route, `model.loss_type`, would change the model's own loss too.
        self._loss_shifts_labels = True
        self.train_sample = train_sample  # fixed training rows scored at every eval (train_sample_loss)
        # Sharded parameters exist whole only inside their module's forward: compute the loss there.
        sharded = bool(self.is_fsdp_enabled or is_deepspeed_zero3_enabled())
        self.loss_path = LossPath(self.model, loss_chunk_size, sharded)
        if sharded and loss_chunk_size and self.loss_path.own:
            log.info("sharded training: %s", self.loss_path.reason)
        self._own_loss_kwargs = self.model_accepts_loss_kwargs  # what the Trainer decided for the model's loss
        if not self.loss_path.own:
            # We normalise by `num_items_in_batch` ourselves, so ask the Trainer to count it.
            self.model_accepts_loss_kwargs = True
        self.eval_counts = EvalCounts()
        self.aux_losses: list[torch.Tensor] = []  # router load-balancing losses since the last log
        self.trainable_tokens_seen: torch.Tensor | int = 0  # all processes, this session; see `log`
        self.add_callback(SamplerEpoch())

    def get_train_dataloader(self):
        """A stream (`data/streaming.py`) is already this process's share, read in order with its position
        tracked: no accelerate sharding or dispatching, no worker processes (whose reads it could not see)."""
        if not isinstance(self.train_dataset, torch.utils.data.IterableDataset):
            return super().get_train_dataloader()
        loader = DataLoader(self.train_dataset, batch_size=self.args.train_batch_size, collate_fn=self.data_collator,
                            num_workers=0, pin_memory=self.args.dataloader_pin_memory)
        return prepare_data_loader(loader, self.args.device, num_processes=1, process_index=0, put_on_device=True,
                                   dispatch_batches=False)

    def _get_train_sampler(self, train_dataset: Any = None):
        """`batch_rebalance` is ours (`sampling.StepBalancedSampler`): the recipe's seed, lengths from
        the prepared rows' `length` column, and no row repeated to fill a short last step. Where its
        steps do not fit (no lengths, `dataloader_drop_last`, batches dispatched or split by the
        main process), the Trainer's random sampler.

        Private hook (checked on transformers 5.25.0): the public `train_sampling_strategy` only picks
        among transformers' own samplers, and `get_train_dataloader` would mean copying its loader
        setup (workers, pinning, accelerate's sharding); this method is the Trainer's documented seam
        for the sampler ("Subclass and override")."""
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        if self.args.train_sampling_strategy != "batch_rebalance":
            return super()._get_train_sampler(train_dataset)
        args = self.args
        accelerator = args.accelerator_config
        if ("length" not in (getattr(dataset, "column_names", None) or ()) or args.dataloader_drop_last
                or getattr(accelerator, "dispatch_batches", None) or getattr(accelerator, "split_batches", False)):
            return RandomSampler(dataset)
        return StepBalancedSampler(
            [int(n) for n in dataset["length"]], self.args.train_batch_size, args.gradient_accumulation_steps,
            seed=args.data_seed if args.data_seed is not None else args.seed, world_size=max(1, args.world_size),
            rank=args.process_index if args.world_size > 1 else 0)

    def _save_checkpoint(self, model, trial):
        """Whatever a save raises becomes one line naming the checkpoint (see `checkpoints.saving`).

        Private hook (checked on transformers 5.25.0): the public `on_save` callback runs after the save,
        and `save_model` writes only the weights, not the optimizer, scheduler and RNG files that fail
        on a full disk; no public hook wraps the whole checkpoint write."""
        checkpoint = Path(self.args.output_dir) / f"{CHECKPOINT_PREFIX}{self.state.global_step}"
        with saving(checkpoint, self.recipe if self.recipe is not None else self.args):
            super()._save_checkpoint(model, trial)

    def _load_best_model(self) -> None:
        """When the best checkpoint is the last step, the weights in memory are that checkpoint's: reading
        them back would only cost time and a second copy of the weights in memory.

        Private hook (checked on transformers 5.25.0): the public alternative, `load_best_model_at_end`
        off and our own reload in `on_train_end`, would duplicate the Trainer's loader for sharded,
        PEFT and DeepSpeed checkpoints; this override only skips a reload, it never replaces it."""
        if self.state.best_global_step is not None and self.state.best_global_step == self.state.global_step:
            return
        super()._load_best_model()

    def _issue_warnings_after_load(self, load_result: Any) -> None:
        """Loading the best checkpoint back: tied weights (the LM head shares the embeddings) are not
        saved, so they are "missing" by design; warn only about keys that are really missing.

        Private hook (checked on transformers 5.25.0): called only from `_load_best_model` and
        `_load_from_checkpoint`, with no public hook or callback that sees the load result."""
        tied = tied_parameter_names(self.model)
        missing = [k for k in load_result.missing_keys if k not in tied]
        if len(missing) != len(load_result.missing_keys):
            self.model.tie_weights()
        super()._issue_warnings_after_load(load_result._replace(missing_keys=missing)
                                           if hasattr(load_result, "_replace") else load_result)

    def get_batch_samples(self, epoch_iterator, num_batches, device):
        """The Trainer counts each optimizer step's trainable tokens (over all processes) to normalise
        the loss; keep a running sum for the throughput logs (a tensor: no device sync per step)."""
        batch_samples, num_items_in_batch = super().get_batch_samples(epoch_iterator, num_batches, device)
        if num_items_in_batch is not None:
            self.trainable_tokens_seen += torch.as_tensor(num_items_in_batch).reshape(-1)[0].detach()
        return batch_samples, num_items_in_batch

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Training logs also carry `trainable_tokens_seen`, next to the Trainer's `num_input_tokens_seen`,
        and a mixture of experts' `aux_loss` (the mean router loss since the last log, coefficient applied)."""
        if "loss" in logs:
            logs["trainable_tokens_seen"] = int(self.trainable_tokens_seen)
            if self.aux_losses:
                logs["aux_loss"] = float(torch.stack(self.aux_losses).mean())
                self.aux_losses = []
        super().log(logs, start_time)

    def verify_loss(self, rows: Any) -> None:
        """Before any step: the fast loss must equal the model's own logits on real rows (a few
        evaluation rows, one forward pass), else the model's own loss is used; the path is said once."""
        if rows is not None and len(rows) and not is_deepspeed_zero3_enabled():
            batch = self.data_collator([probe_window(rows[i]) for i in range(min(len(rows), 2))])
            try:  # private (checked on transformers 5.25.0): no public call moves a batch as training does
                self.loss_path.verify(self.model, self._prepare_inputs(batch))
            except Exception as exc:  # before any step: a model that cannot run here says so in one line
                raise UserError(f"{type(self.model).__name__}: a forward pass on the first evaluation rows failed: "
                                f"{one_line(exc)}") from None
            self.model_accepts_loss_kwargs = self._own_loss_kwargs if self.loss_path.own else True
        if self.loss_path.kind in (OWN, LOGITS):
            log.info("loss: %s", self.loss_path.reason)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if self.loss_path.own or return_outputs:  # outputs wanted: the model's own forward gives logits
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        extras: dict[str, Any] = {}
        labels = inputs["labels"]
        denominator = num_items_in_batch if num_items_in_batch is not None else (labels[:, 1:] != IGNORE_INDEX).sum()
        # DDP averages gradients over processes; the token count is already global.
        processes = self.accelerator.num_processes \
            if num_items_in_batch is not None and self.args.average_tokens_across_devices else 1
        scale = processes / torch.clamp(torch.as_tensor(denominator, device=labels.device, dtype=torch.float32), min=1)
        # The loss goes to backward as it is (normalised by the step's tokens): its gradient there is 1.
        plain = num_items_in_batch is not None and self._plain_backward()
        loss, _, _ = self.loss_path.sums(model, inputs, extras, scale=scale, eager=plain)
        aux = router_aux_loss(self.model, extras.get("aux_loss"))
        if aux is not None:  # added per micro-batch, exactly as the model's own loss adds it
            loss = loss + aux.to(loss.device) * processes
            self.aux_losses.append(aux.detach().float())
        return loss

    def _plain_backward(self) -> bool:
        """Whether `training_step` hands the loss to a plain `loss.backward()` unscaled: no fp16 loss
        scaler, no DeepSpeed or Megatron-LM engine, no LOMO optimizer (their own backward), no
        DataParallel mean, no division by accumulation steps."""
        accelerator = self.accelerator
        return (accelerator.scaler is None and getattr(accelerator, "has_lomo_optimizer", False) is False
                and accelerator.distributed_type not in (DistributedType.DEEPSPEED, DistributedType.MEGATRON_LM)
                and self.args.n_gpu <= 1 and accelerator.gradient_accumulation_steps == 1
                and getattr(self, "loss_is_scaled_for_ga", None) is not False and self.model_accepts_loss_kwargs)

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        """A loss-only evaluation step adds its sums to `eval_counts`, computed from the model's
        logits on the model's own path; when predictions are wanted, the Trainer's step is used."""
        if not prediction_loss_only:
            return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys)
        # private (checked on transformers 5.25.0): the Trainer's own step calls it; no public equivalent
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            loss_sum, correct, count = self.loss_path.sums(model, inputs)
        self.eval_counts.add(loss_sum, correct, count)
        return (loss_sum / max(count, 1)).detach(), None, None

    def evaluation_loop(self, dataloader, description, prediction_loss_only=None, ignore_keys=None,
                        metric_key_prefix: str = "eval"):
        """Adds perplexity and next-token accuracy on trainable tokens to the eval metrics
        (before they are logged, so every logger and callback sees them), and the same metrics for
        `train_sample` as `train_sample_*`: `eval_loss` stays the validation loss that picks the
        best checkpoint."""
        output = self.scored_loop(dataloader, description, prediction_loss_only, ignore_keys, metric_key_prefix)
        extra = [(f"eval_{name}", rows) for name, rows in (self.eval_parts or {}).items()] \
            if metric_key_prefix == "eval" else []
        if metric_key_prefix == "eval" and self.train_sample is not None:
            extra.append(("train_sample", self.train_sample))
        for prefix, rows in extra:
            part = self.scored_loop(self.get_eval_dataloader(rows), prefix, True, ignore_keys, prefix)
            output.metrics.update({k: v for k, v in part.metrics.items() if "preparation_time" not in k})
        if extra:
            self.callback_handler.eval_dataloader = dataloader
        return output

    def scored_loop(self, dataloader, description, prediction_loss_only, ignore_keys, metric_key_prefix: str):
        """One `Trainer.evaluation_loop` plus perplexity and token accuracy. Without compute_metrics
        the Trainer wants the loss only, so `compute_loss` can skip the full logits."""
        self.eval_counts = EvalCounts()
        loss_only = self.args.prediction_loss_only if prediction_loss_only is None else prediction_loss_only
        output = super().evaluation_loop(dataloader, description, loss_only, ignore_keys, metric_key_prefix)
        prefix = metric_key_prefix
        counts = self.eval_counts.as_tensor(self.args.device)
        loss_sum, correct, targets = self.accelerator.gather(counts[None]).sum(0).tolist()
        if targets:
            # The mean over every trainable token of the split, on all processes together. The
            # Trainer's own figure averages per-batch means, which depends on how rows fall into
            # batches and onto processes.
            output.metrics[f"{prefix}_loss"] = loss_sum / targets
            output.metrics[f"{prefix}_token_accuracy"] = correct / targets
        loss = output.metrics.get(f"{prefix}_loss")
        if loss is not None:
            output.metrics[f"{prefix}_perplexity"] = math.exp(min(loss, 50.0))
        return output
