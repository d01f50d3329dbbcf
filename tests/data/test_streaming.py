"""`streaming: true`: the same rows and blocks as without streaming, read from (compressed) shards,
split over processes without overlap, and a position that resumes exactly."""

from __future__ import annotations

import gzip
import itertools
import json

import datasets
import pytest
from conftest import alpaca_rows, make_toy_tokenizer, write_jsonl, write_recipe

from sft_recipe.cli import main
from sft_recipe.recipe.config import SFTConfig
from sft_recipe.data.prepare import load_raw
from sft_recipe.data.load import load_source
from sft_recipe.data.streaming import node_share
from sft_recipe.data.streaming import prepare_stream
from sft_recipe.data.encode import encode_rows
from sft_recipe.data.tokenization import token_stream

WORDS = ["the", "cat", "sat", "on", "a", "big", "red", "mat", "dog", "ran", "to", "blue", "one", "two"]


def corpus_lines(n: int = 60) -> list[str]:
    return [" ".join(WORDS[(i * 7 + j) % len(WORDS)] for j in range(1 + i % 5)) + "\n" for i in range(n)]


def text_config(dataset, **overrides) -> SFTConfig:
    values = dict(dataset=str(dataset), dataset_format="text", model_name="toy", streaming=True, max_steps=1,
                  max_length=8, streaming_eval_examples=3)
    values.update(overrides)
    return SFTConfig(**values)


def take(stream, n: int) -> list[list[int]]:
    return [item["input_ids"] for item in itertools.islice(iter(stream), n)]


def blocks(ids: list[int], size: int) -> list[list[int]]:
    return [ids[i:i + size] for i in range(0, len(ids) - size + 1, size)]


def expected_text(lines: list[str], tokenizer, eos: bool) -> tuple[list[list[int]], list[int]]:
    """Token ids of every line as the non-streaming path makes them (`token_stream`), per line."""
    per_line = []
    for line in lines:
        ids = token_stream(datasets.Dataset.from_dict({"text": [line]}), tokenizer, add_eos=eos).to_pylist()
        per_line.append(ids)
    return per_line, [t for ids in per_line for t in ids]


def check_text_stream(config, lines, tokenizer, eos: bool) -> None:
    train, eval_rows, _, stats = prepare_stream(config, tokenizer)
    per_line, whole = expected_text(lines, tokenizer, eos)
    assert eval_rows["input_ids"] == blocks(whole, 8)[:3]  # the first blocks of the stream are held out
    used = stats["streaming"]["held_out_source_rows"]
    assert sum(len(ids) for ids in per_line[:used - 1]) < 24 <= sum(len(ids) for ids in per_line[:used])
    rest = [t for ids in per_line[used:] for t in ids]  # training starts at the next row, never inside eval text
    assert take(train, 6) == blocks(rest, 8)[:6]


def test_text_blocks_match_the_non_streaming_token_stream(tmp_path):
    tokenizer = make_toy_tokenizer()
    lines = corpus_lines()
    path = tmp_path / "corpus.txt"
    path.write_text("".join(lines), encoding="utf-8")
    check_text_stream(text_config(path), lines, tokenizer, eos=False)


@pytest.mark.parametrize("kind", ["txt.gz", "jsonl.gz", "parquet"])
def test_directory_of_compressed_shards_streams_in_file_order(tmp_path, kind):
    tokenizer = make_toy_tokenizer()
    lines = corpus_lines()
    shards = tmp_path / "shards"
    shards.mkdir()
    for i, part in enumerate((lines[:25], lines[25:])):
        path = shards / f"part-{i}.{kind}"
        if kind == "txt.gz":
            with gzip.open(path, "wt", encoding="utf-8") as f:
                f.write("".join(part))
        elif kind == "jsonl.gz":
            with gzip.open(path, "wt", encoding="utf-8") as f:
                f.write("".join(json.dumps({"text": line}) + "\n" for line in part))
        else:
            datasets.Dataset.from_dict({"text": part}).to_parquet(str(path))
    # a directory is documents (EOS after each row), as without streaming
    check_text_stream(text_config(shards), lines, tokenizer, eos=True)


def test_unreadable_compression_is_one_line(tmp_path):
    path = tmp_path / "corpus.txt.zst"
    path.write_bytes(b"\x28\xb5\x2f\xfd")
    try:
        import zstandard  # noqa: F401
    except ImportError:
        with pytest.raises(Exception, match="needs the 'zstandard' package"):
            load_source(str(path), text_config(path), streaming=True)
    else:
        pytest.skip("zstandard is installed")


