"""Sequence parallelism of the Step-Video DiT on 2 CPU processes (gloo): video tokens and their RoPE
tables sharded by the core's strategies from the model's declared plan, the text tokens whole on each
rank; the output equals the official one (tests/data/dit_io.safetensors)."""

from __future__ import annotations

from pathlib import Path

from fastvideo.parallel.testing import run_ranks

DATA = Path(__file__).parent / "data"
CASES = {
    "ulysses-a": (dict(sp_size=2), "a"),
    "ulysses-b": (dict(sp_size=2), "b"),
    "ring-a": (dict(ring_size=2), "a"),
}


def suite(rank: int, world: int, folder: str) -> dict[str, float]:
    """On each rank: every case's max |sharded - official| / max |official|."""
    import torch
    from safetensors.torch import load_file

    from fastvideo.attention import use_backend
    from fastvideo.testing.parallel import sharded_forward
    from fastvideo_stepvideo.model import StepVideoTransformer

    torch.set_num_threads(1)
    model = StepVideoTransformer.from_pretrained(Path(folder) / "dit", dtype=torch.float32)
    io = load_file(Path(folder) / "dit_io.safetensors")
    errors = {}
    for name, (par, case) in CASES.items():
        args = (
            io[f"{case}.hidden_states"].permute(0, 2, 1, 3, 4),
            io[f"{case}.timestep"],
            io[f"{case}.encoder_hidden_states"],
            io[f"{case}.encoder_hidden_states_2"],
            io[f"{case}.encoder_attention_mask"],
        )
        ref = io[f"{case}.output"].permute(0, 2, 1, 3, 4)
        with torch.no_grad(), use_backend("sdpa"):
            out = sharded_forward(model, world, par, *args)
        errors[name] = ((out - ref).abs().max() / ref.abs().max()).item()
    return errors


def test_sequence_parallel_matches_official() -> None:
    results = run_ranks(f"{__file__}:suite", world=2, args=(str(DATA),))
    for rank, errors in enumerate(results):
        assert set(errors) == set(CASES)
        for name, err in errors.items():
            assert err <= 1e-5, f"rank {rank}, {name}: max |sharded - official| / max |official| = {err:.3g}"


def vae_suite(rank: int, world: int, folder: str) -> tuple[float, float]:
    """On each rank: the VAE decode with its chunks spread over the ranks, max error vs the official decode."""
    import json
    import sys

    import torch
    from safetensors.torch import load_file

    from fastvideo.configs import ParallelConfig
    from fastvideo.parallel.state import init_parallel, teardown
    from fastvideo.parallel.vae import ParallelVAEDecode
    from fastvideo_stepvideo.vae import StepVideoVAE, StepVideoVAEConfig

    torch.set_num_threads(1)
    sys.path.insert(0, folder)
    from refweights import seeded_state

    recipe = json.loads((Path(folder) / "vae_recipe.json").read_text())
    state = seeded_state([tuple(x) for x in recipe["official_order"]], recipe["seed"])
    with torch.device("meta"):
        vae = StepVideoVAE(StepVideoVAEConfig.from_json(recipe["config"]))
    ours = {k.replace("decoder.conv_out.", "decoder.conv_out.conv.") if k.startswith("decoder.conv_out.") else k: v
            for k, v in zip(recipe["released_names"], state.values(), strict=True)}  # fmt: skip
    vae.load_state_dict(ours, assign=True)
    io = load_file(Path(folder) / "vae_io.safetensors")
    calls = []

    def whole(v, z):  # type: ignore[no-untyped-def]
        calls.append(1)
        return v.decode(z)

    # spatial tiles too: 2 chunks x 2 tiles of 48 px (mid block whole on every rank, up levels split)
    z = torch.randn(1, 2, 6, 3, 4, generator=torch.Generator().manual_seed(0))
    pstate = init_parallel(ParallelConfig(num_gpus=world, sp_size=world), device="cpu")
    try:
        with torch.no_grad():
            video = ParallelVAEDecode(pstate, whole)(vae, io["z"].permute(0, 2, 1, 3, 4))
            vae.enable_tiling(48, 32)
            tiled = ParallelVAEDecode(pstate, whole)(vae, z)
    finally:
        teardown()
    with torch.no_grad():
        one_process = vae.decode(z)  # tiled, in this process alone
        vae.disable_tiling()
        untiled = vae.decode(z)
    assert not calls  # the chunks and tiles were split, not decoded whole
    assert not torch.allclose(one_process, untiled, atol=1e-3)  # the tiles are a different decode
    ref = io["decoded"].permute(0, 2, 1, 3, 4)
    return (
        ((video - ref).abs().max() / ref.abs().max()).item(),
        ((tiled - one_process).abs().max() / one_process.abs().max()).item(),
    )


def test_vae_chunks_decoded_on_two_ranks_match_official() -> None:
    """Chunks over 2 ranks equal the official decode; with spatial tiling on, chunk x tile pieces over
    2 ranks equal one process's tiled decode."""
    for rank, (err, tiled_err) in enumerate(run_ranks(f"{__file__}:vae_suite", world=2, args=(str(DATA),))):
        assert err <= 1e-5, f"rank {rank}: max |parallel - official| / max |official| = {err:.3g}"
        assert tiled_err <= 1e-6, f"rank {rank}: max |parallel tiled - one process| / max = {tiled_err:.3g}"
