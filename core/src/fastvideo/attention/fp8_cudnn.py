"""cuDNN's fused FP8 attention forward (Hopper and newer) for the ``fp8`` attention backend
(:mod:`fastvideo.attention.fp8_attn`, ``impl=cudnn``), called with the ``cudnn`` Python frontend
(``pip install nvidia-cudnn-frontend``; it loads the cuDNN library torch ships). Q, K and V arrive
quantized by :func:`fastvideo.attention.fp8_quant.quantize_qkv` (one scale per tensor: cuDNN takes no other);
cuDNN computes ``Q K^T`` in FP8 with fp32 accumulation, an online softmax in fp32, rounds ``P`` (relative
to the running row maximum, times :data:`P_SCALE`) to e4m3 and computes ``P V`` in FP8; on Hopper it writes
O in e4m3 too (see :data:`OUT_MARGIN`), which our kernel turns back into the inputs' dtype; on Blackwell
it writes bf16. A built graph is cached per shape, scale and device.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

#: ``P`` (in [0, 1], relative to its row's running maximum) is multiplied by this before rounding to e4m3;
#: a power of two, so its descale is exact. Blackwell's kernels may rescale lazily (P up to e^4 before a
#: new maximum is taken, cuDNN's reference says), so there :data:`P_SCALE_SM100` keeps it within e4m3.
P_SCALE = 256.0
P_SCALE_SM100 = 64.0
#: Hopper's FP8 forward writes O in FP8 (cuDNN takes bf16/fp16 outputs only on Blackwell with 9.13+): O
#: times ``OUT_MARGIN / descale_v`` (``|O|`` is at most about 1.13 ``amax(v)``: V and P round up by at most
#: 2^-4 each) is rounded to e4m3, then multiplied back (``fp8_quant.dequantize``).
OUT_MARGIN = 0.5
#: The oldest cuDNN whose fused FP8 attention forward runs on Hopper.
MIN_CUDNN = 90100


def frontend_installed() -> bool:
    """Whether the ``cudnn`` Python frontend (``nvidia-cudnn-frontend``) is installed (not imported)."""
    return importlib.util.find_spec("cudnn") is not None


#: ``(cudnn module, backend version)`` once imported; a failed import is remembered as its message.
_FRONTEND: dict[str, Any] = {}


def _frontend() -> Any:
    """The ``cudnn`` module, imported once (after torch, whose cuDNN library it then shares)."""
    if "module" not in _FRONTEND:
        import torch  # noqa: F401  (loads torch's libcudnn first)

        try:
            module = importlib.import_module("cudnn")
            _FRONTEND["module"] = module
            _FRONTEND["version"] = int(module.backend_version())
        except Exception as err:  # a frontend built for another cuDNN, or no library found
            _FRONTEND["module"] = None
            _FRONTEND["error"] = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
    return _FRONTEND["module"]


@dataclass
class _Plan:
    """One built cuDNN graph (a shape, scale and output dtype on one device), the handle it runs with, and its
    buffers: the workspace, the two amax outputs and the softmax statistics where built (unused), and the
    constant scalars (P's descale and scale, O's scale 1 for a bf16/fp16 output). The buffers are shared by
    the plan's calls: one stream at a time."""

    graph: Any
    handle: Any
    workspace: Any
    amax: Any
    consts: Any
    out_dtype: Any
    stats: Any


#: Built plans by (device index, B, H, Lq, Lk, D, Dv, scale, input dtype); handles by device index.
_PLANS: dict[tuple[Any, ...], _Plan] = {}
_HANDLES: dict[int, Any] = {}
#: Why a shape could not be built (not tried again).
_FAILED: dict[tuple[Any, ...], str] = {}
#: The uids of the graph's tensors and of its six scalars (descales of Q, K, V and P, scales of P and O).
_UIDS = {"q": 1, "k": 2, "v": 3, "o": 4, "amax_s": 5, "amax_o": 6, "stats": 13}
_SCALARS = {"descale_q": 7, "descale_k": 8, "descale_v": 9, "descale_s": 10, "scale_s": 11, "scale_o": 12}


def _bshd(b: int, h: int, length: int, d: int) -> tuple[int, int, int, int]:
    """Strides of a contiguous [B, L, H, D] tensor, in cuDNN's (B, H, L, D) dimension order."""
    return (length * h * d, d, h * d, 1)


