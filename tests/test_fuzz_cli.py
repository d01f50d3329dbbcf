"""Fuzzing the real entry point, `sft_recipe.cli.main`, in-process: generated recipes and generated
or corrupted data files (wrong encodings, truncated lines, wrong types, odd sizes). Every example
must end in exit 0 with a correct result, or exit 2 with exactly one error line; never a traceback."""

from __future__ import annotations

import csv
import io
import json
import tempfile
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

from conftest import base_recipe, write_recipe
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sft_recipe.cli import main

WORDS = st.sampled_from(["the", "cat", "sat", "on", "mat", "yes", "no", "é", "\n", "", " ", "\x00", "🙂"])
TEXT = st.lists(WORDS, max_size=8).map(" ".join)
VALUE = st.one_of(TEXT, st.none(), st.integers(-5, 5), st.floats(allow_nan=True), st.booleans(),
                  st.lists(TEXT, max_size=2), st.dictionaries(st.sampled_from(["role", "content", "from"]), TEXT,
                                                             max_size=2))
MESSAGE = st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant", "system", "bot"]), "content": TEXT})
ROW = st.one_of(
    st.fixed_dictionaries({"instruction": TEXT, "output": TEXT}, optional={"input": st.one_of(TEXT, st.none())}),
    st.fixed_dictionaries({"prompt": TEXT, "completion": TEXT}),
    st.fixed_dictionaries({"text": TEXT}),
    st.fixed_dictionaries({"messages": st.lists(MESSAGE, max_size=3)}),
    st.dictionaries(st.sampled_from(["instruction", "input", "output", "prompt", "completion", "text",
                                     "messages", "conversations"]), VALUE, max_size=4),
)
CORRUPTION = st.sampled_from(["none", "none", "latin-1", "truncate", "binary", "empty", "nul"])
RECIPE = st.fixed_dictionaries({}, optional={
    "dataset_format": st.sampled_from(["alpaca", "prompt_completion", "text", "messages", "chat"]),
    "max_length": st.one_of(st.integers(-2, 300), st.just(10_000)),
    "eval_fraction": st.one_of(st.floats(-0.5, 1.5), st.just(0.3)),
    "batch_size": st.one_of(st.integers(-1, 4), st.text(max_size=3)),
    "packing": st.one_of(st.booleans(), st.just("maybe")),
    "max_examples": st.one_of(st.none(), st.integers(-1, 20)),
    "chat_template": st.one_of(st.none(), st.just("chatml"), st.just("no-such.jinja")),
    "seed": st.integers(0, 3),
    "duplicate_key": st.booleans(),
})


def serialise(rows: list, suffix: str) -> str:
    if suffix == ".jsonl":
        return "".join(json.dumps(r) + "\n" for r in rows)
    if suffix == ".json":
        return json.dumps(rows)
    if suffix == ".txt":
        return "\n".join(str(r.get("text", r)) if isinstance(r, dict) else str(r) for r in rows)
    buffer = io.StringIO()
    keys = sorted({k for r in rows if isinstance(r, dict) for k in r}) or ["text"]
    writer = csv.DictWriter(buffer, fieldnames=keys, extrasaction="ignore")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: v for k, v in r.items()} if isinstance(r, dict) else {})
    return buffer.getvalue()


def corrupt(text: str, how: str, cut: int) -> bytes:
    data = text.encode("utf-8")
    if how == "latin-1":
        return text.encode("latin-1", errors="replace") + "é\n".encode("latin-1")
    if how == "truncate":
        return data[:cut % (len(data) + 1)]
    if how == "binary":
        return data + bytes(range(128, 256))
    if how == "empty":
        return b""
    if how == "nul":
        return data.replace(b"\n", b"\x00\n", 1)
    return data


def run_cli(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


def assert_one_line_or_success(code: int, err: str) -> None:
    assert "Traceback" not in err, err
    assert code in (0, 2), (code, err)
    if code == 2:
        lines = [line for line in err.splitlines() if line.strip()]
        errors = [line for line in lines if line.startswith("sft-recipe: error: ")]
        assert len(errors) == 1 and len(lines) == 1, err


def write_case(tmp: Path, tokenizer_dir: Path, rows: list, suffix: str, how: str, cut: int, recipe: dict,
               **extra) -> Path:
    data = tmp / f"data{suffix}"
    data.write_bytes(corrupt(serialise(rows, suffix), how, cut))
    recipe = dict(recipe)
    duplicate = recipe.pop("duplicate_key", False)
    values = base_recipe(tmp, data, tokenizer_dir, **{**recipe, **extra})
    path = write_recipe(tmp / "recipe.yaml", values)
    if duplicate:
        path.write_text(path.read_text(encoding="utf-8") + "seed: 7\n", encoding="utf-8")
    return path


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                 HealthCheck.too_slow])
@given(rows=st.lists(ROW, max_size=12), suffix=st.sampled_from([".jsonl", ".json", ".csv", ".txt"]),
       how=CORRUPTION, cut=st.integers(0, 10_000), recipe=RECIPE)
