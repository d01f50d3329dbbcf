"""`streaming: true` with a `datasets:` mixture: each source streamed as on its own, interleaved by
weight with every prefix on its shares, evaluated per source, and a position that resumes exactly."""

from __future__ import annotations

import itertools
import json

import pytest
from conftest import alpaca_rows, write_jsonl
from hypothesis import given, settings
from hypothesis import strategies as st

from sft_recipe.recipe.config import SFTConfig
from sft_recipe.data.mixture import source_config
from sft_recipe.data.prepare import describe_stats, prepare_data
from sft_recipe.data.mixture import draw_counts, integer_weights, next_source
from sft_recipe.data.streaming import prepare_stream


def take(stream, n: int) -> list[list[int]]:
    return [item["input_ids"] for item in itertools.islice(iter(stream), n)]


def order(weights: list[float], n: int) -> list[int]:
    counts, picked, whole = [0] * len(weights), [], integer_weights(weights)
    for _ in range(n):
        k = next_source(counts, whole)
        counts[k] += 1
        picked.append(k)
    return picked


def test_interleaving_golden():
    # [2, 1]: n=1 both below their rounded-up share, weight per item 2/1 vs 1/1 -> 0; n=2: 2/2 vs 1/1, a tie
    # -> the earlier, 0; n=3: source 0 holds 2 = its share of 3 items (2), so only 1 may take it.
    assert order([2, 1], 9) == [0, 0, 1, 0, 0, 1, 0, 0, 1]
    assert order([1, 1, 2], 8) == [2, 0, 1, 2, 2, 0, 1, 2]  # ties go to the earlier source
    assert order([0.25, 0.75], 8) == [1, 1, 0, 1, 1, 1, 0, 1]


def test_one_meaning_of_weight_in_memory_and_streamed():
    """The in-memory counts are what the stream's first `total` items deal each source."""
    for available, weights in (([40, 9], [2, 1]), ([5, 5, 5], [1, 1, 2]), ([100, 3], [0.25, 0.75])):
        picked = order(weights, sum(available))
        assert draw_counts(available, weights) == [picked.count(k) for k in range(len(weights))]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(min_value=0.05, max_value=20), min_size=1, max_size=5), st.integers(1, 300))
def test_every_prefix_holds_each_share_rounded_down_or_up(weights, n):
    """Quota at every prefix: each source holds floor or ceil of its share of the items so far."""
    counts, whole = [0] * len(weights), integer_weights(weights)
    for i in range(1, n + 1):
        counts[next_source(counts, whole)] += 1
        for k, w in enumerate(whole):
            assert counts[k] * sum(whole) > (i * w) - sum(whole) and counts[k] * sum(whole) < i * w + sum(whole), \
                (i, counts, weights)


def mixture_config(tmp_path, **overrides) -> SFTConfig:
    """An Alpaca source under its own column names (weight 2) and a small conversation source (weight 1)."""
    renamed = [{"question": r["instruction"], "context": r["input"], "answer": r["output"]} for r in alpaca_rows(40)]
    chats = [{"messages": [{"role": "user", "content": f"the cat sat {i}"},
                           {"role": "assistant", "content": "yes " * (1 + i % 3)}]} for i in range(9)]
    values = dict(model_name="toy", streaming=True, max_steps=1, max_length=192, streaming_eval_examples=3,
                  chat_template="chatml", datasets=[
                      {"path": str(write_jsonl(tmp_path / "tasks.jsonl", renamed)), "format": "alpaca", "weight": 2,
                       "columns": {"instruction": "question", "input": "context", "output": "answer"}},
                      {"path": str(write_jsonl(tmp_path / "chats.jsonl", chats)), "format": "messages"}])
    values.update(overrides)
    return SFTConfig(**values)


