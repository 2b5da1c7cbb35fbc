"""The ``sta`` attention backend: sliding tile attention in layers that admit sparse backends.

It runs where the model's allow-list admits sparse backends (Wan: video self-attention; HunyuanVideo:
the joint video+text attention of every block; cross-attention stays dense) and reads what it needs
from the step context the denoising stage (or a trainer) sets: the token ``grid``, the step index and
its options. The video tokens come first in raster order; tokens after them are text tokens of joint
attention (a key mask from the model, padding of the text, is honoured).

The backend owns what it needs, so neither core nor the model families name it:

* options (:attr:`STABackend.options`): ``window`` (``--sta-window t,h,w``, one window for every layer
  and head), ``strategy`` (``--sta-strategy FILE``, per step, layer and head, the anchor's JSON),
  ``tile`` (``--sta-tile``, default ``6,8,8``), ``full_steps`` (``--sta-full-steps K``: dense
  attention for the first K denoising steps) and ``search`` (candidate windows; ``fv sta search``
  sets it: attention stays dense and every candidate's error is recorded);
* a per-layer module without parameters, ``sta_layer``, on each of the model's
  ``sparse_attention_layers``: it tells the backend which layer is calling
  (:func:`fastvideo.attention.layers.sparse_layer_index`). With a strategy the layer's call carries a
  small tag (head and layer number per head, laid out like ``q``) that sequence parallelism moves with
  the heads, so every rank looks up the windows of the heads it holds, on the device.

Whole-grid windows (and the first ``full_steps`` steps) run on ``sdpa`` (cuDNN on Hopper): dense
attention needs no tiles.
"""

from __future__ import annotations

import importlib.util
import math
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

from fastvideo.interfaces.attention import AttentionBackend, BackendOption, LayerModule
from fastvideo_sta.strategy import Strategy, load_strategy
from fastvideo_sta.tiles import DEFAULT_TILE, TileGeometry, parse_triple

if TYPE_CHECKING:
    import torch
    from torch import nn

    from fastvideo.attention.context import StepContext

MAX_HEAD_DIM = 256
MAX_TILE_FACE = 128  # h*w tokens of one frame of a tile: the kernels' block rows
#: The compiled (non-Triton) path and why nothing is ABI-pinned (``fv doctor`` prints it).
CUDA_BUILD = (
    "none shipped: on Hopper the inference forward runs flash-attn-4's block-sparse kernel where it "
    "applies (compiled on first use by its CuTe-DSL compiler for the installed torch and GPU, then cached), "
    "the rest the Triton kernels (compiled on first use too); no binary is pinned to a torch version"
)


def _window(value: str) -> str | None:
    if not value:
        return None
    try:
        parse_triple(value, "window")
    except ValueError:
        return "must be three positive integers t,h,w in tiles (e.g. 3,3,3)"
    return None


def _tile(value: str) -> str | None:
    try:
        _, th, tw = parse_triple(value, "tile")
    except ValueError:
        return "must be three positive integers t,h,w in tokens (e.g. 6,8,8)"
    if th * tw > MAX_TILE_FACE:
        return f"must have h*w <= {MAX_TILE_FACE} tokens (one frame of a tile is one kernel block)"
    return None


def _strategy(value: str) -> str | None:
    if not value:
        return None
    try:
        load_strategy(value)
    except ValueError as exc:
        return f"is not a usable mask strategy ({exc})"
    return None


def _candidates(value: str) -> str | None:
    if not value:
        return None
    try:
        parse_candidates(value)
    except ValueError:
        return "must be windows t,h,w separated by ';' (e.g. 3,3,3;1,6,10)"
    return None


def _steps(value: int) -> str | None:
    return None if value >= 0 else "must be >= 0"


def parse_candidates(text: str) -> list[tuple[int, int, int]]:
    """``"3,3,3;1,6,10"`` as a list of windows."""
    return [parse_triple(part, "candidate window") for part in text.split(";") if part.strip()]


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def layer_tag_module(layer: nn.Module) -> nn.Module:
    """``sta_layer``: a module without parameters that remembers the layer's number."""
    from torch import nn

    from fastvideo.attention.layers import sparse_layer_index

    class STALayer(nn.Module):
        def __init__(self, index: int | None) -> None:
            super().__init__()
            self.index = index

        def extra_repr(self) -> str:
            return f"index={self.index}"

    return STALayer(sparse_layer_index(layer))


