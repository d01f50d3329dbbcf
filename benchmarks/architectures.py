"""Every causal-LM architecture of the installed transformers, through the recipe's own checks.

    HF_HUB_OFFLINE=1 python benchmarks/architectures.py [--only llama,mamba] [--markdown FILE]

Why: the recipe promises the same for any model: `eval_loss` is the mean next-token cross-entropy over
trainable tokens whichever loss path runs (the chunked fast loss or the model's own), packing is exact
or refused in one line (`check_packing`), training optimises that same loss, `generate` works. Unit
tests see a handful of models; this builds every type in `MODEL_FOR_CAUSAL_LM_MAPPING_NAMES` as a tiny
random fp32 model (width 64, a layer per distinct layer kind, 256-token vocabulary) and checks each on
the CPU, all in under a minute: default configs shrunk by generic key rules, plus overrides where they
break.
Skipped by rule: encoder-decoder configs (the causal class is a seq2seq decoder half) and models not
causal as configured (a later token moves earlier logits: BERT-family encoders without
`is_decoder=True`, XLNet, CPM-Ant's bidirectional context).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import inspect
import io
import json
import logging
import math
import re
import signal
import sys
import tempfile
import warnings
from collections.abc import Callable
from itertools import pairwise
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import transformers
from transformers import AutoConfig, AutoModelForCausalLM
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

from sft_recipe.data.collate import PackingCollator, PaddingCollator
from sft_recipe.errors import UserError
from sft_recipe.model.architecture import check_packing, stateful_layers
from sft_recipe.recipe.config import SFTConfig
from sft_recipe.training.arguments import to_training_arguments
from sft_recipe.training.trainer import SFTTrainer

VOCAB, EVAL_TOLERANCE, PACK_TOLERANCE, TIMEOUT_S = 256, 1e-4, 1e-5, 120
SIZES = {  # generic shrinking: value -> the config keys it replaces (numbers only, keys the config has)
    64: "hidden_size d_model n_embd embedding_dim emb_dim dim word_embed_proj_dim embedding_size lru_width "
        "input_embedding_size output_embedding_size hidden_size_global",
    2: "num_hidden_layers n_layer n_layers num_layers decoder_layers encoder_layers num_decoder_layers "
       "num_encoder_layers num_key_value_heads num_kv_heads swa_num_key_value_heads num_experts_per_tok moe_topk "
       "num_experts_per_token moe_k zero_expert_num index_n_heads linear_num_key_heads o_groups",
    4: "num_attention_heads n_head n_heads num_heads decoder_attention_heads encoder_attention_heads "
       "attention_heads num_decoder_attention_heads num_encoder_attention_heads swa_num_attention_heads "
       "num_experts n_routed_experts num_local_experts moe_num_experts linear_num_value_heads linear_num_heads",
    16: "head_dim kv_channels attention_head_dim d_head d_kv dim_head attention_head_size swa_head_dim kv_lora_rank "
        "v_head_dim qk_head_dim index_head_dim o_lora_rank linear_key_head_dim linear_value_head_dim "
        "linear_head_dim mamba_d_head mamba_head_dim mamba_headdim chunk_size mamba_chunk_size "
        "hidden_size_per_layer_input query_pre_attn_scalar",
    128: "intermediate_size ffn_dim decoder_ffn_dim encoder_ffn_dim d_ff dff d_inner dim_ff ffn_hidden_size "
         "feed_forward_size intermediate_size_mlp dense_intermediate_size mamba_d_ssm",
    32: "moe_intermediate_size shared_expert_intermediate_size moe_shared_expert_intermediate_size q_lora_rank "
        "expert_ffn_hidden_size shared_intermediate_size shared_experts_intermediate_size",
    8: "qk_rope_head_dim qk_nope_head_dim index_topk mamba_d_state ssm_state_size state_size d_state mamba_n_heads "
       "mamba_num_heads n_mamba_heads time_step_rank mamba_dt_rank sliding_window attention_window_size "
       "sliding_window_size laurel_rank rotary_dim",
    1: "n_group topk_group n_shared_experts num_expert_group n_groups mamba_n_groups mamba_ngroups max_window_layers",
    VOCAB: "max_position_embeddings n_positions n_ctx max_seq_len context_length max_target_positions model_max_length "
           "original_max_position_embeddings vocab_size unpadded_vocab_size vocab_size_per_layer_input",
}
GENERIC = {key: value for value, keys in SIZES.items() for key in keys.split()}
FILL_NONE = set("head_dim num_key_value_heads n_routed_experts num_experts_per_tok n_shared_experts n_group "
                "topk_group num_experts moe_intermediate_size".split())  # also set where the default is None
TOKEN_IDS = {"pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2}
LAYER_COUNTS = ("num_hidden_layers", "n_layer", "n_layers", "num_layers", "decoder_layers")
INDEX_LISTS = set("full_attn_idxs moe_layers hybrid_layer_ids mlp_only_layers ple_layer_ids cross_attention_layers "
                  "attn_layer_indices global_attn_indexes swa_layers attention_layers_idx".split())
NOT_PER_LAYER = set("time_step_limit architectures eos_token_id begin_suppress_tokens suppress_tokens "
                    "mlp_multipliers ssm_multipliers bad_words_ids".split())
DROP = object()  # an override value that removes a generic kwarg
_QWEN4 = {"indexer_n_heads": 2, "indexer_kv_heads": 1, "indexer_head_dim": 16, "indexer_budget": 8,
          "indexer_compress_ratio": 4, "hc_lowrank": 8, "ple_embed_dim": 16, "ngram_vocab_size_base": 1000,
          "split_ngram_parts": 1}
_ROPE = {"rope_type": "default", "rope_theta": 10000.0}
_SLIDING_FULL = ["sliding_attention", "full_attention"]
OVERRIDES: dict[str, dict[str, Any]] = {  # where the shrunk defaults do not build, or hide a layer kind
    "dbrx": {"attn_config": {"rope_theta": 500000.0, "clip_qkv": 8.0}, "num_key_value_heads": DROP},
    "mamba2": {"num_heads": 8}, "xlstm": {"qk_dim_factor": 1.0}, "blt": {"encoder_hash_byte_group_vocab": 1000},
    "qwen4_exp_text": _QWEN4, "qwen4_exp": {"text_config": _QWEN4}, "bamba": {"attn_layer_indices": [1]},
    "dory": {"num_hidden_layers": 4, "n_input_layers": 1, "n_recurrent_layers": 2, "n_output_layers": 1,
             "layer_types": _SLIDING_FULL * 2},
    "zaya": {"num_experts_per_tok": 1, "layer_types": ["hybrid", "hybrid_sliding"], "sliding_window": 8},
    "granitemoehybrid": {"layer_types": ["linear_attention", "full_attention"]},
    "jamba": {"attn_layer_period": 2, "attn_layer_offset": 1, "expert_layer_period": 2, "expert_layer_offset": 1},
    "recurrent_gemma": {"num_hidden_layers": 3, "block_types": ["recurrent", "recurrent", "attention"]},
    "cohere_compass_text": {"layer_types": _SLIDING_FULL, "rope_parameters": dict.fromkeys(_SLIDING_FULL, _ROPE)},
    "gemma3n_text": {"num_hidden_layers": 4, "num_kv_shared_layers": 2, "layer_types": _SLIDING_FULL * 2,
                     "activation_sparsity_pattern": [0.95, 0.95, 0.0, 0.0]},
    "zamba": {"num_hidden_layers": 3, "layers_block_type": ["linear_attention", "hybrid", "hybrid"]},
    "dots3_note": {"vision_config": {"adapter_in_dim": 64, "adapter_out_dim": 64},
                   "audio_config": {"adapter_input_size": 64, "adapter_out_dim": 64}},
    "lfm2": {"layer_types": ["conv", "full_attention"], "full_attn_idxs": [1]},
    "lfm2_moe": {"num_hidden_layers": 3, "num_dense_layers": 1, "layer_types": ["conv", "full_attention", "conv"]},
}
PRE = {"gemma4_assistant": {"text_config": {"model_type": "gemma4_text", "hidden_size_per_layer_input": 0,
                                            "vocab_size_per_layer_input": 0}}}  # its default config does not validate


def _index_list(key: str, v: Any, layers: int) -> bool:
    """A list of layer indices (`moe_layers`), as opposed to one entry per layer."""
    if not (isinstance(v, list) and v and all(type(x) is int for x in v)):
        return False
    return key in INDEX_LISTS or (bool(re.search(r"(idx|idxs|ids|indices|indexes|_layers)$", key))
                                  and all(0 <= x < layers for x in v) and all(b > a for a, b in pairwise(v))
                                  and not (len(v) == layers and set(v) <= {0, 1}))


def shrink(config: Any) -> dict[str, Any]:
    """kwargs that shrink `config` (a config or a dict; sub-configs recurse)."""
    d = dict(config) if isinstance(config, dict) else {k: v for k, v in vars(config).items() if not k.startswith("_")}
    kw: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, transformers.PretrainedConfig) or (isinstance(v, dict) and "model_type" in v):
            if sub := shrink(v):
                mt = v["model_type"] if isinstance(v, dict) else v.model_type
                kw[k] = {"model_type": mt, **sub} if mt else sub
        elif isinstance(v, dict) and v and k != "rope_parameters" and all(isinstance(x, dict) for x in v.values()):
            if any(shrink(x) for x in v.values()):  # e.g. {layer_type: {sizes}}
                kw[k] = {kk: {**vv, **shrink(vv)} for kk, vv in v.items()}
        elif k in GENERIC and (type(v) in (int, float) or (v is None and k in FILL_NONE)):
            kw[k] = GENERIC[k]
        elif k in TOKEN_IDS and (type(v) is int or (isinstance(v, list) and "vocab_size" in d)):
            kw[k] = TOKEN_IDS[k] if type(v) is int else [TOKEN_IDS[k]]
    for heads, kv in (("num_attention_heads", "num_key_value_heads"), ("n_head", "num_kv_heads"),
                      ("swa_num_attention_heads", "swa_num_key_value_heads")):
        if d.get(heads) is not None and d.get(kv) == d.get(heads) and kv in kw:  # MHA (and MLA) models stay so
            kw[kv] = kw.get(heads, d[heads])
    if isinstance(d.get("qk_rope_head_dim"), int):  # MLA: keep the default's head-dim identities
        if d.get("head_dim") == d["qk_rope_head_dim"]:
            kw["head_dim"] = kw["qk_rope_head_dim"]
        if d.get("qk_head_dim") == (d.get("qk_nope_head_dim") or 0) + d["qk_rope_head_dim"]:
            kw["qk_head_dim"] = kw["qk_nope_head_dim"] + kw["qk_rope_head_dim"]
    if key := next((k for k in LAYER_COUNTS if type(d.get(k)) is int), None):
        layers = d[key]  # per-layer lists: the first layer of each distinct kind (at least two layers)
        index = {k: set(v) for k, v in d.items() if _index_list(k, v, layers)}
        aligned = {k: v for k, v in d.items() if isinstance(v, (list, tuple)) and len(v) == layers
                   and k not in NOT_PER_LAYER and k not in index}
        if aligned or index:
            rows = [tuple(json.dumps(v[i], default=str) for v in aligned.values())
                    + tuple(i in s for s in index.values()) for i in range(layers)]
            chosen = [i for i, row in enumerate(rows) if row not in rows[:i]]
            chosen = sorted(chosen + [i for i in range(layers) if i not in chosen][:max(0, 2 - len(chosen))])
            kw[key] = len(chosen)
            kw.update({k: [v[i] for i in chosen] for k, v in aligned.items()})
            kw.update({k: [j for j, i in enumerate(chosen) if i in s] for k, s in index.items()})
        elif key in kw:
            kw[key] = min(2, layers)
        if type(d.get("moe_layer_end_index")) is int:
            kw["moe_layer_end_index"] = kw.get(key, layers) - 1
    kw.update({k: 1 for k in ("first_k_dense_replace", "num_dense_layers") if type(d.get(k)) is int and d[k] > 1})
    return kw


def merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for k, v in b.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict) and k != "rope_parameters":
            out[k] = merge(out[k], v)
        elif v is DROP:
            out.pop(k, None)
        else:
            out[k] = v
    return out


def tiny_config(model_type: str) -> Any:
    """The shrunk config of `model_type`, its default flags (is_decoder, causal ...) kept."""
    pre = PRE.get(model_type, {})
    kwargs = merge(merge(shrink(AutoConfig.for_model(model_type, **pre)), pre), OVERRIDES.get(model_type, {}))
    return AutoConfig.for_model(model_type, **copy.deepcopy(kwargs))


def build_tiny(config: Any) -> torch.nn.Module:
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    if hasattr(model, "set_default_language") and getattr(config, "languages", None):  # xmod
        model.set_default_language(config.languages[0])
    return model.float().eval()


def no_cache(model: torch.nn.Module) -> dict[str, bool]:
    params = inspect.signature(model.forward).parameters
    accepts = "use_cache" in params or any(p.kind is p.VAR_KEYWORD for p in params.values())
    return {"use_cache": False} if accepts else {}


def vocab_of(model: torch.nn.Module) -> int:
    return min(VOCAB, vars(model.config.get_text_config()).get("vocab_size") or VOCAB)


@torch.no_grad()
def not_causal(model: torch.nn.Module) -> str | None:
    """Why `model` is no causal LM as configured: a later token moves earlier logits."""
    x = torch.randint(3, vocab_of(model), (1, 16), generator=torch.Generator().manual_seed(2))
    y = x.clone()
    y[0, 10:] = (y[0, 10:] + 2) % (vocab_of(model) - 3) + 3
    a, b = (model(input_ids=t, **no_cache(model)).logits[0, :10] for t in (x, y))
    moved = float((a - b).abs().max() / a.abs().max().clamp(min=1e-12))
    return f"not causal as configured (a later token moves earlier logits by {moved:.0e})" if moved > 1e-5 else None


def kind_hints(model: torch.nn.Module) -> str:
    """Layer kinds from `stateful_layers`, plus MoE, hybrid layer types and logit transforms."""
    config = vars(model.config.get_text_config())  # not getattr: some configs raise on per-layer attributes
    hints = stateful_layers(model)
    if any(re.search(r"Experts$|Router$|SparseMoe|MoeBlock", type(m).__name__) for m in model.modules()):
        hints.insert(0, "MoE")  # by module: some configs carry expert counts with the MoE block switched off
    types = {str(t) for k in ("layer_types", "layers_block_type", "block_types") for t in config.get(k) or []}
    if len(types) > 1:
        hints.append("hybrid " + "/".join(sorted(types)))
    for name, label in (("final_logit_softcapping", "logit soft-cap"), ("attn_logit_softcapping", "attn soft-cap"),
                        ("logit_scale", "logit scale"), ("logits_scaling", "logit scale"), ("kv_lora_rank", "MLA"),
                        ("sliding_window", "sliding window")):
        if config.get(name) and label not in hints:
            hints.append(label)
    return ", ".join(hints) or "attention"


def random_rows(vocab: int, lengths: tuple[int, ...] = (16, 11, 20, 7), prompt: int = 4) -> list[dict[str, list[int]]]:
    g = torch.Generator().manual_seed(1)
    ids = [torch.randint(3, vocab, (n,), generator=g).tolist() for n in lengths]
    return [{"input_ids": row, "labels": [-100] * prompt + row[prompt:]} for row in ids]


@torch.no_grad()
def own_logits_loss(model: torch.nn.Module, rows: list[dict[str, list[int]]]) -> float:
    """Token-mean next-token cross-entropy of the model's own fp32 logits, one unpadded row at a time."""
    total, count = 0.0, 0
    for row in rows:
        logits = model(input_ids=torch.tensor([row["input_ids"]]), **no_cache(model)).logits[0, :-1].float()
        labels = torch.tensor(row["labels"][1:])
        total += float(F.cross_entropy(logits[labels != -100], labels[labels != -100], reduction="sum"))
        count += int((labels != -100).sum())
    return total / count


