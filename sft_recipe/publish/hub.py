"""`push_to_hub: true`: upload `best/` (weights or adapter, tokenizer, recipe, model card) to the hub.

The upload is huggingface_hub's `create_repo` + `upload_folder`, from the main process only. The
token comes from where huggingface_hub always looks (`HF_TOKEN`, or `hf auth login`); it is
never a recipe key, so it cannot reach the saved recipe, the model card or the logs.
`HF_ENDPOINT` points the client at another hub (the tests use a local server).
"""

from __future__ import annotations

import logging
from pathlib import Path

from huggingface_hub import HfApi
from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

from ..recipe.config import SFTConfig
from ..errors import UserError

log = logging.getLogger("sft_recipe")


def push_best(best: str | Path, config: SFTConfig) -> str:
    """Create `hub_model_id` if needed and upload `best/` as one commit; returns the commit URL."""
    repo_id = config.hub_model_id
    if not repo_id:
        raise UserError("push_to_hub: true needs 'hub_model_id'")
    api = HfApi()
    try:
        repo = api.create_repo(repo_id, exist_ok=True)
        commit = api.upload_folder(repo_id=repo.repo_id, folder_path=str(best),
                                   commit_message=f"sft-recipe: {Path(config.output_dir).name}",
                                   ignore_patterns=[".*"])
    except OfflineModeIsEnabled:
        raise UserError(f"push_to_hub: cannot push to {repo_id}: HF_HUB_OFFLINE is set") from None
    except HfHubHTTPError as exc:
        raise UserError(f"push_to_hub: {repo_id}: {str(exc).splitlines()[0]} (is HF_TOKEN set, with write "
                        f"access?)") from None
    except (OSError, ConnectionError, *transport_errors()) as exc:  # network unreachable
        raise UserError(f"push_to_hub: cannot reach the hub for {repo_id} ({type(exc).__name__}: {exc})") from None
    url = getattr(commit, "commit_url", None) or str(commit)
    log.info("pushed %s to %s (%s)", best, repo_id, url)
    return url


def transport_errors() -> tuple[type[BaseException], ...]:
    """Connection errors of every HTTP client that imports (huggingface_hub uses httpx2 or httpx, by
    version, and both may be installed: returning the first one's missed the other's errors)."""
    errors = []
    for name in ("httpx2", "httpx"):
        try:
            errors.append(__import__(name).TransportError)
        except (ImportError, AttributeError):
            continue
    return tuple(errors)