class STABackend(AttentionBackend):
    """Sliding tile attention (arXiv 2502.04507) with Triton kernels; see :mod:`fastvideo_sta.ops`."""

    name = "sta"
    priority = -10  # sparse: only when asked for
    sparse = True
    requires = "fastvideo-sta[triton]"
    options: ClassVar[tuple[BackendOption, ...]] = (
        BackendOption(
            name="window",
            type=str,
            default="",
            help="Window in tiles t,h,w for every layer and head (default: the whole grid, i.e. dense).",
            cli_flags=("--sta-window",),
            validate=_window,
        ),
        BackendOption(
            name="strategy",
            type=str,
            default="",
            help='Mask strategy JSON {"step_layer_head": [t, h, w]} (fv sta search writes one).',
            cli_flags=("--sta-strategy",),
            validate=_strategy,
        ),
        BackendOption(
            name="tile",
            type=str,
            default="6,8,8",
            help="Tile size in tokens t,h,w.",
            cli_flags=("--sta-tile",),
            validate=_tile,
        ),
        BackendOption(
            name="full_steps",
            type=int,
            default=0,
            help="Dense attention for the first K denoising steps.",
            cli_flags=("--sta-full-steps",),
            validate=_steps,
        ),
        BackendOption(
            name="search",
            type=str,
            default="",
            help="Mask search (fv sta search): candidate windows t,h,w;...; attention stays dense.",
            validate=_candidates,
        ),
    )
    layer_modules: ClassVar[tuple[LayerModule, ...]] = (
        LayerModule(name="sta_layer", build=layer_tag_module),
    )

    def __init__(self) -> None:
        self._tables: dict[Any, Any] = {}

    @classmethod
    def option_values(
        cls, options: Mapping[str, Any], *, step: int | None = None, total: int | None = None
    ) -> dict[str, Any]:
        values = super().option_values(options)
        if values["window"] and values["strategy"]:
            raise ValueError("sta takes --sta-window or --sta-strategy, not both")
        if step is not None and (
            values["strategy"] or values["search"]
        ):  # training: steps are optimizer steps
            raise ValueError(
                "sta's strategy and search are per denoising step, which training does not have; train with "
                "one window (attention.window: t,h,w)"
            )
        return values

    # ---- availability -------------------------------------------------------------------------

    @classmethod
    def unavailable_reason(cls) -> str | None:
        for module in ("torch", "triton"):
            if importlib.util.find_spec(module) is None:
                return f"{module} is not installed"
        if interpreting():
            return None
        import torch

        if not torch.cuda.is_available():
            return "STA's Triton kernels need a CUDA GPU (or TRITON_INTERPRET=1, Triton's CPU interpreter)"
        from fastvideo_sta.ops import fa4

        try:
            chosen = fa4.mode()
        except ValueError as err:  # a bad FASTVIDEO_STA_FA4: said before anything runs
            return str(err)
        # looked up here, in eager code, for the compiled blocks; its absence said once on Hopper
        if not fa4.installed() and chosen == "auto" and torch.cuda.get_device_capability() == (9, 0):
            from fastvideo.errors import warn_once

            warn_once(
                "sta: flash-attn-4 is not installed, so the Triton kernels run every call; "
                "pip install 'fastvideo-sta[fa4]' adds its faster Hopper inference forward "
                f"({fa4.ENV}=0 keeps the Triton kernels without this note)"
            )
        return None

    @classmethod
    def doctor_notes(cls) -> list[str]:
        """The kernel path ``fv doctor`` reports: Triton, why there is no CUDA build, and whether the
        inference forward goes through flash-attn-4 (:mod:`fastvideo_sta.ops.fa4`)."""
        from fastvideo_sta.ops import fa4

        path = "Triton (CPU interpreter, TRITON_INTERPRET=1)" if interpreting() else "Triton"
        have = "installed" if fa4.installed() else "not installed (pip install flash-attn-4)"
        states = {
            "auto": f"auto (where it applies and flash-attn-4 is installed; {fa4.ENV}=0 turns it off)",
            "on": f"on ({fa4.ENV}=1: a call it cannot take warns)",
            "off": f"off ({fa4.ENV}=0)",
        }
        try:
            state = states[fa4.mode()]
        except ValueError as err:
            state = f"error: {err}"
        return [
            f"kernels: {path}",
            f"CUDA build: {CUDA_BUILD}",
            f"flash-attn-4 block-sparse forward (inference, whole tiles): {state}; flash-attn-4 {have}",
        ]

    def supports(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, **kwargs: Any) -> str | None:
        import torch

        from fastvideo.attention.context import current_step

        if kwargs.get("is_causal"):
            return "sta is not causal"
        step = current_step()
        if step is None or step.grid is None:
            return "sta needs the video token grid (StepContext.grid), which the denoising stage sets"
        n = math.prod(step.grid)
        if q.shape[1] < n or k.shape[1] != q.shape[1] or v.shape[1] != q.shape[1]:
            return f"sta needs the {n} video tokens of grid {tuple(step.grid)} first, got {q.shape[1]}/{k.shape[1]}"
        mask = kwargs.get("attn_mask")
        if mask is not None and (mask.dtype != torch.bool or mask.ndim != 4 or mask.shape[1:3] != (1, 1)):
            return "sta takes only a boolean key mask [B, 1, 1, L] (of the text tokens after the grid)"
        if q.dtype not in (torch.float16, torch.bfloat16, torch.float32):
            return f"sta needs fp16, bf16 or fp32, got {q.dtype}"
        if q.shape[-1] > MAX_HEAD_DIM or v.shape[-1] != q.shape[-1]:
            return f"sta needs one head dim <= {MAX_HEAD_DIM} for q, k and v"
        if not (q.is_cuda or (q.device.type == "cpu" and interpreting())):
            return f"sta runs on CUDA tensors (or under TRITON_INTERPRET=1), got {q.device}"
        return None

    # ---- per-layer tag ------------------------------------------------------------------------

    def layer_inputs(self, layer: nn.Module, hidden: torch.Tensor, q: torch.Tensor) -> dict[str, Any]:
        """With a strategy: ``sta_tag`` ``[B, L, H, D]`` (like ``q``), whose ``[..., 0]`` is each head's
        number and ``[..., 1]`` the layer's, so the heads keep their identity through sequence
        parallelism. Nothing otherwise (one window for all)."""
        from fastvideo.attention.context import current_step

        step = current_step()
        values = step.backend_options(self.name) if step is not None else {}
        if not values.get("strategy") and not values.get("search"):
            return {}
        return {"sta_tag": _layer_tag(layer, q, values)}

    # ---- attention ----------------------------------------------------------------------------

    def forward(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        *,
        attn_mask: torch.Tensor | None = None,
        scale: float | None = None,
        is_causal: bool = False,
        step: StepContext | None = None,
        sta_tag: torch.Tensor | None = None,
    ) -> torch.Tensor:
        from fastvideo.attention import get_backend

        if step is None or step.grid is None:
            raise ValueError("the sta backend needs a step context with the token grid (StepContext.grid)")
        values = {o.name: self.option(step, o.name) for o in self.options}
        dense = get_backend("sdpa")
        if values["search"]:
            from fastvideo_sta.search import record

            out = dense.forward(q, k, v, attn_mask=attn_mask, scale=scale, step=step)
            record(self, q, k, v, out, attn_mask, scale, step, values, sta_tag)
            return out
        geom = TileGeometry(tuple(step.grid), parse_triple(values["tile"], "tile"))
        windows = self.windows(q, geom, step, values, sta_tag)
        if windows is None:  # dense this step
            return dense.forward(q, k, v, attn_mask=attn_mask, scale=scale, step=step)
        return self.attend(q, k, v, geom, windows, attn_mask, scale)

    def attend(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        geom: TileGeometry,
        windows: Any,
        attn_mask: torch.Tensor | None,
        scale: float | None,
    ) -> torch.Tensor:
        """The op on ``[B, L, H, D]``; ``attn_mask`` ``[B, 1, 1, L]`` keeps the text keys it marks."""
        from fastvideo_sta.ops import sta_attention

        text_mask = None
        if attn_mask is not None and q.shape[1] > geom.num_tokens:
            text_mask = attn_mask[:, 0, 0, geom.num_tokens :].expand(q.shape[0], -1)
        return sta_attention(q, k, v, geom.grid, windows, tile=geom.tile, text_mask=text_mask, scale=scale)

    def windows(
        self,
        q: torch.Tensor,
        geom: TileGeometry,
        step: StepContext,
        values: Mapping[str, Any],
        tag: torch.Tensor | None,
    ) -> Any:
        """The ``[H, 3]`` windows of this call's heads (a device tensor), or ``None`` for dense."""
        return _windows(self, q, geom, step, values, tag)


