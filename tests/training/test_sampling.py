"""Micro-batches balanced inside each optimizer step: the same rows per step as a random order,
every row once per epoch, less padding."""

from __future__ import annotations

import random

import datasets
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sft_recipe.data.collate import PaddingCollator
from sft_recipe.recipe.config import SFTConfig
from sft_recipe.training.arguments import to_training_arguments
from sft_recipe.training.sampling import StepBalancedSampler, set_sampler_epoch
from sft_recipe.training.trainer import SFTTrainer
from test_trainer import QUIET, VOCAB, tiny_model


def steps(micro_batches: list[list[int]], accum: int) -> list[list[int]]:
    """The rows of each optimizer step, sorted."""
    return [sorted(i for b in micro_batches[s:s + accum] for i in b) for s in range(0, len(micro_batches), accum)]


def test_golden_one_step_sorted_into_micro_batches():
    """8 rows, batch 2 x accumulation 4: the step is the random order's 8 rows, cut by length into
    micro-batches of 2 (checkable by hand from the lengths): 202 padded positions, not up to 400."""
    lengths = [5, 100, 7, 98, 6, 99, 8, 97]
    sampler = StepBalancedSampler(lengths, batch_size=2, grad_accum=4, seed=0)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 4
    assert steps(batches, 4) == [list(range(8))]
    assert sorted(sorted(lengths[i] for i in b) for b in batches) == [[5, 6], [7, 8], [97, 98], [99, 100]]


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 90), batch=st.integers(1, 5), accum=st.integers(1, 5), seed=st.integers(0, 3),
       epoch=st.integers(0, 2), data=st.data())
def test_each_step_holds_the_random_orders_rows_once(n, batch, accum, seed, epoch, data):
    """Property: step s holds exactly rows order[s*E:(s+1)*E] of the seeded random order, every row once
    an epoch, none repeated (also in a last step smaller than the number of micro-batches)."""
    lengths = data.draw(st.lists(st.integers(1, 300), min_size=n, max_size=n))
    sampler = StepBalancedSampler(lengths, batch_size=batch, grad_accum=accum, seed=seed)
    sampler.set_epoch(epoch)
    batches = list(sampler)
    assert len(batches) == len(sampler) and all(batches)
    assert max(map(len, batches)) <= batch  # never a bigger micro-batch than the recipe's
    order, size = sampler.order(), batch * accum
    assert steps(batches, accum) == [sorted(order[s:s + size]) for s in range(0, n, size)]


