"""Every name a recipe gives that something else resolves, checked before any data is prepared.

A run must not discover after an hour of tokenization, or eight hours of training, that a logger
does not exist, a callback cannot be imported, it cannot push to the hub, a package is missing,
the attention kernel or precision cannot run on this machine, or the disk cannot hold a checkpoint.
Each check is one line naming the recipe key (exit 2), and none touches the network.
"""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import torch
from huggingface_hub import get_token
from huggingface_hub.utils import HFValidationError, validate_repo_id
from transformers.integrations.integration_utils import INTEGRATION_TO_CALLBACK
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from ..errors import RecipeError, UserError, did_you_mean
from ..recipe.config import SFTConfig
from ..recipe.keys import BUILTIN_CALLBACKS
from ..training.callbacks import import_callback
from .bench import harness, known_tasks

# Loggers and the package each needs (the integration's own name, where it differs).
LOGGER_PACKAGES = {"azure_ml": "azureml", "comet_ml": "comet_ml", "neptune": "neptune", "clearml": "clearml",
                   "dagshub": "dagshub", "flyte": "flytekit", "dvclive": "dvclive", "swanlab": "swanlab",
                   "trackio": "trackio", "codecarbon": "codecarbon", "mlflow": "mlflow", "kubeflow": "kubeflow",
                   "tensorboard": "tensorboard", "wandb": "wandb"}


def installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def check_loggers(report_to: list[str]) -> None:
    known = sorted(INTEGRATION_TO_CALLBACK)
    for name in report_to:
        if name in ("none", "all"):
            continue
        if name not in INTEGRATION_TO_CALLBACK:
            raise RecipeError(f"recipe key 'report_to': unknown logger '{name}'{did_you_mean(name, known)}; "
                              f"known: {', '.join(known)}")
        package = LOGGER_PACKAGES.get(name, name)
        if name == "tensorboard" and installed("tensorboardX"):
            continue
        if not installed(package):
            raise RecipeError(f"recipe key 'report_to': {name} needs the '{package}' package (pip install {package})")


def check_callbacks(callbacks: list[str]) -> None:
    for name in callbacks:
        if name not in BUILTIN_CALLBACKS:
            import_callback(name)  # imported and constructed once now; one line if it cannot be


def check_hub(config: SFTConfig) -> None:
    if not config.push_to_hub:
        return
    try:
        validate_repo_id(config.hub_model_id or "")
    except HFValidationError as exc:
        raise RecipeError(f"recipe key 'hub_model_id': {config.hub_model_id!r} is not a hub repo id "
                          f"({str(exc).splitlines()[0]})") from None
    if get_token() is None:
        raise UserError("recipe key 'push_to_hub': no hub token (set HF_TOKEN or run `hf auth login` before "
                        "training, not after it), or set push_to_hub: false")


def check_packages(config: SFTConfig) -> None:
    if config.lora is not None and not installed("peft"):
        raise RecipeError("recipe key 'lora' needs the 'peft' package (pip install peft, or pip install "
                          "'sft-recipe[lora]')")
    if config.lora is not None and config.lora.load_in_4bit:
        if not installed("bitsandbytes"):
            raise RecipeError("recipe key 'lora.load_in_4bit' needs the 'bitsandbytes' package "
                              "(pip install 'sft-recipe[qlora]')")
        if not torch.cuda.is_available():
            raise RecipeError("recipe key 'lora.load_in_4bit' needs a CUDA GPU (bitsandbytes' 4-bit kernels)")


def check_attention(attn: str | None) -> None:
    if attn is None:
        return
    known = sorted({*ALL_ATTENTION_FUNCTIONS.keys(), "eager"} - {"paged|eager"})
    if attn not in known and not attn.startswith("paged|") and "/" not in attn:  # a hub kernel is "org/repo"
        raise RecipeError(f"recipe key 'attn_implementation': unknown '{attn}'; known: {', '.join(known)}")
    if attn.startswith("flash_attention"):
        package = "flash_attn_interface" if attn == "flash_attention_3" else "flash_attn"
        if not torch.cuda.is_available() or not installed(package):
            raise RecipeError(f"recipe key 'attn_implementation': {attn} needs a CUDA GPU and the '{package}' "
                              f"package; use sdpa")


def check_precision(precision: str) -> None:
    if precision == "fp16" and not torch.cuda.is_available():
        raise RecipeError("recipe key 'precision': fp16 needs a GPU (fp16 training on the CPU is not supported); "
                          "use bf16 or fp32")
    if precision == "bf16" and torch.cuda.is_available() and not torch.cuda.is_bf16_supported():
        raise RecipeError("recipe key 'precision': this GPU does not support bf16; use fp16 or fp32")


def check_space(config: SFTConfig) -> None:
    """A checkpoint holds the weights and AdamW's two moments: about 3x a local model's weight files."""
    if config.from_scratch or not config.model_name or not Path(config.model_name).is_dir():
        return
    weights = sum(p.stat().st_size for p in Path(config.model_name).glob("*.safetensors"))
    if config.lora is not None or not weights:
        return
    existing = next((p for p in [Path(config.output_dir), *Path(config.output_dir).absolute().parents] if p.exists()),
                    Path("."))
    free = shutil.disk_usage(existing).free
    if free < 3 * weights:
        raise UserError(f"recipe key 'output_dir': {config.output_dir} has {free / 2**30:.1f} GiB free; one checkpoint "
                        f"of {config.model_name} needs about {3 * weights / 2**30:.1f} GiB (weights and optimizer "
                        f"state)")


def check_bench(config: SFTConfig) -> None:
    """`bench_tasks:` runs after training: the harness and every task are checked before, not hours later."""
    if not config.bench_tasks:
        return
    if config.bench_include_path is not None and not Path(config.bench_include_path).is_dir():
        raise RecipeError(f"recipe key 'bench_include_path': {config.bench_include_path} is not a folder")
    _, _, task_manager = harness()
    manager = task_manager(include_path=config.bench_include_path) if config.bench_include_path else task_manager()
    known_tasks(manager, list(config.bench_tasks))


def preflight(config: SFTConfig) -> None:
    """All of the above, in recipe order; called before data preparation."""
    check_loggers(config.report_to)
    check_callbacks(config.callbacks)
    check_hub(config)
    check_packages(config)
    check_attention(config.attn_implementation)
    check_precision(config.precision)
    check_space(config)
    check_bench(config)
