"""The memory plan: predictions from short probes hold at 4x their length; budgets choose settings
that keep the effective batch; `plan` prints its parts and two lines scripts can read."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from conftest import alpaca_rows, base_recipe, write_jsonl, write_recipe
from transformers import AutoConfig

from sft_recipe.cli import main
from sft_recipe.errors import UserError
from sft_recipe.recipe.config import SFTConfig
from sft_recipe.training.live_bytes import LiveBytes
from sft_recipe.training.memory_budget import parse_size, recipe_settings
from sft_recipe.training import memory_probes
from sft_recipe.training.memory_plan import NF4_BYTES, candidates, choose, parameter_bytes, predict
from sft_recipe.training.memory_probes import (PACKED, PADDED, PROBE_CHUNKS, ROWS, Probes, Settings, at, fit, measure,
                                               probe_inputs, probe_lengths, probe_model)
from sft_recipe.training.planned_rows import PlannedRows, shape_of

ARCHITECTURES = {  # two kinds: GQA with a gated MLP and RoPE, and learned positions with a fused GELU MLP
    "llama": dict(hidden_size=64, intermediate_size=192, num_attention_heads=4, num_key_value_heads=2),
    "gpt2": dict(n_embd=64, n_head=4, n_positions=4096),
}


def test_live_bytes_counts_what_is_alive_and_the_peak():
    with LiveBytes() as live:
        a = torch.empty(1024, 256)  # 1 MiB
        b = torch.empty(1024, 256)
        del b
        c = a.view(256, 1024)  # a view: no new storage
    assert live.peak == 2 * 2**20 and live.now == 2**20 and c.shape == (256, 1024)


def test_golden_fit_is_flat_then_rising_and_never_negative():  # noqa: D103
    """Short rows: the end of backward (all gradients) holds the peak, flat; then activations rise."""
    lengths = [64, 128, 256, 384, 512]
    floor, c, a, b = fit(lengths, [5_000_000, 5_000_000, 7_000_000, 9_000_000, 11_000_000])  # flat, then linear
    assert (floor, round(a), round(b, 9)) == (5_000_000, 15_625, 0.0)
    assert at((floor, c, a, b), 1536) == pytest.approx(7_000_000 + 15_625 * 1280)
    assert at((floor, c, a, b), 64, batch=1) == 5_000_000
    assert fit(lengths, [10**6 + 3 * n * n for n in lengths])[3] == pytest.approx(3)  # attention's square
    assert fit(lengths, [500, 480, 470, 465, 462]) == (500.0, 0.0, 0.0, 0.0)  # falling noise: flat, at its top


@pytest.mark.parametrize("model_type", sorted(ARCHITECTURES))
def test_prediction_holds_at_four_times_the_longest_probe(model_type):
    """Tensor bytes of a whole 6-layer step at 2 x 2048 tokens (4x the longest probe) against the
    fit from 1- and 2-layer probes; activations and the loss head are most of the peak there."""
    torch.manual_seed(0)
    config = AutoConfig.for_model(model_type, vocab_size=3000, num_hidden_layers=6, max_position_embeddings=4096,
                                  **ARCHITECTURES[model_type])
    recipe = SFTConfig(dataset="x.jsonl", model_name="x", max_length=2048, callbacks=[])
    settings = Settings(batch_size=2, accumulation=1, loss_chunk_size=64)
    assert 2048 >= 4 * 64 * max(PROBE_CHUNKS)
    curves = Probes(config, recipe)(settings, True, 2)
    predicted = 6 * at(curves["layer"], 2048, 2) + at(curves["rest"], 2048, 2)
    whole = probe_model(config, 6, recipe, settings)
    measured = measure(whole, 2048, 2, 64, True, PADDED)  # two rows: padded, as the collator gives them
    weights = sum(p.numel() * p.element_size() for p in whole.parameters())
    assert measured > 2 * weights  # the activations, not the fixed cost, carry the match
    assert abs(predicted / measured - 1) < 0.10, (predicted, measured)


def test_loss_chunk_size_0_is_planned_as_the_models_own_loss_with_its_whole_logits():
    """0 means the model's own loss (every position's logits at once), not the default chunk."""
    config = AutoConfig.for_model("llama", vocab_size=3000, num_hidden_layers=2, **ARCHITECTURES["llama"])
    recipe = SFTConfig(dataset="x.jsonl", model_name="x", max_length=512, callbacks=[], loss_chunk_size=0)
    assert recipe_settings(recipe, 3000).loss_chunk_size == 0
    probes = Probes(config, recipe)
    own, chunked = (at(probes(Settings(1, 1, chunk), True, 1)["rest"], 512) for chunk in (0, 64))
    assert own > chunked + 512 * 3000 * 4  # at least the whole row's fp32 logits more


def test_golden_probe_rows_are_laid_out_as_the_collator_lays_them_out():
    padded, packed, whole = (probe_inputs(50, 4, 1, layout) for layout in (PADDED, PACKED, ROWS))
    assert padded["attention_mask"].tolist() == [[1, 1, 1, 0]] and padded["labels"][0, -1] == -100
    assert packed["position_ids"].tolist() == [[0, 1, 0, 1]] and "attention_mask" not in packed
    assert packed["labels"][0, 2] == -100 and whole["attention_mask"].tolist() == [[1, 1, 1, 1]]


def test_golden_probe_rows_train_their_last_tokens_as_the_prepared_rows_do():
    rows = PlannedRows(longest=1000, trainable_share=0.05, source="x")
    assert rows.trainable(1000, 16) == 50 and rows.trainable(100, 16) == 16 and rows.trainable(8, 16) == 8
    inputs = probe_inputs(50, 6, 1, ROWS, trainable=2)
    assert inputs["labels"][0, :4].tolist() == [-100] * 4 and (inputs["labels"][0, 4:] >= 0).all()


def test_golden_shape_of_prepared_rows_is_their_longest_row_and_largest_trainable_share():
    import datasets

    from sft_recipe.data.prepared import PreparedData

    train = datasets.Dataset.from_dict({"labels": [[-100, -100, 5, 6], [-100, 7], [-100, -100, -100, -100, -100, 8]]})
    data = PreparedData(train.select([0, 1]), datasets.Dataset.from_dict({"labels": [[-100, 1, 2]]}), None, {})
    assert shape_of(data, "s") == PlannedRows(4, 2 / 3, "s")  # row 2 is not among the selected rows


def test_planning_for_prepared_rows_holds_for_a_long_prompt_and_a_short_answer():
    """Rows of a long prompt and a 5% answer: the plan for them (probes of up to 512 tokens, the
    last 5% trained) against a measured 2,048-token step of such a row, and below the worst case."""
    config = AutoConfig.for_model("llama", vocab_size=3000, num_hidden_layers=4, max_position_embeddings=4096,
                                  **ARCHITECTURES["llama"])
    recipe = SFTConfig(dataset="x.jsonl", model_name="x", max_length=2048, callbacks=[])
    settings, rows = Settings(1, 1, 64), PlannedRows(2048, 0.05, "test rows")
    found = Probes(config, recipe, rows=rows)(settings, True, 1)
    predicted = 4 * at(found["layer"], 2048) + at(found["rest"], 2048)
    measured = measure(probe_model(config, 4, recipe, settings), 2048, 1, 64, True, ROWS, None, 103)
    assert abs(predicted / measured - 1) < 0.10, (predicted, measured)
    worst = Probes(config, recipe)(settings, True, 1)
    assert predicted < 4 * at(worst["layer"], 2048) + at(worst["rest"], 2048)


def test_a_packed_micro_batch_is_one_row_of_all_its_tokens():
    """Packing two 1,024-token rows is one 2,048-token row to attention (its mask is of the whole
    row under SDPA): predicted from probes of up to 512 tokens, against a measured packed step."""
    config = AutoConfig.for_model("llama", vocab_size=3000, num_hidden_layers=4, max_position_embeddings=4096,
                                  **ARCHITECTURES["llama"])
    recipe = SFTConfig(dataset="x.jsonl", model_name="x", max_length=1024, callbacks=[], packing=True)
    probes, settings = Probes(config, recipe), Settings(batch_size=2, accumulation=1, loss_chunk_size=64)
    assert probes.shape(2) == (1, 2048) and probes.layout(2) == PACKED
    curves = probes(settings, True, 2)
    predicted = 4 * at(curves["layer"], 2048) + at(curves["rest"], 2048)
    measured = measure(probe_model(config, 4, recipe, settings), 2048, 1, 64, True, PACKED)
    assert abs(predicted / measured - 1) < 0.10, (predicted, measured)


def test_golden_probe_lengths():
    """A unit of a loss chunk or a 32nd of max_length, 1 to 8 of them; none past max_length where
    three reach it; past a sliding window shorter than the rows."""
    llama = AutoConfig.for_model("llama", **ARCHITECTURES["llama"])
    assert probe_lengths(llama, 64, 2048) == [64, 128, 256, 384, 512]
    assert probe_lengths(llama, 64, 40960) == [1280, 2560, 5120, 7680, 10240]  # a 32nd, in whole chunks
    assert probe_lengths(llama, 256, 1024) == [256, 512, 1024]
    assert probe_lengths(llama, 256, 512) == [256, 512, 1024, 1536, 2048]  # fewer than three within: all
    assert probe_lengths(llama, 0, 2048) == [64, 128, 256, 384, 512]  # the model's own loss: no chunk
    windowed = AutoConfig.for_model("mistral", sliding_window=256, **ARCHITECTURES["llama"])
    assert probe_lengths(windowed, 64, 3072) == [384, 512, 768, 1024, 1280]  # a unit of 96, in chunks: 128


def test_candidates_keep_the_effective_batch_fastest_first():
    options = candidates(12, 256)
    assert all(s.batch_size * s.accumulation == 12 for s in options)
    assert options[0] == Settings(12, 1, 256) and options[-1].gradient_checkpointing and options[-1].mlp_tile_tokens


@pytest.mark.parametrize("text,expected", [("6GiB", 6 * 2**30), ("6000 MB", 6 * 10**9), ("512mib", 2**29),
                                           ("1048576", 2**20)])
def test_sizes(text, expected):
    assert parse_size(text, "k") == expected


def test_a_bad_size_is_one_line():
    with pytest.raises(UserError, match="memory_budget: expected a size such as 6GiB"):
        parse_size("lots", "memory_budget")


def test_plan_prints_the_parts_and_two_lines_for_scripts(tmp_path, bpe_tokenizer_dir, capsys):
    recipe = base_recipe(tmp_path, write_jsonl(tmp_path / "d.jsonl", alpaca_rows(20)), bpe_tokenizer_dir)
    assert main(["plan", str(write_recipe(tmp_path / "r.yaml", recipe))]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-2].startswith("predicted peak, training: ") and lines[-2].endswith(" MiB")
    assert lines[-1].startswith("predicted peak, evaluation: ")
    assert any("optimizer state (AdamW)" in line for line in lines) and any("per layer" in line for line in lines)
    assert main(["plan", str(tmp_path / "r.yaml"), "--memory", "1MiB"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "nothing fits" in err and "MiB" in err
    assert main(["plan", str(tmp_path / "r.yaml"), "--shards", "0"]) == 2
    assert "--shards" in capsys.readouterr().err


def test_a_budget_run_chooses_settings_keeps_the_effective_batch_and_resumes_with_them(tmp_path, bpe_tokenizer_dir,
                                                                                      capfd):
    data = write_jsonl(tmp_path / "d.jsonl", alpaca_rows(64))
    recipe = base_recipe(tmp_path, data, bpe_tokenizer_dir, batch_size="auto", effective_batch_size=8,
                         memory_budget="4GiB", max_steps=3, eval_steps=3, save_steps=3)
    path = write_recipe(tmp_path / "r.yaml", recipe)
    assert main(["train", str(path)]) == 0
    chosen = json.loads((tmp_path / "out" / "memory_plan.json").read_text())["settings"]
    assert chosen["batch_size"] * chosen["accumulation"] == 8
    out = "".join(capfd.readouterr())
    assert "memory plan: batch_size" in out and "predicted peak" in out and "peak after step 2" in out
    assert "the longest micro-batch of the prepared rows (data cache)" in out  # prepared first, then planned
    assert main(["plan", str(path)]) == 0  # reads the cache the run left, tokenizes nothing
    assert "the longest micro-batch of the prepared rows (data cache)" in "".join(capfd.readouterr())
    longer = dict(recipe, max_steps=6, eval_steps=3, save_steps=3, memory_budget="5GiB")
    assert main(["train", str(write_recipe(tmp_path / "r2.yaml", longer))]) == 0
    assert "resuming with" in "".join(capfd.readouterr())  # the same choice, not a new plan


def test_an_out_of_memory_error_names_plan(tmp_path, bpe_tokenizer_dir, capsys, monkeypatch):
    from sft_recipe.training.trainer import SFTTrainer

    def out_of_memory(self, *args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(SFTTrainer, "training_step", out_of_memory)
    recipe = base_recipe(tmp_path, write_jsonl(tmp_path / "d.jsonl", alpaca_rows(20)), bpe_tokenizer_dir)
    assert main(["train", str(write_recipe(tmp_path / "r.yaml", recipe))]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "out of memory during training" in err and "sft-recipe plan" in err


FSDP_WORKER = '''
import json, sys, torch, torch.distributed as dist
from torch.distributed.fsdp import fully_shard
from transformers import AutoConfig, AutoModelForCausalLM

def run(rank, folder):
    dist.init_process_group("gloo", init_method=f"file://{folder}/store", rank=rank, world_size=2)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model("llama", **json.load(open(f"{folder}/config.json"))))
    for layer in model.model.layers:
        fully_shard(layer)
    fully_shard(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    ids = torch.randint(0, 1000, (1, 32))
    model(input_ids=ids, labels=ids).loss.backward()
    optimizer.step()
    local = lambda t: t.to_local() if hasattr(t, "to_local") else t
    held = {"weights": sum(local(p).numel() * p.element_size() for p in model.parameters()),
            "optimizer": sum(local(v).numel() * v.element_size() for s in optimizer.state.values()
                             for k, v in s.items() if k != "step")}
    json.dump(held, open(f"{folder}/rank{rank}.json", "w"))
    dist.destroy_process_group()

if __name__ == "__main__":
    torch.multiprocessing.spawn(run, args=(sys.argv[1],), nprocs=2)
'''


@pytest.mark.slow
def test_sharded_terms_halve_per_device_as_fsdp2_holds_them_on_two_gloo_processes(tmp_path):
    """The modelled part under FSDP: each process keeps 1/N of the weights and of AdamW's state."""
    shape = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=1000)
    (tmp_path / "config.json").write_text(json.dumps(shape))
    (tmp_path / "worker.py").write_text(FSDP_WORKER)
    done = subprocess.run([sys.executable, str(tmp_path / "worker.py"), str(tmp_path)], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    held = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    config = AutoConfig.for_model("llama", **shape)
    recipe = SFTConfig(dataset="x.jsonl", model_name="x", max_length=256, callbacks=[], eval_fraction=0)
    weights = parameter_bytes(config, recipe)
    whole = predict(Probes(config, recipe, shards=1), Settings(1, 1, 64), 0, 1, weights)
    sharded = predict(Probes(config, recipe, shards=2), Settings(1, 1, 64), 0, 1, weights)
    assert sharded.parts["optimizer state (AdamW)"] == whole.parts["optimizer state (AdamW)"] // 2
    for rank in held:
        assert rank["weights"] == pytest.approx(weights.total / 2, rel=0.02)
        assert rank["optimizer"] == pytest.approx(sharded.parts["optimizer state (AdamW)"], rel=0.02)
        assert sharded.parts["weights"] == weights.total // 2 + 2 * weights.layer  # its share, 2 layers gathered


def test_budget_screens_on_short_rows_and_a_run_without_evaluation_is_not_probed_for_it(monkeypatch):
    """Choosing at long rows probes in full only what short probes do not already rule out; the
    leanest candidate is always probed in full; evaluation is probed only when the run evaluates."""
    config = AutoConfig.for_model("llama", vocab_size=500, num_hidden_layers=2, max_position_embeddings=8192,
                                  **ARCHITECTURES["llama"])
    recipe = SFTConfig(dataset="x.jsonl", model_name="x", max_length=8192, callbacks=[], eval_fraction=0)
    probes, seen = Probes(config, recipe), []
    def measure(model, length, batch, chunk, train, *rest):
        seen.append((length, train))
        return 10**6

    monkeypatch.setattr(memory_probes, "measure", measure)
    with pytest.raises(UserError, match="nothing fits"):
        choose(probes, 1, effective_batch=2, default_chunk=128, process_bytes=0, eval_batch=2)
    assert not any(not train for _, train in seen)  # no evaluation pass probed
    full = {length for length, _ in seen if length > 512}
    assert full == {256 * k for k in PROBE_CHUNKS if 256 * k > 512}  # only the leanest, in full (a 32nd of 8192)
    assert len([s for s in seen if s[0] > 512]) == 2 * len(full)  # one setting: its 1- and 2-layer copies


def test_mixed_precision_is_probed_under_autocast_and_holds_at_four_times_the_probes():
    """bf16 autocast keeps activations in half precision: the plan measures them so, and its
    prediction matches a whole bf16 step at 4x the longest probe."""
    config = AutoConfig.for_model("llama", vocab_size=3000, num_hidden_layers=4, max_position_embeddings=4096,
                                  **ARCHITECTURES["llama"])
    settings = Settings(batch_size=1, accumulation=1, loss_chunk_size=64)
    curves = {}
    for precision in ("fp32", "bf16"):
        recipe = SFTConfig(dataset="x.jsonl", model_name="x", max_length=2048, callbacks=[], precision=precision)
        found = Probes(config, recipe)(settings, True, 1)
        curves[precision] = 4 * at(found["layer"], 2048) + at(found["rest"], 2048)
    measured = measure(probe_model(config, 4, recipe, settings), 2048, 1, 64, True, ROWS, torch.bfloat16)
    assert abs(curves["bf16"] / measured - 1) < 0.10, (curves["bf16"], measured)
    assert curves["bf16"] < 0.8 * curves["fp32"]


def test_golden_qlora_counts_frozen_linear_weights_at_four_bits():
    """QLoRA stores every frozen linear weight but the head as NF4 (0.5 byte + block scales)."""
    pytest.importorskip("peft")
    config = AutoConfig.for_model("llama", vocab_size=1000, num_hidden_layers=3, **ARCHITECTURES["llama"])
    plain, four_bit = (parameter_bytes(config, SFTConfig(dataset="x.jsonl", model_name="x", callbacks=[],
                                                         precision="fp32", lora={"load_in_4bit": flag}))
                       for flag in (False, True))
    linear = 64 * 64 + 2 * 64 * 32 + 64 * 64 + 3 * 64 * 192  # q, k, v, o, gate, up, down: 49,152 a layer
    assert plain.total - four_bit.total == pytest.approx(3 * linear * (4 - NF4_BYTES), abs=3)
    assert plain.trainable == four_bit.trainable > 0  # the adapters, unchanged


def test_fsdp_and_zero3_launches_share_the_weights_among_their_processes(monkeypatch):
    from sft_recipe.training import memory_budget

    class State:
        num_processes = 4

    monkeypatch.setattr(memory_budget, "PartialState", State)
    monkeypatch.delenv("ACCELERATE_USE_FSDP", raising=False)
    monkeypatch.delenv("ACCELERATE_DEEPSPEED_ZERO_STAGE", raising=False)
    assert memory_budget.sharding_processes() == 1  # DDP: a whole copy on every device
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_ZERO_STAGE", "2")
    assert memory_budget.sharding_processes() == 1  # ZeRO-2 keeps whole weights
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_ZERO_STAGE", "3")
    assert memory_budget.sharding_processes() == 4
    monkeypatch.delenv("ACCELERATE_DEEPSPEED_ZERO_STAGE")
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    assert memory_budget.sharding_processes() == 4