@pytest.mark.parametrize("world", [2, 3])
def test_processes_split_each_step_between_them(world):
    """Every process runs the same sampler with its rank: together they cover each step's rows."""
    lengths = [random.Random(i).randint(1, 200) for i in range(96)]
    per_rank = [list(StepBalancedSampler(lengths, batch_size=2, grad_accum=4, seed=1, world_size=world, rank=r))
                for r in range(world)]
    assert len({len(b) for b in per_rank}) == 1  # same number of micro-batches: no rank waits forever
    order, size = StepBalancedSampler(lengths, 2, 4, seed=1, world_size=world).order(), 2 * 4 * world
    for s in range(len(per_rank[0]) // 4):
        rows = sorted(i for r in range(world) for b in per_rank[r][4 * s:4 * s + 4] for i in b)
        assert rows == sorted(order[s * size:(s + 1) * size])


def test_less_padding_than_random_batches():
    rng = random.Random(0)
    lengths = [rng.choice([rng.randint(20, 60), rng.randint(150, 256)]) for _ in range(512)]
    balanced = list(StepBalancedSampler(lengths, batch_size=4, grad_accum=4, seed=0))
    order = StepBalancedSampler(lengths, batch_size=4, grad_accum=4, seed=0).order()
    plain = [order[i:i + 4] for i in range(0, 512, 4)]

    def padded(batches):
        return sum(len(b) * max(lengths[i] for i in b) for b in batches)

    assert padded(balanced) < 0.85 * padded(plain)
    assert max(len(b) * max(lengths[i] for i in b) for b in balanced) <= 4 * 256


def test_the_trainer_uses_it_with_the_recipes_seed(tmp_path):
    """Through SFTTrainer's loader: the recipe's seed decides the order (transformers' own sampler
    always uses 42), each epoch is reshuffled, and each step is the random order's rows."""
    rows = [{"input_ids": [3 + i] * (2 + (i * 7) % 23), "labels": [3 + i] * (2 + (i * 7) % 23)} for i in range(40)]
    dataset = datasets.Dataset.from_list([{**r, "length": len(r["input_ids"])} for r in rows])

    def loader(seed: int):
        config = SFTConfig(dataset="unused.jsonl", model_name="unused", output_dir=str(tmp_path / "out"),
                           batch_size=2, gradient_accumulation_steps=4, seed=seed, callbacks=[])
        trainer = SFTTrainer(model=tiny_model("llama", VOCAB), args=to_training_arguments(config, **QUIET),
                             train_dataset=dataset, data_collator=PaddingCollator(pad_token_id=0))
        return trainer.get_train_dataloader()

    def sampler(dl) -> StepBalancedSampler:
        return dl.batch_sampler if isinstance(dl.batch_sampler, StepBalancedSampler) else dl.batch_sampler.batch_sampler

    def epoch(dl, number: int) -> list[list[int]]:
        sampler(dl).set_epoch(number)  # as the Trainer reaches it
        return [[row[0] - 3 for row in batch["input_ids"].tolist()] for batch in dl]

    first = loader(7)
    order = sampler(first).order()
    e0, e1 = epoch(first, 0), epoch(first, 1)
    assert steps(e0, 4) == [sorted(order[s:s + 8]) for s in range(0, 40, 8)]
    assert e0 != e1 and sorted(sum(e1, [])) == list(range(40))
    assert epoch(loader(8), 0) != e0
    assert epoch(loader(7), 0) == e0


def test_a_resumed_later_epoch_keeps_its_own_order_on_several_processes():
    """On a resume the Trainer wraps the loader twice (accelerate's shard for each process, then its
    batch skipping); the epoch must still reach the sampler, or the rest of epoch 1 replays epoch 0's
    order (rows trained twice, others never)."""
    import torch
    from accelerate import skip_first_batches
    from accelerate.data_loader import prepare_data_loader
    from torch.utils.data import DataLoader

    lengths = [(i * 7) % 23 + 1 for i in range(64)]
    sampler = StepBalancedSampler(lengths, 2, 4, seed=3, world_size=2, rank=0)
    loader = prepare_data_loader(DataLoader(list(range(64)), batch_sampler=sampler, collate_fn=list),
                                 device=torch.device("cpu"), num_processes=2, process_index=0, put_on_device=False)
    loader.batch_sampler.num_processes, loader.batch_sampler.process_index = 1, 0  # as the Trainer neutralises it
    set_sampler_epoch(loader, 1)  # what the SamplerEpoch callback does before the Trainer skips
    resumed = list(skip_first_batches(loader, 8))
    reference = StepBalancedSampler(lengths, 2, 4, seed=3, world_size=2, rank=0)
    reference.set_epoch(1)
    assert sampler.epoch == 1 and resumed == list(reference)[8:]


def test_the_trainer_tells_the_sampler_its_epoch(tmp_path):
    """Through the public callback: at the start of epoch 3 (state.epoch is a float, 3.0 or 2.9999...)."""
    from sft_recipe.training.trainer import SamplerEpoch

    trainer = trainer_for(tmp_path, datasets.Dataset.from_list(
        [{"input_ids": [3] * n, "labels": [3] * n, "length": n} for n in range(2, 20)]))
    loader = trainer.get_train_dataloader()
    assert any(isinstance(c, SamplerEpoch) for c in trainer.callback_handler.callbacks)
    sampler = loader.batch_sampler if isinstance(loader.batch_sampler, StepBalancedSampler) \
        else loader.batch_sampler.batch_sampler
    for epoch in (3.0, 2.9999999999, 3.5):
        trainer.state.epoch = epoch
        trainer.callback_handler.train_dataloader = loader
        trainer.callback_handler.on_epoch_begin(trainer.args, trainer.state, trainer.control)
        assert sampler.epoch == 3


@pytest.mark.parametrize("overrides", [dict(dataloader_drop_last=True),
                                       dict(accelerator_config={"dispatch_batches": True})],
                         ids=["drop_last", "dispatched-batches"])
def test_where_steps_do_not_fit_the_trainers_random_sampler_is_kept(tmp_path, overrides):
    """`dataloader_drop_last` would drop a whole short step, and dispatched batches are cut by the main
    process: both keep the Trainer's random sampler."""
    from torch.utils.data import RandomSampler

    dataset = datasets.Dataset.from_list([{"input_ids": [3] * n, "labels": [3] * n, "length": n} for n in range(2, 9)])
    trainer = trainer_for(tmp_path, dataset, **overrides)
    assert isinstance(trainer._get_train_sampler(), RandomSampler)


def trainer_for(tmp_path, dataset, **overrides) -> SFTTrainer:
    config = SFTConfig(dataset="unused.jsonl", model_name="unused", output_dir=str(tmp_path / "out"),
                       batch_size=2, gradient_accumulation_steps=2, callbacks=[])
    return SFTTrainer(model=tiny_model("llama", VOCAB), args=to_training_arguments(config, **QUIET, **overrides),
                      train_dataset=dataset, data_collator=PaddingCollator(pad_token_id=0))
