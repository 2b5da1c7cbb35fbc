"""FP8 linears for the DiT blocks: weights in ``float8_e4m3fn`` with one scale per output row.

Two ways of computing, chosen per device:

* ``compute`` (GPUs with FP8 math, compute capability >= 8.9): activations are quantized per row on
  the fly and the product runs in FP8 (``torch._scaled_mm`` with row-wise scales, or torchao's
  ``Float8DynamicActivationFloat8WeightConfig(granularity=PerRow())`` when torchao is installed);
* ``storage`` (any device): the FP8 weight is dequantized to the activation dtype in ``forward``
  and multiplied there; this halves the weights' memory, not the time.

Only ``nn.Linear`` layers inside the DiT's blocks are quantized: embeddings, norms, modulation tables
and the output projection live outside the blocks and stay in their dtype.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

FP8 = torch.float8_e4m3fn
FP8_MAX = 448.0  # largest finite float8_e4m3fn


def quantize_rows(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``w`` (N, K) -> (FP8 (N, K), fp32 scales (N, 1)) with ``w ~= q.float() * scale`` per row."""
    wf = w.detach().float()  # one fp32 copy (under torch.compile the whole function is one kernel)
    scale = (wf.abs().amax(dim=-1, keepdim=True) / FP8_MAX).clamp(min=1e-12)  # (N, 1)
    q = (wf / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8)
    return q, scale


#: How activations are quantized before an FP8 product: ``auto`` (the fused Triton kernel in eager
#: mode; under ``torch.compile`` PyTorch ops, which inductor fuses with what comes before, except for a
#: feed-forward's GELU-fused input, which keeps the kernel), ``triton`` or ``torch`` everywhere.
#: Environment: ``FASTVIDEO_FP8_ACT_QUANT``.
ACT_QUANT_CHOICES = ("auto", "triton", "torch")


def act_quant_mode() -> str:
    import os

    mode = os.environ.get("FASTVIDEO_FP8_ACT_QUANT", "auto")
    if mode not in ACT_QUANT_CHOICES:
        raise ValueError(f"FASTVIDEO_FP8_ACT_QUANT must be one of {ACT_QUANT_CHOICES}, got {mode!r}")
    return mode