def test_preprocess_fuzz(bpe_tokenizer_dir, rows, suffix, how, cut, recipe):
    from datasets import load_from_disk

    from sft_recipe.data.mask import IGNORE_INDEX

    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        path = write_case(tmp, bpe_tokenizer_dir, rows, suffix, how, cut, recipe)
        code, _, err = run_cli(["preprocess", str(path), "--output", str(tmp / "pre"), "--show", "0"])
        assert_one_line_or_success(code, err)
        if code == 0:
            for split in ("train", "eval"):
                part = load_from_disk(str(tmp / "pre" / split))
                assert len(part) > 0
                for ids, labels in zip(part["input_ids"], part["labels"]):
                    assert len(ids) == len(labels) <= max(recipe.get("max_length", 128), 1)
                    assert all(label in (IGNORE_INDEX, i) for i, label in zip(ids, labels))


@settings(max_examples=3, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                HealthCheck.too_slow])
@given(rows=st.lists(ROW, min_size=4, max_size=10), how=st.sampled_from(["none", "truncate", "latin-1"]),
       cut=st.integers(0, 10_000))
def test_train_fuzz(bpe_tokenizer_dir, rows, how, cut):
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        path = write_case(tmp, bpe_tokenizer_dir, rows, ".jsonl", how, cut, {}, max_steps=1, eval_steps=1,
                          save_steps=1, batch_size=2, eval_fraction=0.3)
        code, _, err = run_cli(["train", str(path)])
        assert_one_line_or_success(code, err)
        if code == 0:
            assert (tmp / "out" / "best" / "sft_recipe.yaml").is_file()


# --- mostly valid cases: the valid ones must succeed, the invalid ones fail for their own reason --------
PLAIN = st.lists(st.sampled_from(["the", "cat", "sat", "on", "mat", "big", "dog", "ran"]), min_size=1, max_size=6
                 ).map(" ".join)


def valid_row(fmt: str):
    return {"alpaca": st.fixed_dictionaries({"instruction": PLAIN, "input": st.one_of(st.just(""), PLAIN), "output": PLAIN}),
            "prompt_completion": st.fixed_dictionaries({"prompt": PLAIN, "completion": PLAIN}),
            "text": st.fixed_dictionaries({"text": PLAIN}),
            "messages": st.fixed_dictionaries({"messages": st.tuples(PLAIN, PLAIN).map(
                lambda qa: [{"role": "user", "content": qa[0]}, {"role": "assistant", "content": qa[1]}])})}[fmt]


# (what is broken, how, a fragment the one error line must contain)
FLAWS = {
    "none": None,
    "wrong type in a row": ("row", "must be a string"),
    "bad recipe value": ("recipe", "'batch_size' must be > 0"),
    "unknown recipe key": ("recipe", "unknown recipe key 'learning_rat'"),
    "missing column": ("column", "missing column"),
}
COUNTS = {"valid, succeeded": 0, "invalid, refused in one line": 0}


@st.composite
def mostly_valid(draw):
    fmt = draw(st.sampled_from(["alpaca", "prompt_completion", "text", "messages"]))
    rows = draw(st.lists(valid_row(fmt), min_size=8, max_size=14))
    recipe = {"dataset_format": fmt, "max_length": draw(st.integers(200, 300)),  # room for the Alpaca preamble "seed": draw(st.integers(0, 3)),
              "eval_fraction": draw(st.sampled_from([0.2, 0.25, 0.3])), "batch_size": draw(st.integers(1, 4)),
              "packing": draw(st.booleans())}
    if fmt == "messages":
        recipe["chat_template"] = "chatml"
    if fmt == "text":  # blocks of max_length tokens: a few words of text fill some
        recipe["max_length"] = draw(st.integers(4, 8))
    flaw = draw(st.sampled_from(["none", "none", "none", *[f for f in FLAWS if f != "none"]]))
    if flaw == "wrong type in a row":
        key = {"alpaca": "output", "prompt_completion": "completion", "text": "text", "messages": None}[fmt]
        if key is None:
            rows[draw(st.integers(0, len(rows) - 1))]["messages"][1]["content"] = 5
        else:
            rows[draw(st.integers(0, len(rows) - 1))][key] = 5
    elif flaw == "bad recipe value":
        recipe["batch_size"] = 0
    elif flaw == "unknown recipe key":
        recipe["learning_rat"] = 0.1
    elif flaw == "missing column":
        rows = [{"unrelated": "x"} for _ in rows]
    return rows, recipe, flaw


@settings(max_examples=14, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                 HealthCheck.too_slow])
@given(case=mostly_valid())
def run_mostly_valid(bpe_tokenizer_dir, case):
    rows, recipe, flaw = case
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        path = write_case(tmp, bpe_tokenizer_dir, rows, ".jsonl", "none", 0, recipe)
        code, _, err = run_cli(["preprocess", str(path), "--output", str(tmp / "pre"), "--show", "0"])
    assert_one_line_or_success(code, err)
    if flaw == "none":
        assert code == 0, err  # a valid case must succeed: exit 2 on everything would fail here
        COUNTS["valid, succeeded"] += 1
    else:
        assert code == 2 and FLAWS[flaw][1] in err, (flaw, err)
        COUNTS["invalid, refused in one line"] += 1


def test_mostly_valid_cases_succeed_and_flawed_ones_fail_for_their_reason(bpe_tokenizer_dir, capsys):
    run_mostly_valid(bpe_tokenizer_dir)
    with capsys.disabled():
        print(f"\nfuzz: {COUNTS}")
    assert COUNTS["valid, succeeded"] > 0 and COUNTS["invalid, refused in one line"] > 0
