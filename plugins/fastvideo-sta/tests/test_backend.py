"""The ``sta`` attention backend: its options, mask strategies (the anchor's published file), per-layer
and per-head windows through the seam (self-attention and joint video+text attention), dense steps.
Models are small ones defined here, on core's seams; expected outputs come from the plain reference."""

from __future__ import annotations

import lzma
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from fastvideo.attention import ALL, StepContext, attention, joint_attention, step_context, use_backend
from fastvideo.attention.layers import attach_layer_modules, sparse_layer_index
from fastvideo.attention.options import check_options, resolve_options
from fastvideo.testing import assert_close, fake_plugins
from fastvideo_sta import plugin as sta_plugin
from fastvideo_sta.backend import STABackend
from fastvideo_sta.ops import sta_attention_reference
from fastvideo_sta.strategy import Strategy, load_strategy, parse_strategy, save_strategy
from fastvideo_sta.tiles import TileGeometry

FIXTURES = Path(__file__).parent / "fixtures"
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
GRID, TILE = (3, 5, 7), "2,4,4"  # tile grid (2, 2, 2), every tile partial


@pytest.fixture
def sta():  # type: ignore[no-untyped-def]
    with fake_plugins(sta_plugin):
        yield


@pytest.fixture(scope="module")
def anchor_strategy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The anchor's published HunyuanVideo strategy, unchanged (see fixtures/README.md)."""
    path = tmp_path_factory.mktemp("anchor") / "mask_strategy_hunyuan.json"
    path.write_bytes(lzma.decompress((FIXTURES / "mask_strategy_hunyuan.json.xz").read_bytes()))
    return path


# ---- strategies ------------------------------------------------------------------------------------


def test_the_anchors_hunyuan_strategy_loads_and_maps_to_its_windows(anchor_strategy: Path) -> None:
    import hashlib

    assert hashlib.sha256(anchor_strategy.read_bytes()).hexdigest().startswith("4c8c0afc52762b11")
    s = load_strategy(anchor_strategy)
    assert (s.num_steps, s.num_layers, s.num_heads) == (50, 60, 24)  # 20 double + 40 single blocks
    assert s.window(0, 0, 0) == (5, 6, 10)  # the first 15 steps: the whole 30x48x80 grid
    assert s.window(14, 59, 23) == (5, 6, 10)
    geom = TileGeometry((30, 48, 80))
    assert geom.tile_grid == (5, 6, 10)
    # what the anchor's documentation reports of this file: ~58 % sparsity, ~16.6 % kept on sparse steps
    assert s.sparsity(geom) == pytest.approx(0.58375, abs=1e-4)
    assert 1 - s.sparsity(geom, range(15, 50)) == pytest.approx(0.1661, abs=1e-3)
    # the backend's device table for a step holds the file's window at [layer, head]
    backend = STABackend()
    values = {"strategy": str(anchor_strategy), "window": "", "tile": "6,8,8", "full_steps": 0, "search": ""}
    q = torch.zeros(1, 1, 24, 4)
    for step, layer in ((20, 3), (49, 59)):
        tag = torch.zeros(1, 1, 24, 4)
        tag[0, 0, :, 0] = torch.arange(24)
        tag[0, 0, :, 1] = layer
        table = backend.windows(q, geom, StepContext(grid=geom.grid, step_index=step), values, tag)
        assert table.tolist() == [list(s.window(step, layer, h)) for h in range(24)]
    assert backend.windows(q, geom, StepContext(grid=geom.grid, step_index=3), values, tag) is None  # dense


def test_strategy_files_round_trip_atomically_and_bad_ones_fail_in_one_line(tmp_path: Path) -> None:
    s = Strategy({(st, 0, h): (1, 2, 3) for st in range(2) for h in range(2)})
    path = save_strategy(s, tmp_path / "s.json")
    assert load_strategy(path).windows == s.windows
    with pytest.raises(FileExistsError, match="--overwrite"):
        save_strategy(s, path)
    assert [p.name for p in tmp_path.iterdir()] == ["s.json"]  # no temporary file left behind
    with pytest.raises(ValueError, match="step_layer_head"):
        parse_strategy({"0_0": [1, 1, 1]})
    with pytest.raises(ValueError, match="positive integers"):
        parse_strategy({"0_0_0": [1, 0, 1]})
    with pytest.raises(ValueError, match="missing"):
        parse_strategy({"0_0_0": [1, 1, 1], "1_0_1": [1, 1, 1]})
    with pytest.raises(ValueError, match=r"covers denoising steps 0\.\.1"):
        s.step_table(2)
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_strategy(tmp_path / "bad.json")


