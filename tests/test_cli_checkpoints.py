"""``fv generate`` on damaged copies of a tiny Wan checkpoint: exit code 2, one ``error:`` line naming
the file (and tensor, shapes or counts), no traceback, and no mp4.

The checkpoint is written once by ``fv wan make-tiny`` (every component by its library's own
``save_pretrained``); each case edits a copy. Loading happens on CPU in a subprocess.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file

from fastvideo.testing import plugin_env, run_fv

pytestmark = pytest.mark.slow  # each case loads part of a pipeline in a fresh process

ENV = {"FASTVIDEO_PLUGINS": "fastvideo-wan", "HF_HUB_OFFLINE": "1", "FASTVIDEO_DEBUG": None}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tiny") / "wan"
    proc = run_fv(["wan", "make-tiny", str(path)], env=plugin_env(**ENV))
    assert proc.returncode == 0, proc.stderr
    return path


def _edit_config(rel: str, **change: object) -> Callable[[Path], None]:
    def edit(root: Path) -> None:
        cfg = json.loads((root / rel).read_text())
        (root / rel).write_text(json.dumps({**cfg, **change}))

    return edit


def _write(rel: str, text: str) -> Callable[[Path], None]:
    return lambda root: (root / rel).write_text(text)


def _drop(rel: str, key: str) -> Callable[[Path], None]:
    def edit(root: Path) -> None:
        state = load_file(str(root / rel))
        del state[key]
        save_file(state, str(root / rel), metadata={"format": "pt"})

    return edit


def _escape_shard(root: Path) -> None:
    folder = root / "text_encoder"
    (folder / "model.safetensors").rename(root / "x.safetensors")
    names = list(load_file(str(root / "x.safetensors")))
    index = {"metadata": {}, "weight_map": dict.fromkeys(names, "../x.safetensors")}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))


Q = "encoder.block.1.layer.0.SelfAttention.q.weight"

CASES: dict[str, tuple[Callable[[Path], None], list[str]]] = {
    "text-encoder-missing-tensor": (
        _drop("text_encoder/model.safetensors", Q),
        [
            "text_encoder/config.json describes <te> parameters, the weights hold <te-q>: missing 1 "
            f"tensor(s) the config needs: {Q} of shape (32, 32) (not in model.safetensors)"
        ],
    ),
    "vae-missing-tensor": (
        _drop("vae/diffusion_pytorch_model.safetensors", "decoder.conv_out.bias"),
        ["missing 1 tensor(s) the config needs: decoder.conv_out.bias of shape (3,)"],
    ),
    "tokenizer-invalid-json": (
        _write("tokenizer/tokenizer.json", '{"version": "1.0", oops}'),
        ["tokenizer/tokenizer.json: invalid JSON at line 1 column 20: "],
    ),
    "dit-config-invalid-json": (
        _write("transformer/config.json", '{"num_layers": 2,, }'),
        ["transformer/config.json: invalid JSON at line 1 column 18: "],
    ),
    "model-index-not-an-object": (
        _write("model_index.json", '["WanPipeline"]'),
        ["model_index.json: expected a JSON object {...}, got a JSON array"],
    ),
    "zero-patch-size": (
        _edit_config("transformer/config.json", patch_size=[1, 0, 2]),
        ["transformer/config.json: patch_size=[1, 0, 2] must be a positive integer"],
    ),
    "zero-vae-stride": (
        _edit_config("vae/config.json", scale_factor_spatial=0),
        ["vae/config.json: scale_factor_spatial=0 must be a positive integer"],
    ),
    "shard-outside-folder": (
        _escape_shard,
        ["text_encoder/model.safetensors.index.json: shard '../x.safetensors' is outside "],
    ),
    "absurd-dit": (
        _edit_config("transformer/config.json", num_layers=100_000),
        [
            "transformer/config.json describes at least ",
            "the weights (diffusion_pytorch_model.safetensors) hold ",
        ],
    ),
    "absurd-text-encoder": (
        _edit_config("text_encoder/config.json", num_layers=100_000),
        ["text_encoder/config.json describes at least ", "the weights (model.safetensors) hold <te>: "],
    ),
    "absurd-vae": (
        _edit_config("vae/config.json", base_dim=100_000),
        ["vae/config.json describes at least ", "the weights (diffusion_pytorch_model.safetensors) hold "],
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_damaged_checkpoint_is_one_error_line(tiny: Path, tmp_path: Path, case: str) -> None:
    edit, words = CASES[case]
    encoder = load_file(str(tiny / "text_encoder" / "model.safetensors"))
    te = sum(t.numel() for t in encoder.values())
    counts = {"<te>": f"{te:,}", "<te-q>": f"{te - encoder[Q].numel():,}"}  # the encoder's numbers of values
    for token, value in counts.items():
        words = [w.replace(token, value) for w in words]
    root = tmp_path / "ckpt"
    shutil.copytree(tiny, root)
    edit(root)
    out = tmp_path / "out.mp4"
    args = ["--model", str(root), "--num-frames", "5", "--height", "32", "--width", "32", "--steps", "1"]
    proc = run_fv(
        ["generate", "--prompt", "a red ball", *args, "--device", "cpu", "--output", str(out)],
        env=plugin_env(**ENV),
        cwd=tmp_path,
    )
    assert "Traceback" not in proc.stderr + proc.stdout
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {root}/"), proc.stderr
    for word in words:
        assert word in lines[0], lines[0]
    assert not out.exists()
