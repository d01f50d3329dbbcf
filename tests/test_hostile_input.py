"""Hostile input through the real CLI: one clear line naming the file, line, row or key, exit 2,
no traceback. Plus fuzzing of rows and recipes, and a disk that fills up during a save."""

from __future__ import annotations

import errno
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import base_recipe, write_jsonl, write_recipe
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sft_recipe.rundir.layout import COMPLETE_MARKER
from sft_recipe.rundir.checkpoints import last_complete_checkpoint
from sft_recipe.cli import main
from sft_recipe.errors import UserError


@pytest.fixture
def run_cli(tmp_path, alpaca_file, bpe_tokenizer_dir, capsys):
    """Write a recipe (base recipe + overrides), run `sft-recipe <command>` in-process, return
    (exit code, stdout, stderr)."""

    def run(command: str = "preprocess", *extra: str, **overrides) -> tuple[int, str, str]:
        dataset = overrides.pop("dataset", alpaca_file)
        recipe = write_recipe(tmp_path / "recipe.yaml", base_recipe(tmp_path, dataset, bpe_tokenizer_dir,
                                                                     **overrides))
        argv = [command, str(recipe), *(["--output", str(tmp_path / "pre")] if command == "preprocess" else []),
                *extra]
        code = main(argv)
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run


def error_line(err: str) -> str:
    """The one `sft-recipe: error:` line; fails if there is a traceback or no such line."""
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("sft-recipe: error: ")]
    assert len(lines) == 1, err
    return lines[0]


def rows_file(tmp_path: Path, text: str, name: str = "data.jsonl") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


GOOD = {"instruction": "Say yes.", "input": "", "output": "yes"}


# --- data files ------------------------------------------------------------------------------

def test_malformed_json_line_is_named(tmp_path, run_cli):
    data = rows_file(tmp_path, json.dumps(GOOD) + "\n" + json.dumps(GOOD) + "\n{\"instruction\": \"x\",\n")
    code, _, err = run_cli(dataset=str(data))
    assert code == 2
    assert re.search(rf"{re.escape(str(data))}: line 3: malformed JSON", error_line(err))


def test_wrong_columns_lists_the_present_ones(tmp_path, run_cli):
    data = write_jsonl(tmp_path / "data.jsonl", [{"question": "q", "answer": "a"}] * 4)
    code, _, err = run_cli(dataset=str(data))
    assert code == 2
    line = error_line(err)
    assert "missing column 'instruction'" in line and "columns present: answer, question" in line


@pytest.mark.parametrize("bad, kind", [(7, "int"), (None, "null"), (["a"], "list")])
def test_non_string_field_names_row_and_key(tmp_path, run_cli, bad, kind):
    rows = [GOOD] * 3 + [{**GOOD, "output": bad}] + [GOOD] * 2
    data = write_jsonl(tmp_path / "data.jsonl", rows)
    code, _, err = run_cli(dataset=str(data))
    assert code == 2
    line = error_line(err)
    assert str(data) in line and ("row 4" in line or "line 4" in line) and "'output'" in line and kind in line


def test_empty_responses_are_dropped_and_counted(tmp_path, run_cli):
    rows = [{**GOOD, "output": "  \n"}] * 3 + [{**GOOD, "output": f"yes {i}"} for i in range(12)]
    data = write_jsonl(tmp_path / "data.jsonl", rows)
    code, out, err = run_cli(dataset=str(data))
    assert code == 0, err
    assert "dropped 3 empty" in out
    assert "wrote 10 train and 2 eval rows" in out  # 12 kept; eval_fraction 0.1 of 12 rounds up to 2


def test_only_empty_responses_is_an_error(tmp_path, run_cli):
    data = write_jsonl(tmp_path / "data.jsonl", [{**GOOD, "output": " "}] * 5)
    code, _, err = run_cli(dataset=str(data))
    assert code == 2
    assert "every response is empty" in error_line(err)


