"""One pipeline: the same rows give the same ids, labels, counts and warnings in memory and streamed.

The two paths differ only where the dataset type forces it: which rows are held out (a seeded random
share in memory, the first rows of a stream). So each case is compared on all of its rows: in memory
every row is loaded, validated and encoded; streamed, every row is held out (`streaming_eval_examples`
above the row count), which runs the stream's loader, adapter, encoder and counting.
"""

from __future__ import annotations

import logging

import pytest
from conftest import alpaca_rows, write_jsonl
from families import A, U, shared_tokenizer  # noqa: E402

from sft_recipe.data.encode import encode_rows, enforce_fidelity
from sft_recipe.data.fidelity import FidelityReport
from sft_recipe.data.load import is_one_text
from sft_recipe.data.mask import to_blocks
from sft_recipe.data.prepare import load_raw
from sft_recipe.data.stats import TokenStats
from sft_recipe.data.streaming import prepare_stream
from sft_recipe.data.tokenization import token_stream
from sft_recipe.recipe.config import SFTConfig

ALL = 10**6  # more than any case's rows: a stream holds every row out


def in_memory(config: SFTConfig, tokenizer):
    """What prepare.tokenize_splits does to one part, on all the rows."""
    raw, dropped_empty = load_raw(config)
    if config.form.value == "raw_text":
        ids = token_stream(raw, tokenizer, add_eos=not is_one_text(config.dataset))
        rows = to_blocks(ids, config.max_length, "train")
        n = len(rows) * config.max_length
        return rows, TokenStats(rows=len(rows), kept=len(rows), tokens=n, trainable_tokens=n,
                                dropped_tokens=len(ids) - n)
    report = FidelityReport(config.dataset)
    rows, stats = encode_rows(raw, tokenizer, config, report)
    enforce_fidelity(report, config)
    return rows, stats.add(TokenStats(rows=dropped_empty, dropped_empty=dropped_empty))


def streamed(config: SFTConfig, tokenizer):
    import dataclasses

    stream_config = dataclasses.replace(config, streaming=True, max_steps=1, streaming_eval_examples=ALL)
    _, rows, _, stats = prepare_stream(stream_config, tokenizer)
    return rows, TokenStats.from_dict(stats["eval"])


def warnings_of(caplog, run):
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="sft_recipe"):
        out = run()
    return out, sorted(r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING)


def write_text_directory(tmp_path):
    folder = tmp_path / "corpus"
    folder.mkdir()
    for i in range(3):
        (folder / f"part-{i}.txt").write_text("".join(f"the cat sat on the mat {i} {j}\n" for j in range(9)),
                                             encoding="utf-8")
    return folder


def case_files(tmp_path, name: str) -> dict:
    """Each format, a directory of .txt files, an empty completion and a lossy template."""
    rows = alpaca_rows(12)
    if name == "alpaca-with-an-empty-answer":
        rows[4]["output"] = "  "
        return dict(dataset=str(write_jsonl(tmp_path / "a.jsonl", rows)), dataset_format="alpaca")
    if name == "prompt_completion":
        pc = [{"prompt": r["instruction"], "completion": r["output"]} for r in rows]
        pc[2]["completion"] = ""
        return dict(dataset=str(write_jsonl(tmp_path / "pc.jsonl", pc)), dataset_format="prompt_completion")
    if name == "messages-lossy-template":  # mistral's template writes no system prompt before the last turn
        chats = [{"messages": [{"role": "system", "content": "Be brief."}, U(f"the cat {i}"), A("yes " * (1 + i % 3)),
                               U("more"), A("no")]} for i in range(8)]
        chats[3] = {"messages": [U("unanswered")]}
        return dict(dataset=str(write_jsonl(tmp_path / "chats.jsonl", chats)), dataset_format="messages",
                    data_fidelity="warn", family="mistral")
    if name == "text-documents":
        docs = [{"text": f"document {i}: the cat sat on the mat " * (1 + i % 4)} for i in range(10)]
        return dict(dataset=str(write_jsonl(tmp_path / "docs.jsonl", docs)), dataset_format="text")
    if name == "text-directory":
        return dict(dataset=str(write_text_directory(tmp_path)), dataset_format="text")
    raise AssertionError(name)


@pytest.mark.parametrize("name", ["alpaca-with-an-empty-answer", "prompt_completion", "messages-lossy-template",
                                  "text-documents", "text-directory"])
def test_both_paths_give_the_same_rows_counts_and_warnings(tmp_path, name, bpe_tokenizer, caplog):
    values = case_files(tmp_path, name)
    family = values.pop("family", None)
    tokenizer = shared_tokenizer(family) if family else bpe_tokenizer
    config = SFTConfig(model_name="toy", max_length=48 if values["dataset_format"] == "text" else 256,
                       callbacks=[], **values)
    (memory_rows, memory_stats), memory_warnings = warnings_of(caplog, lambda: in_memory(config, tokenizer))
    (stream_rows, stream_stats), stream_warnings = warnings_of(caplog, lambda: streamed(config, tokenizer))
    assert len(memory_rows) > 0
    assert [list(r) for r in stream_rows["input_ids"]] == [list(r) for r in memory_rows["input_ids"]]
    assert [list(r) for r in stream_rows["labels"]] == [list(r) for r in memory_rows["labels"]]
    assert stream_stats == memory_stats
    assert stream_warnings == memory_warnings
    if name != "text-documents":  # each case shows what it is there for: a drop, a loss or a rule
        assert memory_warnings or name.startswith("text"), memory_warnings
    if name == "messages-lossy-template":
        assert any("system prompt" in w for w in memory_warnings) and memory_stats.dropped_other == 1
    if name.startswith(("alpaca", "prompt")):
        assert memory_stats.dropped_empty == 1


def test_one_running_text_gets_no_eos_between_lines_either_way(tmp_path, bpe_tokenizer):
    """The EOS rule, once: a single .txt is one text; documents (and a directory's rows) get EOS."""
    single = tmp_path / "one.txt"
    single.write_text("".join(f"the cat sat {i}\n" for i in range(40)), encoding="utf-8")
    config = SFTConfig(dataset=str(single), dataset_format="text", model_name="toy", max_length=16, callbacks=[])
    (memory_rows, _), (stream_rows, _) = in_memory(config, bpe_tokenizer), streamed(config, bpe_tokenizer)
    eos = bpe_tokenizer.eos_token_id
    assert [list(r) for r in stream_rows["input_ids"]] == [list(r) for r in memory_rows["input_ids"]]
    assert not any(eos in r for r in memory_rows["input_ids"])
    assert is_one_text(str(single)) and not is_one_text(str(tmp_path)) and not is_one_text("x.jsonl")
    assert is_one_text(str(tmp_path / "one.txt.gz"))
