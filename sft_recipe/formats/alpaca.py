"""`alpaca`: `instruction`, optional `input`, `output`, formatted with the Stanford Alpaca template.

The same template formats rows for training and prompts for `generate`, so the two can never
disagree about the template a model was trained with.
"""

from __future__ import annotations

from typing import Any

from .base import Form, Format, check_strings

# The two official Stanford Alpaca templates, verbatim.
ALPACA_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)
ALPACA_NO_INPUT = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:\n"
)


def alpaca_prompt(instruction: str, input: str | None = "") -> str:
    """Format an Alpaca row's prompt; an empty or whitespace-only `input` uses the no-input template."""
    if input and input.strip():
        return ALPACA_WITH_INPUT.format(instruction=instruction, input=input)
    return ALPACA_NO_INPUT.format(instruction=instruction)


def alpaca_to_prompt_completion(batch: dict[str, list]) -> dict[str, list]:
    inputs = batch.get("input") or [""] * len(batch["instruction"])
    return {"prompt": [alpaca_prompt(ins, inp) for ins, inp in zip(batch["instruction"], inputs)],
            "completion": batch["output"]}


class Alpaca(Format):
    name = "alpaca"
    form = Form.COMPLETION
    required = ("instruction", "output")
    string_columns = ("instruction", "output", "input")
    nullable = ("input",)
    help = "instruction, optional input, output: the Stanford Alpaca template"

    def to_form(self, row: dict[str, Any], where: str) -> dict[str, Any]:
        self.check_columns(row, where)
        self.check_row_strings(row, where)
        batch = alpaca_to_prompt_completion({"instruction": [row["instruction"]], "output": [row["output"]],
                                             "input": [row.get("input") or ""]})
        return {"prompt": batch["prompt"][0], "completion": batch["completion"][0]}

    def normalise(self, dataset, source: str):
        # A `map` (not a new in-memory Dataset) keeps the rows backed by the datasets cache, so the
        # tokenization after it is cached too: under `main_process_first` the other ranks reuse it.
        self.check_columns(dataset.column_names, source)
        present = [c for c in self.string_columns if c in dataset.column_names]
        check_strings(dataset, tuple(present), source, allow_null=self.nullable)
        return dataset.map(alpaca_to_prompt_completion, batched=True, remove_columns=dataset.column_names,
                           desc="Formatting")

    def prompt(self, text: str, input: str = "") -> str:
        return alpaca_prompt(text, input)

    def shown(self, prompt: str) -> str:
        """The instruction (and input) of an Alpaca prompt: the template's boilerplate hides it."""
        if "### Instruction:\n" not in prompt:
            return prompt.strip()
        instruction = prompt.split("### Instruction:\n", 1)[1].split("\n\n### ", 1)[0]
        if "### Input:\n" in prompt:
            instruction += " | input: " + prompt.split("### Input:\n", 1)[1].split("\n\n### ", 1)[0]
        return instruction

    def card_prompt(self, instruction: str) -> tuple[str, str]:
        return "the Stanford Alpaca template (no-input variant shown)", alpaca_prompt(instruction)


ALPACA = Alpaca()