def _aligned(values: torch.Tensor) -> torch.Tensor:
    """``values`` (n,) fp32 as an (n, 4) tensor whose row ``i`` starts with ``values[i]``: each scalar handed
    to cuDNN at its own 16-byte aligned address (``_aligned(x)[i]``, a view of 4 floats, the first read)."""
    import torch

    out = torch.zeros(values.shape[0], 4, dtype=torch.float32, device=values.device)
    out[:, 0] = values
    return out


def _build(cudnn: Any, handle: Any, key: tuple[Any, ...], out_type: Any, stats: bool) -> Any:
    _device, b, h, lq, lk, d, dv, scale, _dtype = key
    graph = cudnn.pygraph(
        io_data_type=cudnn.data_type.FP8_E4M3,
        intermediate_data_type=cudnn.data_type.FLOAT,
        compute_data_type=cudnn.data_type.FLOAT,
        handle=handle,
    )
    fp8, f32 = cudnn.data_type.FP8_E4M3, cudnn.data_type.FLOAT
    q = graph.tensor(uid=_UIDS["q"], dim=(b, h, lq, d), stride=_bshd(b, h, lq, d), data_type=fp8)
    k = graph.tensor(uid=_UIDS["k"], dim=(b, h, lk, d), stride=_bshd(b, h, lk, d), data_type=fp8)
    v = graph.tensor(uid=_UIDS["v"], dim=(b, h, lk, dv), stride=_bshd(b, h, lk, dv), data_type=fp8)
    one = {"dim": (1, 1, 1, 1), "stride": (1, 1, 1, 1), "data_type": f32}
    scalars = {name: graph.tensor(uid=uid, **one) for name, uid in _SCALARS.items()}
    o, lse, amax_s, amax_o = graph.sdpa_fp8(
        q=q,
        k=k,
        v=v,
        **scalars,
        attn_scale=scale,
        generate_stats=stats,
    )
    if stats:  # the softmax statistics, only where a cuDNN build wants them output (unused)
        lse.set_uid(_UIDS["stats"]).set_output(True).set_dim((b, h, lq, 1)).set_stride((h * lq, lq, 1, 1))
        lse.set_data_type(f32)
    o.set_uid(_UIDS["o"]).set_output(True).set_dim((b, h, lq, dv)).set_stride(_bshd(b, h, lq, dv))
    o.set_data_type(out_type)
    for name, t in (("amax_s", amax_s), ("amax_o", amax_o)):
        t.set_uid(_UIDS[name]).set_output(True).set_dim((1, 1, 1, 1)).set_stride((1, 1, 1, 1)).set_data_type(
            f32
        )
    graph.validate()
    graph.build_operation_graph()
    graph.create_execution_plans([cudnn.heur_mode.A, cudnn.heur_mode.FALLBACK])
    graph.check_support()
    graph.build_plans()
    return graph


