"""sft-recipe: supervised fine-tuning recipes on top of transformers.Trainer."""

__version__ = "0.1.0"