def test_empty_file(tmp_path, run_cli):
    code, _, err = run_cli(dataset=str(rows_file(tmp_path, "")))
    assert code == 2
    assert "empty" in error_line(err)


def test_max_length_below_template_drops_everything(tmp_path, run_cli):
    code, _, err = run_cli(max_length=4)
    assert code == 2
    line = error_line(err)
    assert "empty after filtering" in line and "prompt too long" in line and "raise max_length (now 4)" in line


# --- recipes ---------------------------------------------------------------------------------

def test_mistyped_recipe_key_suggests_the_closest(run_cli):
    code, _, err = run_cli(learning_rat=1e-3)
    assert code == 2
    assert "unknown recipe key 'learning_rat' (did you mean 'learning_rate'?)" in error_line(err)


def test_mistyped_override_suggests_the_closest(run_cli):
    code, _, err = run_cli("preprocess", "--batchsize", "4")
    assert code == 2
    assert "(did you mean 'batch_size'?)" in error_line(err)


@pytest.mark.parametrize("key, value", [("batch_size", 0), ("max_length", -5), ("eval_steps", 0),
                                        ("max_steps", -1), ("gradient_accumulation_steps", 0)])
def test_zero_or_negative_sizes(run_cli, key, value):
    code, _, err = run_cli(**{key: value})
    assert code == 2
    assert f"'{key}' must be > 0, got {value}" in error_line(err)


def test_wrong_type_names_the_key(run_cli):
    code, _, err = run_cli(batch_size="eight")
    assert code == 2
    assert "recipe key 'batch_size' expects int or one of 'auto', got 'eight'" in error_line(err)


def test_token_in_training_args_is_refused(run_cli):
    code, _, err = run_cli(training_args={"hub_token": "hf_secret"})
    assert code == 2
    line = error_line(err)
    assert "hub_token" in line and "hf_secret" not in line


# --- paths -----------------------------------------------------------------------------------

def test_missing_tokenizer_path(tmp_path, run_cli):
    missing = tmp_path / "no-such-tokenizer"
    code, _, err = run_cli(tokenizer_name=str(missing))
    assert code == 2
    assert f"{missing}: cannot load tokenizer" in error_line(err)


def test_missing_model_path(tmp_path, run_cli):
    missing = tmp_path / "no-such-model"
    code, _, err = run_cli("train", from_scratch=False, model_name=str(missing), model_config=None)
    assert code == 2
    assert f"{missing}: cannot load model" in error_line(err)


def test_missing_dataset_file(tmp_path, run_cli):
    code, _, err = run_cli(dataset=str(tmp_path / "nope.jsonl"))
    assert code == 2
    assert "nope.jsonl: dataset file not found" in error_line(err)


def test_output_dir_not_writable(tmp_path, run_cli):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")  # works as root too, unlike chmod
    code, _, err = run_cli("train", output_dir=str(blocker / "out"))
    assert code == 2
    assert f"{blocker / 'out'}: output_dir is not writable" in error_line(err)


# --- a disk that fills during a save ---------------------------------------------------------

@pytest.mark.slow
def test_disk_full_during_save_leaves_no_complete_half_checkpoint(tmp_path, run_cli, monkeypatch):
    """The second checkpoint's optimizer save hits ENOSPC: clear message, exit 2, and the half-written
    checkpoint-4 is never what a re-run resumes from."""
    import torch

    real_save = torch.save

    def save(obj, f, *args, **kwargs):
        if "checkpoint-4" in str(f):
            raise OSError(errno.ENOSPC, "No space left on device", str(f))
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    code, _, err = run_cli("train", max_steps=6, eval_steps=2, save_steps=2, batch_size=4)
    assert code == 2
    line = error_line(err)
    out = tmp_path / "out"
    assert "No space left on device" in line and f"resumes from {out / 'checkpoint-2'}" in line
    assert (out / "checkpoint-4").is_dir() and not (out / "checkpoint-4" / COMPLETE_MARKER).exists()
    assert last_complete_checkpoint(out) == out / "checkpoint-2"


