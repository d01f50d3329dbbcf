"""Model and tokenizer loading: embeddings for tokens a chat template adds, and the pad token."""

from __future__ import annotations

import pytest
import torch
from conftest import make_toy_tokenizer, tiny_model

from sft_recipe.recipe.config import SFTConfig
from sft_recipe.data.chat_template import setup_chat_template
from sft_recipe.model.load import choose_pad_token, load_model


def chatml_config(model_dir) -> SFTConfig:
    return SFTConfig(model_name=str(model_dir), dataset="chats.jsonl", dataset_format="messages",
                     chat_template="chatml")


@pytest.mark.parametrize("tied", [True, False])
def test_tokens_added_for_a_template_start_at_the_mean_embedding_and_resize_an_untied_head(tmp_path, tied):
    tokenizer = make_toy_tokenizer()
    base = tiny_model(vocab_size=len(tokenizer), tie_word_embeddings=tied)
    base.save_pretrained(tmp_path / "base")
    old_inputs = base.get_input_embeddings().weight.detach().clone()
    old_head = base.get_output_embeddings().weight.detach().clone()
    config = chatml_config(tmp_path / "base")
    new_ids = setup_chat_template(tokenizer, config)  # <|im_start|>, <|im_end|>
    assert new_ids == [len(old_inputs), len(old_inputs) + 1] == [23, 24]
    model = load_model(config, tokenizer, new_ids)
    inputs, head = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    assert inputs.shape[0] == head.shape[0] == len(tokenizer) == 25
    torch.testing.assert_close(inputs[:23], old_inputs)
    for i in new_ids:
        torch.testing.assert_close(inputs[i], old_inputs.mean(0))
        torch.testing.assert_close(head[i], (old_inputs if tied else old_head).mean(0))
    assert (head.data_ptr() == inputs.data_ptr()) == tied


def test_template_tokens_inside_a_padded_vocabulary_are_initialised_too(tmp_path):
    """Vocabularies padded to a multiple of 64 (Qwen) already have rows for the new ids: leftover rows
    that were never trained. They get the mean of the real rows as well, with no resize."""
    tokenizer = make_toy_tokenizer()
    base = tiny_model(vocab_size=64, tie_word_embeddings=False)
    with torch.no_grad():
        base.get_input_embeddings().weight[23:] = 0.0  # untrained padding rows
    base.save_pretrained(tmp_path / "base")
    config = chatml_config(tmp_path / "base")
    new_ids = setup_chat_template(tokenizer, config)
    model = load_model(config, tokenizer, new_ids)
    inputs = model.get_input_embeddings().weight
    assert inputs.shape[0] == 64
    torch.testing.assert_close(inputs[23], inputs[:23].mean(0))
    assert inputs[25].abs().sum() == 0  # rows no token uses are left alone


def test_pad_token_prefers_a_dedicated_pad_then_eos():
    tokenizer = make_toy_tokenizer()
    assert choose_pad_token(tokenizer) == "<pad>"  # a special token named pad
    tokenizer = make_toy_tokenizer(pad_is_eos=True)  # no special <pad>: like Llama 3
    assert choose_pad_token(tokenizer) == "</s>"
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|finetune_right_pad_id|>"]})
    assert choose_pad_token(tokenizer) == "<|finetune_right_pad_id|>"