def test_options_are_checked_with_one_line_errors(sta, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match=r"--sta-window.*three positive integers"):
        check_options("sta", {"sta": {"window": "3,3"}})
    with pytest.raises(ValueError, match=r"--sta-strategy.*does not exist"):
        check_options("sta", {"sta": {"strategy": str(tmp_path / "none.json")}})
    path = save_strategy(Strategy({(0, 0, 0): (1, 1, 1)}), tmp_path / "s.json")
    with pytest.raises(ValueError, match="not both"):
        resolve_options("sta", {"sta": {"window": "1,1,1", "strategy": str(path)}})
    with pytest.raises(ValueError, match=r"--sta-tile.*h\*w <= 128"):
        check_options("sta", {"sta": {"tile": "1,16,16"}})
    with pytest.raises(ValueError, match="--sta-full-steps"):
        check_options("sta", {"sta": {"full_steps": -1}})
    with pytest.raises(ValueError, match=r"attention\.window"):
        resolve_options("sta", {"sta": {"strategy": str(path)}}, step=3, total=10)  # training
    values = resolve_options("sta", {"sta": {"window": "3x3x3"}})["sta"]
    assert values == {"window": "3x3x3", "strategy": "", "tile": "6,8,8", "full_steps": 0, "search": ""}


def test_availability_on_hopper_says_once_that_flash_attn_4_is_missing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """On a Hopper GPU (faked) without flash-attn-4: available, one warning naming the faster path; with
    it installed, or FASTVIDEO_STA_FA4=0, nothing; a bad FASTVIDEO_STA_FA4 makes the backend unavailable
    with the reason."""
    import warnings

    from fastvideo import errors
    from fastvideo_sta import backend
    from fastvideo_sta.ops import fa4

    monkeypatch.setattr(backend, "interpreting", lambda: False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (9, 0))
    monkeypatch.delenv(fa4.ENV, raising=False)
    monkeypatch.setitem(fa4._INSTALLED, "fa4", False)
    errors._WARNED.clear()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert STABackend.unavailable_reason() is None
        assert STABackend.unavailable_reason() is None
    said = [str(w.message) for w in caught if "flash-attn-4 is not installed" in str(w.message)]
    assert len(said) == 1 and "pip install 'fastvideo-sta[fa4]'" in said[0]
    errors._WARNED.clear()
    for setup in ({"installed": True}, {"env": "0"}):
        monkeypatch.setitem(fa4._INSTALLED, "fa4", bool(setup.get("installed")))
        if "env" in setup:
            monkeypatch.setenv(fa4.ENV, setup["env"])
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert STABackend.unavailable_reason() is None
    monkeypatch.setenv(fa4.ENV, "2")
    assert STABackend.unavailable_reason() == (
        "FASTVIDEO_STA_FA4 must be auto, 1 or 0, got '2'; unset it to use flash-attn-4 where it applies"
    )
    errors._WARNED.clear()


