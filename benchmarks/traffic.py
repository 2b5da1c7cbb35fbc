"""Memory traffic and kernel launches of one DiT block's eager forward, counted on the CPU.

The model is built on the ``meta`` device at its real widths (bf16, one layer) and run at the
real token counts: no arithmetic happens, every aten op is seen by a ``TorchDispatchMode`` that tallies

- bytes read and written by each op that is neither a GEMM nor the attention (inputs: the memory a
  tensor spans, so a broadcast table counts once; outputs: their size; in-place ops count the mutated
  input as written), per op name;
- kernel launches: every op except views and ``empty`` (GEMMs and attention included);
- GEMM / attention launches separately (their bytes are not the memory-bound work this measures).

The fused Triton kernels of :mod:`fastvideo.kernels` (``--fused``, the CUDA-inference path) show as
``fused:<kernel>``: one read of each operand and one write of the output, one launch. The attention
backend is replaced by a stub that returns ``(B, L, H, Dv)`` (the layout flash / cuDNN attention write).
``F.rms_norm`` counts as one fused op (one read, one write): torch runs it as a single kernel on CUDA
(``--rms-composite`` counts its CPU / meta decomposition instead).

    python benchmarks/traffic.py cosmos [--fused | --unfused] [--top N]
    python benchmarks/traffic.py ltx2 --fused --tokens 15360
    python benchmarks/traffic.py both                 # unfused and fused tables of Cosmos and LTX-2
    python benchmarks/traffic.py wan --fused          # any family: add an entry like cosmos() below

The numbers are per block (the block's ``forward`` only; embeddings and head excluded).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

GEMMS = {"mm", "addmm", "bmm", "baddbmm", "_addmm_activation", "_scaled_mm", "linear", "matmul"}
FREE = {
    "empty",
    "empty_strided",
    "empty_like",
    "new_empty",
    "new_empty_strided",
    "detach",
    "lift_fresh",
    "_unsafe_view",
}


def span_bytes(t: torch.Tensor) -> int:
    """Bytes of the memory ``t`` spans (a broadcast dim of stride 0 adds nothing)."""
    if t.numel() == 0:
        return 0
    elems = 1 + sum((s - 1) * abs(st) for s, st in zip(t.shape, t.stride(), strict=True))
    return min(elems, t.numel()) * t.element_size()


@dataclass
class Tally:
    bytes_by_op: collections.Counter = field(default_factory=collections.Counter)
    launches_by_op: collections.Counter = field(default_factory=collections.Counter)
    gemm_launches: int = 0
    attention_launches: int = 0
    small_launches: int = 0  # elementwise launches moving < 4 MiB (the audio stream, the tables)
    on: bool = False

    def add(self, name: str, read: int, written: int) -> None:
        if not self.on:
            return
        self.bytes_by_op[name] += read + written
        self.launches_by_op[name] += 1
        self.small_launches += read + written < 4 * 2**20

    @property
    def total_bytes(self) -> int:
        return sum(self.bytes_by_op.values())

    @property
    def launches(self) -> int:
        return sum(self.launches_by_op.values()) + self.gemm_launches + self.attention_launches


def _tensors(obj: Any) -> list[torch.Tensor]:
    out: list[torch.Tensor] = []
    for x in obj if isinstance(obj, (list, tuple)) else [obj]:
        if isinstance(x, torch.Tensor):
            out.append(x)
        elif isinstance(x, (list, tuple)):
            out.extend(_tensors(x))
    return out


class Counter(TorchDispatchMode):
    def __init__(self, tally: Tally) -> None:
        super().__init__()
        self.tally = tally
        self.paused = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if self.paused or not self.tally.on:
            return out
        name = func.overloadpacket.__name__
        schema = func._schema
        if not _tensors(out) and not any(a.alias_info is not None for a in schema.arguments):
            return out  # no tensor result (e.g. promote_types): no kernel
        if (
            func.is_view
            or name in FREE
            or any(r.alias_info is not None and not r.alias_info.is_write for r in schema.returns)
        ):
            return out
        if name in GEMMS:
            self.tally.gemm_launches += 1
            return out
        ins = _tensors(list(args) + list(kwargs.values()))
        read = sum(span_bytes(t) for t in ins)
        if name.startswith("new_") or name.endswith("_like"):  # takes only dtype / device from its input
            read = 0
        mutated = [
            a
            for arg, a in zip(schema.arguments, list(args), strict=False)
            if arg.alias_info is not None and arg.alias_info.is_write and isinstance(a, torch.Tensor)
        ]
        written = (
            sum(span_bytes(t) for t in mutated) if mutated else sum(span_bytes(t) for t in _tensors(out))
        )
        if name in ("copy_",):  # reads only the source
            read = span_bytes(args[1])
        self.tally.add(name, read, written)
        return out


@contextlib.contextmanager
def _paused(mode: Counter) -> Iterator[None]:
    mode.paused += 1
    try:
        yield
    finally:
        mode.paused -= 1


class _FakeKernel:
    """Stands for a ``@triton.jit`` kernel: ``kernel[grid](*args)`` tallies one read of each tensor
    argument (each once) and one write of the output argument."""

    def __init__(self, name: str, outs: tuple[int, ...], tally: Tally) -> None:
        self.name, self.outs, self.tally = name, outs, tally

    def __getitem__(self, grid: Any) -> Callable[..., None]:
        def launch(*args: Any, **kwargs: Any) -> None:
            seen: dict[int, torch.Tensor] = {}
            for i, a in enumerate(args):
                if isinstance(a, torch.Tensor) and i not in self.outs:
                    seen[id(a)] = a
            for i in self.outs:
                seen.pop(id(args[i]), None)
            written = sum(span_bytes(args[i]) for i in self.outs)
            self.tally.add(f"fused:{self.name}", sum(span_bytes(t) for t in seen.values()), written)

        return launch


@contextlib.contextmanager
def counting(tally: Tally, fused: bool, rms_composite: bool) -> Iterator[Counter]:
    """Install the counter, the attention stub, the fused-kernel stand-ins and the rms_norm counter."""
    from fastvideo import kernels
    from fastvideo.attention.backends import SDPABackend
    from fastvideo.kernels import _triton

    mode = Counter(tally)
    saved: list[tuple[Any, str, Any]] = []

    def patch(obj: Any, name: str, value: Any) -> None:
        saved.append((obj, name, getattr(obj, name)))
        setattr(obj, name, value)

    def sdpa_stub(self: Any, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, **kw: Any) -> torch.Tensor:
        if tally.on:
            tally.attention_launches += 1
        with _paused(mode):
            return q.new_empty(*q.shape[:-1], v.shape[-1])

    patch(SDPABackend, "forward", sdpa_stub)
    kernel_outputs = {
        "_adaln_kernel": (6,),
        "_rms_rope_kernel": (4,),
        "_gated_residual_kernel": (4,),
        "_gated_residual_adaln_kernel": (6, 7),
    }
    for name, outs in kernel_outputs.items():
        if hasattr(_triton, name):  # (a checkout without the newer kernels)
            patch(_triton, name, _FakeKernel(name.strip("_").removesuffix("_kernel"), outs, tally))
    if not rms_composite:
        rms = F.rms_norm

        def rms_counted(x: torch.Tensor, shape: Any, weight: Any = None, eps: Any = None) -> torch.Tensor:
            with _paused(mode):
                y = rms(x, shape, weight, eps)
            reads = span_bytes(x) + (span_bytes(weight) if weight is not None else 0)
            tally.add("rms_norm (one kernel)", reads, span_bytes(y))
            return y

        patch(F, "rms_norm", rms_counted)
    try:
        with torch.no_grad(), kernels.forced(fused), mode:
            yield mode
    finally:
        for obj, name, value in reversed(saved):
            setattr(obj, name, value)


def tally_block(
    model: torch.nn.Module, blocks: torch.nn.ModuleList, run: Callable[[], Any], **kw: Any
) -> Tally:
    """Tally ``blocks[0]``'s forward inside one ``run()`` of the whole model."""
    tally = Tally()

    def pre(*_: Any) -> None:
        tally.on = True

    def post(*_: Any) -> None:
        tally.on = False

    handles = [blocks[0].register_forward_pre_hook(pre), blocks[0].register_forward_hook(post)]
    try:
        with counting(tally, **kw):
            run()
    finally:
        for h in handles:
            h.remove()
    return tally


