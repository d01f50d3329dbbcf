"""SFTTrainer: the trainable-token loss is the model's own loss, computed faster.

Equivalences pinned here: chunked trainable-only loss == the model's loss (values and every
gradient) for llama and gpt2, padded and packed; batch 8 x accumulation 1 == 2 x 4 == 4 x 2
after one real optimizer step, on both loss paths; and the length-grouped sampler the recipe
configures still reshuffles every epoch.
"""

from __future__ import annotations

import functools

import datasets
import pytest
import torch
from conftest import tiny_model
from hypothesis import given, settings
from hypothesis import strategies as st

from sft_recipe.recipe.config import SFTConfig
from sft_recipe.data.collate import PackingCollator, PaddingCollator
from sft_recipe.data.mask import IGNORE_INDEX
from sft_recipe.training.loss import INSIDE_HEAD
from sft_recipe.training.trainer import SFTTrainer
from sft_recipe.training.arguments import to_training_arguments

VOCAB = 400
# Unit-level trainers: no eval set, no checkpoints, no loggers.
QUIET = dict(report_to="none", disable_tqdm=True, eval_strategy="no", save_strategy="no",
             load_best_model_at_end=False)


def rows_with_lengths(lengths: list[int], prompt_lengths: list[int], seed: int = 0) -> list[dict]:
    """Random token rows; labels -100 on the first `prompt_length` positions."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for n, p in zip(lengths, prompt_lengths):
        ids = torch.randint(3, VOCAB, (n,), generator=g).tolist()
        rows.append({"input_ids": ids, "labels": [IGNORE_INDEX] * p + ids[p:]})
    return rows


ROWS = rows_with_lengths([9, 4, 13, 6], [3, 1, 10, 0])


def make_trainer(model, tmp_path, chunk: int = 1024, **overrides) -> SFTTrainer:
    config = SFTConfig(dataset="unused.jsonl", model_name="unused", output_dir=str(tmp_path / "out"),
                       loss_chunk_size=chunk, callbacks=[])
    args = to_training_arguments(config, **{**QUIET, **overrides})
    return SFTTrainer(model=model, args=args, loss_chunk_size=chunk, data_collator=PaddingCollator(0))


def grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def assert_same_loss_and_grads(model, trainer, batch):
    model.zero_grad()
    expected = model(**batch).loss
    expected.backward()
    expected_grads = grads(model)
    model.zero_grad()
    ours = trainer.compute_loss(model, batch)
    ours.backward()
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-5)
    ours_grads = grads(model)
    assert ours_grads.keys() == expected_grads.keys()
    for name, g in expected_grads.items():
        torch.testing.assert_close(ours_grads[name], g, atol=1e-5, rtol=1e-4, msg=name)


@pytest.mark.parametrize("model_type", ["llama", "gpt2"])
@pytest.mark.parametrize("layout", ["padded", "packed"])
@pytest.mark.parametrize("chunk", [1, 5, 1024])
def test_trainable_only_loss_matches_the_model_loss(model_type, layout, chunk, tmp_path):
    model = tiny_model(model_type, VOCAB)
    trainer = make_trainer(model, tmp_path, chunk)
    assert trainer.loss_path.parts is not None, "the fast loss must apply to plain llama/gpt2"
    batch = (PackingCollator() if layout == "packed" else PaddingCollator(pad_token_id=0))(ROWS)
    assert_same_loss_and_grads(model, trainer, batch)


@functools.lru_cache(maxsize=None)
def cached_model_and_trainer(model_type: str):
    import tempfile
    from pathlib import Path

    model = tiny_model(model_type, VOCAB, seed=1)
    return model, make_trainer(model, Path(tempfile.mkdtemp(prefix="sft-trainer-test-")), chunk=7)


@settings(max_examples=12, deadline=None)
@given(
    model_type=st.sampled_from(["llama", "gpt2"]),
    packed=st.booleans(),
    masks=st.lists(st.lists(st.booleans(), min_size=2, max_size=12), min_size=1, max_size=4),
    seed=st.integers(0, 2**16),
)
def test_random_label_masks_match_the_model_loss(model_type, packed, masks, seed):
    """Any pattern of trainable positions (holes, several spans), as long as one is trainable."""
    model, trainer = cached_model_and_trainer(model_type)
    g = torch.Generator().manual_seed(seed)
    rows = []
    for mask in masks:
        ids = torch.randint(3, VOCAB, (len(mask),), generator=g).tolist()
        rows.append({"input_ids": ids, "labels": [t if keep else IGNORE_INDEX for t, keep in zip(ids, mask)]})
    batch = (PackingCollator() if packed else PaddingCollator(pad_token_id=0))(rows)
    if not (batch["labels"][:, 1:] != IGNORE_INDEX).any():
        return  # nothing to learn: the model's own loss is NaN there
    assert_same_loss_and_grads(model, trainer, batch)


# --- loss normalisation across gradient accumulation, through the real Trainer --------------

# Trainable-token counts 1, 2, 40, 3, 25, 1, 8, 30: a per-micro-batch mean would weight them wrongly.
ACCUM_ROWS = rows_with_lengths([12, 5, 44, 9, 30, 4, 20, 33], [11, 3, 4, 6, 5, 3, 12, 3], seed=3)


def one_step(tmp_path, batch: int, accum: int, chunk: int, packing: bool, checkpointing: bool = True,
             model=None):
    model = model if model is not None else tiny_model("llama", VOCAB, seed=0)
    config = SFTConfig(dataset="unused.jsonl", model_name="unused", output_dir=str(tmp_path / f"{batch}x{accum}"),
                       batch_size=batch, gradient_accumulation_steps=accum, max_steps=1, loss_chunk_size=chunk,
                       packing=packing, learning_rate=0.5, logging_steps=1, callbacks=[],
                       gradient_checkpointing=checkpointing)
    # SGD without clipping or decay: the update is -lr x gradient, so any normalisation error
    # shows up in the parameters (AdamW's first step is ~ lr x sign(gradient) and would hide it).
    args = to_training_arguments(config, optim="sgd", max_grad_norm=0.0, weight_decay=0.0, warmup_steps=0,
                                 lr_scheduler_type="constant", **QUIET)
    collator = PackingCollator() if packing else PaddingCollator(pad_token_id=0)
    dataset = datasets.Dataset.from_list([{**r, "length": len(r["input_ids"])} for r in ACCUM_ROWS])
    trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, data_collator=collator,
                         loss_chunk_size=chunk)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer.train()
    assert trainer.state.global_step == 1
    assert model.is_activation_checkpointing == checkpointing
    loss = next(log["loss"] for log in trainer.state.log_history if "loss" in log)
    update = {n: p.detach() - before[n] for n, p in model.named_parameters()}
    return loss, update


@pytest.mark.parametrize("chunk,packing", [(1024, False), (3, True), (0, False), (0, True)],
                         ids=["chunked-padded", "chunked-packed", "model-loss-padded", "model-loss-packed"])
def test_accumulation_gives_the_same_loss_and_update(chunk, packing, tmp_path):
    reference_loss, reference_update = one_step(tmp_path, 8, 1, chunk, packing)
    assert any(u.abs().max() > 0 for u in reference_update.values())
    for batch, accum in ((2, 4), (4, 2)):
        loss, update = one_step(tmp_path, batch, accum, chunk, packing)
        assert loss == pytest.approx(reference_loss, rel=1e-4), (batch, accum)
        for name, u in reference_update.items():
            torch.testing.assert_close(update[name], u, atol=1e-6, rtol=1e-4, msg=f"{batch}x{accum} {name}")


def test_tied_head_accumulation_gives_the_same_update_as_the_models_loss(tmp_path, monkeypatch):
    """A tied head through the real Trainer: its gradient goes to `.grad` in the loss's forward (the
    backward of a CPU fp32 run is plain); 8 x 1, 2 x 4 and the model's own loss take the same step."""
    from sft_recipe.model.chunked_loss import ChunkedLinearCrossEntropy

    calls = []
    forward = ChunkedLinearCrossEntropy.forward

    def spy(ctx, *args):
        out = forward(ctx, *args)
        calls.append(ctx.eager)
        return out

    monkeypatch.setattr(ChunkedLinearCrossEntropy, "forward", staticmethod(spy))

    def tied():
        return tiny_model("llama", VOCAB, seed=0, tie_word_embeddings=True)

    reference_loss, reference_update = one_step(tmp_path / "own", 8, 1, 0, False, model=tied())
    for batch, accum in ((8, 1), (2, 4)):
        calls.clear()
        loss, update = one_step(tmp_path / f"fast{batch}", batch, accum, 16, False, model=tied())
        assert calls and all(calls), calls  # the eager path ran
        assert loss == pytest.approx(reference_loss, rel=1e-4), (batch, accum)
        for name, u in reference_update.items():
            torch.testing.assert_close(update[name], u, atol=1e-6, rtol=1e-4, msg=f"{batch}x{accum} {name}")