def quantize_activation(x: torch.Tensor, gelu: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """``x`` (M, K) -> (FP8 (M, K), fp32 (M, 1)) as :func:`quantize_rows`, through the fused Triton
    kernel (one read of ``x``) where it runs and :func:`act_quant_mode` allows it; a kernel that fails
    to build or launch warns once and :func:`quantize_rows` serves the process from then on (graphs
    compiled after that failure too; a graph compiled before it keeps the kernel it traced).

    :param gelu: quantize ``GELU(x)`` (tanh approximation), the feed-forward's activation fused in (see
        :func:`fuse_gelu`). With ``auto`` the Triton kernel then runs inside compiled graphs too: it
        takes 0.64 ms at 32760 x 13824 on an H100 against 1.53 ms for inductor's fusion of the same
        PyTorch ops (``benchmarks/gelu_quant_probe.py``)."""
    from fastvideo.kernels import failed_ops, fused_or_reference

    mode = act_quant_mode()
    use_triton = mode == "triton" or (mode == "auto" and (gelu or not torch.compiler.is_compiling()))
    use_triton = use_triton and "fp8_quantize_rows" not in failed_ops()
    if use_triton and (x.is_cuda or _triton_interpreting()) and _has_triton():
        from fastvideo.optimize.fp8_triton import quantize_rows_triton

        if torch.compiler.is_compiling():  # traced as a user kernel: no Python fallback in the graph
            return quantize_rows_triton(x, gelu)
        return fused_or_reference(
            "fp8_quantize_rows",
            lambda: quantize_rows_triton(x, gelu),
            lambda: quantize_rows(_gelu(x) if gelu else x),
            switch_off="FASTVIDEO_FP8_ACT_QUANT=torch turns the fused quantization off",
        )
    return quantize_rows(_gelu(x) if gelu else x)


def _gelu(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.gelu(x, approximate="tanh")


#: ``{"installed": bool}`` once looked up, in eager code (:func:`fuse_gelu`) before a compiled block
#: asks: dynamo reads a dict, where it would re-trace a ``functools.cache`` body (and warn).
_TRITON: dict[str, bool] = {}


def _has_triton() -> bool:
    if "installed" not in _TRITON:
        import importlib.util

        _TRITON["installed"] = importlib.util.find_spec("triton") is not None
    return _TRITON["installed"]


def _triton_interpreting() -> bool:
    import os

    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def dequantize_rows(q: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The weight an FP8 linear stands for, in ``dtype`` (fp32 product, then cast)."""
    return (q.float() * scale).to(dtype)


def fp8_math_available(device: torch.device) -> bool:
    """Whether ``device`` multiplies in FP8 with row-wise scales (CUDA compute capability >= 8.9:
    Ada, Hopper, Blackwell, and a torch whose ``_scaled_mm`` takes them; probed once per device)."""
    if device.type != "cuda" or torch.cuda.get_device_capability(device) < (8, 9):
        return False
    return _scaled_mm_works(str(device))


@functools.cache
def rowwise_bias_works(device: str) -> bool:
    """Whether ``torch._scaled_mm`` with row-wise scales adds a bf16 bias itself here (then no pass over
    the output follows the product); probed once per device."""
    try:
        a = torch.ones(16, 32, device=device).to(FP8)
        sa, sb = torch.ones(16, 1, device=device), torch.ones(1, 16, device=device)
        bias = torch.full((16,), 2.0, device=device, dtype=torch.bfloat16)
        out = torch._scaled_mm(a, a.t(), scale_a=sa, scale_b=sb, bias=bias, out_dtype=torch.bfloat16)
        return bool(torch.all(out == 34))
    except (RuntimeError, TypeError):
        return False


@functools.cache
def rowwise_fast_accum_works(device: str) -> bool:
    """Whether ``torch._scaled_mm`` with row-wise scales takes ``use_fast_accum=True`` here; probed once."""
    try:
        a = torch.ones(16, 32, device=device).to(FP8)
        sa, sb = torch.ones(16, 1, device=device), torch.ones(1, 16, device=device)
        out = torch._scaled_mm(
            a, a.t(), scale_a=sa, scale_b=sb, out_dtype=torch.bfloat16, use_fast_accum=True
        )
        return bool(torch.all(out == 32))
    except (RuntimeError, TypeError):
        return False


@functools.cache
def _scaled_mm_works(device: str) -> bool:
    try:
        a = torch.ones(16, 32, device=device).to(FP8)
        b = torch.ones(16, 32, device=device).to(FP8)
        sa, sb = torch.ones(16, 1, device=device), torch.ones(1, 16, device=device)
        out = torch._scaled_mm(a, b.t(), scale_a=sa, scale_b=sb, out_dtype=torch.bfloat16)
        return bool(torch.all(out == 32))
    except (RuntimeError, TypeError) as exc:
        import warnings

        warnings.warn(f"FP8 matmul unavailable here ({exc}); using FP8 storage with bf16 math", stacklevel=2)
        return False


class FP8Linear(nn.Module):
    """A linear layer whose weight is stored in FP8 (``weight`` (N, K), ``weight_scale`` (N, 1) fp32).

    ``mode="storage"`` dequantizes the weight in ``forward``; ``mode="compute"`` quantizes the
    input per row (:func:`quantize_activation`: one fused pass) and multiplies in FP8 with fp32
    accumulation (CUDA, compute capability >= 8.9): ``torch._scaled_mm`` applies both row-wise scales
    and, where ``fused_bias`` (probed: :func:`rowwise_bias_works`), the bias, and writes the output
    dtype, so no pass over the output follows. ``weight`` (N, K) row-major is, transposed, the
    column-major (K, N) operand ``_scaled_mm`` wants: a view, no copy per call.
    """

    #: ``torch._scaled_mm``'s ``use_fast_accum`` (Hopper: no periodic promotion of the FP8 sums; faster,
    #: as torchao's inference default). Set per layer where FP8 math is enabled (probed:
    #: :func:`rowwise_fast_accum_works`); ``FASTVIDEO_FP8_FAST_ACCUM=0`` turns it off.
    use_fast_accum = True

    def __init__(
        self, in_features: int, out_features: int, *, bias: bool, dtype: torch.dtype, mode: str = "storage"
    ) -> None:
        super().__init__()
        if mode not in ("storage", "compute"):
            raise ValueError(f"FP8Linear mode must be 'storage' or 'compute', got {mode!r}")
        self.in_features, self.out_features, self.mode = in_features, out_features, mode
        self.weight = nn.Parameter(torch.empty(out_features, in_features, dtype=FP8), requires_grad=False)
        self.weight_scale = nn.Parameter(
            torch.empty(out_features, 1, dtype=torch.float32), requires_grad=False
        )
        self.bias = (
            nn.Parameter(torch.empty(out_features, dtype=dtype), requires_grad=False) if bias else None
        )
        self.fused_bias = False  # whether _scaled_mm adds the bias (set where FP8 math is enabled)
        #: Whether the input is first passed through GELU (tanh), fused into the activation's quantization:
        #: set by :func:`fuse_gelu` on a feed-forward's second linear; the :class:`~fastvideo.layers.MLP`
        #: skips its own activation while its ``fc2`` says so (hooks on ``fc2`` see the pre-GELU input).
        self.gelu_input = False

    @classmethod
    def from_linear(cls, linear: nn.Linear, mode: str = "storage", work_device: Any = None) -> FP8Linear:
        """Quantize ``linear``'s weight per output row (its bias is kept as it is); the result lives
        where the weight does (computed on ``work_device`` when given)."""
        w = linear.weight
        with torch.device("meta"):
            out = cls(
                linear.in_features,
                linear.out_features,
                bias=linear.bias is not None,
                dtype=w.dtype,
                mode=mode,
            )
        q, scale = quantize_rows(w if work_device is None else w.to(work_device))
        q, scale = q.to(w.device), scale.to(w.device)
        out.weight = nn.Parameter(q, requires_grad=False)
        out.weight_scale = nn.Parameter(scale, requires_grad=False)
        if linear.bias is not None:
            out.bias = nn.Parameter(linear.bias.detach(), requires_grad=False)
        return out

    def extra_repr(self) -> str:
        fused = ", gelu_input=True" if self.gelu_input else ""
        return f"in_features={self.in_features}, out_features={self.out_features}, mode={self.mode}{fused}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "compute" and x.is_cuda:
            return self._forward_fp8(x)
        if self.gelu_input:
            x = _gelu(x)
        w = dequantize_rows(self.weight, self.weight_scale, x.dtype)
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return F.linear(x, w, bias)

    def _forward_fp8(self, x: torch.Tensor) -> torch.Tensor:
        x2 = x.reshape(-1, self.in_features)  # (M, K)
        xq, xs = quantize_activation(x2, self.gelu_input)  # (M, K) fp8, (M, 1) fp32
        out_dtype = x.dtype if x.dtype in (torch.bfloat16, torch.float16) else torch.bfloat16
        fuse = self.bias is not None and self.fused_bias and self.bias.dtype == out_dtype
        out = torch._scaled_mm(
            xq,
            self.weight.t(),  # (K, N) column-major: a view of the stored (N, K)
            scale_a=xs,
            scale_b=self.weight_scale.t(),  # (1, N)
            bias=self.bias if fuse else None,
            out_dtype=out_dtype,
            use_fast_accum=self.use_fast_accum,
        )  # (M, N)
        if self.bias is not None and not fuse:
            out = out + self.bias.to(out_dtype)
        return out.to(x.dtype).reshape(*x.shape[:-1], self.out_features)


def fuse_gelu(model: nn.Module) -> int:
    """Move each feed-forward's GELU (tanh) into its second linear where that is an FP8 linear with FP8
    math: the GELU is then computed inside the activation's quantization (one pass, no bf16 GELU output
    written and read back). The flag lives on the linear (``gelu_input``): replace it by another module
    and the MLP applies its GELU again. In place; returns how many feed-forwards changed."""
    from fastvideo.layers import MLP

    _has_triton()  # looked up here, in eager code
    count = 0
    for module in model.modules():
        if (
            type(module) is MLP  # a subclass may have its own forward
            and module.act == "gelu_tanh"
            and isinstance(module.fc2, FP8Linear)
            and module.fc2.mode == "compute"
        ):
            module.fc2.gelu_input = True
            count += 1
    return count


def _warn_fallback(exc: Exception) -> None:
    import warnings

    warnings.warn(
        f"FP8 matmul unavailable ({exc}); using FP8 storage with bf16 math", RuntimeWarning, stacklevel=3
    )


def _rowwise_features(device: torch.device, compute: bool) -> tuple[bool, bool]:
    """(bias inside ``_scaled_mm``, fast accumulation) for FP8 layers computing on ``device``."""
    import os

    if not compute:
        return False, False
    fast = os.environ.get("FASTVIDEO_FP8_FAST_ACCUM", "1") != "0" and rowwise_fast_accum_works(str(device))
    return rowwise_bias_works(str(device)), fast


def _fp8_shape_ok(linear: nn.Linear) -> bool:
    """``torch._scaled_mm`` needs both sizes to be multiples of 16."""
    return linear.in_features % 16 == 0 and linear.out_features % 16 == 0


def block_linears(model: nn.Module) -> Iterable[tuple[nn.Module, str, nn.Linear]]:
    """``(parent, attribute, linear)`` for every ``nn.Linear`` inside the model's blocks, except those
    its ``fp8_exclude`` globs name (modulation projections, layers whose weight the model reads itself)."""
    import fnmatch

    blocks_in_order = getattr(model, "blocks_in_order", None)
    blocks = {id(b) for b in blocks_in_order()} if callable(blocks_in_order) else set()
    exclude = tuple(getattr(model, "fp8_exclude", ()))
    modules = dict(model.named_modules())
    inside = set()
    for name, module in modules.items():
        if id(module) in blocks:
            inside.add(name + ".")
    for name, child in modules.items():
        if type(child) is not nn.Linear or not any(name.startswith(p) for p in inside):
            continue
        if any(fnmatch.fnmatchcase(name, pattern) for pattern in exclude):
            continue
        parent, _, attr = name.rpartition(".")
        yield modules[parent], attr, child


def _torchao_quantize(model: nn.Module) -> bool:
    """Quantize the blocks' linears with torchao (dynamic FP8 activations, per-row scales); False
    when torchao is not importable."""
    try:
        from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow, quantize_
    except ImportError:
        return False
    config = Float8DynamicActivationFloat8WeightConfig(granularity=PerRow())
    chosen = {id(lin) for _, _, lin in block_linears(model)}
    quantize_(model, config, filter_fn=lambda m, _fqn: id(m) in chosen and _fp8_shape_ok(m))
    return True


def quantize_fp8(
    model: nn.Module, mode: str = "fp8", *, use_torchao: bool | None = None, device: Any = None
) -> dict[str, Any]:
    """Replace the linears of ``model``'s blocks by FP8 ones, in place.

    :param mode: ``"fp8"``: FP8 math where the model's device has it (torchao when installed, else
        ``torch._scaled_mm``), else FP8 storage; ``"fp8-storage"``: FP8 weights, math in the
        activation dtype, on any device.
    :param use_torchao: None: when importable (FP8 math only).
    :param device: where the model runs (None: where its first parameter is); block weights kept in
        CPU memory (layer offload) are quantized there, one linear at a time, and stay in CPU memory.
    :returns: ``{"linears": how many were quantized, "mode": "compute"|"storage", "via": ...}``.
    """
    if mode not in ("fp8", "fp8-storage"):
        raise ValueError(f"quantize must be 'fp8' or 'fp8-storage', got {mode!r}")
    if not hasattr(model, "blocks_in_order"):
        raise TypeError(f"FP8 quantization needs a fastvideo DiT (with blocks), got {type(model).__name__}")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    compute = mode == "fp8" and fp8_math_available(device)
    linears = list(block_linears(model))
    resident = all(lin.weight.device == device for _, _, lin in linears)  # else: blocks kept in CPU memory
    if compute and resident and use_torchao is not False and _torchao_quantize(model):
        return {
            "linears": sum(_fp8_shape_ok(lin) for _, _, lin in linears),
            "mode": "compute",
            "via": "torchao",
        }
    count = 0
    fused_bias, fast_accum = _rowwise_features(device, compute)
    for parent, name, linear in linears:
        fits = _fp8_shape_ok(linear) or not compute
        fp8 = FP8Linear.from_linear(linear, "compute" if compute and fits else "storage", device)
        fp8.fused_bias, fp8.use_fast_accum = fused_bias, fast_accum
        setattr(parent, name, fp8)
        count += 1
    fuse_gelu(model)
    return {
        "linears": count,
        "mode": "compute" if compute else "storage",
        "via": "scaled_mm" if compute else "dequant",
    }


# ---------------------------------------------------------------- pre-quantized checkpoints


def read_safetensors(path: str | Any) -> dict[str, torch.Tensor]:
    """Every tensor of a ``.safetensors`` file, or of all such files in a folder."""
    from pathlib import Path

    from safetensors.torch import load_file

    path = Path(path).expanduser()
    files = sorted(path.glob("*.safetensors")) if path.is_dir() else [path]
    if not files or not all(f.is_file() for f in files):
        raise ValueError(
            f"FP8 checkpoint {str(path)!r} must be a .safetensors file or a folder of them; none found"
        )
    state: dict[str, torch.Tensor] = {}
    for f in files:
        state.update(load_file(str(f)))
    return state


#: Suffixes of the scales that FP8 checkpoints store next to ``<layer>.weight``: LightX2V writes one per
#: output channel as ``<layer>.weight_scale`` (N, 1); ComfyUI / Kijai "scaled" files one per tensor as
#: ``<layer>.scale_weight``; plain cast files (Kijai ``*_fp8_e4m3fn``) none (scale 1).
_SCALE_SUFFIXES = (".weight_scale", ".scale_weight")
_IGNORED_KEYS = ("scaled_fp8",)  # ComfyUI's marker tensor


def split_scales(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(tensors, scales keyed by the ``<layer>.weight`` they scale) of an FP8 checkpoint."""
    tensors, scales = {}, {}
    for key, value in state.items():
        suffix = next((s for s in _SCALE_SUFFIXES if key.endswith(s)), None)
        if suffix is not None:
            scales[key[: -len(suffix)] + ".weight"] = value
        elif key not in _IGNORED_KEYS and not key.endswith((".scale_input", ".input_scale")):
            tensors[key] = value
    return tensors, scales


def _rename(model: nn.Module, tensors: dict[str, torch.Tensor]) -> tuple[Any, dict[str, torch.Tensor]]:
    """``tensors`` under our names, through the first of the DiT's name mappings that maps them all."""
    ours = {n for n, _ in model.named_parameters()} | {n for n, _ in model.named_buffers()}
    if set(tensors) <= ours:
        return None, tensors
    candidates = [getattr(model, "name_mapping", None), *getattr(model, "checkpoint_mappings", ())]
    errors = []
    for mapping in candidates:
        if mapping is None:
            continue
        try:
            return mapping, mapping.to_ours(tensors)
        except Exception as exc:  # UnmappedKeysError: try the next naming
            errors.append(str(exc).split(";")[0])
    raise ValueError(
        f"the FP8 checkpoint's names are neither {type(model).__name__}'s own nor any naming it declares "
        f"(name_mapping, checkpoint_mappings): {errors[0] if errors else 'no mapping declared'}"
    )


def load_prequantized(model: nn.Module, path: str | Any, mode: str = "fp8") -> dict[str, Any]:
    """Load a pre-quantized FP8 checkpoint of ``model`` (LightX2V or Kijai / ComfyUI format) in place.

    FP8 weights of the block linears become :class:`FP8Linear` s with their stored scales (per output
    channel, per tensor, or 1); every other tensor of the file is copied into the model's parameter of
    that name (cast to its dtype). Names may be ours, diffusers' (the DiT's ``name_mapping``) or any
    naming the DiT declares in ``checkpoint_mappings`` (Wan: the original release's).

    :returns: ``{"fp8_linears": n, "other_tensors": m, "mode": "compute"|"storage"}``.
    :raises ValueError: unknown names, or a shape that does not match the model.
    """
    tensors, scales = split_scales(read_safetensors(path))
    mapping, tensors = _rename(model, tensors)
    if scales and mapping is not None:
        scales = mapping.to_ours(scales)
    device = next(model.parameters()).device
    compute = mode == "fp8" and fp8_math_available(device)
    names = {id(m): n for n, m in model.named_modules()}
    count = 0
    for parent, attr, linear in list(block_linears(model)):
        key = f"{names[id(linear)]}.weight"
        w = tensors.pop(key, None)
        if w is None or w.dtype != FP8:
            if w is not None:
                tensors[key] = w  # a high-precision weight: copied below
            continue
        if tuple(w.shape) != tuple(linear.weight.shape):
            raise ValueError(
                f"FP8 checkpoint: {key} has shape {tuple(w.shape)}, the model {tuple(linear.weight.shape)}"
            )
        scale = scales.get(key, torch.ones(()))
        scale = scale.float().reshape(-1, 1).expand(w.shape[0], 1).contiguous()  # scalar or (N,) or (N, 1)
        fp8 = FP8Linear(linear.in_features, linear.out_features, bias=linear.bias is not None, dtype=linear.weight.dtype,
                        mode="compute" if compute and _fp8_shape_ok(linear) else "storage")  # fmt: skip
        fp8.weight.data, fp8.weight_scale.data = w.to(device), scale.to(device)
        fp8.fused_bias, fp8.use_fast_accum = _rowwise_features(device, compute)
        bias_key = f"{names[id(linear)]}.bias"
        if fp8.bias is not None:
            fp8.bias.data = tensors.pop(bias_key, linear.bias).to(device, linear.weight.dtype)  # type: ignore[union-attr]
        setattr(parent, attr, fp8)
        count += 1
    fuse_gelu(model)
    params = dict(model.named_parameters()) | dict(model.named_buffers())
    unknown = sorted(set(tensors) - set(params))
    if unknown:
        raise ValueError(f"FP8 checkpoint has {len(unknown)} tensor(s) the model does not: {unknown[:5]}")
    with torch.no_grad():
        for key, value in tensors.items():
            target = params[key]
            if tuple(value.shape) != tuple(target.shape):
                raise ValueError(
                    f"FP8 checkpoint: {key} has shape {tuple(value.shape)}, the model {tuple(target.shape)}"
                )
            stored = value.float() * scales[key].float() if key in scales else value
            target.copy_(stored.to(target.dtype))
    return {"fp8_linears": count, "other_tensors": len(tensors), "mode": "compute" if compute else "storage"}


def prequantized_on_meta(
    model: nn.Module, path: str | Any, mode: str, device: torch.device
) -> tuple[dict[str, torch.Tensor], set[str], int]:
    """Prepare ``model`` (built on ``meta``, not yet loaded) for an FP8 checkpoint: each block linear the
    file stores in FP8 is replaced by an :class:`FP8Linear` on ``meta``; nothing is loaded.

    :returns: ``(state, fp8_names, count)``: every tensor of the file under the model's names (FP8
        weights and their fp32 ``weight_scale`` as stored, others dequantized when the file scales them),
        the names that must keep their dtype (FP8 weights, scales), and how many linears were replaced.
        The caller loads ``state`` (cast, placed) with the folder's tensors for what the file lacks.
    :raises ValueError: unknown names, or a shape that does not match the model.
    """
    tensors, scales = split_scales(read_safetensors(path))
    mapping, tensors = _rename(model, tensors)
    if scales and mapping is not None:
        scales = mapping.to_ours(scales)
    compute = mode == "fp8" and fp8_math_available(device)
    names = {id(m): n for n, m in model.named_modules()}
    state: dict[str, torch.Tensor] = {}
    kept: set[str] = set()
    count = 0
    for parent, attr, linear in list(block_linears(model)):
        key = f"{names[id(linear)]}.weight"
        w = tensors.get(key)
        if w is None or w.dtype != FP8:
            continue
        if tuple(w.shape) != tuple(linear.weight.shape):
            raise ValueError(
                f"FP8 checkpoint: {key} has shape {tuple(w.shape)}, the model {tuple(linear.weight.shape)}"
            )
        del tensors[key]
        scale = scales.get(key, torch.ones(()))
        scale = scale.float().reshape(-1, 1).expand(w.shape[0], 1).contiguous()  # scalar or (N,) or (N, 1)
        with torch.device("meta"):
            fp8 = FP8Linear(linear.in_features, linear.out_features, bias=linear.bias is not None,
                            dtype=linear.weight.dtype, mode="compute" if compute and _fp8_shape_ok(linear) else "storage")  # fmt: skip
        fp8.fused_bias, fp8.use_fast_accum = _rowwise_features(device, compute)
        setattr(parent, attr, fp8)
        state[key], state[key + "_scale"] = w, scale
        kept |= {key, key + "_scale"}
        count += 1
    fuse_gelu(model)
    params = dict(model.named_parameters()) | dict(model.named_buffers())
    unknown = sorted(set(tensors) - set(params))
    if unknown:
        raise ValueError(f"FP8 checkpoint has {len(unknown)} tensor(s) the model does not: {unknown[:5]}")
    for key, value in tensors.items():
        if tuple(value.shape) != tuple(params[key].shape):
            raise ValueError(
                f"FP8 checkpoint: {key} has shape {tuple(value.shape)}, the model {tuple(params[key].shape)}"
            )
        state[key] = value.float() * scales[key].float() if key in scales else value
    return state, kept, count