# ---- helpers kept out of torch.compile graphs (python ints of the step and layer) -------------------

_EAGER: dict[Any, Any] = {}


def _eager(fn: Any) -> Any:
    """``fn`` under ``torch.compiler.disable`` (wrapped on first use: this module must not import
    torch), so that compiled blocks call it eagerly instead of specialising on step and layer numbers."""
    if fn not in _EAGER:
        import torch

        _EAGER[fn] = torch.compiler.disable(fn)
    return _EAGER[fn]


def _layer_tag(layer: nn.Module, q: torch.Tensor, values: Mapping[str, Any]) -> torch.Tensor:
    return _eager(_layer_tag_eager)(layer, q, values)


def _layer_tag_eager(layer: nn.Module, q: torch.Tensor, values: Mapping[str, Any]) -> torch.Tensor:
    import torch

    index = getattr(getattr(layer, "sta_layer", None), "index", None)
    if index is None:
        raise ValueError(
            f"sta's per-layer windows need the layer's number, but {type(layer).__name__} was not "
            "numbered; attach the backend's modules with fastvideo.attention.layers.attach_layer_modules"
        )
    batch, length, heads, dim = q.shape
    if values.get("strategy"):
        strategy = load_strategy(values["strategy"])
        if index >= strategy.num_layers or heads != strategy.num_heads:
            raise ValueError(
                f"the sta strategy {values['strategy']!r} has {strategy.num_layers} layers x "
                f"{strategy.num_heads} heads, but layer {index} of this model has {heads} heads; "
                "use a strategy searched for this model (fv sta search)"
            )
    if dim < 2:
        raise ValueError("sta's per-head windows need a head dim of at least 2")
    small = torch.zeros(heads, dim, dtype=q.dtype, device=q.device)
    small[:, 0] = torch.arange(heads, dtype=q.dtype, device=q.device)  # exact in bf16 up to 256
    small[:, 1] = float(index)
    return small.view(1, 1, heads, dim).expand(batch, length, heads, dim)  # laid out like q, no copy