def test_doctor_reports_the_kernel_paths(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FASTVIDEO_STA_FA4", raising=False)
    notes = STABackend.doctor_notes()
    assert any(n.startswith("kernels: Triton") for n in notes)
    assert any("CUDA build: none shipped" in n and "no binary is pinned" in n for n in notes)
    prefix = "flash-attn-4 block-sparse forward (inference, whole tiles): "
    assert any(n.startswith(prefix + "auto (where it applies") for n in notes)
    monkeypatch.setenv("FASTVIDEO_STA_FA4", "1")
    assert any(n.startswith(prefix + "on (FASTVIDEO_STA_FA4=1") for n in STABackend.doctor_notes())
    monkeypatch.setenv("FASTVIDEO_STA_FA4", "0")
    assert any(n.startswith(prefix + "off (FASTVIDEO_STA_FA4=0)") for n in STABackend.doctor_notes())
    monkeypatch.setenv("FASTVIDEO_STA_FA4", "yes")
    assert any(
        n.startswith(prefix + "error: FASTVIDEO_STA_FA4 must be auto, 1 or 0, got 'yes'")
        for n in STABackend.doctor_notes()
    )


# ---- through the seam ------------------------------------------------------------------------------

HEADS, DIM = 2, 16


class _Joint(nn.Module):
    """HunyuanVideo-style joint attention: video tokens and (padded) text tokens."""

    def __init__(self) -> None:
        super().__init__()
        self.qkv = nn.Linear(DIM * HEADS, 3 * DIM * HEADS)

    def forward(self, x: torch.Tensor, txt: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(x).unflatten(-1, (3, HEADS, DIM)).unbind(2)
        qt, kt, vt = self.qkv(txt).unflatten(-1, (3, HEADS, DIM)).unbind(2)
        out, out_txt = joint_attention(q, k, v, qt, kt, vt, txt_mask=mask)
        return torch.cat([out, out_txt], dim=1)


class _Self(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.qkv = nn.Linear(DIM * HEADS, 3 * DIM * HEADS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(x).unflatten(-1, (3, HEADS, DIM)).unbind(2)
        return attention(q, k, v, allow=ALL)


class _Model(nn.Module):
    """Like HunyuanVideo: joint layers first, then self-attention ones."""

    sparse_attention_layers = ("double_blocks.*", "single_blocks.*")

    def __init__(self) -> None:
        super().__init__()
        self.double_blocks = nn.ModuleList([_Joint()])
        self.single_blocks = nn.ModuleList([_Self(), _Self()])


def _qkv(layer: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    return list(layer.qkv(x).unflatten(-1, (3, HEADS, DIM)).unbind(2))


def test_layers_are_numbered_in_module_order(sta) -> None:  # type: ignore[no-untyped-def]
    model = _Model()
    assert attach_layer_modules(model, "sta") == []  # the module has no parameters: nothing to load
    layers = [model.double_blocks[0], model.single_blocks[0], model.single_blocks[1]]
    assert [sparse_layer_index(m) for m in layers] == [0, 1, 2]
    assert [m.sta_layer.index for m in layers] == [0, 1, 2]
    assert not list(model.state_dict().keys() - _Model().state_dict().keys())  # nothing in checkpoints


def test_per_layer_per_head_windows_through_the_seam_match_the_reference(sta, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    model = _Model().to(DEVICE)
    attach_layer_modules(model, "sta")
    n, lt = math.prod(GRID), 3
    windows = {0: [(1, 1, 1), (2, 1, 2)], 1: [(1, 2, 1), (9, 9, 9)], 2: [(2, 2, 1), (1, 1, 2)]}
    strategy = Strategy(
        {(s, layer, h): windows[layer][h] for s in range(2) for layer in range(3) for h in range(2)}
    )
    path = save_strategy(strategy, tmp_path / "s.json")
    x = torch.randn(1, n, DIM * HEADS, device=DEVICE)
    txt = torch.randn(1, lt, DIM * HEADS, device=DEVICE)
    mask = torch.tensor([[True, True, False]], device=DEVICE)
    ctx = StepContext(
        grid=GRID,
        step_index=1,
        num_steps=2,
        options=resolve_options("sta", {"sta": {"strategy": str(path), "tile": TILE}}),
    )
    with use_backend("sta"), step_context(ctx), torch.no_grad():
        joint = model.double_blocks[0](x, txt, mask)
        single = [m(x) for m in model.single_blocks]
        q, k, v = (
            torch.cat([a, b], 1)
            for a, b in zip(_qkv(model.double_blocks[0], x), _qkv(model.double_blocks[0], txt), strict=True)
        )
        ref = sta_attention_reference(q, k, v, GRID, windows[0], tile=(2, 4, 4), text_mask=mask)
        assert_close("joint layer 0", ref, joint, 1e-5)
        for i, m in enumerate(model.single_blocks, start=1):
            ref = sta_attention_reference(*_qkv(m, x), GRID, windows[i], tile=(2, 4, 4))
            assert_close(f"self layer {i}", ref, single[i - 1], 1e-5)
        dense = torch.nn.functional.scaled_dot_product_attention(
            *(t.transpose(1, 2) for t in _qkv(model.single_blocks[0], x))
        )
        assert (dense.transpose(1, 2) - single[0]).abs().max() > 1e-2  # sparse: something was tested


def test_fixed_window_full_steps_and_whole_grid_windows(sta, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    calls = []
    original = STABackend.attend
    monkeypatch.setattr(STABackend, "attend", lambda self, *a: calls.append(a[4]) or original(self, *a))
    torch.manual_seed(1)
    q, k, v = (torch.randn(1, math.prod(GRID), HEADS, DIM, device=DEVICE) for _ in range(3))
    dense = torch.nn.functional.scaled_dot_product_attention(
        *(t.transpose(1, 2) for t in (q, k, v))
    ).transpose(1, 2)

    def run(step: int, **options) -> torch.Tensor:  # type: ignore[no-untyped-def]
        ctx = StepContext(
            grid=GRID, step_index=step, options=resolve_options("sta", {"sta": {"tile": TILE, **options}})
        )
        with use_backend("sta"), step_context(ctx):
            return attention(q, k, v, allow=ALL)

    out = run(2, window="1,2,1", full_steps=2)
    assert_close("fixed window", sta_attention_reference(q, k, v, GRID, (1, 2, 1), tile=(2, 4, 4)), out, 1e-5)
    assert len(calls) == 1
    assert_close("full step", dense, run(1, window="1,2,1", full_steps=2), 1e-5)
    assert_close("whole grid", dense, run(0, window="2,9,2"), 1e-5)
    assert_close("no window", dense, run(0), 1e-5)
    assert len(calls) == 1  # the dense cases ran on sdpa
