"""The built-in training algorithms: full finetuning and LoRA, on the family's objective.

Imported when the algorithms are registered, so torch is imported inside the methods only.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastvideo.interfaces.training import TrainingAlgorithm

if TYPE_CHECKING:
    import torch
    from torch import nn


class DiffusionTrainingAlgorithm(TrainingAlgorithm):
    """One trainable DiT on the family objective: accumulate over the micro-batches, clip, step.

    Subclasses build ``self.model`` and ``self.optimizer`` in :meth:`setup`.
    """

    model: nn.Module
    optimizer: torch.optim.Optimizer

    def train_step(self, batch: Any) -> dict[str, float]:
        import torch

        ctx = self.ctx
        losses = []
        for i, micro in enumerate(batch):
            ctx.gradient_sync(self.model, i == len(batch) - 1)
            loss, _ = ctx.objective_loss(self.model, micro)
            ctx.backward(loss / len(batch))
            losses.append(loss.detach())
        metrics = ctx.optimizer_step(self.optimizer, self.model)
        metrics["loss"] = ctx.mean_over_ranks(torch.stack(losses).mean())
        return metrics


class FinetuneAlgorithm(DiffusionTrainingAlgorithm):
    """Full finetuning: every DiT parameter trains (fp32 master weights, bf16 autocast compute)."""

    name = "finetune"
    description = "full finetuning of the DiT on the family's objective"

    def setup(self) -> None:
        model = self.ctx.load_transformer(dtype="fp32", lazy=True)
        model.requires_grad_(True)
        self.model = self.ctx.prepare_model(model)
        self.optimizer = self.ctx.make_optimizer(self.model)
        self.ctx.register("transformer", self.model, self.optimizer)


class LoRAAlgorithm(DiffusionTrainingAlgorithm):
    """LoRA: frozen DiT, trainable low-rank adapters on ``lora.targets`` (default: the family's)."""

    name = "lora"
    description = "LoRA adapters on the DiT's linear layers, saved in the diffusers/peft format"

    def setup(self) -> None:
        from fastvideo.training.lora import add_trainable_lora

        ctx, cfg = self.ctx, self.ctx.config.lora
        if ctx.fsdp and cfg.base_dtype != "fp32":
            raise ValueError(
                f"lora.base_dtype={cfg.base_dtype} with FSDP2 is not supported (FSDP2 needs one parameter dtype "
                "per block and the adapters train in fp32); use lora.base_dtype: fp32"
            )
        model = ctx.load_transformer(dtype=cfg.base_dtype)
        model.requires_grad_(False)
        targets = cfg.targets or ctx.family.lora_target_modules
        if not targets:
            raise ValueError(
                f"the {ctx.family.name} family declares no default LoRA targets; set lora.targets"
            )
        self.modules = add_trainable_lora(
            model, targets, rank=cfg.rank, alpha=cfg.alpha, dropout=cfg.dropout, seed=ctx.config.seed
        )
        self.model = ctx.prepare_model(model)
        self.optimizer = ctx.make_optimizer(self.model)
        ctx.register("transformer", self.model, self.optimizer, trainable_only=True)

    def export(self, folder: Path) -> Path:
        """``folder/pytorch_lora_weights.safetensors`` (diffusers format); with ``export.merge_lora``
        also ``folder/merged``, a full diffusers folder with the adapter folded in."""
        import torch.distributed as dist

        from fastvideo.training.lora import WEIGHT_NAME, lora_tensors, save_lora_file

        weights = lora_tensors(self.model)  # collective under FSDP2 (gathers the shards)
        path = Path(folder) / WEIGHT_NAME
        if not dist.is_initialized() or dist.get_rank() == 0:
            save_lora_file(weights, self.ctx.family, path, component=self.ctx.config.model.component)
        if self.ctx.config.export.merge_lora:
            self.ctx.export_diffusers(self.model, Path(folder) / "merged")
        if dist.is_initialized():
            dist.barrier()
        return path