def test_sources_stream_as_on_their_own_interleaved_by_weight(tmp_path, bpe_chatml):
    config = mixture_config(tmp_path)
    data = prepare_data(config, bpe_chatml)
    alone = [prepare_stream(source_config(config, s), bpe_chatml) for s in config.datasets]
    # the chat source has 6 training rows: it starts over (repeated whole) while the larger one goes on
    streams = [iter(take(part[0], 40)) for part in alone]
    assert take(data.train, 30) == [next(streams[k]) for k in order([2, 1], 30)]
    assert set(data.eval_parts) == {"tasks", "chats"}  # eval_tasks_loss and eval_chats_loss
    for name, part in zip(("tasks", "chats"), alone):
        assert data.eval_parts[name]["input_ids"] == part[1]["input_ids"]  # each source's own first rows
        assert data.eval_parts[name]["labels"] == part[1]["labels"]
    assert len(data.eval) == 6
    line = describe_stats(data.stats)
    assert "sources: tasks streamed (weight 2: 66.7% of items), eval 3; chats streamed (weight 1: 33.3% of items), " \
           "eval 3" in line
    assert data.stats["streaming"]["held_out_source_rows"] == {"tasks": 3, "chats": 3}


def test_a_saved_mixture_position_resumes_at_the_next_item(tmp_path, bpe_chatml):
    """Read ahead, save an earlier item's position, resume in a new stream: the same items follow,
    across the small source's restart, and a source not drawn yet starts at its beginning."""
    config = mixture_config(tmp_path)
    first = prepare_data(config, bpe_chatml).train
    straight = take(first, 45)
    for saved_at in (1, 2, 13, 31):  # item 1 and 2: the chat source has not been drawn yet
        position = json.loads(json.dumps(first.state_at(saved_at)))  # as written to stream_state_0.json
        assert position["per_source"] == dict(zip(("tasks", "chats"), position["counts"]))
        resumed = prepare_data(config, bpe_chatml).train
        resumed.load_state(position)
        assert take(resumed, 45 - saved_at) == straight[saved_at:]
        assert resumed.items == 45


def test_a_position_resumed_and_saved_again_is_unchanged(tmp_path, bpe_chatml):
    config = mixture_config(tmp_path)
    first = prepare_data(config, bpe_chatml).train
    take(first, 20)
    position = json.loads(json.dumps(first.state_at(12)))
    resumed = prepare_data(config, bpe_chatml).train
    resumed.load_state(position)
    assert json.loads(json.dumps(resumed.state_at(12))) == position  # saved again before reading anything


def test_a_resumed_source_read_ahead_of_training_still_has_its_position(tmp_path, bpe_chatml):
    """After a resume the loader reads ahead: a rare source drawn only by that read-ahead must still
    know the position training stands at (it used to raise at the next save)."""
    base = mixture_config(tmp_path)
    config = mixture_config(tmp_path, datasets=[dict(s.to_dict(), weight=w) for s, w in zip(base.datasets, (9, 1))])
    first = prepare_data(config, bpe_chatml).train
    straight = take(first, 30)
    resumed = prepare_data(config, bpe_chatml).train
    resumed.load_state(json.loads(json.dumps(first.state_at(8))))
    assert take(resumed, 8) == straight[8:16]  # items 9..16: the chat source is drawn at item 10 only
    again = prepare_data(config, bpe_chatml).train
    again.load_state(json.loads(json.dumps(resumed.state_at(12))))  # the chat source stood at its 1st item
    assert take(again, 18) == straight[12:30]


def test_resuming_with_other_sources_is_one_line(tmp_path, bpe_chatml):
    from sft_recipe.errors import UserError

    config = mixture_config(tmp_path)
    first = prepare_data(config, bpe_chatml).train
    take(first, 5)
    position = first.state_at(5)
    only_tasks = mixture_config(tmp_path, datasets=[config.datasets[0].to_dict()])
    with pytest.raises(UserError, match="position is for the sources tasks, chats, the recipe has tasks"):
        prepare_data(only_tasks, bpe_chatml).train.load_state(position)


def test_a_source_with_no_usable_training_row_is_one_line_not_a_hang(tmp_path, bpe_chatml):
    """Its held-out rows are fine, every later answer is empty: reading it used to loop forever."""
    from sft_recipe.errors import DataError

    rows = [{"messages": [{"role": "user", "content": f"hi {i}"}, {"role": "assistant", "content": "yes" if i < 3
                                                                    else " "}]} for i in range(8)]
    config = mixture_config(tmp_path)
    sources = [config.datasets[0].to_dict(), {"path": str(write_jsonl(tmp_path / "bad.jsonl", rows)),
                                              "format": "messages"}]
    train = prepare_data(mixture_config(tmp_path, datasets=sources), bpe_chatml).train
    with pytest.raises(DataError, match="bad.jsonl: none of the 5 training rows gave a training item"):
        take(train, 10)