def test_sft_rows_match_the_non_streaming_rows(tmp_path, bpe_tokenizer):
    path = write_jsonl(tmp_path / "alpaca.jsonl", alpaca_rows(40))
    config = SFTConfig(dataset=str(path), dataset_format="alpaca", model_name="toy", streaming=True, max_steps=1,
                       max_length=128, streaming_eval_examples=5)
    train, eval_rows, eval_raw, stats = prepare_stream(config, bpe_tokenizer)
    raw, _ = load_raw(SFTConfig(dataset=str(path), dataset_format="alpaca", model_name="toy", max_length=128))
    used = stats["streaming"]["held_out_source_rows"]
    plain = SFTConfig(dataset=str(path), dataset_format="alpaca", model_name="toy", max_length=128)
    held, _ = encode_rows(raw.select(range(used)), bpe_tokenizer, plain)
    rest, _ = encode_rows(raw.select(range(used, len(raw))), bpe_tokenizer, plain)
    assert len(eval_rows) == 5 and eval_rows["input_ids"] == held["input_ids"]
    assert eval_rows["labels"] == held["labels"]
    items = list(itertools.islice(iter(train), len(rest)))
    assert [i["input_ids"] for i in items] == rest["input_ids"]
    assert [i["labels"] for i in items] == rest["labels"]
    assert eval_raw is not None and eval_raw["prompt"] == raw["prompt"][:used]


def test_processes_share_the_training_rows_without_overlap(tmp_path):
    path = write_jsonl(tmp_path / "rows.jsonl", [{"text": f"row {i}"} for i in range(23)])
    stream = load_source(str(path), text_config(path), streaming=True)
    shares = [[r["text"] for r in node_share(stream, 5, rank, 2)] for rank in (0, 1)]
    assert shares[0] == [f"row {i}" for i in range(5, 23, 2)]
    assert shares[1] == [f"row {i}" for i in range(6, 23, 2)]


@pytest.mark.parametrize("fmt", ["text", "alpaca"])
def test_a_saved_position_resumes_at_the_next_item(tmp_path, bpe_tokenizer, fmt):
    """Read ahead (as the Trainer's loader does), save the position of an earlier item, resume from it
    in a new stream: the same items follow, across the end of the source (the stream starts over)."""
    if fmt == "text":
        path = tmp_path / "corpus.txt"
        path.write_text("".join(corpus_lines(30)), encoding="utf-8")
        config, tokenizer = text_config(path), make_toy_tokenizer()
    else:
        path = write_jsonl(tmp_path / "alpaca.jsonl", alpaca_rows(20))
        config = SFTConfig(dataset=str(path), dataset_format="alpaca", model_name="toy", streaming=True, max_steps=1,
                           max_length=128, streaming_eval_examples=3)
        tokenizer = bpe_tokenizer
    first, _, _, _ = prepare_stream(config, tokenizer)
    straight = take(first, 40)
    position = json.loads(json.dumps(first.state_at(13)))  # as written to and read from stream_state_0.json
    resumed, _, _, _ = prepare_stream(config, tokenizer)
    resumed.load_state(position)
    assert take(resumed, 27) == straight[13:]
    assert resumed.items == 40


def test_streaming_without_max_steps_is_one_line(tmp_path, capsys):
    path = tmp_path / "corpus.txt"
    path.write_text("".join(corpus_lines()), encoding="utf-8")
    recipe = write_recipe(tmp_path / "recipe.yaml", dict(dataset=str(path), dataset_format="text", model_name="gpt2",
                                                         streaming=True, output_dir=str(tmp_path / "out")))
    code = main(["train", str(recipe)])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and "streaming: true needs 'max_steps'" in err, err


def test_conversations_match_the_non_streaming_rows(tmp_path, bpe_chatml):
    rows = [{"messages": [{"role": "user", "content": f"the cat sat {i}"},
                          {"role": "assistant", "content": "yes " * (1 + i % 4)}]} for i in range(12)]
    rows[3]["messages"] = rows[3]["messages"][:1]  # unanswered: dropped, as without streaming
    path = write_jsonl(tmp_path / "chats.jsonl", rows)
    settings = dict(dataset=str(path), dataset_format="messages", model_name="toy", max_length=64,
                    chat_template="chatml")
    train, eval_rows, _, stats = prepare_stream(SFTConfig(**settings, streaming=True, max_steps=1,
                                                          streaming_eval_examples=4), bpe_chatml)
    raw, _ = load_raw(SFTConfig(**settings))
    expected, _ = encode_rows(raw, bpe_chatml, SFTConfig(**settings))
    assert stats["streaming"]["held_out_source_rows"] == 5  # 4 kept + the unanswered one
    assert eval_rows["input_ids"] == expected["input_ids"][:4] and eval_rows["labels"] == expected["labels"][:4]
    items = list(itertools.islice(iter(train), len(expected) - 4))
    assert [i["input_ids"] for i in items] == expected["input_ids"][4:]
    assert [i["labels"] for i in items] == expected["labels"][4:]
