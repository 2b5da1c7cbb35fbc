"""Validation videos during training: the family's own inference pipeline with the model being trained."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import nn

    from fastvideo.generator import VideoGenerator
    from fastvideo.training.config import ValidationSection


class Validator:
    """Builds the family's pipeline once (fp32, on the training device, no progress bars) and
    writes one video per prompt with whatever model it is given, through
    :meth:`VideoGenerator.set_transformer`."""

    def __init__(
        self, family: Any, source: Any, *, device: str, attention_backend: str, component: str
    ) -> None:
        self.family = family
        self.source = source
        self.device = device
        self.attention_backend = attention_backend
        self.component = component
        self._generator: VideoGenerator | None = None

    def generator(self) -> VideoGenerator:
        if self._generator is None:
            from fastvideo.configs import PipelineConfig
            from fastvideo.generator import VideoGenerator
            from fastvideo.transforms import apply_transforms

            config = PipelineConfig(
                device=self.device, dtype="fp32", progress=False, attention_backend=self.attention_backend
            )
            pipeline = self.family.build_pipeline(self.source, config)
            apply_transforms(pipeline, config)  # as VideoGenerator does: parallel VAE decode, plugins'
            defaults = self.family.sampling_defaults(self.source)
            self._generator = VideoGenerator(self.source, pipeline, config, defaults)
        return self._generator

    def write(
        self, model: nn.Module, cfg: ValidationSection, folder: Path, *, step: int, main: bool
    ) -> list[str]:
        """One video per ``cfg.prompts`` entry as ``folder/step-<step>-<i>.mp4`` (written by the main
        rank; the others run the same pipeline, which collectives of a sharded model need)."""
        gen = self.generator()
        gen.set_transformer(model, self.component)
        overrides = {
            k: getattr(cfg, k)
            for k in ("num_frames", "height", "width", "guidance_scale")
            if getattr(cfg, k) is not None
        }
        paths = []
        for i, prompt in enumerate(cfg.prompts):
            path = folder / f"step-{step:08d}-{i}.mp4" if main else None
            gen.generate_video(
                prompt,
                output_path=path,
                overwrite=True,
                seed=cfg.seed,
                num_inference_steps=cfg.num_inference_steps,
                **overrides,
            )
            if path is not None:
                paths.append(str(path))
        return paths
