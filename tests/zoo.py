"""Tiny configs of causal-LM architectures, chosen by kind rather than by name (transformers builds
each from its config, no download). Sizes are the smallest each config accepts; `vocab_size` is
set by the caller (or by the recipe, from the tokenizer)."""

from __future__ import annotations

import torch

BASE = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, head_dim=16, max_position_embeddings=256)
MOE = dict(num_experts_per_tok=2)

# kind -> (model_type, config kwargs, packs exactly?)
ZOO: dict[str, tuple[str, dict, bool]] = {
    "untied head (llama)": ("llama", dict(BASE, num_key_value_heads=4), True),
    "tied head (gpt2)": ("gpt2", dict(n_embd=64, n_layer=2, n_head=4, n_positions=256), True),
    "GQA + qk-norm (qwen3)": ("qwen3", dict(BASE), True),
    "MLA + MoE (deepseek_v3)": ("deepseek_v3", dict(BASE, num_key_value_heads=4, moe_intermediate_size=32,
                                                    n_shared_experts=1, n_routed_experts=4, kv_lora_rank=16,
                                                    q_lora_rank=32, qk_rope_head_dim=8, v_head_dim=16,
                                                    qk_nope_head_dim=8, n_group=1, topk_group=1, head_dim=8,
                                                    first_k_dense_replace=1, **MOE), True),
    "sliding window (mistral)": ("mistral", dict(BASE, sliding_window=8), True),
    "local/global + soft-capping (gemma2)": ("gemma2", dict(BASE, query_pre_attn_scalar=16, sliding_window=8,
                                                            layer_types=["sliding_attention", "full_attention"]), True),
    "local/global (gemma3)": ("gemma3_text", dict(BASE, query_pre_attn_scalar=16, sliding_window=8,
                                                  layer_types=["sliding_attention", "full_attention"]), True),
    "logit scale (cohere)": ("cohere", dict(BASE, num_key_value_heads=4), True),
    "logits scaling + multipliers (granite)": ("granite", dict(BASE, num_key_value_heads=4, logits_scaling=4.0,
                                                               embedding_multiplier=2.0), True),
    "MoE (mixtral)": ("mixtral", dict(BASE, num_local_experts=4, **MOE), True),
    "MoE (qwen3_moe)": ("qwen3_moe", dict(BASE, moe_intermediate_size=32, num_experts=4, mlp_only_layers=[], **MOE),
                        True),
    "attention sinks + MoE (gpt_oss)": ("gpt_oss", dict(BASE, num_local_experts=4, sliding_window=8,
                                                        layer_types=["sliding_attention", "full_attention"], **MOE),
                                        False),
    "hybrid Mamba + MoE (jamba)": ("jamba", dict(BASE, num_experts=4, mamba_d_state=8, mamba_dt_rank=8,
                                                 attn_layer_period=2, attn_layer_offset=1, expert_layer_period=2,
                                                 expert_layer_offset=1, **MOE), False),
    "hybrid Mamba2 (falcon_h1)": ("falcon_h1", dict(BASE, mamba_d_ssm=128, mamba_n_heads=8, mamba_d_head=16,
                                                    mamba_n_groups=1, mamba_d_state=8, mamba_chunk_size=16), False),
    "linear attention + MoE (qwen3_next)": ("qwen3_next", dict(BASE, linear_key_head_dim=16, linear_value_head_dim=16,
                                                               linear_num_key_heads=2, linear_num_value_heads=4,
                                                               moe_intermediate_size=32,
                                                               shared_expert_intermediate_size=32, num_experts=4,
                                                               layer_types=["linear_attention", "full_attention"],
                                                               mlp_only_layers=[], **MOE), False),
    "short convolution (lfm2)": ("lfm2", dict(BASE, layer_types=["conv", "full_attention"], full_attn_idxs=[1]),
                                 False),
    "learned positions from the mask (opt)": ("opt", dict(hidden_size=64, num_hidden_layers=2, ffn_dim=128,
                                                          max_position_embeddings=256, word_embed_proj_dim=64,
                                                          num_attention_heads=4), False),
}


def build(model_type: str, kwargs: dict, vocab_size: int = 256, seed: int = 0):
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(seed)
    config = AutoConfig.for_model(model_type, vocab_size=vocab_size, **kwargs)
    return AutoModelForCausalLM.from_config(config)