def test_plain_backward_only_where_the_loss_reaches_it_unscaled(tmp_path):
    config = SFTConfig(dataset="unused.jsonl", model_name="unused", output_dir=str(tmp_path), callbacks=[])
    trainer = SFTTrainer(model=tiny_model("llama", VOCAB), args=to_training_arguments(config, **QUIET),
                         data_collator=PaddingCollator(pad_token_id=0))
    assert trainer._plain_backward()
    trainer.model_accepts_loss_kwargs = False  # the Trainer would divide the loss by the accumulation steps
    assert not trainer._plain_backward()


def test_both_loss_paths_give_the_same_step(tmp_path):
    fast_loss, fast_update = one_step(tmp_path / "fast", 2, 4, 16, False)
    model_loss, model_update = one_step(tmp_path / "model", 2, 4, 0, False)
    assert fast_loss == pytest.approx(model_loss, rel=1e-4)
    for name, u in model_update.items():
        torch.testing.assert_close(fast_update[name], u, atol=1e-6, rtol=1e-4, msg=name)


@pytest.mark.parametrize("model_type,packing", [("llama", False), ("llama", True), ("gpt2", False)])
def test_gradient_checkpointing_gives_the_same_step(model_type, packing, tmp_path):
    """Recomputing activations in backward (the default) must not change the step: same loss,
    same update, also with dropout, whose random masks the recompute has to replay."""
    dropout = dict(resid_pdrop=0.2, embd_pdrop=0.2, attn_pdrop=0.2) if model_type == "gpt2" \
        else dict(attention_dropout=0.2)
    results = []
    for checkpointing in (True, False):
        torch.manual_seed(0)  # the same dropout masks in both runs
        model = tiny_model(model_type, VOCAB, seed=0, **dropout)
        results.append(one_step(tmp_path / str(checkpointing), 2, 4, 16, packing, checkpointing, model))
    (loss, update), (reference_loss, reference_update) = results
    assert loss == pytest.approx(reference_loss, rel=1e-5)
    for name, u in reference_update.items():
        torch.testing.assert_close(update[name], u, atol=1e-6, rtol=1e-4, msg=name)