def short(exc: BaseException) -> str:
    return re.sub(r"\s+", " ", f"{type(exc).__name__}: {exc}")[:110].replace("|", "/")


def check(model_type: str, args: Any) -> dict[str, Any]:
    """One architecture through the recipe's checks; a failure is a finding: recorded, and the next check runs."""
    r: dict[str, Any] = {"model_type": model_type}
    try:
        config = tiny_config(model_type)
        if getattr(config, "is_encoder_decoder", False):  # read before building: decoder halves reset it
            return {**r, "skip": "encoder-decoder config (the causal class is a seq2seq decoder half)"}
        model = build_tiny(config)
    except Exception as exc:
        return {**r, "skip": f"does not build: {short(exc)}"}
    with contextlib.suppress(Exception):  # a forward that fails shows in the checks below
        if reason := not_causal(model):
            return {**r, "skip": reason}
    r["kinds"], vocab, rows = kind_hints(model), vocab_of(model), random_rows(vocab_of(model))
    trainer = SFTTrainer(model=model, args=args, loss_chunk_size=16, data_collator=PaddingCollator(0))
    try:  # 1. eval loss (the fast loss or the model's own) against the model's own logits
        trainer.verify_loss(rows)
    except Exception as exc:
        r["verify"] = short(exc)
    r["path"] = trainer.loss_path.kind
    try:
        r["eval_loss"] = trainer.evaluate(rows)["eval_loss"]
        r["eval_rel"] = abs(r["eval_loss"] - own_logits_loss(model, rows)) / r["eval_loss"]
    except Exception as exc:
        r["eval"] = short(exc)
    try:  # 2. packing: refused, or the packed eval loss equals the padded one
        check_packing(model, PackingCollator(), vocab)
        trainer.data_collator = PackingCollator()
        rel = abs(trainer.evaluate(rows)["eval_loss"] - r["eval_loss"]) / r["eval_loss"]
        r["pack"] = f"{'exact' if rel < PACK_TOLERANCE else 'LEAK'} {rel:.0e}"
    except UserError as exc:
        leak = re.search(r"alone by (\S+)\)", str(exc))  # the probe's relative logits difference
        kinds = ", ".join(stateful_layers(model)) or "no stateful layer"
        r["pack"] = f"refused ({kinds}{'; leak ' + leak[1] if leak else ''})"
    except Exception as exc:
        r["pack"] = f"ERROR {short(exc)}"
    trainer.data_collator = PaddingCollator(0)
    try:  # 3. the training loss is what eval_loss measures (eval mode: no dropout), and two finite steps
        batch = trainer._prepare_inputs(PaddingCollator(0)(rows))
        with torch.no_grad():
            same = float(trainer.compute_loss(model.eval(), batch))
        optimizer, losses = torch.optim.AdamW(model.parameters(), 1e-3), []
        model.train()
        for _ in range(2):
            loss = trainer.compute_loss(model, batch)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            losses.append(float(loss))
        r["train"] = "PASS" if all(math.isfinite(x) for x in losses) else f"FAIL losses {losses}"
        if "eval_loss" in r and abs(same - r["eval_loss"]) > EVAL_TOLERANCE * r["eval_loss"]:
            r["train"] = f"FAIL training loss {same:.4f} != eval_loss {r['eval_loss']:.4f} on the same rows"
    except Exception as exc:
        r["train"] = f"ERROR {short(exc)}"
    try:  # 4. greedy generation
        model.eval()
        out = model.generate(torch.tensor([rows[0]["input_ids"][:5]]), max_new_tokens=3, do_sample=False)
        r["generate"] = "PASS" if out.shape[-1] == 8 else f"FAIL shape {tuple(out.shape)}"
    except Exception as exc:
        r["generate"] = f"ERROR {short(exc)}"
    return r


