"""DMD2 on the tiny shipped Wan (``wan-toy``) through the core trainer, against hand computations:
the student's loss and gradient, the critic/student update schedule, the simulated rollout's
gradient path, and the export that ``fv generate`` samples with the few-step sampler."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from fastvideo.training.trainer import Trainer, sample_generator

pytestmark = pytest.mark.usefixtures("plugins")


@pytest.fixture
def make(dmd2_config: Any, dataset: Path, tmp_path: Path) -> Any:
    """``make(**overrides)``: a set-up Trainer of a small dmd2 run."""

    def build(**overrides: Any) -> Trainer:
        out = tmp_path / f"run{len(list(tmp_path.iterdir()))}"
        return Trainer(dmd2_config(dataset, out, **overrides)).setup()

    return build


def _first_micro(trainer: Trainer) -> dict[str, Any]:
    _, micro_batches = next(trainer._batches())
    return micro_batches[0]


def _velocity(model: torch.nn.Module, x: torch.Tensor, t: float, text: torch.Tensor) -> torch.Tensor:
    timestep = torch.full((x.shape[0],), t)
    return model(hidden_states=x, timestep=timestep, encoder_hidden_states=text).float()


def _draw(gens: list[torch.Generator], shape: tuple[int, ...]) -> torch.Tensor:
    return torch.stack([torch.randn(shape, generator=g) for g in gens])


def test_roles_and_options(make: Any) -> None:
    trainer = make()
    alg = trainer.algorithm
    assert set(trainer.registry) == {"student", "teacher", "critic"}
    assert trainer.registry["teacher"].optimizer is None and not alg.teacher.training
    assert not any(p.requires_grad for p in alg.teacher.parameters())
    # both trained models start as the teacher
    for model in (alg.student, alg.critic):
        for (n, p), q in zip(model.named_parameters(), alg.teacher.parameters(), strict=True):
            assert torch.equal(p, q), n
    assert [g["lr"] for g in alg.student_optimizer.param_groups] == [1e-3]
    with pytest.raises(ValueError, match="student_timesteps must be a decreasing list"):
        make(**{"algorithm_options.student_timesteps": [500, 900]})


def test_student_loss_and_gradient_match_a_hand_computation(make: Any) -> None:
    """The DMD2 loss of FastVideo's DMD2Method written out by hand: simulate the student's rollout from
    noise to the target step, noise its x0 to a random shifted level, take the critic's and the CFG
    teacher's x0, grad = ((x - real) - (x - fake)) / mean|x - real|, loss = 0.5 mse(x, x - grad)."""
    trainer = make()
    alg = trainer.algorithm
    trainer.step = 5
    micro = _first_micro(trainer)
    loss, _ = alg.student_loss(micro)
    loss.backward()
    ours = {n: p.grad.clone() for n, p in alg.student.named_parameters()}
    alg.student.zero_grad(set_to_none=True)

    seed, step, positions = 0, 5, [int(p) for p in micro["position"]]
    text, shape = micro["text"], tuple(micro["latents"].shape[1:])
    timesteps = [1000.0, 757.0, 522.0]
    k = int(torch.randint(3, (1,), generator=sample_generator(seed, step, 0, 15)))
    gens = [sample_generator(seed, step, p, 11) for p in positions]
    x = _draw(gens, shape)
    with torch.no_grad():
        for i in range(k):
            x0 = x - timesteps[i] / 1000 * _velocity(alg.student, x, timesteps[i], text)
            s = timesteps[i + 1] / 1000
            x = (1 - s) * x0 + s * _draw(gens, shape)
    gen = x - timesteps[k] / 1000 * _velocity(alg.student, x, timesteps[k], text)
    gens = [sample_generator(seed, step, p, 12) for p in positions]
    noise = _draw(gens, shape)
    raw = torch.cat([torch.rand(1, generator=g) for g in gens]) * 0.96 + 0.02
    sigma = 2.0 * raw / (1 + raw)  # wan-toy's flow shift 2
    s = sigma.view(-1, 1, 1, 1, 1)
    with torch.no_grad():
        noisy = (1 - s) * gen + s * noise
        t = sigma * 1000
        fake = noisy - s * alg.critic(hidden_states=noisy, timestep=t, encoder_hidden_states=text)
        cond = alg.teacher(hidden_states=noisy, timestep=t, encoder_hidden_states=text)
        uncond = alg.teacher(hidden_states=noisy, timestep=t, encoder_hidden_states=torch.zeros_like(text))
        real = noisy - s * (uncond + 3.0 * (cond - uncond))
        p_real, p_fake = gen - real, gen - fake
        grad = (p_real - p_fake) / p_real.abs().mean(dim=(1, 2, 3, 4), keepdim=True)
    expected = 0.5 * ((gen - (gen - grad).detach()) ** 2).mean()
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-8)
    assert float(expected.detach()) > 1e-4  # teacher and critic differ (CFG): a non-trivial loss
    expected.backward()
    for n, p in alg.student.named_parameters():
        torch.testing.assert_close(ours[n], p.grad, rtol=1e-4, atol=1e-9, msg=n)
    assert all(p.grad is None for p in alg.critic.parameters())  # the critic gets no gradient
    assert max(float(g.abs().max()) for g in ours.values()) > 0


