"""Tiny in-process tokenizers for 8 chat families, each carrying its family's special tokens and a
compact chat template (`chat_families/<family>.jinja`, written from the public formats, not copied).

Byte-level BPE families (qwen2.5, qwen3, llama3, smollm2, deepseek-r1) encode any text. SentencePiece-
style families (mistral, phi3: Metaspace with a prefix space on the first section only, as transformers 5
rebuilds Llama-class tokenizers; gemma: no prefix space) know only `ALPHABET`, so generated text must
stay inside it. Building one takes a few milliseconds (a BPE trained on `CORPUS`).
"""

from __future__ import annotations

import string
from functools import lru_cache
from pathlib import Path

from tokenizers import (
    AddedToken,
    Tokenizer,
    decoders,
    models,
    pre_tokenizers,
    processors,
    trainers,
)
from transformers import PreTrainedTokenizerFast

HERE = Path(__file__).parent / "chat_families"
ALPHABET = string.ascii_letters + string.digits + " .,?!'-:;()[]{}\"_/=+\n"
CORPUS = [
    "The capital of France is Paris. Is it big? No, not very.",
    "What is the weather in Paris today? It is sunny and warm, about 21 degrees.",
    "You are a helpful assistant. Answer the question briefly and politely.",
    "system user assistant model tool ipython think function name arguments parameters city",
    "Cutting Knowledge Date: December 2023 Today Date: 26 Jul 2024 Environment: ipython",
    "one two three four five six seven eight nine ten yes no maybe hello world the cat sat on the mat",
    '{"name": "get_weather", "arguments": {"city": "Paris"}} {"temp": 21}',
    "header\n\nbody\n\n\nmore\n\nlines\n\n",
]

# name: (pre-tokenizer kind, special tokens in id order, non-special added tokens, bos, eos, pad, unk, add_bos,
#        special tokens with rstrip=True)
SPECS = {
    "qwen2.5": ("bytelevel", ["<|endoftext|>", "<|im_start|>", "<|im_end|>"], ["<tool_call>", "</tool_call>"],
                None, "<|im_end|>", "<|endoftext|>", None, False, []),
    "qwen3": ("bytelevel", ["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
              ["<tool_call>", "</tool_call>", "<think>", "</think>"], None, "<|im_end|>", "<|endoftext|>", None, False, []),
    "llama3": ("bytelevel", ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
                             "<|eom_id|>", "<|eot_id|>", "<|python_tag|>"], [],
               "<|begin_of_text|>", "<|eot_id|>", None, None, True, []),
    "mistral": ("metaspace", ["<unk>", "<s>", "</s>", "[INST]", "[/INST]", "[TOOL_CALLS]", "[AVAILABLE_TOOLS]",
                              "[/AVAILABLE_TOOLS]", "[TOOL_RESULTS]", "[/TOOL_RESULTS]"], [],
                "<s>", "</s>", None, "<unk>", True, []),
    "gemma": ("metaspace-never", ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"], [],
              "<bos>", "<eos>", "<pad>", "<unk>", True, []),
    "phi3": ("metaspace", ["<unk>", "<s>", "</s>", "<|endoftext|>", "<|system|>", "<|user|>", "<|assistant|>",
                           "<|end|>"], [], "<s>", "<|endoftext|>", "<|endoftext|>", "<unk>", False,
             ["<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]),
    "smollm2": ("bytelevel", ["<|endoftext|>", "<|im_start|>", "<|im_end|>"], [],
                "<|im_start|>", "<|im_end|>", "<|im_end|>", "<|endoftext|>", False, []),
    "deepseek-r1": ("bytelevel", ["<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>"],
                    ["<｜User｜>", "<｜Assistant｜>", "<think>", "</think>"],
                    "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜end▁of▁sentence｜>", None, False, []),
}
FAMILIES = tuple(SPECS)
END_OF_TURN = {"qwen2.5": "<|im_end|>", "qwen3": "<|im_end|>", "llama3": "<|eot_id|>", "mistral": "</s>",
               "gemma": "<end_of_turn>", "phi3": "<|end|>", "smollm2": "<|im_end|>",
               "deepseek-r1": "<｜end▁of▁sentence｜>"}


def template(family: str) -> str:
    return (HERE / f"{family}.jinja").read_text(encoding="utf-8")


@lru_cache(maxsize=None)
def _backend(family: str) -> str:
    kind, specials, added, bos, _eos, _pad, unk, add_bos, rstrip = SPECS[family]
    if kind == "bytelevel":
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        alphabet = pre_tokenizers.ByteLevel.alphabet()
    else:
        scheme = "never" if kind == "metaspace-never" else "first"
        tok = Tokenizer(models.BPE(unk_token=unk))
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme=scheme, split=False)
        tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme=scheme, split=False)
        alphabet = sorted(set(ALPHABET.replace(" ", "▁")))
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=specials, initial_alphabet=alphabet,
                                  show_progress=False)
    tok.train_from_iterator(CORPUS, trainer)
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False, rstrip=t in rstrip) for t in specials])
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in added])
    if add_bos:
        tok.post_processor = processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
                                                           special_tokens=[(bos, tok.token_to_id(bos))])
    return tok.to_str()


def build_tokenizer(family: str) -> PreTrainedTokenizerFast:
    """A fresh tiny fast tokenizer for `family` with its chat template installed."""
    _kind, _specials, _added, bos, eos, pad, unk, _add_bos, _rstrip = SPECS[family]
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(_backend(family)),
                                        bos_token=bos, eos_token=eos, pad_token=pad, unk_token=unk)
    tokenizer.chat_template = template(family)
    return tokenizer


@lru_cache(maxsize=None)
def shared_tokenizer(family: str) -> PreTrainedTokenizerFast:
    """One tokenizer per family for the tests that only read it (building one takes a moment)."""
    return build_tokenizer(family)


def U(text: str) -> dict:
    return {"role": "user", "content": text}


def A(text: str, **extra) -> dict:
    return {"role": "assistant", "content": text, **extra}