def eval_cell(r: dict[str, Any]) -> str:
    if "eval" in r:
        return f"ERROR {r['eval']}"
    return f"{'PASS' if r['eval_rel'] < EVAL_TOLERANCE else 'FAIL'} {r['eval_rel']:.1e}"


def failures(r: dict[str, Any]) -> str:
    """The failed checks of one result, checks that fail for the same reason merged."""
    cells = {"verify_loss": f"ERROR {r['verify']}" if "verify" in r else "PASS", "eval": eval_cell(r),
             "packing": "PASS" if r["pack"].startswith(("exact", "refused")) else r["pack"],
             "train": r["train"], "generate": r["generate"]}
    by_reason: dict[str, list[str]] = {}
    for name, cell in cells.items():
        if not cell.startswith("PASS"):
            by_reason.setdefault(cell, []).append(name)
    return "; ".join(f"{', '.join(names)}: {cell}" for cell, names in by_reason.items())


def report(results: list[dict[str, Any]]) -> str:
    checked = [r for r in results if "skip" not in r]
    header = ("model_type", "kind hints", "loss path", "eval loss vs own logits (rel diff)", "packing", "train",
              "generate")
    lines = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    lines += [f"| {r['model_type']} | {r['kinds']} | {r['path']}{' (verify_loss raised)' if 'verify' in r else ''} | "
              f"{eval_cell(r)} | {r['pack']} | {r['train']} | {r['generate']} |" for r in checked]
    failed = {r["model_type"]: failures(r) for r in checked if failures(r)}
    lines += ["", (f"{len(checked)} architectures checked, {len(checked) - len(failed)} pass everything, "
                   f"{len(failed)} fail{':' if failed else '.'}")]
    lines += [f"- {model_type}: {why}" for model_type, why in failed.items()]
    lines += ["", f"Skipped ({len(results) - len(checked)}):"] + [f"- {r['model_type']}: {r['skip']}"
                                                                  for r in results if "skip" in r]
    return "\n".join(lines) + "\n"