def _windows(
    backend: STABackend,
    q: torch.Tensor,
    geom: TileGeometry,
    step: StepContext,
    values: Mapping[str, Any],
    tag: torch.Tensor | None,
) -> Any:
    return _eager(_windows_eager)(backend, q, geom, step, values, tag)


def _windows_eager(
    backend: STABackend,
    q: torch.Tensor,
    geom: TileGeometry,
    step: StepContext,
    values: Mapping[str, Any],
    tag: torch.Tensor | None,
) -> Any:
    import torch

    full = geom.tile_grid
    if step.step_index < values["full_steps"]:
        return None
    heads = q.shape[2]
    if values["strategy"]:
        strategy: Strategy = load_strategy(values["strategy"])
        if tag is None:
            raise ValueError(
                "an sta strategy sets windows per layer, but this attention call comes from no numbered "
                "sparse attention layer (the model lists none in sparse_attention_layers)"
            )
        key = ("strategy", values["strategy"], step.step_index, geom, q.device)
        entry = backend._tables.get(key)
        if entry is None:
            table = strategy.step_table(step.step_index)  # [layer][head] windows
            dense = all(geom.clamp(w) == full for row in table for w in row)
            entry = (dense, torch.tensor(table, dtype=torch.int32, device=q.device))
            backend._tables[key] = entry
        dense, table = entry
        if dense:
            return None
        ids = tag[0, 0, :, :2].round().long()  # (H, 2): head, layer
        return table[ids[:, 1], ids[:, 0]]  # (H, 3) int32, on the device
    window = parse_triple(values["window"], "window") if values["window"] else full
    if geom.clamp(window) == full:
        return None
    key = ("window", window, heads, q.device)
    table = backend._tables.get(key)
    if table is None:
        table = backend._tables[key] = torch.tensor([window] * heads, dtype=torch.int32, device=q.device)
    return table


__all__ = ["CUDA_BUILD", "DEFAULT_TILE", "STABackend", "parse_candidates"]
