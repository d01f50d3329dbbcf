"""Probes: the model's own layers, measured on short rows, fitted as curves that extrapolate.

A 1-layer and a 2-layer copy of the model's config (the difference is one decoder layer) run one
training step (the loss path training uses: the chunked trainable-token loss, checkpointing and
tiles as considered) on probe rows at five lengths, laid out as the collator lays them out (whole,
padded, or packed), while a dispatch mode counts the bytes of every live tensor. Per layer and for
the rest (embedding, head, the loss chunk), the peak is fitted as `c + a·L + b·L²` (no term below 0)
per row of length `L` (attention's quadratic term), for `memory_plan.py` to extrapolate to the
recipe's rows, micro-batch and layers. The probe lengths are multiples of the loss chunk, so the
chunk's logits are a constant there.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
from dataclasses import dataclass

import torch
from transformers import AutoModelForCausalLM

from ..model.feed_forward import fuse_activations, tile_mlps
from ..model.hardware import resolve_precision
from ..model.load import weights_dtype
from ..model.lora import wrap_lora
from ..recipe.lora import LoraSettings
from .host_memory import resident_bytes
from .live_bytes import LiveBytes
from .loss import CHUNKED, LossPath
from .planned_rows import PlannedRows

PROBE_CHUNKS = (1, 2, 4, 6, 8)  # probe row lengths, in units (`probe_lengths`)
SCREEN_UNIT = 64  # screening probes: rows of 64 to 512 tokens whatever `max_length` is
ROWS, PADDED, PACKED = "rows", "padded", "packed"  # how a micro-batch reaches attention (`probe_inputs`)


@dataclass(frozen=True)
class Settings:
    """What a budget can choose: micro-batch, accumulation, loss chunk, tiles, checkpointing."""

    batch_size: int
    accumulation: int
    loss_chunk_size: int
    mlp_tile_tokens: int = 0
    gradient_checkpointing: bool = False

    def describe(self) -> str:
        extras = [f"mlp_tile_tokens {self.mlp_tile_tokens}" if self.mlp_tile_tokens else "",
                  "gradient_checkpointing" if self.gradient_checkpointing else ""]
        return ", ".join([f"batch_size {self.batch_size} x accumulation {self.accumulation}",
                          f"loss_chunk_size {self.loss_chunk_size}", *filter(None, extras)])


def with_layers(model_config, layers: int):
    """A copy of `model_config` with `layers` decoder layers (per-layer lists cut to match)."""
    config = copy.deepcopy(model_config)
    total = config.num_hidden_layers
    config.num_hidden_layers = layers
    for name, value in list(vars(config).items()):
        if isinstance(value, list) and len(value) == total and name != "architectures":
            setattr(config, name, value[:layers])
    return config


def probe_model(model_config, layers: int, recipe, settings: Settings):
    """The model's own layers, `layers` of them, as training would run them: in the dtype it
    loads in, with its adapters. QLoRA's 4-bit base needs a GPU and bitsandbytes: the probes run
    it unquantized (its activations are the compute dtype's either way); `memory_plan.py` counts
    the 4-bit storage."""
    config = with_layers(model_config, layers)
    model = AutoModelForCausalLM.from_config(config, dtype=weights_dtype(recipe))
    fuse_activations(model)
    if recipe.lora is not None:
        model = wrap_lora(model, dataclasses.replace(LoraSettings.from_mapping(recipe.lora), load_in_4bit=False))
    if settings.mlp_tile_tokens:
        tile_mlps(model, settings.mlp_tile_tokens)
    if settings.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.config.use_cache = False
    return model


def probe_inputs(vocab: int, length: int, batch: int, layout: str,
                 trainable: int | None = None) -> dict[str, torch.Tensor]:
    """Rows as the collator hands them over: whole (no mask at all), padded (a mask with a zero,
    which makes SDPA's and eager's attention build an L x L mask per row), or two rows packed into
    one (position ids restarting: a block-diagonal mask, or flash-attention's varlen kernel); every
    token trained, or the last `trainable` of each row (a prompt, then its answer)."""
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(3, vocab, (batch, length), generator=generator)
    inputs = {"input_ids": ids, "labels": ids.clone()}
    if trainable is not None:
        inputs["labels"][:, :length - trainable] = -100
    if layout == PADDED:
        inputs["attention_mask"] = torch.ones_like(ids)
        inputs["attention_mask"][:, -1] = 0
        inputs["labels"][:, -1] = -100
    elif layout == PACKED:
        half = length // 2
        inputs["position_ids"] = torch.cat([torch.arange(half), torch.arange(length - half)]).expand(batch, -1)
        inputs["labels"][:, half] = -100
    else:
        inputs["attention_mask"] = torch.ones_like(ids)
    return inputs


def autocast_dtype(recipe) -> torch.dtype | None:
    """The mixed precision training runs under (bf16, fp16), or None for fp32."""
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(resolve_precision(recipe.precision))


def measure(model, length: int, batch: int, chunk: int, train: bool, layout: str = ROWS,
            autocast: torch.dtype | None = None, trainable: int | None = None) -> int:
    """Peak live bytes of one step (training: forward, loss, backward; else forward only), under
    `autocast` as training runs it (activations in half precision, master weights as loaded)."""
    inputs = probe_inputs(model.get_input_embeddings().weight.shape[0], length, batch, layout, trainable)
    path = LossPath(model, chunk, sharded=False)
    model.train(train)
    model.zero_grad(set_to_none=True)
    mixed = torch.autocast("cpu", dtype=autocast) if autocast else contextlib.nullcontext()
    with LiveBytes() as live, mixed:
        if train:
            scale = torch.tensor(1.0 / inputs["labels"][:, 1:].numel())
            loss, _, _ = path.sums(model, inputs, {}, scale=scale, eager=path.kind == CHUNKED)
            loss.backward()
        else:
            with torch.no_grad():
                path.sums(model, inputs)
    model.zero_grad(set_to_none=True)
    return live.peak


def fit(lengths: list[int], values: list[int]) -> tuple[float, float, float, float]:
    """(floor, c, a, b): the peak is `max(floor, c + a·L + b·L²)`. At short rows another phase of the
    step holds the peak (all gradients at the end of backward), so the curve is flat there: the
    terms are fitted to the rising points only, with attention's quadratic term (a small one at the
    probes is most of the memory at 4x their length), or a straight line where it would curve down."""
    floor = float(min(values))
    rising = [(n, float(v)) for n, v in zip(lengths, values) if v > floor * 1.02 + 65536]
    if len(rising) < 2:
        return float(max(values)), 0.0, 0.0, 0.0
    rows = torch.tensor([[1.0, float(n), float(n) ** 2] for n, _ in rising], dtype=torch.float64)
    target = torch.tensor([v for _, v in rising], dtype=torch.float64)
    best = None
    for terms in ([0, 1, 2], [0, 1]) if len(rising) > 2 else ([0, 1],):
        solution = torch.linalg.lstsq(rows[:, terms], target[:, None]).solution[:, 0]
        if len(terms) == 3 and (solution[1:] < 0).any():
            continue  # curving down is noise: a straight line
        best = solution.tolist() + [0.0] * (3 - len(terms))
        break
    c, a, b = best  # type: ignore[misc]
    return floor, c, max(0.0, a), max(0.0, b)


class Probes:
    """The fitted curves of one model and recipe, measured once per setting that changes them (loss
    chunk, tiles, checkpointing, how rows are laid out), at micro-batch 1: the micro-batch scales
    the per-row terms, except packed, where the micro-batch is one row of all its rows' tokens."""

    def __init__(self, model_config, recipe, shards: int = 1, rows: PlannedRows | None = None) -> None:
        self.model_config, self.recipe, self.shards, self.rows = model_config, recipe, shards, rows
        self.curves: dict[tuple, dict[str, tuple]] = {}
        self.runtime: int | None = None  # resident memory a first step adds beyond its tensors

    def layout(self, batch: int) -> str:
        if self.recipe.packing:
            return PACKED
        return PADDED if batch > 1 or self.recipe.pad_to_multiple_of else ROWS

    def shape(self, batch: int) -> tuple[int, int]:
        """(rows, tokens per row) of the worst micro-batch of `batch` rows."""
        longest = self.rows.longest if self.rows else self.recipe.max_length
        return (1, batch * longest) if self.layout(batch) == PACKED else (batch, longest)

    def lengths(self, settings: Settings, batch: int, screen: bool = False) -> list[int]:
        if screen:
            return probe_lengths(self.model_config, SCREEN_UNIT, SCREEN_UNIT * 32)
        return probe_lengths(self.model_config, settings.loss_chunk_size, self.shape(batch)[1])

    def __call__(self, settings: Settings, train: bool, batch: int, screen: bool = False) -> dict[str, tuple]:
        """The curves for micro-batches of `batch` rows (which decides the layout and probe lengths)."""
        lengths, layout = self.lengths(settings, batch, screen), self.layout(batch)
        key = (settings.loss_chunk_size, train, tuple(lengths), layout) + (
            (settings.mlp_tile_tokens, settings.gradient_checkpointing) if train else ())  # eval: untiled, unchecked
        if key not in self.curves:
            peaks = {}
            for layers in (1, 2):
                before = resident_bytes()
                model = probe_model(self.model_config, layers, self.recipe, settings)
                chunk = settings.loss_chunk_size
                peaks[layers] = [measure(model, n, 1, chunk, train, layout, autocast_dtype(self.recipe),
                                         self.rows.trainable(n, chunk) if self.rows else None) for n in lengths]
                if self.runtime is None and train and not screen:  # autograd's and kernels' memory, measured once
                    weights = sum(p.numel() * p.element_size() for p in model.parameters())
                    self.runtime = max(0, resident_bytes() - before - weights)
                del model
            per_layer = [two - one for one, two in zip(peaks[1], peaks[2])]
            rest = [one - layer for one, layer in zip(peaks[1], per_layer)]
            self.curves[key] = {"layer": fit(lengths, per_layer), "rest": fit(lengths, rest)}
        return self.curves[key]


def probe_lengths(model_config, chunk: int, max_length: int) -> list[int]:
    """Probe rows of 1 to 8 units, a unit being a loss chunk or a 32nd of `max_length` (so the plan
    never extrapolates more than 4x: at 32x a quadratic term too small to see at the probes went
    missing, 12% at a 16k-token row), in whole chunks; past any attention window shorter than the
    rows trained (a sliding window or chunked attention changes what attention holds beyond it).
    Where three of them already reach `max_length` (short rows, a big chunk), the longer ones are
    not run: the plan needs no row longer than the recipe's."""
    grain = chunk or 1  # 0: the model's own loss, no chunk to align to
    unit = grain * max(1, -(-(max_length // 32) // grain))
    windows = [getattr(model_config, name, None) for name in ("sliding_window", "attention_chunk_size")]
    if getattr(model_config, "use_sliding_window", True) is False:  # Qwen2 declares one it does not use
        windows[0] = None
    windows = [w for w in windows if isinstance(w, int) and not isinstance(w, bool) and w > 0]
    start = min(windows) if windows and min(windows) < max_length else 0
    lengths = [start + unit * k for k in PROBE_CHUNKS]
    within = [n for n in lengths if n <= max_length]
    return within if len(within) >= 3 else lengths


def at(coefficients: tuple[float, float, float, float], length: int, batch: int = 1) -> float:
    """The fitted bytes for `batch` rows of `length`: the constant (gradients, the loss chunk) once."""
    floor, c, a, b = coefficients
    return max(floor, c + batch * (a * length + b * length * length))