def _timeout(*_: Any) -> None:
    raise TimeoutError(f"over {TIMEOUT_S}s")


def run_each(only: str | None, check_one: Callable[[str], dict[str, Any]]) -> list[dict[str, Any]]:
    """`check_one` on every causal-LM type (or the comma-separated `only`), quietly, one thread,
    each under a timeout; also what `feed_forward.py` runs its checks with."""
    types = sorted(only.split(",") if only else MODEL_FOR_CAUSAL_LM_MAPPING_NAMES)
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    transformers.logging.set_verbosity_error()
    logging.getLogger("sft_recipe").setLevel(logging.ERROR)
    signal.signal(signal.SIGALRM, _timeout)
    results = []
    for i, model_type in enumerate(types):
        print(f"[{i + 1}/{len(types)}] {model_type}", file=sys.stderr, flush=True)
        signal.alarm(TIMEOUT_S)
        try:  # models print as well as warn: keep it off the report
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                results.append(check_one(model_type))
        except Exception as exc:  # a timeout, or a failure outside the per-check guards
            results.append({"model_type": model_type, "skip": f"aborted: {short(exc)}"})
        finally:
            signal.alarm(0)
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", help="comma-separated model types (default: every causal-LM type)")
    parser.add_argument("--markdown", type=Path, help="also write the report to this file")
    ns = parser.parse_args()
    out = Path(tempfile.mkdtemp(prefix="architectures-")) / "out"
    config = SFTConfig(dataset="unused.jsonl", model_name="unused", output_dir=str(out), callbacks=[])
    args = to_training_arguments(config, per_device_eval_batch_size=4, report_to="none", disable_tqdm=True,
                                 eval_strategy="no", save_strategy="no", load_best_model_at_end=False)
    text = report(run_each(ns.only, lambda model_type: check(model_type, args)))
    print(text, end="")
    if ns.markdown:
        ns.markdown.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
