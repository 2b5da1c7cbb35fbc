"""The wan-toy demo model's training pieces: the ``vae`` training algorithm and the untrained scaffold
(the shipped model itself: test_wan_toy_shipped.py)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from fastvideo.training.config import load_config
from fastvideo.training.metrics import read_metrics
from fastvideo.training.trainer import Trainer
from fastvideo_wan import toy
from fastvideo_wan.commands import wan_app

REFERENCE = Path(__file__).parent / "data" / "wan-toy-reference.npz"
FV = str(Path(sys.executable).with_name("fv"))


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("toy") / "clips"
    toy.write_dataset(out, 6, seed=1, frames=5, size=48, format="npy")
    return out


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from fastvideo_wan.tiny import make_tiny_wan

    return make_tiny_wan(tmp_path_factory.mktemp("wan") / "ckpt", seed=0, randomize=False)


def _vae_config(ckpt: Path, clips: Path, out: Path, **overrides: Any) -> Any:
    base = {
        "algorithm": "vae",
        "model.path": str(ckpt),
        "data.path": str(clips),
        "output_dir": str(out),
        "max_steps": 8,
        "mixed_precision": "fp32",
        "optim.lr": 2e-3,
        "optim.weight_decay": 0.0,
        "data.batch_size": 2,
        "export.dtype": "fp32",
        "logging.every_steps": 100,
        "algorithm_options": {"num_frames": 5, "height": 48, "width": 48, "stats_samples": 4},
    }
    return load_config(None, {**base, **overrides})


def test_vae_algorithm_trains_and_exports_a_diffusers_vae_with_latent_stats(
    clips: Path, tiny_ckpt: Path, tmp_path: Path
) -> None:
    """The loss falls; the export is the checkpoint with its vae replaced, loadable by diffusers,
    with the trained weights and latents_mean / latents_std equal to the per-channel statistics
    of the posterior mode, recomputed here with diffusers' own model on the raw clips."""
    from diffusers import AutoencoderKLWan

    ckpt = tiny_ckpt
    out = tmp_path / "vae"
    trainer = Trainer(_vae_config(ckpt, clips, out))
    summary = trainer.train()
    losses = [r["loss"] for r in read_metrics(out / "metrics.jsonl") if "loss" in r]
    assert len(losses) == 8 and min(losses[-3:]) < losses[0]
    assert {"l1", "mse", "kl", "psnr"} <= set(read_metrics(out / "metrics.jsonl")[0])
    export = Path(summary["export"])
    assert json.loads((export / "model_index.json").read_text()) == json.loads(
        (ckpt / "model_index.json").read_text()
    )
    assert (export / "transformer").is_dir() and (export / "text_encoder").is_dir()
    vae = AutoencoderKLWan.from_pretrained(str(export / "vae")).eval()
    trained = trainer.algorithm.model.state_dict()
    for name, tensor in vae.state_dict().items():
        torch.testing.assert_close(tensor, trained[name].cpu(), rtol=0, atol=0)
    latents = []
    for item in json.loads((clips / "captions.json").read_text())[:4]:
        video = torch.from_numpy(np.load(clips / item["path"])).permute(3, 0, 1, 2)[None].float() / 127.5 - 1
        with torch.no_grad():
            latents.append(vae.encode(video).latent_dist.mode().double())
    z = torch.cat(latents).transpose(0, 1).flatten(1)  # (C, N)
    torch.testing.assert_close(torch.tensor(vae.config.latents_mean, dtype=torch.float64), z.mean(1))
    torch.testing.assert_close(
        torch.tensor(vae.config.latents_std, dtype=torch.float64),
        z.std(1, correction=0),
        rtol=1e-4,
        atol=1e-6,
    )


