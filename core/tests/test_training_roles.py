"""Model roles in the trainer: an algorithm shaped like DMD2 (a trainable student with EMA, a frozen
teacher, a trainable critic with its own learning rate) on small plain-PyTorch models.

Checked against independent computations: each role's optimizer follows its own ``roles.<name>``
settings (one AdamW step recomputed by hand), the frozen teacher is never checkpointed nor changed,
the EMA of the student follows ``decay * ema + (1 - decay) * w``, a resumed run continues bit-exactly
like an uninterrupted one, and the dataset's negative-prompt embedding reaches the batch."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any, ClassVar

import pytest
import torch
from torch import nn

from fastvideo.interfaces.training import ModelRole, TrainingAlgorithm
from fastvideo.testing import fake_plugins, plugin_module
from fastvideo.training import checkpoint as ckpt
from fastvideo.training.config import load_config
from fastvideo.training.data import MANIFEST, NEGATIVE_TEXT, write_synthetic_dataset, write_tensors_atomic
from fastvideo.training.trainer import Trainer

LATENT = (4, 1, 2, 2)
TEXT_DIM = 8
SEEN: dict[str, Any] = {}


def _net(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 16))


class ThreeRoles(TrainingAlgorithm):
    """Student regresses the teacher's output, critic regresses the student's (detached)."""

    name = "three-roles"
    roles: ClassVar[tuple[ModelRole, ...]] = (
        ModelRole(name="student"),
        ModelRole(name="teacher", trainable=False),
        ModelRole(name="critic", ema=False),
    )
    eval_role = "student"

    def setup(self) -> None:
        ctx = self.ctx
        self.student = ctx.prepare_model(_net(1), role="student")
        self.teacher = ctx.prepare_model(_net(2), role="teacher")
        self.critic = ctx.prepare_model(_net(3), role="critic")
        self.opt_s = ctx.make_optimizer(self.student, role="student")
        self.opt_c = ctx.make_optimizer(self.critic, role="critic")
        ctx.register("student", self.student, self.opt_s)
        ctx.register("teacher", self.teacher)
        ctx.register("critic", self.critic, self.opt_c)

    def train_step(self, batch: Any) -> dict[str, float]:
        micro = self.ctx.to_device(batch[0])
        SEEN["negative_text"] = micro.get("negative_text")
        x = micro["latents"].flatten(1)  # (B, 16)
        SEEN["x"] = x
        with torch.no_grad():
            target = self.teacher(x)
        loss_s = (self.student(x) - target).pow(2).mean()
        loss_s.backward()
        self.ctx.optimizer_step(self.opt_s, self.student)
        loss_c = (self.critic(x) - self.student(x).detach()).pow(2).mean()
        loss_c.backward()
        self.ctx.optimizer_step(self.opt_c, self.critic)
        return {"loss": float(loss_s.detach())}

    def eval_model(self) -> nn.Module:
        return self.student


class Incomplete(ThreeRoles):
    name = "incomplete"

    def setup(self) -> None:
        model = self.ctx.prepare_model(_net(1), role="student")
        self.ctx.register("student", model, self.ctx.make_optimizer(model, role="student"))


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = write_synthetic_dataset(
        tmp_path_factory.mktemp("data"),
        count=8,
        latent_shape=LATENT,
        text_dim=TEXT_DIM,
        max_sequence_length=4,
    )
    negative = torch.arange(2 * TEXT_DIM, dtype=torch.float32).reshape(2, TEXT_DIM)
    write_tensors_atomic(folder / NEGATIVE_TEXT, {"text": negative}, {"format": "fastvideo-latents"})
    manifest = json.loads((folder / MANIFEST).read_text())
    (folder / MANIFEST).write_text(json.dumps({**manifest, "negative_text": NEGATIVE_TEXT}))
    return folder


def _trainer(
    data: Path, out: Path, algorithm: str = "three-roles", resume: Any = None, **overrides: Any
) -> Trainer:
    base = {
        "algorithm": algorithm,
        "model.path": "unused",
        "data.path": str(data),
        "output_dir": str(out),
        "max_steps": 3,
        "mixed_precision": "fp32",
        "device": "cpu",
        "optim.lr": 1e-2,
        "optim.max_grad_norm": 0.0,
        "data.batch_size": 2,
        "ema.decay": 0.5,
        "export.enabled": False,
        "logging.every_steps": 100,
        "roles": {"critic": {"optim": {"lr": 1e-3, "weight_decay": 0.0}}},
    }
    config = load_config(None, {**base, **overrides})
    source = SimpleNamespace(family=None)
    return Trainer(config, resume=resume, source=source, objective=lambda *a: None)


@pytest.fixture()
def plugin() -> Any:
    module = plugin_module("roles-test", fv_register_training_algorithms=lambda: [ThreeRoles, Incomplete])
    with fake_plugins(module):
        yield


def test_each_role_gets_its_optimizer_settings_ema_and_freezing(
    plugin: Any, data: Path, tmp_path: Path
) -> None:
    trainer = _trainer(data, tmp_path / "run", max_steps=1).setup()
    algo = trainer.algorithm
    assert trainer.registered("critic").optimizer.param_groups[0]["lr"] == pytest.approx(1e-3)
    assert trainer.registered("critic").optimizer.param_groups[0]["weight_decay"] == 0.0
    assert trainer.registered("student").optimizer.param_groups[0]["lr"] == pytest.approx(1e-2)
    assert trainer.registered("student").ema is not None and trainer.registered("critic").ema is None
    assert trainer.registered("teacher").ema is None and trainer.registered("teacher").optimizer is None
    assert not any(p.requires_grad for p in algo.teacher.parameters()) and not algo.teacher.training

    teacher0 = {k: v.clone() for k, v in algo.teacher.state_dict().items()}
    critic0 = {k: v.clone() for k, v in algo.critic.state_dict().items()}
    student0 = {k: v.clone() for k, v in algo.student.state_dict().items()}
    trainer.train()
    for k, v in algo.teacher.state_dict().items():
        assert torch.equal(v, teacher0[k]), f"the frozen teacher changed: {k}"
    # one AdamW step of the critic by hand (first step: the update is lr * sign-like g / (|g| + eps))
    x = SEEN["x"]  # the step's input
    ref = _net(3)
    ref.load_state_dict(critic0)
    student_ref = _net(1)
    student_ref.load_state_dict(student0)
    with torch.no_grad():
        teacher_out = algo.teacher(x)
    s_opt = torch.optim.AdamW(student_ref.parameters(), lr=1e-2, weight_decay=0.01)
    (student_ref(x) - teacher_out).pow(2).mean().backward()
    s_opt.step()
    c_opt = torch.optim.AdamW(ref.parameters(), lr=1e-3, weight_decay=0.0)
    (ref(x) - student_ref(x).detach()).pow(2).mean().backward()
    c_opt.step()
    for k, v in algo.critic.state_dict().items():
        torch.testing.assert_close(v, ref.state_dict()[k], rtol=0, atol=1e-6)
    for k, v in algo.student.state_dict().items():
        torch.testing.assert_close(v, student_ref.state_dict()[k], rtol=0, atol=1e-6)
    # the student's EMA after step 1 (start_step 0): 0.5 * initial + 0.5 * weights
    ema = trainer.registered("student").ema.state_dict()
    for name, p in algo.student.named_parameters():
        torch.testing.assert_close(ema[name], 0.5 * student0[name] + 0.5 * p.detach(), rtol=0, atol=1e-6)
    assert torch.equal(
        SEEN["negative_text"][:2], torch.arange(2 * TEXT_DIM, dtype=torch.float32).reshape(2, -1)
    )
    assert SEEN["negative_text"][2:].abs().sum() == 0  # zero padding to max_sequence_length


def test_checkpoint_holds_every_trainable_role_and_resume_is_exact(
    plugin: Any, data: Path, tmp_path: Path
) -> None:
    full = _trainer(data, tmp_path / "full")
    full.train()
    part = _trainer(data, tmp_path / "part", max_steps=2)
    part.train()
    keys = ckpt.saved_keys(ckpt.latest(tmp_path / "part" / "checkpoints"))
    assert {
        "model-student",
        "optim-student",
        "sched-student",
        "ema-student",
        "model-critic",
        "optim-critic",
    } <= keys
    assert not any("teacher" in k for k in keys) and "ema-critic" not in keys
    resumed = _trainer(data, tmp_path / "part", resume=True)
    resumed.train()
    for role in ("student", "critic"):
        want = full.registered(role).model.state_dict()
        for k, v in resumed.registered(role).model.state_dict().items():
            assert torch.equal(v, want[k]), f"{role}.{k} differs after resuming"
    want_ema = full.registered("student").ema.state_dict()
    for k, v in resumed.registered("student").ema.state_dict().items():
        assert torch.equal(v, want_ema[k])


def test_role_errors_are_one_line(plugin: Any, data: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"declares role 'teacher' but registered no model"):
        _trainer(data, tmp_path / "a", algorithm="incomplete").setup()
    with pytest.raises(ValueError, match=r"roles\.critc: training algorithm 'three-roles' has no such role"):
        _trainer(data, tmp_path / "b", roles={"critc": {"optim": {"lr": 1.0}}}).setup()
    with pytest.raises(ValueError, match=r"roles\.critic: .*optim\.lr"):
        _trainer(data, tmp_path / "c", roles={"critic": {"optim": {"lr": -1.0}}})
    with pytest.raises(ValueError, match=r"unknown config key 'roles\.critic\.optimizer'"):
        _trainer(data, tmp_path / "d", roles={"critic": {"optimizer": {"lr": 1.0}}})


def test_load_transformer_takes_a_role_s_attention_backend(tmp_path: Path) -> None:
    """A distillation's dense teacher is loaded without the run's (sparse) backend's layer modules:
    ``load_transformer(attention_backend=...)`` reaches the family's loader, the run's backend by default."""
    calls: list[str | None] = []

    class Family:
        @classmethod
        def load_transformer(cls, source: Any, **kwargs: Any) -> nn.Module:
            calls.append(kwargs["attention_backend"])
            return nn.Linear(1, 1)

    cfg = load_config(
        None, {"model.path": "m", "data.path": "d", "max_steps": 1, "output_dir": str(tmp_path)}
    )
    trainer = Trainer(cfg)
    trainer.family, trainer.backend = Family, "the-runs-backend"
    trainer.load_transformer()
    trainer.load_transformer(attention_backend="dense-one")
    assert calls == ["the-runs-backend", "dense-one"]
