"""Load the tokenizer and the model: pretrained (`from_pretrained`) or new (`from_config`).

Weights load as safetensors only (no pickle), and remote code runs only if the recipe opts in.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from ..rundir.layout import ADAPTER_CONFIG_FILENAME
from ..recipe.config import SFTConfig
from ..data.builtin import is_builtin, materialise_tokenizer
from ..errors import RecipeError, UserError, one_line
from .hardware import default_attention, resolve_precision
from .lora import peft_module, quantization_config
from ..rundir.paths import check_local_or_hub

log = logging.getLogger(__name__)
SAMPLE_TEXT = "the cat sat on the mat"  # words any real vocabulary has (and the tests' toy one)


def load_tokenizer(name: str, trust_remote_code: bool = False):
    """`AutoTokenizer.from_pretrained`, with a pad token guaranteed (`choose_pad_token`)."""
    if is_builtin(name):
        name = str(materialise_tokenizer(name))
    check_local_or_hub(name, "tokenizer")
    try:
        tokenizer = AutoTokenizer.from_pretrained(name, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, TypeError) as exc:
        raise UserError(f"{name}: cannot load tokenizer ({one_line(exc)})") from None
    check_tokenizer(tokenizer, name)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = choose_pad_token(tokenizer)
    return tokenizer


def check_tokenizer(tokenizer, name: str) -> None:
    """A directory without tokenizer files still loads, as a 1-token tokenizer that turns every row
    into nothing (and training then "succeeds" on nothing): demand a real vocabulary and a sample
    that survives a round trip."""
    specials = set(tokenizer.all_special_ids)
    if len(tokenizer) - len(specials) < 2:
        raise UserError(f"{name}: the tokenizer has only {len(tokenizer)} token(s); are its files (tokenizer.json, "
                        "or vocab and merges) missing? Set tokenizer_name to a directory or hub id that has them")
    ids = tokenizer(SAMPLE_TEXT, add_special_tokens=False)["input_ids"]
    known = [i for i in ids if i not in specials and i != tokenizer.unk_token_id]
    if not known or not tokenizer.decode(ids, skip_special_tokens=True).strip():
        raise UserError(f"{name}: the tokenizer turns the sample text {SAMPLE_TEXT!r} into no known tokens; "
                        "is it the right tokenizer?")


def max_positions(model_config) -> int | None:
    """The longest sequence a model config allows (the name differs between architectures)."""
    for key in ("max_position_embeddings", "n_positions", "n_ctx", "max_sequence_length", "seq_length"):
        value = getattr(model_config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def check_model(config: SFTConfig, tokenizer) -> None:
    """Before any data is tokenized: the model exists, and its positions and vocabulary fit the recipe."""
    if config.from_scratch:
        model_config, where = scratch_config(config, tokenizer), "model_config"
    else:
        assert config.model_name is not None
        check_local_or_hub(config.model_name, "model")
        try:
            model_config = AutoConfig.from_pretrained(config.model_name, trust_remote_code=config.trust_remote_code)
        except (OSError, ValueError, TypeError) as exc:
            raise UserError(f"{config.model_name}: cannot load model ({one_line(exc)})") from None
        where = config.model_name
    limit = max_positions(model_config)
    if limit is not None and config.max_length > limit:
        raise RecipeError(f"recipe key 'max_length' ({config.max_length}) is above the {limit} positions of the "
                          f"model ({where}); set max_length to at most {limit}")


def scratch_config(config: SFTConfig, tokenizer):
    """`model_config` as a transformers config; vocabulary size and special ids the tokenizer's where unset."""
    kwargs = dict(config.model_config or {})
    model_type = kwargs.pop("model_type")
    vocab = kwargs.setdefault("vocab_size", len(tokenizer))
    if vocab is not None and vocab < len(tokenizer):  # e.g. a chat template added special tokens
        raise UserError(f"model_config: vocab_size {vocab} is smaller than the tokenizer's "
                        f"{len(tokenizer)} tokens; leave vocab_size out to use the tokenizer's")
    for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
        kwargs.setdefault(name, getattr(tokenizer, name) or tokenizer.eos_token_id)
    try:
        return AutoConfig.for_model(model_type, **kwargs)
    except (ValueError, TypeError, KeyError) as exc:
        raise UserError(f"model_config: {one_line(exc)}") from None


def choose_pad_token(tokenizer) -> str | None:
    """A pad token for a tokenizer that has none (Llama 3): a special token of the vocabulary whose
    name says pad (`<|finetune_right_pad_id|>`, `<pad>`), else EOS. Padding is labelled -100 *by
    position* in the collator, never by id, so no choice can mask a trained token (EOS or an
    end-of-turn marker that shares the id stays trained); a dedicated pad just keeps the two apart."""
    pads = sorted(t.content for t in tokenizer.added_tokens_decoder.values()
                  if t.special and "pad" in t.content.lower())
    return pads[0] if pads else tokenizer.eos_token


