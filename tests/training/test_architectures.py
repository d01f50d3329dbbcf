"""Every kind of architecture: one meaning for eval_loss, the fast loss only where it is exact,
packing exact or refused, the MoE router loss as the model adds it (zoo in tests/zoo.py)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from zoo import ZOO, build

from sft_recipe.data.collate import PackingCollator, PaddingCollator
from sft_recipe.data.mask import IGNORE_INDEX
from sft_recipe.errors import UserError
from sft_recipe.model.architecture import check_packing, packing_leak
from sft_recipe.recipe.config import SFTConfig
from sft_recipe.training.arguments import to_training_arguments
from sft_recipe.training.loss import OWN
from sft_recipe.training.trainer import SFTTrainer

VOCAB = 256
QUIET = dict(report_to="none", disable_tqdm=True, eval_strategy="no", save_strategy="no", load_best_model_at_end=False)


def rows(n: int = 6, seed: int = 1) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        length, prompt = 7 + 3 * i, 2 + i
        ids = torch.randint(3, VOCAB, (length,), generator=g).tolist()
        out.append({"input_ids": ids, "labels": [IGNORE_INDEX] * prompt + ids[prompt:]})
    return out


def evaluator(model, tmp_path, collator, batch_size: int = 4, chunk: int = 16) -> SFTTrainer:
    config = SFTConfig(dataset="unused.jsonl", model_name="unused", output_dir=str(tmp_path / "out"), callbacks=[])
    args = to_training_arguments(config, per_device_eval_batch_size=batch_size, **QUIET)
    trainer = SFTTrainer(model=model, args=args, loss_chunk_size=chunk, data_collator=collator)
    trainer.verify_loss(rows())
    return trainer


def reference(model, data: list[dict]) -> tuple[float, float]:
    """Token-mean cross-entropy and accuracy of the model's own logits, one row at a time."""
    total, correct, count = 0.0, 0, 0
    with torch.no_grad():
        for row in data:
            logits = model(input_ids=torch.tensor([row["input_ids"]])).logits[0, :-1].float()
            targets = torch.tensor(row["labels"][1:])
            keep = targets != IGNORE_INDEX
            total += float(F.cross_entropy(logits[keep], targets[keep], reduction="sum"))
            correct += int((logits[keep].argmax(-1) == targets[keep]).sum())
            count += int(keep.sum())
    return total / count, correct / count


@pytest.mark.parametrize("kind", sorted(ZOO))
def test_eval_loss_is_the_token_mean_of_the_models_own_logits_at_any_batch_size(kind, tmp_path):
    model_type, kwargs, _ = ZOO[kind]
    model = build(model_type, kwargs, VOCAB).eval()
    loss, accuracy = reference(model, rows())
    for batch_size in (1, 4):
        metrics = evaluator(model, tmp_path, PaddingCollator(0), batch_size).evaluate(rows())
        assert metrics["eval_loss"] == pytest.approx(loss, rel=1e-4), (kind, batch_size)
        assert metrics["eval_token_accuracy"] == pytest.approx(accuracy), (kind, batch_size)


@pytest.mark.parametrize("kind", sorted(ZOO))
def test_the_fast_loss_is_used_only_where_it_equals_the_models_own(kind, tmp_path):
    """Soft-capping, logit scaling and multipliers are found by comparing on a real batch."""
    model_type, kwargs, _ = ZOO[kind]
    model = build(model_type, kwargs, VOCAB)
    trainer = evaluator(model, tmp_path, PaddingCollator(0))
    transforms_logits = model_type in ("gemma2", "cohere", "granite")
    assert (trainer.loss_path.kind == OWN) == transforms_logits, trainer.loss_path.reason
    if not trainer.loss_path.own:  # and where it is used, training loss and gradients match too
        batch = PaddingCollator(0)(rows())
        model.eval()  # no dropout: the same forward both ways
        expected = model(**batch).loss
        ours = trainer.compute_loss(model, batch)
        torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-5)


def test_a_head_nobody_listed_is_caught_by_the_check(tmp_path):
    """A model whose logits are scaled after the head (no config key says so) keeps its own loss."""
    model = build("llama", ZOO["untied head (llama)"][1], VOCAB)
    model.lm_head.register_forward_hook(lambda _m, _i, out: out * 0.5)
    trainer = evaluator(model, tmp_path, PaddingCollator(0))
    assert trainer.loss_path.own and "differs from LlamaForCausalLM's own logits" in trainer.loss_path.reason
    assert trainer.evaluate(rows())["eval_loss"] == pytest.approx(reference(model.eval(), rows())[0], rel=1e-4)


@pytest.mark.parametrize("kind", sorted(ZOO))
def test_packed_equals_padded_or_packing_is_refused_in_one_line(kind, tmp_path):
    model_type, kwargs, exact = ZOO[kind]
    model = build(model_type, kwargs, VOCAB).eval()
    if not exact:
        with pytest.raises(UserError) as err:
            check_packing(model, PackingCollator(), VOCAB)
        message = str(err.value)
        assert message.startswith(f"packing: {model_type} lets packed rows see each other") and "\n" not in message
        return
    check_packing(model, PackingCollator(), VOCAB)
    padded = evaluator(model, tmp_path, PaddingCollator(0)).evaluate(rows())["eval_loss"]
    packed = evaluator(model, tmp_path, PackingCollator()).evaluate(rows())["eval_loss"]
    assert packed == pytest.approx(padded, rel=1e-5)
    assert packing_leak(model, PackingCollator(), VOCAB) < 1e-5


def test_moe_router_loss_is_in_the_training_loss_as_the_model_adds_it(tmp_path):
    model_type, kwargs, _ = ZOO["MoE (mixtral)"]
    model = build(model_type, dict(kwargs, output_router_logits=True, router_aux_loss_coef=0.5), VOCAB).train()
    trainer = evaluator(model, tmp_path, PaddingCollator(0))
    assert not trainer.loss_path.own
    batch = PaddingCollator(0)(rows())
    expected = model(**batch)
    assert float(expected.aux_loss) > 0
    ours = trainer.compute_loss(model, batch)
    torch.testing.assert_close(ours, expected.loss, rtol=1e-5, atol=1e-5)
    assert trainer.aux_losses and float(trainer.aux_losses[0]) == pytest.approx(0.5 * float(expected.aux_loss))
    logs = {"loss": 1.0}
    trainer.log(logs)
    assert logs["aux_loss"] == pytest.approx(0.5 * float(expected.aux_loss), rel=1e-5)


def test_a_router_coefficient_we_do_not_know_falls_back_to_the_models_own_loss(tmp_path):
    """DBRX names its router coefficient ffn_config.moe_loss_weight: the check sees the sums differ."""
    model_type, kwargs, _ = ZOO["MoE (mixtral)"]
    model = build(model_type, dict(kwargs, output_router_logits=True, router_aux_loss_coef=0.5), VOCAB)
    model.config.router_aux_loss_coef = 0.0  # what we would read; the model itself keeps its 0.5
    model.router_aux_loss_coef = 0.5
    trainer = evaluator(model, tmp_path, PaddingCollator(0))
    assert trainer.loss_path.own, trainer.loss_path.reason