def _plan(cudnn: Any, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> _Plan:
    """The built graph for these shapes (built on first use). Outputs tried: on Hopper e4m3 (all it takes);
    on Blackwell bf16 for bf16 inputs, fp16, then e4m3; each without softmax statistics, then with them."""
    import torch

    index = q.device.index if q.device.index is not None else torch.cuda.current_device()
    b, lq, h, d = q.shape
    key = (index, b, h, lq, k.shape[1], d, v.shape[-1], float(scale), q.dtype)
    if key in _FAILED:
        raise RuntimeError(_FAILED[key])
    if key not in _PLANS:
        if index not in _HANDLES:
            _HANDLES[index] = cudnn.create_handle()
        handle = _HANDLES[index]
        from fastvideo.attention.sage_triton import device_capability

        major = device_capability(q.device)[0]
        types = [(cudnn.data_type.FP8_E4M3, torch.float8_e4m3fn)]
        if major >= 10:
            types[:0] = [(cudnn.data_type.HALF, torch.float16)]
            if q.dtype == torch.bfloat16:
                types[:0] = [(cudnn.data_type.BFLOAT16, torch.bfloat16)]
        errors = []
        for (out_type, out_dtype), stats in ((t, st) for st in (False, True) for t in types):
            try:
                graph = _build(cudnn, handle, key, out_type, stats)
                break
            except Exception as err:  # cudnnGraphNotSupportedError and friends: the next variant
                first = str(err).splitlines()[0] if str(err) else ""
                errors.append(f"{out_dtype}{' with stats' if stats else ''}: {type(err).__name__}: {first}")
        else:
            _FAILED[key] = (
                f"cuDNN {_FRONTEND.get('version')} builds no FP8 attention for "
                f"B={b} H={h} Lq={lq} Lk={k.shape[1]} D={d} ({'; '.join(errors)})"
            )
            raise RuntimeError(_FAILED[key])
        workspace = torch.empty(graph.get_workspace_size(), dtype=torch.uint8, device=q.device)
        amax = _aligned(torch.zeros(2, dtype=torch.float32, device=q.device))
        p_scale = P_SCALE if major < 10 else P_SCALE_SM100
        consts = _aligned(torch.tensor([1.0 / p_scale, p_scale, 1.0], dtype=torch.float32, device=q.device))
        lse = torch.empty(b, h, lq, 1, dtype=torch.float32, device=q.device) if stats else None
        _PLANS[key] = _Plan(graph, handle, workspace, amax, consts, out_dtype, lse)
    return _PLANS[key]


def cudnn_fp8_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, rotate: bool = True
) -> torch.Tensor:
    """FP8 attention of ``q``, ``k``, ``v`` ([B, L, H, D], fp16/bf16 CUDA tensors; D a multiple of 16 up to
    128) through cuDNN, as :func:`fastvideo.attention.fp8_attn.fp8_attention_reference` describes (one scale
    per tensor, ``out_fp8`` on Hopper); the output is [B, L, H, D] in q's dtype."""
    import torch

    from fastvideo.attention.fp8_quant import dequantize, quantize_qkv

    cudnn = _frontend()
    if cudnn is None:
        raise RuntimeError(f"the cudnn frontend does not load ({_FRONTEND.get('error')})")
    with torch.cuda.device(q.device):
        plan = _plan(cudnn, q, k, v, scale)
        out, out_descale = run_plan(cudnn, plan, *quantize_qkv(q, k, v, rotate))
        if out_descale is not None:
            return dequantize(out, out_descale, q.dtype)
    return out if out.dtype == q.dtype else out.to(q.dtype)


def run_plan(
    cudnn: Any, plan: _Plan, q8: torch.Tensor, k8: torch.Tensor, v8: torch.Tensor, descale: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The built cuDNN graph on quantized inputs (:func:`~fastvideo.attention.fp8_quant.quantize_qkv`'s
    outputs) on the current stream: ``(output [B, L, H, Dv] in the plan's dtype, its descale (1,) fp32 when
    that dtype is e4m3, else None)``."""
    import torch

    b, lq, h, _ = q8.shape
    out = torch.empty((b, lq, h, v8.shape[-1]), dtype=plan.out_dtype, device=q8.device)
    fp8_out = plan.out_dtype == torch.float8_e4m3fn
    # descales of Q, K, V and, for an e4m3 output, O's scale OUT_MARGIN / v_descale, each 16-byte aligned
    d = _aligned(torch.cat([descale, OUT_MARGIN / descale[2:]]) if fp8_out else descale)
    c, u, s = plan.consts, _UIDS, _SCALARS
    pack = {
        u["q"]: q8,
        u["k"]: k8,
        u["v"]: v8,
        u["o"]: out,
        u["amax_s"]: plan.amax[0],
        u["amax_o"]: plan.amax[1],
    }
    pack.update({s["descale_q"]: d[0], s["descale_k"]: d[1], s["descale_v"]: d[2]})
    pack.update({s["descale_s"]: c[0], s["scale_s"]: c[1], s["scale_o"]: d[3] if fp8_out else c[2]})
    if plan.stats is not None:
        pack[u["stats"]] = plan.stats
    cudnn.set_stream(plan.handle, torch.cuda.current_stream().cuda_stream)
    plan.graph.execute(pack, plan.workspace, handle=plan.handle)
    return out, (descale[2:] / OUT_MARGIN if fp8_out else None)


def cudnn_reason() -> str | None:
    """Why cuDNN's FP8 attention cannot run here (``None``: it can): the frontend missing or not loading, or a
    cuDNN older than :data:`MIN_CUDNN`. (The GPU itself is checked by the backend.)"""
    if not frontend_installed():
        return "the cudnn Python frontend (nvidia-cudnn-frontend) is not installed"
    if _frontend() is None:
        return f"the cudnn frontend does not load ({_FRONTEND.get('error')})"
    if _FRONTEND["version"] < MIN_CUDNN:
        return f"cuDNN >= 9.1 is needed for FP8 attention, torch's is {_FRONTEND['version']}"
    return None
