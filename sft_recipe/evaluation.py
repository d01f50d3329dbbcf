"""`sft-recipe eval`: the end-of-training evaluation, run again on a saved model.

Same split (the recipe's data, `eval_fraction` and `seed` select the same held-out rows), same
metrics: eval loss, perplexity and next-token accuracy on trainable tokens (from
`SFTTrainer.evaluate`), plus exact match and ROUGE-L on generated answers when
`generation_eval_samples > 0`.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from .config import SFTConfig, to_training_arguments

log = logging.getLogger("sft_recipe")
RESULTS_FILENAME = "eval_results.json"


def evaluate_saved(model_dir: str | Path, config: SFTConfig) -> dict[str, Any]:
    """Metrics of the model (or LoRA adapter) in `model_dir` on the recipe's held-out split."""
    from .collate import make_collator
    from .model import load_for_inference
    from .train import describe_stats, generation_check, prepare_data
    from .trainer import SFTTrainer

    model, tokenizer = load_for_inference(model_dir)  # its saved tokenizer carries any chat template
    data = prepare_data(config, tokenizer)
    log.info("data: %s", describe_stats(data.stats))
    args = to_training_arguments(config, report_to="none")
    collator = make_collator(config.packing, tokenizer.pad_token_id, config.pad_to_multiple_of,
                             flash_attention=model.config._attn_implementation == "flash_attention_2")
    trainer = SFTTrainer(model=model, args=args, eval_dataset=data.eval, data_collator=collator,
                         processing_class=tokenizer, loss_chunk_size=config.resolved_loss_chunk_size)
    metrics = trainer.evaluate()
    if config.generation_eval_samples:
        metrics.update(generation_check(config, trainer, tokenizer, data, "saved model"))
    return metrics


def write_results(metrics: dict[str, Any], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return path