def test_gradient_checkpointing_is_skipped_for_models_without_it(tmp_path, caplog):
    from sft_recipe.commands.build import checkpointing_supported

    model = tiny_model("llama", VOCAB)
    config = SFTConfig(dataset="unused.jsonl", model_name="unused", output_dir=str(tmp_path), callbacks=[])
    assert not to_training_arguments(config, **QUIET).activation_checkpointing  # the CPU default
    config.gradient_checkpointing = True
    args = to_training_arguments(config, **QUIET)
    assert checkpointing_supported(model, args) and args.activation_checkpointing
    model.supports_gradient_checkpointing = False
    with caplog.at_level("INFO", logger="sft_recipe"):
        assert not checkpointing_supported(model, args)
    assert not args.activation_checkpointing and not args.gradient_checkpointing
    assert "does not support gradient checkpointing" in caplog.text


# --- sampling -------------------------------------------------------------------------------

def test_length_grouped_sampler_reshuffles_every_epoch(tmp_path):
    """group_by_length batches similar lengths together but must not fix one order for all epochs."""
    n = 64
    rows = [{"input_ids": [3 + i] * (2 + i % 17), "labels": [3 + i] * (2 + i % 17)} for i in range(n)]
    dataset = datasets.Dataset.from_list([{**r, "length": len(r["input_ids"])} for r in rows])
    config = SFTConfig(dataset="unused.jsonl", model_name="unused", output_dir=str(tmp_path / "out"),
                       batch_size=4, group_by_length=True, callbacks=[])
    args = to_training_arguments(config, **QUIET)
    assert args.train_sampling_strategy == "group_by_length"
    trainer = SFTTrainer(model=tiny_model("llama", VOCAB), args=args, train_dataset=dataset,
                         data_collator=PaddingCollator(pad_token_id=0))
    loader = trainer.get_train_dataloader()

    def epoch_order() -> list[int]:
        return [row[0] - 3 for batch in loader for row in batch["input_ids"].tolist()]

    first, second = epoch_order(), epoch_order()
    assert sorted(first) == sorted(second) == list(range(n))  # every row once per epoch
    assert first != second
    # ...and batches really are grouped: far less padding than a random order would give.
    widths = [batch["input_ids"].shape[1] * len(batch["input_ids"]) for batch in loader]
    assert sum(widths) < 1.3 * sum(len(r["input_ids"]) for r in rows)


