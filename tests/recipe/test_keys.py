"""Each recipe key is declared once, completely; help, mapping, resume rules, docs/recipe-keys.md follow."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from transformers import TrainingArguments

from sft_recipe.recipe.config import MAPPED_TRAINING_ARGS, SFTConfig
from sft_recipe.recipe.keys import DESTINATIONS, FIXED_TRAINING_ARGS, RESUME_RULES, SECTIONS, key_table, sections
from sft_recipe.rundir.resume import EXTENDING, TRAJECTORY_FREE

KEY_TABLE_DOC = Path(__file__).resolve().parents[2] / "docs" / "recipe-keys.md"
TA_FIELDS = {f.name for f in dataclasses.fields(TrainingArguments)}


def test_every_key_declares_help_section_destination_and_resume_rule():
    for f in dataclasses.fields(SFTConfig):
        meta = f.metadata
        assert meta.get("help", "").strip(), f"{f.name}: no help"
        assert meta.get("section") in SECTIONS, f"{f.name}: section {meta.get('section')!r}"
        assert meta.get("goes") in DESTINATIONS, f"{f.name}: goes {meta.get('goes')!r}"
        assert meta.get("resume") in RESUME_RULES, f"{f.name}: resume {meta.get('resume')!r}"
        assert (meta["goes"] == "trainer") <= bool(meta.get("to")), f"{f.name}: a trainer key names its fields"
        assert set(meta.get("to", ())) <= TA_FIELDS, f"{f.name}: {meta['to']} are not TrainingArguments fields"


def test_derived_sets_come_from_the_declarations():
    assert MAPPED_TRAINING_ARGS >= FIXED_TRAINING_ARGS and MAPPED_TRAINING_ARGS <= TA_FIELDS
    assert {"per_device_train_batch_size", "data_seed", "ignore_data_skip"} <= MAPPED_TRAINING_ARGS
    assert EXTENDING == {"max_steps", "num_epochs", "early_stopping_patience"}
    assert {"logging_steps", "output_dir", "loss_chunk_size"} <= TRAJECTORY_FREE
    assert not {"learning_rate", "seed", "dataset", "batch_size"} & (TRAJECTORY_FREE | EXTENDING)


def test_help_sections_hold_every_key_once():
    names = [f.name for _, fields in sections(SFTConfig) for f in fields]
    assert sorted(names) == sorted(f.name for f in dataclasses.fields(SFTConfig))


def test_docs_key_table_is_the_generated_one():
    """Regenerate with `python -m sft_recipe.recipe.config`; paste it between docs/recipe-keys.md's markers."""
    text = KEY_TABLE_DOC.read_text(encoding="utf-8")
    start, end = "<!-- recipe keys: generated -->\n", "<!-- end of recipe keys -->"
    assert start in text and end in text
    assert text.split(start, 1)[1].split(end, 1)[0].strip() == key_table(SFTConfig).strip()
