"""Machine defaults: how many tokens a chunk of the trainable-token loss holds."""

from __future__ import annotations

import pytest
import torch

from sft_recipe.model.hardware import default_loss_chunk_size


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU's defaults")
@pytest.mark.parametrize("vocab,tokens", [(None, 128), (585, 256), (50_257, 256), (151_936, 256), (262_144, 256),
                                          (1_000_000, 128)])
def test_cpu_loss_chunks_hold_at_most_256_tokens_and_a_logits_budget(vocab, tokens):
    """256 tokens per chunk is as fast as more on the CPU (benchmarks), and its logits (tokens x vocab x 4
    bytes) stay within 256 MiB up to a 262k vocabulary; beyond that the budget rules, down to 128."""
    assert default_loss_chunk_size(vocab) == tokens