# --- no traceback, exit code 2, from a real process ------------------------------------------

@pytest.mark.parametrize("overrides, expected", [
    (["--max_lenght", "64"], "did you mean 'max_length'?"),
    (["--dataset", "missing.jsonl"], "missing.jsonl: dataset file not found"),
])
def test_subprocess_exit_2_without_traceback(tmp_path, alpaca_file, bpe_tokenizer_dir, overrides, expected):
    recipe = write_recipe(tmp_path / "recipe.yaml", base_recipe(tmp_path, alpaca_file, bpe_tokenizer_dir))
    proc = subprocess.run([sys.executable, "-m", "sft_recipe", "train", str(recipe), *overrides],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr + proc.stdout
    assert expected in error_line(proc.stderr)


# --- fuzzing ---------------------------------------------------------------------------------

values = st.one_of(st.text(max_size=12), st.none(), st.integers(-3, 3), st.floats(allow_nan=True),
                   st.booleans(), st.lists(st.text(max_size=3), max_size=2),
                   st.dictionaries(st.text(max_size=3), st.text(max_size=3), max_size=2))
rows = st.lists(
    st.one_of(
        st.fixed_dictionaries({"instruction": st.text(max_size=20), "output": st.text(max_size=20)},
                              optional={"input": st.one_of(st.text(max_size=10), st.none())}),
        st.dictionaries(st.sampled_from(["instruction", "input", "output", "extra"]), values, max_size=4),
        values,
    ),
    max_size=6,
)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=rows, broken_line=st.booleans())
def test_fuzzed_rows_give_a_user_error_or_valid_training_rows(tmp_path_factory, toy_tokenizer, rows, broken_line):
    from sft_recipe.data.mask import IGNORE_INDEX
    from sft_recipe.data.prepare import prepare_data
    from sft_recipe.recipe.files import load_recipe

    tmp = tmp_path_factory.mktemp("fuzz")
    text = "".join(json.dumps(r) + "\n" for r in rows) + ("{\"output\": \n" if broken_line else "")
    data = rows_file(tmp, text)
    config = load_recipe(None, ["--dataset", str(data), "--model_name", "unused", "--max_length", "32",
                                "--eval_fraction", "0.3"])
    try:
        prepared = prepare_data(config, toy_tokenizer)
    except UserError as exc:
        assert "\n" not in str(exc) and str(data) in str(exc)
        return
    for part in (prepared.train, prepared.eval):
        for ids, labels in zip(part["input_ids"], part["labels"]):
            assert len(ids) == len(labels) <= 32
            assert any(label != IGNORE_INDEX for label in labels)
            assert all(label in (IGNORE_INDEX, i) for i, label in zip(ids, labels))


recipe_keys = st.sampled_from(["batch_size", "max_length", "learning_rate", "num_epochs", "eval_fraction",
                               "dataset_format", "packing", "report_to", "callbacks", "training_args",
                               "lora", "save_steps", "eval_steps", "seed", "max_steps", "precision",
                               "batchsize", "lerning_rate", "model_config", "from_scratch", "num_proc"])


@settings(max_examples=200, deadline=None)
@given(recipe=st.dictionaries(recipe_keys, values, max_size=5))
def test_fuzzed_recipes_give_a_recipe_error_or_a_config(tmp_path_factory, recipe):
    from sft_recipe.errors import RecipeError
    from sft_recipe.recipe.files import load_recipe

    path = tmp_path_factory.mktemp("recipe") / "recipe.yaml"
    path.write_text(yaml.safe_dump({"dataset": "d.jsonl", "model_name": "m", **recipe}), encoding="utf-8")
    try:
        config = load_recipe(path)
    except RecipeError as exc:
        assert "\n" not in str(exc) and str(path) in str(exc)
        return
    assert config.batch_size > 0 and config.max_length > 0 and 0 <= config.eval_share < 1


# --- untrusted files -------------------------------------------------------------------------

