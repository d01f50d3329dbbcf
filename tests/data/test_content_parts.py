"""OpenAI-style content parts: joined to one string before any template, in memory and streamed.

Left to themselves the templates disagree (Qwen3's renders such a turn empty, Llama 3.2's prints the
list's repr, others raise), so the parts are joined first and every template sees a string.
"""

from __future__ import annotations

import dataclasses
import json

import pytest
from conftest import write_jsonl
from families import shared_tokenizer  # noqa: E402

from sft_recipe.cli import main
from sft_recipe.data.encode import encode_rows
from sft_recipe.data.load import load_source
from sft_recipe.data.prepare import load_raw
from sft_recipe.data.streaming import prepare_stream
from sft_recipe.errors import DataError
from sft_recipe.formats.conversation import join_content_parts, normalise_messages
from sft_recipe.recipe.config import SFTConfig


def parts(*texts: str) -> list[dict]:
    return [{"type": "text", "text": t} for t in texts]


def conversations(with_parts: bool) -> list[dict]:
    """The same conversations, content as parts (in some messages only) or as the joined strings."""
    def content(*texts: str):
        return parts(*texts) if with_parts else "\n".join(texts)

    rows = []
    for i in range(6):
        rows.append({"messages": [
            {"role": "system", "content": content("You are terse.", "Answer in one word.")},
            {"role": "user", "content": content(f"What is {i} + 1?", "Think first.")},
            {"role": "assistant", "content": content(str(i + 1))},
            {"role": "user", "content": "And twice that?"},  # a plain string beside the parts: a mixed file
            {"role": "assistant", "content": content("It is", f"{2 * (i + 1):03d}")},  # "002": must stay a string
        ]})
    return rows


def test_golden_join():
    assert join_content_parts(parts("a", "b c"), "messages[0]") == "a\nb c"
    assert join_content_parts([{"type": "input_text", "text": "x", "image_url": None}], "m") == "x"
    assert join_content_parts("plain", "m") == "plain"
    messages, _ = normalise_messages([{"role": "user", "content": parts("1", "2")}, {"role": "assistant",
                                                                                   "content": parts("007")}])
    assert [m["content"] for m in messages] == ["1\n2", "007"]


@pytest.mark.parametrize("family", ["qwen3", "llama3"])  # one renders list content empty, one as a repr
def test_parts_render_byte_identical_to_the_joined_string_in_memory_and_streamed(tmp_path, family):
    tokenizer = shared_tokenizer(family)
    encoded = {}
    for with_parts in (True, False):
        path = write_jsonl(tmp_path / f"{family}-{with_parts}.jsonl", conversations(with_parts))
        config = SFTConfig(dataset=str(path), dataset_format="messages", model_name="toy", max_length=512,
                           callbacks=[])
        raw, _ = load_raw(config)
        rows, _ = encode_rows(raw, tokenizer, config)
        stream_config = dataclasses.replace(config, streaming=True, max_steps=1, streaming_eval_examples=10**6)
        _, streamed, _, _ = prepare_stream(stream_config, tokenizer)
        encoded[with_parts] = (rows["input_ids"], rows["labels"], streamed["input_ids"], streamed["labels"])
    assert encoded[True] == encoded[False]
    ids, labels, stream_ids, _ = encoded[True]
    assert ids == stream_ids and len(ids) == 6
    text = tokenizer.decode(ids[0])
    assert "You are terse.\nAnswer in one word." in text and "It is\n002" in text and "'type'" not in text


def test_a_mixed_file_keeps_every_string_as_written(tmp_path):
    """`datasets` types a field that holds strings and lists as Json, which decodes "002" back as 2:
    such a file is read by Python's json instead, so nothing is silently changed."""
    path = write_jsonl(tmp_path / "mixed.jsonl", conversations(with_parts=True))
    raw, _ = load_raw(SFTConfig(dataset=str(path), dataset_format="messages", model_name="toy"))
    assert raw[0]["messages"][4]["content"] == "It is\n002" and raw[0]["messages"][3]["content"] == "And twice that?"


@pytest.mark.parametrize("streaming", [False, True], ids=["in-memory", "streamed"])
@pytest.mark.parametrize("part", [{"type": "image_url", "image_url": {"url": "data:..."}},
                                  {"type": "input_audio", "input_audio": {"data": "..."}}], ids=["image", "audio"])
def test_another_part_type_is_one_line_naming_the_row(tmp_path, capsys, bpe_tokenizer_dir, streaming, part):
    rows = conversations(with_parts=True)
    rows[3]["messages"][1]["content"] = [part, {"type": "text", "text": "What is this?"}]
    path = write_jsonl(tmp_path / "chats.jsonl", rows)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(json.dumps({"model_name": str(bpe_tokenizer_dir), "dataset": str(path), "dataset_format": "messages",
                                  "chat_template": "chatml", "streaming": streaming, "max_steps": 1}))
    with pytest.raises(DataError, match=r"line 4: key 'messages\[1\]\.content\[0\]\.type': a '\w+' part cannot be "
                                        r"trained on"):
        if streaming:
            config = SFTConfig(dataset=str(path), dataset_format="messages", model_name="toy", streaming=True,
                               max_steps=1, streaming_eval_examples=10**6)
            list(load_source(str(path), config, streaming=True))
        else:
            load_raw(SFTConfig(dataset=str(path), dataset_format="messages", model_name="toy"))
    assert main(["preprocess", str(recipe), "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "chats.jsonl" in err and "cannot be trained on" in err
