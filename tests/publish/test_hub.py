"""`hub.push_best` with the real huggingface_hub client against a local fake hub (tests/hub_server.py)."""

from __future__ import annotations

import pytest
from hub_server import start_fake_hub

from sft_recipe.recipe.config import SFTConfig
from sft_recipe.errors import RecipeError, UserError
from sft_recipe.publish.hub import push_best

SENTINEL = "hf_SENTINELtoken0123456789"


@pytest.fixture
def fake_hub(monkeypatch):
    """The hub client pointed at a local server, online, with a sentinel token in HF_TOKEN."""
    import huggingface_hub.constants as hub_constants

    hub, server = start_fake_hub()
    monkeypatch.setattr(hub_constants, "ENDPOINT", hub.url)
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_TOKEN", SENTINEL)
    monkeypatch.setattr(hub_constants, "HF_TOKEN_PATH", "/nonexistent/token")
    yield hub
    server.shutdown()


def best_dir(tmp_path):
    best = tmp_path / "out" / "best"
    best.mkdir(parents=True)
    files = {"config.json": b'{"model_type": "llama"}', "model.safetensors": bytes(range(256)) * 4,
             "tokenizer.json": b"{}", "sft_recipe.yaml": b"dataset: a.jsonl\n",
             "README.md": b"---\nlibrary_name: transformers\n---\n# card\n", "loss_curve.png": b"\x89PNG fake"}
    for name, content in files.items():
        (best / name).write_bytes(content)
    (best / ".write-test-x").write_bytes(b"hidden files stay local")
    return best, files


def test_push_uploads_every_file_of_best_with_the_token(fake_hub, tmp_path):
    best, files = best_dir(tmp_path)
    config = SFTConfig(dataset="a.jsonl", model_name="m", push_to_hub=True, hub_model_id="me/tiny",
                       output_dir=str(tmp_path / "out"))
    url = push_best(best, config)
    assert fake_hub.files["me/tiny"] == files  # byte for byte, and nothing else (no hidden files)
    assert url.startswith(fake_hub.url)
    calls = [(method, path.split("?")[0]) for method, path, _ in fake_hub.requests]
    assert ("POST", "/api/repos/create") in calls and ("POST", "/api/models/me/tiny/commit/main") in calls
    # Every write authenticated with the token from the environment.
    posts = [{k.lower(): v for k, v in h.items()} for method, _, h in fake_hub.requests if method == "POST"]
    assert posts and all(h.get("authorization") == f"Bearer {SENTINEL}" for h in posts)


def test_push_to_an_unreachable_hub_is_a_one_line_user_error(tmp_path, monkeypatch):
    import huggingface_hub.constants as hub_constants

    monkeypatch.setattr(hub_constants, "ENDPOINT", "http://127.0.0.1:9")  # discard port: refused
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", False)
    best, _ = best_dir(tmp_path)
    config = SFTConfig(dataset="a.jsonl", model_name="m", push_to_hub=True, hub_model_id="me/tiny")
    with pytest.raises(UserError, match="push_to_hub"):
        push_best(best, config)


def test_push_while_offline_is_a_user_error(tmp_path):
    best, _ = best_dir(tmp_path)  # conftest sets HF_HUB_OFFLINE=1
    config = SFTConfig(dataset="a.jsonl", model_name="m", push_to_hub=True, hub_model_id="me/tiny")
    with pytest.raises(UserError, match="HF_HUB_OFFLINE"):
        push_best(best, config)


def test_push_to_hub_needs_a_repo_id():
    with pytest.raises(RecipeError, match="hub_model_id"):
        SFTConfig(dataset="a.jsonl", model_name="m", push_to_hub=True)