def test_the_critic_trains_every_step_and_the_student_every_fifth(make: Any) -> None:
    trainer = make(**{"algorithm_options.student_update_every": 3})
    alg = trainer.algorithm
    batches = trainer._batches()

    def snapshot(model: torch.nn.Module) -> list[torch.Tensor]:
        return [p.detach().clone() for p in model.parameters()]

    teacher = snapshot(alg.teacher)
    changed: dict[str, list[int]] = {"student": [], "critic": []}
    logged = []
    for step in range(1, 8):
        trainer.step = step
        before = {"student": snapshot(alg.student), "critic": snapshot(alg.critic)}
        metrics = trainer.run_step(next(batches)[1])
        logged.append("dmd_loss" in metrics)
        for role, model in (("student", alg.student), ("critic", alg.critic)):
            if any(not torch.equal(a, b) for a, b in zip(before[role], model.parameters(), strict=True)):
                changed[role].append(step)
    assert changed == {"student": [3, 6], "critic": [1, 2, 3, 4, 5, 6, 7]}
    assert logged == [False, False, True, False, False, True, False]
    assert all(torch.equal(a, b) for a, b in zip(teacher, alg.teacher.parameters(), strict=True))
    assert alg.student_optimizer.state[next(alg.student.parameters())]["step"] == 2
    assert trainer.registry["student"].scheduler.last_epoch == 2  # its lr schedule counts its own steps


def test_a_simulated_rollout_carries_gradient_through_its_last_step_only(make: Any) -> None:
    trainer = make()
    alg = trainer.algorithm
    alg.target_step = lambda: 2  # type: ignore[method-assign]  # the deepest rollout: steps 0 and 1 first
    calls: list[tuple[bool, torch.Tensor, float]] = []

    def record(module: torch.nn.Module, args: Any, kwargs: dict[str, Any]) -> None:
        calls.append((torch.is_grad_enabled(), kwargs["hidden_states"], float(kwargs["timestep"][0])))

    handle = alg.student.register_forward_pre_hook(record, with_kwargs=True)
    trainer.step = 1
    micro = _first_micro(trainer)
    batch = trainer.to_device(micro)
    gen = alg.rollout(batch, 11, grad=True)
    handle.remove()
    assert [(g, t) for g, _, t in calls] == [(False, 1000.0), (False, 757.0), (True, 522.0)]
    last_input = calls[-1][1]
    assert not last_input.requires_grad
    gen.square().sum().backward()
    ours = [p.grad.clone() for p in alg.student.parameters()]
    alg.student.zero_grad(set_to_none=True)
    # the same gradient from the last step alone, fed the input the rollout reached
    alone = last_input - 0.522 * _velocity(alg.student, last_input, 522.0, batch["text"])
    torch.testing.assert_close(alone, gen)
    alone.square().sum().backward()
    for a, p in zip(ours, alg.student.parameters(), strict=True):
        torch.testing.assert_close(a, p.grad)


