"""Generation with the template a model was trained on (the demo, `generation_eval_samples`,
the samples callback, `generate` and `chat`)."""

from __future__ import annotations

from typing import Any

import torch

from ..data.literal import encode as encode_literal, literal_spans, special_pattern
from ..data.tokenization import prompt_ids_without_eos
from ..errors import UserError
from .load import max_positions


@torch.no_grad()
def generate_answers(model, tokenizer, prompts: list[str], *, max_new_tokens: int = 128,
                     temperature: float = 0.0, top_p: float = 1.0, batch_size: int = 16,
                     stop_token_ids: list[int] | None = None, add_special_tokens: bool = True,
                     user_text: list[str] = ()) -> list[str]:
    """Complete each prompt; only the new text is returned, cut at EOS (or `stop_token_ids`).

    Prompts are tokenized exactly as in training (see `data.tokenization.prompt_ids_without_eos`) and
    left-padded, so batched answers equal one-by-one answers. An answer stops at the model's context
    (a longer one would index past its positions); an empty or too long prompt is a UserError.
    Rendered chat prompts already hold the template's BOS: pass `add_special_tokens=False` for them,
    as in training. `user_text`: what the user typed, in which a special token's spelling stays text
    (`data/literal.py`), as in training.
    """
    encode = prompt_ids_without_eos(tokenizer) if add_special_tokens else \
        (lambda texts: tokenizer(texts, add_special_tokens=False)["input_ids"])
    specials = special_pattern(tokenizer)
    # As in training: the user's text is text.
    if user_text and not add_special_tokens and specials is not None and any(specials.search(t) for t in user_text):
        encode = (lambda texts: [encode_literal(tokenizer, p, literal_spans(p, user_text, specials))[0]  # noqa: E731
                                 for p in texts])
    stops = stop_token_ids or [tokenizer.eos_token_id]
    was_training = model.training
    model.eval()
    answers: list[str] = []
    device = next(model.parameters()).device
    context = max_positions(getattr(model, "config", None))
    for start in range(0, len(prompts), batch_size):
        ids = encode(prompts[start:start + batch_size])
        width = max(len(x) for x in ids)
        if min(len(x) for x in ids) == 0:
            raise UserError("the prompt is empty (no tokens); give some text to continue")
        if context is not None and width >= context:
            raise UserError(f"the prompt is {width} tokens long; the model's context is {context} tokens; "
                            "shorten it")
        new_tokens = max_new_tokens if context is None else min(max_new_tokens, context - width)
        input_ids = torch.tensor([[tokenizer.pad_token_id] * (width - len(x)) + x for x in ids], device=device)
        attention_mask = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in ids], device=device)
        sampling: dict[str, Any] = {"do_sample": True, "temperature": temperature, "top_p": top_p} \
            if temperature > 0 else {"do_sample": False}
        out = model.generate(input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=new_tokens,
                             eos_token_id=stops, pad_token_id=tokenizer.pad_token_id, **sampling)
        for row in out[:, width:].tolist():
            cut = next((i for i, t in enumerate(row) if t in stops), len(row))
            answers.append(tokenizer.decode(row[:cut], skip_special_tokens=True))
    model.train(was_training)
    return answers