@pytest.mark.parametrize("first_frame_weight", [1.0, 3.0])
def test_vae_loss_with_posterior_mean_and_foreground_weights(
    first_frame_weight: float, clips: Path, tiny_ckpt: Path, tmp_path: Path
) -> None:
    """The vae algorithm's loss on one micro-batch against a manual computation with diffusers' own
    VAE: z = posterior mean (sample_posterior false), pixel weights 1 + w on the rendered object (the
    pixels whose colour differs from the clip's background colour) and 1 elsewhere, times
    first_frame_weight on frame 0."""
    from diffusers import AutoencoderKLWan

    extra, kl_weight = 5.0, 0.5
    options = {
        "num_frames": 5,
        "height": 48,
        "width": 48,
        "sample_posterior": False,
        "foreground_weight": extra,
        "kl_weight": kl_weight,
        "mse_weight": 2.0,
        "first_frame_weight": first_frame_weight,
    }
    trainer = Trainer(_vae_config(tiny_ckpt, clips, tmp_path / "o", algorithm_options=options)).setup()
    _, micro_batches = next(trainer._batches())
    micro = micro_batches[0]
    loss, parts = trainer.algorithm.loss(micro)

    x = micro["video"]
    vae = AutoencoderKLWan.from_pretrained(str(tiny_ckpt / "vae")).eval()
    with torch.no_grad():
        post = vae.encode(x).latent_dist
        recon = vae.decode(post.mean).sample
    weights = []
    for clip in x:  # the background colour is the clip's corner pixel (objects never touch the border)
        pixels = ((clip + 1) * 127.5).round()
        object_mask = (pixels != pixels[:, :1, :1, :1]).any(dim=0, keepdim=True)
        weights.append(1 + extra * object_mask.float())
    w = torch.stack(weights)
    w[:, :, 0] = w[:, :, 0] * first_frame_weight
    l1 = ((recon - x).abs() * w).mean()
    mse = ((recon - x).pow(2) * w).mean()
    kl = 0.5 * (post.mean.pow(2) + post.logvar.exp() - 1 - post.logvar).mean()
    torch.testing.assert_close(parts["l1"], l1, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(parts["kl"], kl, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(loss.detach(), l1 + 2.0 * mse + kl_weight * kl, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"num_frames": 5, "height": 48}, r"needs algorithm_options width \(the clip geometry\)"),
        (
            {"num_frames": 5, "height": 48, "width": 48, "kl_weigth": 1},
            r"did you mean algorithm_options.kl_weight\?",
        ),
        ({"num_frames": 5, "height": 48, "width": 48.5}, r"algorithm_options.width must be an integer"),
        ({"num_frames": 5, "height": 48, "width": 48, "sample_posterior": 2}, r"must be true or false"),
    ],
)
def test_vae_options_are_checked(
    options: dict[str, Any], message: str, clips: Path, tiny_ckpt: Path, tmp_path: Path
) -> None:
    cfg = _vae_config(tiny_ckpt, clips, tmp_path / "o", algorithm_options=options)
    with pytest.raises(ValueError, match=message):
        Trainer(cfg).setup()


def test_scaffold_is_the_documented_architecture(tmp_path: Path) -> None:
    from diffusers import AutoencoderKLWan, WanTransformer3DModel
    from transformers import AutoTokenizer

    from fastvideo_wan.toy_model import DIT_CONFIG, MAX_SEQUENCE_LENGTH, VAE_CONFIG

    result = CliRunner().invoke(wan_app, ["toy-init", str(tmp_path / "init")])
    assert result.exit_code == 0, result.output
    vae = AutoencoderKLWan.from_pretrained(str(tmp_path / "init" / "vae"))
    dit = WanTransformer3DModel.from_pretrained(str(tmp_path / "init" / "transformer"))
    assert vae.config.z_dim == VAE_CONFIG["z_dim"] == dit.config.in_channels
    assert dit.config.num_layers == DIT_CONFIG["num_layers"]
    tokenizer = AutoTokenizer.from_pretrained(str(tmp_path / "init" / "tokenizer"))
    longest = max((toy.caption(c) for c in toy.all_combinations()), key=len)
    ids = tokenizer(longest)["input_ids"]
    assert tokenizer.unk_token_id not in ids and len(ids) <= MAX_SEQUENCE_LENGTH
    assert len(ids) == len(longest.split()) + 1  # one token per word, then </s>
    again = CliRunner().invoke(wan_app, ["toy-init", str(tmp_path / "init")])
    assert again.exit_code == 2 and "--overwrite" in again.output
    from fastvideo.resolve import resolve

    init, preset = resolve(str(tmp_path / "init")), resolve("wan-toy")  # it samples like the preset
    assert init.family.sampling_defaults(init) == preset.family.sampling_defaults(preset)