def test_packing_turns_length_grouping_off(tmp_path):
    config = SFTConfig(dataset="unused.jsonl", model_name="unused", output_dir=str(tmp_path / "out"),
                       packing=True, group_by_length=True, callbacks=[])
    assert to_training_arguments(config, **QUIET).train_sampling_strategy == "random"


def test_bfd_bins_with_varying_rows_per_step_give_the_padded_step(tmp_path):
    """`packing: bfd` micro-batches hold different numbers of rows; the step is still the mean over the
    step's trainable tokens: one step over all bins (1 x 4 or 2 x 2 bins) == one padded batch of the rows."""
    from sft_recipe.data.packing import pack_rows

    rows = datasets.Dataset.from_list([{**r, "length": len(r["input_ids"])} for r in ACCUM_ROWS])
    bins, stats = pack_rows(rows, 48, seed=0)
    assert stats["bins"] == 4 and sorted(len(b) for b in bins["row_lengths"]) != [2, 2, 2, 2]

    def step(dataset, collator, batch, accum, name):
        config = SFTConfig(dataset="unused.jsonl", model_name="unused", output_dir=str(tmp_path / name),
                           batch_size=batch, gradient_accumulation_steps=accum, max_steps=1, loss_chunk_size=5,
                           learning_rate=0.5, logging_steps=1, callbacks=[])
        args = to_training_arguments(config, optim="sgd", max_grad_norm=0.0, weight_decay=0.0,
                                     lr_scheduler_type="constant", **QUIET)
        model = tiny_model("llama", VOCAB, seed=0)
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, data_collator=collator, loss_chunk_size=5)
        trainer.train()
        loss = next(log["loss"] for log in trainer.state.log_history if "loss" in log)
        return loss, {n: p.detach() - before[n] for n, p in model.named_parameters()}

    reference_loss, reference_update = step(rows, PaddingCollator(pad_token_id=0), 8, 1, "padded")
    for batch, accum in ((4, 1), (2, 2), (1, 4)):
        loss, update = step(bins, PackingCollator(), batch, accum, f"bfd{batch}x{accum}")
        assert loss == pytest.approx(reference_loss, rel=1e-4), (batch, accum)
        for name, u in reference_update.items():
            torch.testing.assert_close(update[name], u, atol=1e-6, rtol=1e-4, msg=f"{batch}x{accum} {name}")


@pytest.mark.parametrize("model_type", ["llama", "gpt2"])
@pytest.mark.parametrize("layout", ["padded", "packed"])
def test_loss_inside_the_head_matches_the_model_loss(model_type, layout, tmp_path):
    """The sharding-safe path (used under FSDP / ZeRO-3; 2-process FSDP2 in test_loss_sharded.py)
    gives the model's loss and gradients on one process too, and leaves the head as it was."""
    model = tiny_model(model_type, VOCAB)
    trainer = make_trainer(model, tmp_path, chunk=5)
    trainer.loss_path.kind = INSIDE_HEAD
    batch = (PackingCollator() if layout == "packed" else PaddingCollator(pad_token_id=0))(ROWS)
    assert_same_loss_and_grads(model, trainer, batch)
    assert "forward" not in model.get_output_embeddings().__dict__


@pytest.mark.parametrize("greater_is_better", [False, True])
def test_best_checkpoint_is_read_back_only_when_it_is_not_the_last_step(greater_is_better, tmp_path, monkeypatch):
    """At the end of training the best checkpoint's weights are loaded back, except when it is the last
    step: those weights are already in memory (reading them back cost time and a second copy). With
    `greater_is_better` the first evaluation is the best, so it is read back and the weights change."""
    from transformers import Trainer

    loaded = []
    monkeypatch.setattr(Trainer, "_load_best_model", lambda self: loaded.append(self.state.best_global_step))
    model = tiny_model("llama", VOCAB)
    config = SFTConfig(dataset="unused.jsonl", model_name="unused", output_dir=str(tmp_path / "out"), callbacks=[])
    args = to_training_arguments(config, **{**QUIET, **dict(
        eval_strategy="steps", save_strategy="steps", eval_steps=2, save_steps=2, load_best_model_at_end=True,
        max_steps=4, per_device_train_batch_size=2, learning_rate=1e-2, greater_is_better=greater_is_better)})
    trainer = SFTTrainer(model=model, args=args, data_collator=PaddingCollator(0),
                         train_dataset=datasets.Dataset.from_list(ROWS * 4), eval_dataset=datasets.Dataset.from_list(ROWS))
    trainer.train()
    assert trainer.state.best_global_step == (2 if greater_is_better else 4)
    assert loaded == ([2] if greater_is_better else [])
