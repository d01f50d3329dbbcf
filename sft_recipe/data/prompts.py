"""Alpaca prompt templates: how an instruction row becomes the prompt text the model sees.

The same functions format rows for training and prompts for `generate`, so the two can never
disagree about the template a model was trained with.
"""

from __future__ import annotations

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


def format_prompt(dataset_format: str, text: str, input: str = "") -> str:
    """The prompt for a user's text at generation time, in the format the model was trained on."""
    if dataset_format == "alpaca":
        return alpaca_prompt(text, input)
    return text


def short_prompt(prompt: str) -> str:
    """The instruction of an Alpaca prompt (the template's boilerplate hides it), else the prompt."""
    if "### Instruction:\n" not in prompt:
        return prompt.strip()
    instruction = prompt.split("### Instruction:\n", 1)[1].split("\n\n### ", 1)[0]
    if "### Input:\n" in prompt:
        instruction += " | input: " + prompt.split("### Input:\n", 1)[1].split("\n\n### ", 1)[0]
    return instruction
