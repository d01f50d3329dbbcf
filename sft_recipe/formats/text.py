"""`text`: raw documents (`text`), every token trained (pretraining, continued pretraining)."""

from __future__ import annotations

from typing import Any

from .base import Form, Format, check_strings


class Text(Format):
    name = "text"
    form = Form.TEXT
    required = ("text",)
    string_columns = ("text",)
    help = "raw text, every token trained, in blocks of max_length"

    def to_form(self, row: dict[str, Any], where: str) -> dict[str, Any]:
        self.check_columns(row, where)
        self.check_row_strings(row, where)
        return {"text": row["text"]}

    def normalise(self, dataset, source: str):
        self.check_columns(dataset.column_names, source)
        check_strings(dataset, self.string_columns, source, allow_null=())
        return dataset.select_columns(["text"])

    def card_prompt(self, instruction: str) -> tuple[str, str]:
        return "plain text to continue", "Once upon a time"


TEXT = Text()
