"""The VSA op against its plain PyTorch reference: output and every gradient, odd grids included.

On CPU the Triton kernels run in the interpreter at small shapes; the ``gpu`` tests run the real
shape of Wan2.1-1.3B at 81x480x832 (12 heads x 32760 tokens x 128) on a CUDA device.
Low-precision results must be within 2x the error of plain torch in the same dtype (the reference
run in that dtype, on the ground truth's selection) against the float64 (GPU: float32) truth.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import pytest
import torch

from fastvideo.testing import assert_close, assert_no_worse
from fastvideo.testing.kernels import record_calls
from fastvideo_vsa import sparsity_at
from fastvideo_vsa.ops import CubeGeometry, topk_for, vsa_attention, vsa_attention_reference, vsa_select
from fastvideo_vsa.ops import op as vsa_op
from fastvideo_vsa.ops.reference import coarse_reference

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
GPU = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@dataclass(frozen=True)
class Case:
    batch: int
    grid: tuple[int, int, int]
    heads: int
    dim: int
    dtype: str
    sparsity: float
    gate: bool
    configs: dict = field(default_factory=dict)  # launcher config overrides (block sizes)

    @property
    def id(self) -> str:
        t, h, w = self.grid
        extra = "".join(f"-{k}{v}" for k, v in self.configs.items())
        gate = "gate" if self.gate else "nogate"
        return f"B{self.batch}-G{t}x{h}x{w}-H{self.heads}-D{self.dim}-{self.dtype}-s{self.sparsity}-{gate}{extra}"


CASES = [
    Case(1, (5, 6, 9), 2, 32, "fp16", 0.5, True),  # 270 tokens, 12 cubes, 10 of them partial
    Case(2, (3, 5, 7), 1, 16, "bf16", 0.5, False),  # every cube partial
    Case(1, (4, 8, 8), 2, 64, "fp32", 0.75, True),  # whole cubes only, one kept
    Case(1, (9, 6, 5), 1, 48, "bf16", 0.6, True),  # head dim padded to 64 in the kernels
    # other block sizes: 128 key rows per forward/dq step, 32 query rows per dk/dv step
    Case(1, (5, 6, 9), 1, 32, "fp16", 0.3, True, {"BLOCK_N": 128, "BLOCK_M": 32}),
]


def inputs(case: Case, seed: int = 0, device: str = DEVICE) -> list[torch.Tensor]:
    gen = torch.Generator(device="cpu").manual_seed(seed)
    length = math.prod(case.grid)
    shape = (case.batch, length, case.heads, case.dim)
    return [
        torch.randn(shape, generator=gen).to(device, DTYPES[case.dtype]) for _ in range(4 if case.gate else 3)
    ]


def kernel_run(case: Case, xs: list[torch.Tensor], dout: torch.Tensor) -> list[torch.Tensor]:
    """The op's output and the gradients of all its inputs, with the case's block sizes."""
    xs = [x.detach().requires_grad_() for x in xs]
    with config_override(case.configs):
        gate = xs[3] if case.gate else None
        out = vsa_attention(*xs[:3], case.grid, sparsity=case.sparsity, gate=gate)
        grads = torch.autograd.grad(out, xs, dout)
    return [out.detach(), *grads]


def reference_run(
    case: Case, xs: list[torch.Tensor], dout: torch.Tensor, dtype: torch.dtype, indices: torch.Tensor
) -> list[torch.Tensor]:
    xs = [x.detach().to(dtype).requires_grad_() for x in xs]
    gate = xs[3] if case.gate else None
    out = vsa_attention_reference(*xs[:3], case.grid, gate=gate, indices=indices)
    return [out.detach(), *torch.autograd.grad(out, xs, dout.to(dtype))]


class config_override:
    """Run the launchers with fixed block sizes instead of their defaults."""

    def __init__(self, configs: dict) -> None:
        self.configs = configs
        self.saved: dict = {}

    def __enter__(self) -> None:
        from fastvideo_vsa.ops import triton_bwd, triton_fwd

        if not self.configs:
            return
        fwd = {"BLOCK_N": self.configs.get("BLOCK_N", 64)}
        self.saved = {
            "fwd": triton_fwd.INTERPRETER_CONFIG,
            "dq": triton_bwd.INTERPRETER_DQ,
            "dkdv": triton_bwd.INTERPRETER_DKDV,
        }
        triton_fwd.INTERPRETER_CONFIG = {**triton_fwd.INTERPRETER_CONFIG, **fwd}
        triton_bwd.INTERPRETER_DQ = fwd
        triton_bwd.INTERPRETER_DKDV = {"BLOCK_M": self.configs.get("BLOCK_M", 64)}

    def __exit__(self, *exc: object) -> None:
        from fastvideo_vsa.ops import triton_bwd, triton_fwd

        if self.saved:
            triton_fwd.INTERPRETER_CONFIG = self.saved["fwd"]
            triton_bwd.INTERPRETER_DQ = self.saved["dq"]
            triton_bwd.INTERPRETER_DKDV = self.saved["dkdv"]


def check_selection(
    q: torch.Tensor, k: torch.Tensor, grid: tuple[int, int, int], indices: torch.Tensor, truth: torch.Tensor
) -> None:
    """``indices`` are a top-k of the ground-truth cube scores (ties within float error allowed)."""
    scores, _ = coarse_reference(q, k, k, CubeGeometry(grid), q.shape[-1] ** -0.5)
    assert indices.shape == truth.shape
    chosen = torch.zeros_like(scores, dtype=torch.bool).scatter_(-1, indices.long(), True)
    low = scores.masked_fill(~chosen, float("inf")).amin(-1)
    high = scores.masked_fill(chosen, float("-inf")).amax(-1)
    tol = 1e-5 * float(scores.abs().max())
    assert bool((low >= high - tol).all()), "the op kept a cube scoring below one it dropped"


def compare(case: Case, xs: list[torch.Tensor], truth_dtype: torch.dtype, indices: torch.Tensor) -> None:
    gen = torch.Generator(device="cpu").manual_seed(1)
    dout = torch.randn(xs[0].shape, generator=gen).to(xs[0].device, xs[0].dtype)
    got = kernel_run(case, xs, dout)
    truth = reference_run(case, xs, dout, truth_dtype, indices)
    baseline = reference_run(case, xs, dout, xs[0].dtype, indices)
    for name, ref, out, base in zip(["out", "dq", "dk", "dv", "dgate"], truth, got, baseline, strict=False):
        assert bool(out.isfinite().all()), f"{name}: non-finite values"
        assert_no_worse(name, ref, out, base, factor=2.0, atol=1e-6)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_forward_and_gradients_match_reference(case: Case) -> None:
    xs = inputs(case)
    topk = topk_for(case.sparsity, CubeGeometry(case.grid).num_cubes)
    indices = vsa_select(xs[0], xs[1], case.grid, topk).long()
    q64, k64 = (x.double() for x in xs[:2])
    check_selection(q64, k64, case.grid, indices, indices)
    compare(case, xs, torch.float64, indices)


@pytest.mark.parametrize("block_m", [32, 64])
def test_atomic_backward_matches_reference(block_m: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """``FASTVIDEO_VSA_BACKWARD=atomic``: dq accumulated in the dk/dv pass."""
    monkeypatch.setenv("FASTVIDEO_VSA_BACKWARD", "atomic")
    case = Case(1, (5, 6, 7), 2, 16, "fp16", 0.5, True, {"BLOCK_M": block_m})
    xs = inputs(case, seed=13)
    topk = topk_for(case.sparsity, CubeGeometry(case.grid).num_cubes)
    compare(case, xs, torch.float64, vsa_select(xs[0], xs[1], case.grid, topk).long())


def test_selection_is_the_reference_top_k() -> None:
    case = CASES[0]
    xs = inputs(case, seed=3)
    topk = topk_for(case.sparsity, CubeGeometry(case.grid).num_cubes)
    scores, _ = coarse_reference(*(x.double() for x in xs[:3]), CubeGeometry(case.grid), case.dim**-0.5)
    expected = torch.topk(scores, topk, dim=-1).indices.sort(-1).values
    assert torch.equal(vsa_select(xs[0], xs[1], case.grid, topk).long(), expected)


@pytest.mark.parametrize("dtype", ["fp32", "fp16"])
def test_sparsity_zero_is_dense_attention(dtype: str) -> None:
    case = Case(1, (3, 6, 7), 2, 32, dtype, 0.0, False)
    q, k, v = (x.requires_grad_() for x in inputs(case, seed=5))
    out = vsa_attention(q, k, v, case.grid, sparsity=0.0)
    dout = torch.randn_like(out)
    grads = torch.autograd.grad(out, (q, k, v), dout)
    ins = [x.detach().double().transpose(1, 2).requires_grad_() for x in (q, k, v)]
    dense = torch.nn.functional.scaled_dot_product_attention(*ins).transpose(1, 2)
    ref_grads = torch.autograd.grad(dense, ins, dout.double())
    base_in = [x.detach().transpose(1, 2).requires_grad_() for x in (q, k, v)]
    base = torch.nn.functional.scaled_dot_product_attention(*base_in).transpose(1, 2)
    base_grads = torch.autograd.grad(base, base_in, dout)
    pairs = [("out", dense, out, base)]
    pairs += [
        (n, r.transpose(1, 2), g, b.transpose(1, 2))
        for n, r, g, b in zip(["dq", "dk", "dv"], ref_grads, grads, base_grads, strict=True)
    ]
    for name, ref, got, baseline in pairs:
        assert_no_worse(name, ref, got, baseline, factor=2.0, atol=1e-6)


def test_zero_gate_equals_no_gate() -> None:
    case = Case(1, (4, 5, 6), 1, 16, "fp32", 0.5, True)
    q, k, v, _ = inputs(case, seed=7)
    gated = vsa_attention(q, k, v, case.grid, sparsity=0.5, gate=torch.zeros_like(q))
    assert_close("out", vsa_attention(q, k, v, case.grid, sparsity=0.5), gated, 1e-6)


def test_torch_compile_traces_the_op_without_graph_breaks() -> None:
    case = Case(1, (3, 4, 5), 1, 16, "fp32", 0.5, True)
    xs = [x.requires_grad_() for x in inputs(case, seed=9)]

    def fn(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        return (vsa_attention(q, k, v, case.grid, sparsity=0.5, gate=g) * 2).sum()

    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
    eager_grads = torch.autograd.grad(fn(*xs), xs)
    compiled_grads = torch.autograd.grad(compiled(*xs), xs)
    for name, a, b in zip(["dq", "dk", "dv", "dgate"], eager_grads, compiled_grads, strict=True):
        assert_close(name, a, b, 1e-6)


def test_fake_implementation_matches_the_real_one() -> None:
    case = Case(1, (3, 4, 5), 2, 16, "fp16", 0.5, True)
    q, k, v, g = inputs(case, seed=11)
    torch.library.opcheck(
        vsa_op.vsa_fwd, (q, k, v, g, list(case.grid), 2, 0.25), test_utils=("test_schema", "test_faketensor")
    )  # every cube kept: the shared dense plan
    case = Case(1, (5, 6, 9), 2, 16, "fp16", 0.5, True)
    q, k, v, g = inputs(case, seed=11)
    for gate in (g, None):  # 12 cubes, 5 kept: the selection kernel's plan
        torch.library.opcheck(
            vsa_op.vsa_fwd,
            (q, k, v, gate, list(case.grid), 5, 0.25),
            test_utils=("test_schema", "test_faketensor"),
        )


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(grid=(3, 4, 6), sparsity=0.5), r"q has 60 tokens but grid \(3, 4, 6\) holds 72"),
        (dict(grid=(3, 4, 5), sparsity=1.0), r"sparsity must be in \[0, 1\), got 1.0"),
        (dict(grid=(3, 4, 5), topk=5), r"topk must be in \[1, 2\] \(the number of cubes\), got 5"),
        (dict(grid=(3, 4, 5), sparsity=0.5, topk=2), "exactly one of sparsity and topk"),
        (dict(grid=(3, 4, 0), sparsity=0.5), "grid must be three positive sizes"),
    ],
)
def test_bad_arguments_raise_value_errors(kwargs: dict, match: str) -> None:
    q = torch.zeros(1, 60, 1, 16, device=DEVICE)
    with pytest.raises(ValueError, match=match):
        vsa_attention(q, q, q, **kwargs)


def test_mismatched_inputs_raise_value_errors() -> None:
    q = torch.zeros(1, 60, 2, 16, device=DEVICE)
    with pytest.raises(ValueError, match=r"k must match q: q is \(1, 60, 2, 16\) torch.float32"):
        vsa_attention(q, q.half(), q, (3, 4, 5), sparsity=0.5)
    with pytest.raises(ValueError, match=r"gate must match q"):
        vsa_attention(q, q, q, (3, 4, 5), sparsity=0.5, gate=q[:, :, :1])


def test_plans_stream_exactly_the_tokens_of_the_listed_cubes() -> None:
    from fastvideo_vsa.ops.pooling import plans

    geom = CubeGeometry((5, 6, 9))
    gen = torch.Generator().manual_seed(0)
    idx = torch.rand(1, 2, 12, 12, generator=gen).argsort(-1)[..., :5].sort(-1).values.to(torch.int32)
    cube = geom.cube_of_token()

    def tokens(plan: tuple[torch.Tensor, ...], segment: int) -> list[int]:
        runs, first, count = (x.tolist() for x in plan)
        start = first[segment]
        return sorted(
            t for r in runs[start : start + count[segment]] for t in range(r >> 2, (r >> 2) + (r & 3) + 1)
        )

    keys, queries = plans(idx.to(DEVICE), geom, transposed=True)
    keys, queries = [tuple(x.cpu() for x in p) for p in (keys, queries)]
    for h in range(2):
        for c in range(12):
            expected = sorted((cube[:, None] == idx[0, h, c][None, :]).any(1).nonzero().flatten().tolist())
            assert tokens(keys, h * 12 + c) == expected
            selectors = (idx[0, h] == c).any(1).nonzero().flatten()
            expected = sorted((cube[:, None] == selectors[None, :]).any(1).nonzero().flatten().tolist())
            assert tokens(queries, h * 12 + c) == expected


def test_fused_selection_and_key_plan_match_topk_and_plans() -> None:
    """The forward's one-kernel selection + key plan: torch.topk's cubes (ascending; ties to the lower
    cube) and a plan that streams exactly the tokens :func:`plans` streams for them."""
    from fastvideo_vsa.ops.pooling import plans, select_and_plan

    geom = CubeGeometry((5, 6, 9))  # 12 cubes, partial along T and H
    gen = torch.Generator().manual_seed(1)
    scores = torch.randn(2, 3, 12, 12, generator=gen)
    scores[1, 2, 4] = torch.tensor([0.0, 1, 1, 1, 1, 0, 2, 1, 0, 0, 1, 0])  # ties at the cut
    for topk in (1, 5, 11):
        idx, plan = select_and_plan(scores.to(DEVICE), topk, geom)
        expected = torch.topk(scores, topk, dim=-1).indices.sort(-1).values
        row = scores[1, 2, 4].tolist()  # tied: the lower cube wins (torch.topk picks either)
        expected[1, 2, 4] = torch.tensor(sorted(sorted(range(12), key=lambda c: (-row[c], c))[:topk]))
        assert torch.equal(idx.cpu().long(), expected), topk
        reference = plans(idx, geom)[0]
        runs, first, count = (x.cpu().tolist() for x in plan)
        ref_runs, ref_first, ref_count = (x.cpu().tolist() for x in reference)
        assert count == ref_count
        for segment in range(len(count)):
            mine = runs[first[segment] : first[segment] + count[segment]]
            theirs = ref_runs[ref_first[segment] : ref_first[segment] + ref_count[segment]]
            assert mine == theirs, (topk, segment)


def test_fused_selection_keeps_topk_cubes_even_with_nan_scores() -> None:
    """Diverged inputs must give NaN outputs, never a short selection the fine stage would read past."""
    from fastvideo_vsa.ops.pooling import select_and_plan

    geom = CubeGeometry((5, 6, 9))
    scores = torch.randn(1, 1, 12, 12, generator=torch.Generator().manual_seed(2))
    scores[0, 0, 3, [2, 7]] = float("nan")
    scores[0, 0, 5] = float("nan")
    idx, (_, _, count) = select_and_plan(scores.to(DEVICE), 4, geom)
    idx = idx.cpu()
    assert all(len(set(row.tolist())) == 4 for row in idx[0, 0])
    assert {2, 7} <= set(idx[0, 0, 3].tolist())  # NaN ranks highest, as in torch.topk
    assert idx[0, 0, 5].tolist() == [0, 1, 2, 3]  # all tied: the lowest cubes
    assert bool((count.cpu() > 0).all())


def test_selection_beyond_the_fused_kernel_falls_back_to_topk(monkeypatch: pytest.MonkeyPatch) -> None:
    from fastvideo_vsa.ops import pooling

    case = CASES[0]
    xs = inputs(case, seed=3)
    topk = topk_for(case.sparsity, CubeGeometry(case.grid).num_cubes)
    fused = vsa_attention(*xs[:3], case.grid, topk=topk)
    monkeypatch.setattr(pooling, "SELECT_MAX_CUBES", 1)
    assert torch.equal(vsa_attention(*xs[:3], case.grid, topk=topk), fused)


def test_cube_geometry_of_an_odd_grid() -> None:
    geom = CubeGeometry((21, 30, 52))  # Wan2.1 at 81x480x832
    sizes = geom.cube_sizes()
    assert geom.cube_grid == (6, 8, 13) and geom.num_cubes == 624 == len(sizes)
    assert sum(sizes) == 32760 and sorted(set(sizes)) == [8, 16, 32, 64]
    assert torch.bincount(geom.cube_of_token()).tolist() == sizes
    assert [len(t) for t in geom.tokens_of_cubes()] == sizes


@pytest.mark.parametrize(
    ("sparsity", "cubes", "expected"),
    [(0.875, 624, 78), (0.95, 624, 32), (0.9, 630, 63), (0.0, 12, 12), (0.99, 4, 1)],
)
def test_topk_for(sparsity: float, cubes: int, expected: int) -> None:
    assert topk_for(sparsity, cubes) == expected


def test_sparsity_ramp() -> None:
    assert [sparsity_at(s, 0.8, 4) for s in range(6)] == pytest.approx([0.0, 0.2, 0.4, 0.6, 0.8, 0.8])
    assert sparsity_at(7, 0.9, 0) == 0.9  # no ramp: the target from the first step
    stairs = [sparsity_at(s, 0.9, 1500, increment=0.03) for s in (0, 49, 50, 99, 100, 1499, 1500, 9999)]
    assert stairs == pytest.approx([0.0, 0.0, 0.03, 0.03, 0.06, 0.87, 0.9, 0.9])
    for bad in (dict(step=0, target=1.0, ramp_steps=1), dict(step=-1, target=0.5, ramp_steps=1)):
        with pytest.raises(ValueError):
            sparsity_at(**bad)


# --------------------------------------------------------------------------------------------------
# GPU: the real shape (Wan2.1-1.3B, 81x480x832), checked on two of the twelve heads
# --------------------------------------------------------------------------------------------------

REAL = Case(1, (21, 30, 52), 12, 128, "bf16", 0.875, True)
HEADS = [0, 7]


REAL_RUNS = [(0.875, True, "split"), (0.875, False, "split"), (0.95, True, "split"), (0.875, True, "atomic")]


@pytest.mark.parametrize(("sparsity", "gate", "mode"), [pytest.param(*r, marks=GPU) for r in REAL_RUNS])
def test_real_shape_matches_reference_on_gpu(
    sparsity: float, gate: bool, mode: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FASTVIDEO_VSA_BACKWARD", mode)
    case = Case(1, REAL.grid, 12, 128, "bf16", sparsity, gate)
    xs = inputs(case, seed=0, device="cuda")
    gen = torch.Generator(device="cpu").manual_seed(1)
    dout = torch.randn(xs[0].shape, generator=gen).to("cuda", xs[0].dtype)
    got = kernel_run(case, xs, dout)
    topk = topk_for(sparsity, CubeGeometry(case.grid).num_cubes)
    indices = vsa_select(xs[0], xs[1], case.grid, topk)[:, HEADS].long()
    sub = [x[:, :, HEADS].contiguous() for x in xs]
    check_selection(*(x.float() for x in sub[:2]), case.grid, indices, indices)
    truth = reference_run(case, sub, dout[:, :, HEADS], torch.float32, indices)
    baseline = reference_run(case, sub, dout[:, :, HEADS], torch.bfloat16, indices)
    for name, ref, out, base in zip(["out", "dq", "dk", "dv", "dgate"], truth, got, baseline, strict=False):
        out = out[:, :, HEADS]
        assert bool(out.isfinite().all()), f"{name}: non-finite values"
        assert_no_worse(name, ref, out, base, factor=2.0, atol=1e-6)


@pytest.mark.parametrize("grid", [(5, 6, 9), (9, 14, 22)])  # 12 cubes; 72 cubes (3 words of bits a row)
def test_query_plan_kernels_match_transpose_and_cube_runs(grid: tuple[int, int, int]) -> None:
    """The backward's query plan from its three kernels (bit matrix, counts, runs) equals the one
    :func:`transpose_selection` + :func:`cube_runs` build: same counts, offsets and runs, query cubes
    ascending, key cubes nobody selected streaming nothing."""
    from fastvideo_vsa.ops.pooling import cube_runs, query_runs, transpose_selection

    geom = CubeGeometry(grid)
    cubes = geom.num_cubes
    gen = torch.Generator().manual_seed(2)
    for topk in (1, 5, cubes - 1):
        scores = torch.rand(2, 3, cubes, cubes, generator=gen)
        scores[..., : cubes // 3] -= 2.0  # the first third of the key cubes: rarely or never selected
        idx = scores.topk(topk, dim=-1).indices.sort(-1).values.to(torch.int32).to(DEVICE)
        runs, first, count = (x.cpu() for x in query_runs(idx, geom))
        lists, offsets = transpose_selection(idx, cubes)
        ref_runs, ref_first, ref_count = (x.cpu() for x in cube_runs(lists, offsets, geom))
        assert torch.equal(count.long(), ref_count.long()), topk
        assert torch.equal(first.long(), ref_first.long()), topk
        total = int(count.sum())
        assert torch.equal(runs[:total], ref_runs[:total]), topk
        if topk == 1:
            assert (count == 0).any()  # some key cube selected by no query cube


@pytest.mark.parametrize("grid", [(5, 6, 9), (9, 14, 22)])
def test_query_cube_lists_match_transpose_selection(
    grid: tuple[int, int, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The Hopper dk/dv pass's query-cube lists (from the selection's bit matrix, and from the sort
    beyond ``SELECT_MAX_CUBES``) list, per key cube, the query cubes that selected it: ascending, or
    with classes by class, then ascending, with the count of each class."""
    from fastvideo_vsa.ops import pooling

    cubes = CubeGeometry(grid).num_cubes
    gen = torch.Generator().manual_seed(5)
    classes = torch.randint(0, 3, (cubes,), generator=gen, dtype=torch.int32)
    fused = pooling.SELECT_MAX_CUBES
    for topk in (1, 4, cubes):
        scores = torch.rand(2, 3, cubes, cubes, generator=gen)
        scores[..., : cubes // 3] -= 2.0  # rarely or never selected
        idx = scores.topk(topk, dim=-1).indices.sort(-1).values.to(torch.int32).to(DEVICE)
        ref_lists, offsets = (x.cpu().long() for x in pooling.transpose_selection(idx, cubes))
        ref = [ref_lists[a:b] for a, b in zip(offsets[:-1].tolist(), offsets[1:].tolist(), strict=True)]
        for limit, cls in (
            (fused, None),
            (fused, classes),
            (cubes - 1, None),
        ):
            monkeypatch.setattr(pooling, "SELECT_MAX_CUBES", limit)
            out = pooling.query_cubes(idx, cls.to(DEVICE) if cls is not None else None)
            lists, first, count, widths = (x.cpu().long() for x in out)
            assert torch.equal(count, offsets[1:] - offsets[:-1]), (topk, limit)
            assert torch.equal(widths.sum(-1), count)
            for f, n, w, want in zip(first.tolist(), count.tolist(), widths.tolist(), ref, strict=True):
                got = lists[f : f + n]
                if cls is None:
                    assert torch.equal(got, want) and w == [n, 0, 0], (topk, limit)
                else:
                    by_class = [want[cls[want] == k] for k in range(3)]
                    assert torch.equal(got, torch.cat(by_class)), (topk, limit)
                    assert w == [x.numel() for x in by_class]
        if topk == 1:
            assert (count == 0).any()


def test_selection_by_key_tile_width() -> None:
    """The Hopper dq reads each query cube's selection whole cubes first, then cubes of at most 32 and
    of at most 16 tokens, ascending within each, with the count of each; unchanged without ``narrow``."""
    from fastvideo_vsa.ops.hopper import _by_width

    geom = CubeGeometry((9, 10, 13))  # cubes of 64, 48, 32, 16, 12, 8 and 4 tokens
    sizes = torch.tensor(geom.cube_sizes())
    cls = (sizes <= 32).long() + (sizes <= 16).long()
    gen = torch.Generator().manual_seed(6)
    idx = torch.rand(2, 3, geom.num_cubes, geom.num_cubes, generator=gen).argsort(-1)[..., :7]
    idx = idx.sort(-1).values.to(torch.int32)
    ordered, widths = _by_width(idx, geom, narrow=True)
    rows = idx.reshape(-1, 7)
    ordered = ordered[: rows.numel()].view(-1, 7)
    for row, got, n in zip(rows, ordered, widths, strict=True):
        want = [c for k in range(3) for c in row.tolist() if cls[c] == k]
        assert got.tolist() == want
        assert n.tolist() == [int((cls[row.long()] == k).sum()) for k in range(3)]
    plain, widths = _by_width(idx, geom, narrow=False)
    assert torch.equal(plain[: rows.numel()].view(-1, 7), rows) and (widths[:, 0] == 7).all()
    assert (widths[:, 1:] == 0).all()


def test_plans_fall_back_to_the_sort_beyond_the_bit_matrix_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    """Above ``SELECT_MAX_CUBES`` cubes :func:`plans` builds the query plan by sorting the selection:
    the same plan as the kernels'."""
    from fastvideo_vsa.ops import pooling

    geom = CubeGeometry((9, 14, 22))
    gen = torch.Generator().manual_seed(3)
    idx = torch.rand(1, 2, 72, 72, generator=gen).argsort(-1)[..., :9].sort(-1).values.to(torch.int32)
    kernels = pooling.plans(idx.to(DEVICE), geom, transposed=True)[1]
    monkeypatch.setattr(pooling, "SELECT_MAX_CUBES", 64)
    sorted_ = pooling.plans(idx.to(DEVICE), geom, transposed=True)[1]
    (runs, first, count), (s_runs, s_first, s_count) = (
        [x.cpu().long() for x in p] for p in (kernels, sorted_)
    )
    assert torch.equal(count, s_count) and torch.equal(first, s_first)
    assert torch.equal(runs[: int(count.sum())], s_runs[: int(count.sum())])


def test_pool_writes_cube_major_copies() -> None:
    """``pool(tiles=...)``: the same cube means, plus q, k, v copied cube after cube (64 rows each; q in
    slot order, k and v compacted: each cube's tokens first; zeros in the rows a partial cube lacks), as
    the Hopper fine stage reads them; likewise the backward's copies (``copy_tiles``)."""
    from fastvideo_vsa.ops.pooling import pool

    geom = CubeGeometry((5, 6, 7))
    case = Case(2, geom.grid, 3, 32, "bf16", 0.5, False)
    q, k, v = inputs(case, seed=4)
    c = geom.num_cubes
    tiles = q.new_full((3, 2 * 3 * c * 64, 32), float("nan"))
    means = pool(q, k, v, geom, tiles=tiles, mean_v=False)
    plain = pool(q, k, v, geom)
    assert means[2] is None
    assert torch.equal(means[0], plain[0]) and torch.equal(means[1], plain[1])
    from fastvideo_vsa.ops.hopper import copy_tiles

    assert torch.equal(copy_tiles(k, v, geom, compact=True)[0], tiles[1:])  # the backward's copies of k and v
    lse, delta = (
        torch.randn(2, 3, geom.num_tokens, generator=torch.Generator().manual_seed(i)) for i in (1, 2)
    )
    qk, lt, dt = copy_tiles(q, k, geom, stats=(lse.to(DEVICE), delta.to(DEVICE)))
    assert torch.equal(qk[0], tiles[0])
    compact = (
        copy_tiles(k, v, geom, compact=True)[0].cpu().view(2, 2, 3, c, 64, 32)
    )  # each cube's tokens first
    for cube, rows in enumerate(geom.tokens_of_cubes()):
        for x, got in zip((k, v), compact, strict=True):
            want = torch.zeros(2, 3, 64, 32, dtype=x.dtype)
            want[:, :, : rows.numel()] = x.cpu()[:, rows].permute(0, 2, 1, 3)
            assert torch.equal(got[:, :, cube], want), cube
    want_lse = torch.full((2, 3, c * 64), float("inf"))
    want_delta = torch.zeros(2, 3, c * 64)
    cube_of = geom.cube_of_token()
    t, h, w = geom.grid
    tt, hh, ww = torch.meshgrid(torch.arange(t), torch.arange(h), torch.arange(w), indexing="ij")
    slot = ((tt % 4) * 16 + (hh % 4) * 4 + ww % 4).flatten()
    want_lse[:, :, cube_of * 64 + slot] = lse
    want_delta[:, :, cube_of * 64 + slot] = delta
    assert torch.equal(lt.cpu().view(2, 3, -1), want_lse) and torch.equal(dt.cpu().view(2, 3, -1), want_delta)
    for x, got in ((q, tiles[0]), (k, qk[1])):  # slot order (k, v compacted: checked above)
        want = torch.zeros(2, 3, c * 64, 32, dtype=x.dtype)
        want[:, :, cube_of * 64 + slot] = x.cpu().permute(0, 2, 1, 3)
        assert torch.equal(got.cpu().view(2, 3, c * 64, 32), want)


HOPPER_CASES = [
    Case(2, (5, 6, 7), 3, 128, "bf16", 0.6, True),  # every cube partial in W, some in T and H; B = 2
    Case(1, (9, 10, 13), 2, 64, "fp16", 0.7, False),  # head dim 64
    Case(3, (3, 5, 6), 2, 128, "bf16", 0.0, True),  # dense (topk = C) over 3 batch elements
    Case(1, (4, 8, 8), 2, 128, "bf16", 0.9, True),  # topk 1: one cube, a ring never refilled
]


@pytest.mark.parametrize("case", [pytest.param(c, marks=GPU, id=c.id) for c in HOPPER_CASES])
def test_hopper_kernels_match_reference_on_gpu(case: Case, monkeypatch: pytest.MonkeyPatch) -> None:
    """On sm_90 the op's forward, dq and dk/dv run the Gluon kernels on cube-major copies: output and
    every gradient match the fp32 reference no worse than 2x plain PyTorch in the same dtype, and the
    output matches the Triton kernel's closely."""
    from fastvideo_vsa.ops import hopper

    if not hopper.supported(torch.empty(1, 1, 1, case.dim, device="cuda", dtype=DTYPES[case.dtype])):
        pytest.skip("needs a Hopper GPU and Gluon")
    monkeypatch.setenv("FASTVIDEO_VSA_HOPPER", "1")  # these cases keep few cubes: force the path
    calls = record_calls(monkeypatch, hopper, "fine_forward", "dq_backward", "dkdv_backward")
    xs = inputs(case, seed=5, device="cuda")
    topk = topk_for(case.sparsity, CubeGeometry(case.grid).num_cubes)
    indices = vsa_select(xs[0], xs[1], case.grid, topk).long()
    compare(case, xs, torch.float32, indices)
    assert set(calls) == {"fine_forward", "dq_backward", "dkdv_backward"}, f"Hopper kernels not run: {calls}"
    gate = xs[3] if case.gate else None
    hop = vsa_attention(*xs[:3], case.grid, sparsity=case.sparsity, gate=gate)
    monkeypatch.setenv("FASTVIDEO_VSA_HOPPER", "0")
    portable = vsa_attention(*xs[:3], case.grid, sparsity=case.sparsity, gate=gate)
    assert_close("out vs the Triton kernel", portable.float(), hop.float(), 1e-2)


def test_hopper_path_selection(monkeypatch: pytest.MonkeyPatch) -> None:
    """``FASTVIDEO_VSA_HOPPER``: 0 never, 1 wherever supported, auto from ``MIN_TOPK`` kept cubes;
    another value is a clear error. Never where the kernels cannot run (here: CPU tensors)."""
    from fastvideo_vsa.ops import hopper

    q = torch.empty(1, 64, 2, 128)
    assert not hopper.enabled(q, 78)  # CPU: unsupported whatever the setting
    monkeypatch.setattr(hopper, "supported", lambda q: True)
    cases = {"0": (False, False), "1": (True, True), "auto": (False, True)}
    for mode, (few, many) in cases.items():
        monkeypatch.setenv("FASTVIDEO_VSA_HOPPER", mode)
        assert hopper.enabled(q, hopper.MIN_TOPK - 1) == few and hopper.enabled(q, hopper.MIN_TOPK) == many, (
            mode
        )
        low, high = hopper.MIN_TOPK_BACKWARD - 1, hopper.MIN_TOPK_BACKWARD
        assert hopper.enabled(q, low, backward=True) == few and hopper.enabled(q, high, backward=True) == many
    monkeypatch.delenv("FASTVIDEO_VSA_HOPPER")
    assert hopper.enabled(q, 78) and not hopper.enabled(q, 32)
    assert hopper.enabled(q, 32, backward=True) and not hopper.enabled(q, 31, backward=True)
    monkeypatch.setenv("FASTVIDEO_VSA_HOPPER", "yes")
    with pytest.raises(ValueError, match="FASTVIDEO_VSA_HOPPER must be 0, 1 or auto"):
        hopper.enabled(q, 78)


@pytest.mark.parametrize("dim", [64, 128])
def test_hopper_kernels_compile_for_sm90(dim: int) -> None:
    """The Gluon kernels compile for Hopper with the installed triton (no GPU needed): tensor-core
    (HGMMA) and TMA (UTMALDG) instructions in their SASS. Catches a triton whose Gluon API moved."""
    import re
    import subprocess
    import sys
    from pathlib import Path

    from fastvideo_vsa.ops import hopper

    if not hopper.HAVE_GLUON:
        pytest.skip("this triton has no Gluon (the Hopper path is then off)")
    tool = Path(__file__).parents[1] / "tools" / "sm90_report.py"
    proc = subprocess.run(
        [sys.executable, str(tool), "--gluon-only", "--head-dim", str(dim)], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = [line for line in proc.stdout.splitlines() if line.startswith("gluon")]
    assert len(lines) == 6, (
        proc.stdout
    )  # forward, dq, dk/dv at 2 and 3 stages, narrow dk/dv at 16 and 32 rows
    for line in lines:
        counts = dict(re.findall(r"(HGMMA|UTMALDG)=(\d+)", line))
        assert int(counts["HGMMA"]) > 0 and int(counts["UTMALDG"]) > 0, line