def init_new_embeddings(model, token_ids: Sequence[int]) -> None:
    """Rows of tokens added for a chat template start at the mean of the existing rows, in the input
    embeddings and in an untied output head: a random row would give the new tokens arbitrary
    logits, and an all-zero or leftover row (vocabularies padded to a multiple of 64) is untrained."""
    ids = sorted(set(token_ids))
    if not ids:
        return
    with torch.no_grad():
        inputs = model.get_input_embeddings().weight
        old = inputs[:ids[0]]
        inputs[ids] = old.mean(0).to(inputs.dtype)
        head = model.get_output_embeddings()
        if head is not None and head.weight.data_ptr() != inputs.data_ptr():
            head.weight[ids] = head.weight[:ids[0]].mean(0).to(head.weight.dtype)
            if getattr(head, "bias", None) is not None:
                head.bias[ids] = head.bias[:ids[0]].mean()


def with_attention(build, requested: str | None, where: str):
    """`build(attn_implementation)`: the recipe's choice, else our default (flash-attention 2 or
    SDPA), else, for an architecture that supports neither (gpt-oss needs eager attention for its
    sinks), transformers' own choice for it. A requested one it does not support is one line."""
    try:
        return build(requested or default_attention())
    except ValueError as exc:
        if "does not support" not in str(exc):
            raise
        if requested:
            raise UserError(f"{where}: attn_implementation {requested}: {one_line(exc)}") from None
    return build(None)


def weights_dtype(config: SFTConfig) -> torch.dtype:
    """bf16 weights for LoRA under bf16 (the frozen base needs no fp32 master copy); else fp32,
    with bf16/fp16 as autocast around it."""
    bf16_lora = resolve_precision(config.precision) == "bf16" and config.lora is not None
    return torch.bfloat16 if bf16_lora else torch.float32


def load_model(config: SFTConfig, tokenizer, new_token_ids: Sequence[int] = ()):
    """The model the recipe describes, on CPU in the dtype training will use; `new_token_ids` are
    tokens added to the vocabulary for the chat template (see `init_new_embeddings`)."""
    dtype = weights_dtype(config)
    attn = config.attn_implementation
    if config.from_scratch:
        model_config = scratch_config(config, tokenizer)
        model = with_attention(lambda a: AutoModelForCausalLM.from_config(model_config, attn_implementation=a,
                                                                          dtype=dtype), attn, "model_config")
        log.info("built %s from config: %.2fM parameters", config.model_config["model_type"],  # type: ignore[index]
                 model.num_parameters() / 1e6)
        return model
    name = config.model_name
    assert name is not None
    check_local_or_hub(name, "model")
    quantized = quantization_config(config.lora)  # QLoRA: 4-bit base weights, or None
    try:
        model = with_attention(lambda a: AutoModelForCausalLM.from_pretrained(
            name, dtype=dtype, attn_implementation=a, use_safetensors=True,
            trust_remote_code=config.trust_remote_code, quantization_config=quantized,
        ), attn, name)
    except (OSError, ValueError) as exc:
        raise UserError(f"{name}: cannot load model ({one_line(exc)})") from None
    log.info("loaded %s: %.2fM parameters", name, model.num_parameters() / 1e6)
    if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(len(tokenizer), mean_resizing=False)  # rows set by init_new_embeddings
    init_new_embeddings(model, new_token_ids)
    return model


def load_for_inference(model_dir: str | Path):
    """A saved checkpoint (full model or LoRA adapter) and its tokenizer, ready to generate."""
    model_dir = Path(model_dir)
    if not model_dir.exists():
        raise UserError(f"{model_dir}: model directory not found")
    tokenizer = load_tokenizer(str(model_dir))
    adapter = model_dir / ADAPTER_CONFIG_FILENAME
    if adapter.is_file():
        try:
            base = json.loads(adapter.read_text(encoding="utf-8")).get("base_model_name_or_path")
        except (ValueError, UnicodeDecodeError) as exc:
            raise UserError(f"{adapter}: unreadable adapter config ({one_line(exc)})") from None
        if isinstance(base, str):
            check_local_or_hub(base, "the LoRA base model")
    try:
        auto = peft_module().AutoPeftModelForCausalLM if adapter.is_file() else AutoModelForCausalLM
        model = auto.from_pretrained(str(model_dir), use_safetensors=True)
    except (OSError, ValueError) as exc:
        raise UserError(f"{model_dir}: cannot load model ({one_line(exc)})") from None
    model.eval()
    return model, tokenizer
