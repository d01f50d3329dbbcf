"""Shared fixtures: hermetic, offline, tiny.

Every test runs with the hub switched off and all caches in a temporary directory. Tokenizers are
built in-process (a word-level toy tokenizer whose ids you can predict by hand, and a small
byte-level BPE); models are built from config with random weights.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

_CACHE = tempfile.mkdtemp(prefix="sft-recipe-tests-")
os.environ.update(
    HF_HUB_OFFLINE="1",
    HF_DATASETS_OFFLINE="1",
    TRANSFORMERS_OFFLINE="1",
    HF_HOME=os.path.join(_CACHE, "hf"),
    SFT_RECIPE_CACHE=os.path.join(_CACHE, "sft_recipe"),
    WANDB_MODE="offline",
    WANDB_DIR=os.path.join(_CACHE, "wandb"),
    WANDB_SILENT="true",
    TOKENIZERS_PARALLELISM="false",
    HF_DATASETS_DISABLE_PROGRESS_BARS="1",
)

import sys  # noqa: E402

# Test modules import helpers from sibling folders' tests (`from test_trainer import ...`): make that
# independent of which folders pytest happened to collect first.
sys.path[:0] = [str(folder) for folder in sorted(Path(__file__).parent.iterdir())
                if folder.is_dir() and not folder.name.startswith((".", "__"))]
import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(2)

# The toy vocabulary: ids are list positions, so golden tests can be checked by hand.
TOY_SPECIALS = ["<pad>", "</s>", "<s>"]  # 0, 1, 2
TOY_WORDS = ["Q:", "A:", "the", "cat", "sat", "on", "mat", "a", "dog", "ran", "to", "big",
             "red", "blue", "yes", "no", "one", "two", "three", "four"]  # 3 ..


def make_toy_tokenizer(pad_is_eos: bool = False, add_bos: bool = False):
    """A whitespace word-level tokenizer: '<pad>'=0, '</s>'=1, '<s>'=2, 'Q:'=3, 'A:'=4, 'the'=5 ..."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(TOY_SPECIALS + TOY_WORDS)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with single spaces
    if add_bos:
        tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 2)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="</s>", bos_token="<s>",
        pad_token="</s>" if pad_is_eos else "<pad>",
    )


@pytest.fixture
def toy_tokenizer():
    return make_toy_tokenizer()


@pytest.fixture(scope="session")
def bpe_tokenizer_dir(tmp_path_factory) -> Path:
    """A 400-token byte-level BPE trained in-process by sft_recipe's own trainer."""
    from sft_recipe.data.builtin import make_rows
    from sft_recipe.formats.alpaca import ALPACA_NO_INPUT, ALPACA_WITH_INPUT
    from sft_recipe.data.tokenizer_train import train_bpe

    out = tmp_path_factory.mktemp("bpe")
    texts = [ALPACA_WITH_INPUT, ALPACA_NO_INPUT] * 20
    texts += [f"{r['instruction']} {r['input']} {r['output']}" for r in make_rows(800, seed=7)]
    train_bpe(texts, vocab_size=400, output_dir=out)
    return out


@pytest.fixture(scope="session")
def bpe_tokenizer(bpe_tokenizer_dir):
    from sft_recipe.model.load import load_tokenizer

    return load_tokenizer(str(bpe_tokenizer_dir))


def tiny_model_config(model_type: str = "llama", vocab_size: int = 400, **overrides) -> dict:
    """`model_config` for a recipe: a 2-layer, width-32 model built from config."""
    if model_type == "gpt2":
        cfg = dict(model_type="gpt2", n_embd=32, n_layer=2, n_head=2, n_positions=256,
                   resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    else:
        cfg = dict(model_type="llama", hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                   num_key_value_heads=2, intermediate_size=64, max_position_embeddings=256)
    cfg["vocab_size"] = vocab_size
    cfg.update(overrides)
    return cfg


def tiny_model(model_type: str = "llama", vocab_size: int = 400, seed: int = 0, **overrides):
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = tiny_model_config(model_type, vocab_size, **overrides)
    torch.manual_seed(seed)
    config = AutoConfig.for_model(cfg.pop("model_type"), **cfg)
    return AutoModelForCausalLM.from_config(config, attn_implementation="sdpa")


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def alpaca_rows(n: int = 64, seed: int = 0) -> list[dict]:
    from sft_recipe.data.builtin import make_rows

    return make_rows(n, seed=seed)


@pytest.fixture
def alpaca_file(tmp_path) -> Path:
    return write_jsonl(tmp_path / "alpaca.jsonl", alpaca_rows())


def base_recipe(tmp_path: Path, dataset: Path, tokenizer_dir: Path, **overrides) -> dict:
    """A recipe dict for a seconds-long run of a tiny from-scratch model."""
    recipe = dict(
        from_scratch=True, model_config=tiny_model_config(), tokenizer_name=str(tokenizer_dir),
        dataset=str(dataset), dataset_format="alpaca", max_length=128, batch_size=8,
        learning_rate=3e-3, max_steps=6, eval_steps=3, save_steps=3, logging_steps=1,
        output_dir=str(tmp_path / "out"), seed=0,
    )
    recipe["model_config"].pop("vocab_size")  # the recipe takes it from the tokenizer
    recipe.update(overrides)
    return recipe


def write_recipe(path: Path, recipe: dict) -> Path:
    import yaml

    path.write_text(yaml.safe_dump(recipe), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def bpe_chatml(bpe_tokenizer_dir):
    """The BPE tokenizer with the built-in ChatML template installed."""
    from sft_recipe.recipe.config import SFTConfig
    from sft_recipe.data.chat_template import setup_chat_template
    from sft_recipe.model.load import load_tokenizer

    tokenizer = load_tokenizer(str(bpe_tokenizer_dir))
    setup_chat_template(tokenizer, SFTConfig(dataset="chats.jsonl", dataset_format="messages", model_name="toy",
                                             chat_template="chatml"))
    return tokenizer