def test_scaffold_overrides_keep_vae_and_dit_consistent(tmp_path: Path) -> None:
    from diffusers import AutoencoderKLWan, WanTransformer3DModel

    from fastvideo_wan.toy_model import make_toy_scaffold

    make_toy_scaffold(
        tmp_path / "init", vae_overrides={"z_dim": 4, "base_dim": 8}, dit_overrides={"num_layers": 1}
    )
    vae = AutoencoderKLWan.from_pretrained(str(tmp_path / "init" / "vae"))
    dit = WanTransformer3DModel.from_pretrained(str(tmp_path / "init" / "transformer"))
    assert (vae.config.z_dim, vae.config.base_dim, len(vae.config.latents_mean)) == (4, 8, 4)
    assert (dit.config.in_channels, dit.config.out_channels, dit.config.num_layers) == (4, 4, 1)


def test_autoencoder_evaluation_matches_a_manual_round_trip() -> None:
    """``evaluate_autoencoder`` (``fv wan toy-eval --autoencoder``) on the shipped VAE against the same
    round trip done by hand with diffusers: accuracy, PSNR and per-frame object error."""
    import importlib.resources

    from diffusers import AutoencoderKLWan

    from fastvideo_wan.toy_model import evaluate_autoencoder

    result = evaluate_autoencoder("wan-toy", 3, seed=5, device="cpu")
    path = importlib.resources.files("fastvideo_wan") / "assets" / "wan-toy"
    vae = AutoencoderKLWan.from_pretrained(str(path), subfolder="vae", torch_dtype=torch.float32).eval()
    outs, clips, prompts = [], [], []
    for i in range(3):
        clip, prompt = toy.make_clip(5, i, split="held-out")
        x = torch.from_numpy(clip).permute(3, 0, 1, 2)[None].float() / 127.5 - 1
        with torch.no_grad():
            y = vae.decode(vae.encode(x).latent_dist.mode()).sample.clamp(-1, 1)
        outs.append(
            ((y[0].permute(1, 2, 3, 0) + 1) * 127.5).round().to(torch.uint8).numpy().astype(np.float64)
        )
        clips.append(clip.astype(np.float64))
        prompts.append(prompt)
    out, ref = np.stack(outs), np.stack(clips)
    psnr = 10 * np.log10(255.0**2 / ((out - ref) ** 2).mean())
    obj = np.any(ref != ref[:, :, :1, :1], axis=-1)  # (N, T, H, W): not the clip's background colour
    mae = (np.abs(out - ref).mean(-1) * obj).sum(axis=(0, 2, 3)) / obj.sum(axis=(0, 2, 3))
    assert result["count"] == 3
    assert result["psnr"] == pytest.approx(psnr, abs=0.01)
    np.testing.assert_allclose(result["object_mae"], mae, atol=0.006)
    assert result["accuracy"] == toy.evaluate(zip(out.astype(np.uint8), prompts, strict=True))
    cli = CliRunner().invoke(
        wan_app, ["toy-eval", "wan-toy", "--autoencoder", "--num", "2", "--device", "cpu"]
    )
    assert cli.exit_code == 0, cli.output
    assert (
        cli.output.startswith("VAE on 2 held-out clips: colour ")
        and "object-pixel MAE per frame: " in cli.output
    )
