"""Base class of training algorithms (finetune, LoRA, DMD2).

The core's trainer (:mod:`fastvideo.training.trainer`) owns everything an algorithm should not
have to write: processes and devices, data order, mixed precision, activation checkpointing,
FSDP2 / sequence parallelism, gradient accumulation and clipping, checkpoints, EMA, validation
videos and metrics. An algorithm gets that trainer as ``ctx`` and decides which models exist,
which parameters train and what one optimisation step computes. A complete tiny plugin::

    # my_algo/algorithm.py  (no torch import at module level)
    from fastvideo.interfaces import TrainingAlgorithm

    class HalfLoss(TrainingAlgorithm):
        name = "half-loss"

        def setup(self):
            model = self.ctx.load_transformer()                  # fp32 master weights, ours
            self.model = self.ctx.prepare_model(model)           # checkpointing, FSDP2, SP
            self.opt = self.ctx.make_optimizer(self.model.parameters())
            self.ctx.register("transformer", self.model, self.opt)  # checkpointed and exported

        def train_step(self, batch):                             # batch: the micro-batches of a step
            for micro in batch:
                loss, _ = self.ctx.objective_loss(self.model, micro)
                self.ctx.backward(0.5 * loss / len(batch))
            return {"loss": ..., **self.ctx.optimizer_step(self.opt, self.model)}

    # my_algo/plugin.py
    from fastvideo import hookimpl
    FASTVIDEO_PLUGIN_API = 1

    @hookimpl
    def fv_register_training_algorithms():
        from my_algo.algorithm import HalfLoss
        return [HalfLoss]
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from pathlib import Path

    import torch

    from fastvideo.training.trainer import Trainer


@dataclass(frozen=True, kw_only=True)
class ModelRole:
    """One model an algorithm trains or consults, e.g. DMD2's ``student``, ``teacher`` and ``critic``.

    The trainer gives each registered role its own optimizer and lr schedule (``ctx.make_optimizer(
    model, role=...)`` reads ``roles.<name>.optim`` overrides of the config's ``optim``), FSDP
    wrapping (``ctx.prepare_model(model, role=...)``), EMA (``ema``, with ``roles.<name>.ema``
    overrides) and checkpoint state (``model-<name>``, ``optim-<name>``, ``sched-<name>``,
    ``ema-<name>``).
    """

    name: str  # an identifier: checkpoint keys and config sections are named after it
    trainable: bool = True  # False: frozen (eval mode, no grad, no optimizer), e.g. a teacher
    ema: bool = True  # keep an EMA of it when the config enables EMA (trainable roles only)
    shard: bool = True  # FSDP2-shard it in runs that shard (frozen roles too: saves memory)
    description: str = ""

    def __post_init__(self) -> None:
        if not self.name.isidentifier():
            raise ValueError(f"role names are identifiers (no '.' or '-'), got {self.name!r}")


class TrainingAlgorithm(ABC):
    """One post-training method.

    Class attributes:
        name: lower-kebab name (``"lora"``).
        roles: the models it needs, as :class:`ModelRole` (finetune and LoRA: one trainable
            ``transformer``; DMD2: ``student``, ``teacher``, ``critic``). The trainer checks after
            :meth:`setup` that each declared role was registered, and nothing else.
        eval_role: the role whose model validation videos and the export use.
        description: one line for ``fv train --help`` and the docs.

    The trainer calls, in order: ``__init__(ctx)``, :meth:`setup` (build, wrap and
    :meth:`~fastvideo.training.trainer.Trainer.register` the models and optimizers), then, when
    resuming, :meth:`load_state_dict`; then :meth:`train_step` once per optimisation step, and
    :meth:`export` at the end.
    """

    name: ClassVar[str]
    roles: ClassVar[tuple[ModelRole, ...]] = (ModelRole(name="transformer"),)
    eval_role: ClassVar[str] = "transformer"
    description: ClassVar[str] = ""

    @classmethod
    def role(cls, name: str) -> ModelRole:
        """The declared role ``name`` (a ``KeyError`` listing the declared ones otherwise)."""
        for role in cls.roles:
            if role.name == name:
                return role
        raise KeyError(
            f"training algorithm {cls.name!r} declares no role {name!r}; "
            f"declared: {', '.join(r.name for r in cls.roles) or 'none'}"
        )

    def __init__(self, ctx: Trainer | None = None) -> None:
        self.ctx: Any = ctx

    def make_dataset(self) -> Any:
        """The dataset to train on, or None for the preprocessed latents at ``data.path`` (the
        default). Called before :meth:`setup`; items are dicts of CPU tensors that the trainer
        batches (e.g. :class:`~fastvideo.training.data.VideoClipDataset` for an autoencoder)."""
        return None

    def setup(self) -> None:
        """Load the models, make the trainable ones ready (``ctx.prepare_model``), build their
        optimizers (``ctx.make_optimizer``) and ``ctx.register`` each for checkpoints."""
        return None

    @abstractmethod
    def train_step(self, batch: Any) -> dict[str, float]:
        """Run one optimisation step and return its metrics.

        ``batch`` is the list of this rank's micro-batches for the step (one per gradient
        accumulation step), each a dict of tensors from the dataset (``latents``, ``text``,
        ``text_mask``, ``position``).
        """

    def state_dict(self) -> dict[str, Any]:
        """Algorithm state to checkpoint beside the models and optimizers: tensors and plain Python
        data (containers, numbers, strings, bytes), since checkpoints are decoded with ``weights_only``."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        return None

    def eval_model(self) -> torch.nn.Module:
        """The model that validation videos and the export use (default: the :attr:`eval_role`'s)."""
        return self.ctx.registered(self.eval_role).model

    def export(self, folder: Path) -> Path:
        """Write the result where ``fv generate`` and diffusers can load it; returns the path.

        The default writes a diffusers-format folder with :meth:`eval_model` as the transformer.
        """
        return self.ctx.export_diffusers(self.eval_model(), folder)