# --------------------------------------------------------------------------------------------------
# Families
# --------------------------------------------------------------------------------------------------


def _meta_model(cls: Any, cfg: dict[str, Any]) -> Any:
    with torch.device("meta"):
        model = cls(cls.parse_config(cfg)) if hasattr(cls, "parse_config") else cls.from_config(cfg)
    return model.to(torch.bfloat16).eval()


def cosmos(tokens: int | None, **kw: Any) -> tuple[Tally, dict[str, Any]]:
    """Cosmos-Predict2-2B Video2World at 93x704x1280 (24 x 44 x 80 = 84480 tokens), per-frame timesteps."""
    from fastvideo_cosmos.configs import CONFIGS
    from fastvideo_cosmos.model import CosmosTransformer

    cfg = {**CONFIGS["cosmos-predict2-2b-video2world"], "num_layers": 1}
    model = _meta_model(CosmosTransformer, cfg)
    t, h, w = 24, 88, 160
    if tokens is not None:  # keep 24 frames, scale the width
        w = max(2, 2 * round(tokens / (t * h / 4) / 2))
    meta: dict[str, Any] = {"device": "meta", "dtype": torch.bfloat16}
    latents = torch.empty(1, 16, t, h, w, **meta)
    timestep = torch.empty(1, 1, t, 1, 1, **meta)
    text = torch.empty(1, 512, 1024, **meta)
    mask = torch.empty(1, 1, t, h, w, **meta)
    pad = torch.empty(1, 1, h * 8, w * 8, **meta)

    def run() -> Any:
        return model(latents, timestep, text, fps=16, condition_mask=mask, padding_mask=pad)

    info = {"tokens": t * h * w // 4, "dim": model.config.dim, "ffn": int(model.config.dim * 4)}
    return tally_block(model, model.blocks, run, **kw), info


def ltx2(tokens: int | None, **kw: Any) -> tuple[Tally, dict[str, Any]]:
    """LTX-2 19B at 121x768x1280 (16 x 24 x 40 = 15360 video, 126 audio, 1024 text tokens)."""
    from fastvideo_ltx.ltx2.configs import LTX2
    from fastvideo_ltx.ltx2.model import LTX2Transformer

    model = _meta_model(LTX2Transformer, {**LTX2, "num_layers": 1})
    t, h, w = 16, 24, 40
    if tokens is not None:
        w = max(1, round(tokens / (t * h)))
    meta: dict[str, Any] = {"device": "meta", "dtype": torch.bfloat16}
    video = torch.empty(1, 128, t, h, w, **meta)
    audio = torch.empty(1, 8, 126, 16, **meta)
    text = torch.empty(1, 1024, 3840, **meta)
    mask = torch.empty(1, 1024, device="meta")
    ts = torch.empty(1, device="meta")

    def run() -> Any:
        return model(video, audio, text, text, ts, sigma=ts, encoder_attention_mask=mask,
                     audio_encoder_attention_mask=mask, use_cross_timestep=True)  # fmt: skip

    cfg = model.config
    info = {"tokens": t * h * w, "audio_tokens": 126, "dim": cfg.dim, "audio_dim": cfg.audio_dim}
    return tally_block(model, model.blocks, run, **kw), info


def wan(tokens: int | None, **kw: Any) -> tuple[Tally, dict[str, Any]]:
    """Wan2.1-T2V-1.3B at 81x480x832 (21 x 30 x 52 = 32760 tokens): another family through the same
    counter (no floor computed; ``minimum_bytes`` covers Cosmos and LTX-2)."""
    from fastvideo_wan.configs import CONFIGS
    from fastvideo_wan.model import WanTransformer

    model = _meta_model(WanTransformer, {**CONFIGS["wan2.1-t2v-1.3b"], "num_layers": 1})
    t, h, w = 21, 60, 104
    if tokens is not None:
        w = max(2, 2 * round(tokens / (t * h / 4) / 2))
    meta: dict[str, Any] = {"device": "meta", "dtype": torch.bfloat16}
    latents = torch.empty(1, 16, t, h, w, **meta)
    text = torch.empty(1, 512, 4096, **meta)
    ts = torch.empty(1, device="meta")

    def run() -> Any:
        return model(latents, ts, text)

    info = {"tokens": t * h * w // 4, "dim": model.config.dim}
    return tally_block(model, model.blocks, run, **kw), info


FAMILIES = {"cosmos": cosmos, "ltx2": ltx2, "wan": wan}


# --------------------------------------------------------------------------------------------------
# Minimum: what a block must still move when every elementwise step is fused with its neighbours
# --------------------------------------------------------------------------------------------------


def minimum_bytes(family: str, info: dict[str, Any]) -> tuple[int, str]:
    """Bytes (bf16) a block must still move outside the GEMMs and the attention when every
    elementwise step is fused with its neighbours and the GEMMs keep their plain epilogues: at each
    boundary between two sub-layers (the next block's first one included) one pass that reads the
    stream and the sub-layer output and writes the stream and the next input(s); q / k norm (+ RoPE)
    one pass each; the feed-forward activation one pass; RoPE tables not counted."""
    if family == "cosmos":
        n, d, f, s = info["tokens"], info["dim"], info["ffn"], 512
        # 3 boundaries x 4; self q, k 2 x 2; cross q 2 (+ k over the text); GELU 2 x ffn
        elems = n * d * (3 * 4 + 2 * 2 + 2) + 2 * s * d + 2 * n * f
        how = "per L x D: 3 boundaries (read x, y; write x, h) 12 + q, k 4 + cross q 2; GELU 2 x L x 4D"
        return 2 * elems, how
    n, d, a, ad, s = info["tokens"], info["dim"], info["audio_tokens"], info["audio_dim"], 1024

    def stream(length: int, width: int, other_width: int) -> int:
        # 4 boundaries: self->text 4, text->cross 5 (two modulated outputs), cross->ff 4, ff->next 4;
        # self q, k 4; text q 2; q or k of each audio<->video attention over these tokens 2 x 2
        # (at the audio width); GELU 2 x 4 width; the text's k norm
        return length * width * (4 + 5 + 4 + 4 + 4 + 2 + 8) + 4 * length * ad + 2 * s * width

    how = "per stream L x D: 4 boundaries 17, q/k 4, text q 2, GELU 8; cross q/k 4 x L x audio width"
    return 2 * (stream(n, d, ad) + stream(a, ad, d)), how


def table(family: str, tally: Tally, info: dict[str, Any], fused: bool, top: int = 14) -> str:
    gib = 2**30
    lines = [
        f"### {family} block, {'fused kernels' if fused else 'FASTVIDEO_FUSED=0'} ({info})",
        "",
        "| op | launches | GiB read + written |",
        "|---|---:|---:|",
    ]
    for name, nbytes in tally.bytes_by_op.most_common(top):
        lines.append(f"| {name} | {tally.launches_by_op[name]} | {nbytes / gib:.3f} |")
    rest = tally.bytes_by_op.most_common()[top:]
    if rest:
        lines.append(
            f"| ({len(rest)} more ops) | {sum(tally.launches_by_op[n] for n, _ in rest)} | "
            f"{sum(v for _, v in rest) / gib:.3f} |"
        )
    lines += [
        f"| **total elementwise** | {sum(tally.launches_by_op.values())} | **{tally.total_bytes / gib:.3f}** |",
        f"| (elementwise launches moving < 4 MiB each) | {tally.small_launches} | |",
        f"| GEMM / attention launches | {tally.gemm_launches} / {tally.attention_launches} | |",
        f"| **all launches** | **{tally.launches}** | |",
    ]
    if family in ("cosmos", "ltx2"):
        low, how = minimum_bytes(family, info)
        lines += [f"| minimum (fully fused, GEMMs as they are) | | {low / gib:.3f} |", "", f"minimum: {how}"]
    lines.append("")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("family", choices=[*FAMILIES, "both"], help="both: cosmos and ltx2")
    ap.add_argument("--fused", action="store_true", help="the fused-kernel path (default: both paths)")
    ap.add_argument("--unfused", action="store_true", help="only the PyTorch path")
    ap.add_argument("--tokens", type=int, default=None, help="video tokens (default: the benchmark's)")
    ap.add_argument("--rms-composite", action="store_true", help="count F.rms_norm's decomposition")
    ap.add_argument("--top", type=int, default=14)
    args = ap.parse_args()
    families = ["cosmos", "ltx2"] if args.family == "both" else [args.family]
    paths = [True] if args.fused else [False] if args.unfused else [False, True]
    for family in families:
        for fused in paths:
            tally, info = FAMILIES[family](args.tokens, fused=fused, rms_composite=args.rms_composite)
            print(table(family, tally, info, fused, args.top))


if __name__ == "__main__":
    main()