def test_the_export_samples_in_few_steps_without_cfg(dmd2_config: Any, dataset: Path, tmp_path: Path) -> None:
    import json

    from fastvideo.configs import PipelineConfig
    from fastvideo.resolve import resolve
    from fastvideo.samplers import sampler_name

    teacher_scheduler = resolve("wan-toy").path / "scheduler" / "scheduler_config.json"
    before = teacher_scheduler.read_bytes()
    trainer = Trainer(
        dmd2_config(
            dataset,
            tmp_path / "run",
            **{
                "max_steps": 1,
                "export.enabled": True,
                "algorithm_options.student_timesteps": [1000, 750, 500, 250],
            },
        )
    )
    summary = trainer.train()
    folder = Path(summary["export"])
    source = resolve(str(folder))
    params = source.family.sampling_defaults(source)
    assert (params.num_inference_steps, params.guidance_scale) == (4, 1.0)
    assert (params.num_frames, params.height, params.width) == (17, 64, 64)  # the teacher's video defaults
    assert sampler_name(PipelineConfig(), source) == "few-step"
    config = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
    assert config["_fastvideo_sampling"] == {"sampler": "few-step", "timesteps": [1000, 750, 500, 250]}
    assert (
        teacher_scheduler.read_bytes() == before
    )  # the teacher's file, hard-linked into the export, is untouched
    from fastvideo import VideoGenerator

    gen = VideoGenerator.from_pretrained(str(folder), device="cpu")
    result = gen.generate_video("a red circle moving left on a black background", seed=0)
    assert result.frames.shape == (17, 64, 64, 3)
    assert list(result.timings)  # it ran


def test_the_sparse_student_runs_vsa_while_teacher_and_critic_run_dense(make: Any) -> None:
    """``attention.backend: vsa`` sparsifies the student only: every attention call is recorded with
    the backend the registry dispatched it to and the model that made it."""
    from fastvideo.attention import get_backend

    trainer = make(
        **{
            "attention.backend": "vsa",
            "attention.sparsity": 0.5,
            "algorithm_options.student_update_every": 1,
        }
    )
    alg = trainer.algorithm
    assert alg.student_backend == "vsa" and not get_backend(alg.dense_backend).sparse
    # the student carries vsa's gate projections; teacher and critic do not
    assert hasattr(alg.student.blocks[0].self_attn, "gate_compress")
    assert not hasattr(alg.teacher.blocks[0].self_attn, "gate_compress")
    assert not hasattr(alg.critic.blocks[0].self_attn, "gate_compress")
    running: list[str] = []
    calls: list[tuple[str, str]] = []
    for role in ("student", "teacher", "critic"):
        model = getattr(alg, role)
        model.register_forward_pre_hook(lambda m, a, role=role: running.append(role))
        model.register_forward_hook(lambda m, a, o: running.pop() and None)  # None: keep the output
    originals = {}
    for name in ("vsa", alg.dense_backend):
        backend = get_backend(name)
        originals[name] = backend.forward

        def spy(*args: Any, _name: str = name, **kwargs: Any) -> Any:
            calls.append((running[-1] if running else "?", _name))
            return originals[_name](*args, **kwargs)

        backend.forward = spy  # type: ignore[method-assign]
    try:
        trainer.step = 1
        _, micro_batches = next(trainer._batches())
        metrics = trainer.run_step(micro_batches)
    finally:
        for name, forward in originals.items():
            get_backend(name).forward = forward  # type: ignore[method-assign]
    assert "dmd_loss" in metrics
    by_role = {role: {b for r, b in calls if r == role} for role in ("student", "teacher", "critic")}
    assert by_role["student"] == {"vsa", alg.dense_backend}  # self-attention sparse, cross-attention dense
    assert by_role["teacher"] == {alg.dense_backend}
    assert by_role["critic"] == {alg.dense_backend}
    blocks = len(alg.student.blocks)
    student_vsa = sum(1 for r, b in calls if r == "student" and b == "vsa")
    assert student_vsa % blocks == 0 and student_vsa >= 2 * blocks  # the student's rollouts, every block


@pytest.mark.parametrize(
    "recipe", ["dmd2-wan2.1-t2v-1.3b-vsa.yaml", "dmd2-wan2.1-t2v-14b-vsa.yaml", "wan-toy/dmd2.yaml"]
)
def test_the_shipped_recipes_load_with_valid_options(recipe: str) -> None:
    from fastvideo.training.config import load_config, parse_algorithm_options
    from fastvideo_dmd2.algorithm import DMD2Options

    # recipe.sh passes the toy recipe's paths on the command line, as here
    overrides = (
        {"model.path": "wan-toy", "data.path": "latents", "output_dir": "out"} if "/" in recipe else None
    )
    cfg = load_config(Path(__file__).resolve().parents[3] / "examples" / "train" / recipe, overrides)
    assert cfg.algorithm == "dmd2"
    opts = parse_algorithm_options(DMD2Options, cfg.algorithm_options)
    assert list(opts.student_timesteps) == sorted(opts.student_timesteps, reverse=True)