class _Trap:
    """Unpickling this runs `Path(flag).touch()`: proof that a pickle was loaded."""

    def __init__(self, flag: Path) -> None:
        self.flag = flag

    def __reduce__(self):
        return (Path.touch, (self.flag,))


def test_pickled_weights_are_never_unpickled(tmp_path, toy_tokenizer):
    """A model directory with only `pytorch_model.bin` (a pickle) is refused, not loaded."""
    import pickle

    from conftest import tiny_model

    from sft_recipe.model.load import load_for_inference

    model_dir = tmp_path / "model"
    tiny_model(vocab_size=len(toy_tokenizer)).config.save_pretrained(model_dir)
    toy_tokenizer.save_pretrained(model_dir)
    flag = tmp_path / "pickle-was-loaded"
    (model_dir / "pytorch_model.bin").write_bytes(pickle.dumps(_Trap(flag)))

    with pytest.raises(UserError, match=f"{re.escape(str(model_dir))}: cannot load model"):
        load_for_inference(model_dir)
    assert not flag.exists()


def test_remote_code_is_off_unless_the_recipe_asks(tmp_path, toy_tokenizer, monkeypatch):
    import transformers
    from conftest import tiny_model

    from sft_recipe.model.load import load_for_inference, load_tokenizer

    model_dir = tmp_path / "model"
    tiny_model(vocab_size=len(toy_tokenizer)).save_pretrained(model_dir)
    toy_tokenizer.save_pretrained(model_dir)
    seen: list[tuple[str, object]] = []
    for cls in (transformers.AutoTokenizer, transformers.AutoModelForCausalLM):
        original = cls.from_pretrained

        def spy(*args, _original=original, _name=cls.__name__, **kwargs):
            seen.append((_name, kwargs.get("trust_remote_code", False)))
            return _original(*args, **kwargs)

        monkeypatch.setattr(cls, "from_pretrained", spy)

    load_for_inference(model_dir)
    load_tokenizer(str(model_dir))
    assert seen and all(trust is False for _, trust in seen), seen
    seen.clear()
    load_tokenizer(str(model_dir), trust_remote_code=True)
    assert seen == [("AutoTokenizer", True)]


@pytest.mark.parametrize("lines, where, kind", [
    # pyarrow's JSON reader segfaults on these (found by fuzzing): refused before it reads them
    (['NaN', json.dumps("\u1f65\n\n\nP"), json.dumps(GOOD)], "line 1", "float"),
    (["null", json.dumps(GOOD)], "line 1", "null"),
    ([json.dumps(GOOD), "", '  "a string"'], "line 3", "str"),
    ([json.dumps(GOOD), "[1, 2]"], "line 2", "list"),
    ([json.dumps(GOOD), "{not json"], "line 2", "malformed JSON"),
])
@pytest.mark.parametrize("suffix", [".jsonl", ".json"])
def test_json_lines_that_are_not_objects_are_one_line_before_pyarrow(tmp_path, run_cli, lines, where, kind, suffix):
    """`datasets` reads a .json file as JSON lines first, so both suffixes are checked (an array or one
    object over several lines is JSON: next test). A regression here crashes the test run itself."""
    data = tmp_path / f"data{suffix}"
    data.write_text("\n".join(lines) + "\n", encoding="utf-8")
    code, _, err = run_cli(dataset=str(data))
    assert code == 2, err
    line = error_line(err)
    assert str(data) in line and where in line and kind in line


def test_a_byte_order_mark_and_pretty_printed_json_still_load(tmp_path, run_cli):
    bom = tmp_path / "bom.jsonl"
    bom.write_bytes(b"\xef\xbb\xbf" + "".join(json.dumps({**GOOD, "output": f"a {i}"}) + "\n" for i in range(12)).encode())
    pretty = tmp_path / "pretty.json"
    pretty.write_text(json.dumps([{**GOOD, "output": f"b {i}"} for i in range(12)], indent=2), encoding="utf-8")
    for data in (bom, pretty):
        code, out, err = run_cli(dataset=str(data))
        assert code == 0, err
