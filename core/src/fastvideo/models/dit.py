"""The base class of the families' DiTs: construction on ``meta``, loading through the declared name
mapping, regional compilation, the token grid, and the infra metadata strategies read.

A family's model file then holds only its config, its blocks and ``forward``::

    class WanTransformer(DiT):
        config_class = WanConfig                 # a DiffusersConfigMixin dataclass
        diffusers_class = "WanTransformer3DModel"
        name_mapping = convert.MAPPING           # diffusers names <-> ours
        block_lists = ("blocks",)                # compiled per block, sharded by FSDP / SP
        fsdp_units = ("WanBlock",)
        fp32_modules = ("time_embed", "modulation")   # kept fp32 in a bf16 / fp16 load
        sparse_attention_layers = ("blocks.*.self_attn",)
        sequence_parallel_plan = SequenceParallelPlan(blocks="blocks", shard={"x": 1})

        def patch(self) -> tuple[int, int, int]: ...  # only when config.patch_size is not (t, h, w)

``from_pretrained(folder)`` reads ``config.json`` (checking ``_class_name``), opens the safetensors
through :attr:`name_mapping` (names and shapes checked before any data is read), builds the model on
``meta`` and loads with ``assign=True``, keeping :attr:`fp32_modules` in fp32.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

import torch
from torch import nn

if TYPE_CHECKING:
    from fastvideo.loader.checkpoint import DiffusersCheckpoint
    from fastvideo.loader.mapping import NameMapping
    from fastvideo.parallel.plan import SequenceParallelPlan

D = TypeVar("D", bound="DiT")


def matches_module(name: str, entries: Iterable[str]) -> bool:
    """Whether dotted parameter ``name`` contains one of ``entries`` as whole components
    (``"modulation"`` matches ``blocks.3.modulation`` and ``head.modulation``, not ``time_modulation``)."""
    parts = name.split(".")
    for entry in entries:
        e = entry.split(".")
        if any(parts[i : i + len(e)] == e for i in range(len(parts) - len(e) + 1)):
            return True
    return False


class DiT(nn.Module):
    """Base of a family's diffusion transformer (see the module docstring for what to declare)."""

    #: The config dataclass; it parses diffusers' ``config.json`` with ``from_diffusers_config``.
    config_class: ClassVar[type]
    #: diffusers' class name in ``config.json`` (``_class_name``), and the reference of parity tests.
    diffusers_class: ClassVar[str]
    #: diffusers state-dict names <-> ours (:class:`fastvideo.loader.mapping.NameMapping`); None:
    #: the checkpoint stores our own names (a model that has no diffusers counterpart).
    name_mapping: ClassVar[NameMapping | None]
    #: ``ModuleList`` attributes holding the transformer blocks, in call order.
    block_lists: ClassVar[tuple[str, ...]] = ("blocks",)
    #: Module classes an FSDP strategy may wrap as units.
    fsdp_units: ClassVar[tuple[str, ...]] = ()
    #: Kept in fp32 when loading in bf16/fp16 (diffusers' ``_keep_in_fp32_modules``); an entry
    #: matches a parameter whose dotted name contains it as whole components (:func:`matches_module`).
    fp32_modules: ClassVar[tuple[str, ...]] = ()
    #: Modules whose attention admits sparse backends (globs over module names); the conformance
    #: kit checks them against the layers that call the seam with ``allow=ALL``.
    sparse_attention_layers: ClassVar[tuple[str, ...]] = ()
    #: Token sharding of the blocks (:class:`fastvideo.parallel.plan.SequenceParallelPlan`), or None.
    sequence_parallel_plan: ClassVar[SequenceParallelPlan | None] = None
    #: The module whose weight dtype is the compute dtype (inputs are cast to it).
    dtype_module: ClassVar[str] = "patch_embed"
    #: Modules whose input is text (or image) conditioning only, constant over the steps of one
    #: generation (globs over module names: the text embedding, cross-attention key and value
    #: projections); the lossless text key/value cache computes them once per prompt and branch.
    #: They must not change their output tensors in place.
    text_kv_layers: ClassVar[tuple[str, ...]] = ()
    #: The module whose output is the per-step timestep modulation (TeaCache's change indicator).
    timestep_modulation: ClassVar[str | None] = None
    #: Linears inside the blocks that FP8 quantization leaves in their dtype (globs over module names):
    #: modulation projections, and layers whose ``weight`` the model reads itself.
    fp8_exclude: ClassVar[tuple[str, ...]] = ()
    #: Other namings of single-file checkpoints this DiT can read (e.g. the original release's), tried
    #: after :attr:`name_mapping` by loaders of such files (FP8 checkpoints: fastvideo.optimize.fp8).
    checkpoint_mappings: ClassVar[tuple[NameMapping, ...]] = ()

    config: Any

    # ---- geometry ---------------------------------------------------------------------------

    def patch(self) -> tuple[int, int, int]:
        """Latent cells per token along (t, h, w); by default ``config.patch_size``."""
        return tuple(self.config.patch_size)  # type: ignore[return-value]

    def check_grid(self, grid: tuple[int, int, int]) -> None:
        """Raise ``ValueError`` for a token grid the model cannot take (e.g. beyond its RoPE range)."""

    def token_grid(self, latent_shape: tuple[int, ...] | torch.Size) -> tuple[int, int, int]:
        """The post-patchify token grid ``(T', H', W')`` of a latent ``(..., T, H, W)``; video tokens
        are in raster order over it (the pipeline passes it to ``StepContext(grid=...)``)."""
        sizes, patch = tuple(latent_shape[-3:]), self.patch()
        if len(sizes) != 3 or any(s % p for s, p in zip(sizes, patch, strict=True)):
            raise ValueError(
                f"latent (T, H, W)={sizes} must be divisible by the patch (t, h, w)={patch}; pass latents "
                f"(B, C, T, H, W) whose sizes are multiples of it"
            )
        grid: tuple[int, int, int] = tuple(s // p for s, p in zip(sizes, patch, strict=True))  # type: ignore[assignment]
        self.check_grid(grid)
        return grid

    @property
    def dtype(self) -> torch.dtype:
        """The compute dtype (that of :attr:`dtype_module`'s weight); inputs are cast to it."""
        return getattr(self, self.dtype_module).weight.dtype

    def teacache_coefficients(self) -> tuple[float, ...] | None:
        """TeaCache's polynomial (highest degree first) rescaling the relative change of the
        :attr:`timestep_modulation` output into the change of the model's output, fitted per model
        by the TeaCache authors; None: no rescaling."""
        return None

    def blocks_in_order(self) -> Iterator[nn.Module]:
        """Every block of :attr:`block_lists`, in call order."""
        for name in self.block_lists:
            yield from getattr(self, name)

    # ---- initialisation and compilation ------------------------------------------------------

    def init_weights(self) -> None:
        """Random init for training from scratch: every layer's ``reset_parameters`` (PyTorch's
        defaults, norms at one). Families extend it for their own parameters (modulation tables)."""
        for m in self.modules():
            if m is not self and hasattr(m, "reset_parameters"):
                m.reset_parameters()  # type: ignore[operator]

    def compile_blocks(self: D, **kwargs: Any) -> D:
        """Regional compilation: ``torch.compile`` each block in place (one graph per block class,
        reused by all its blocks); parameter names do not change."""
        for block in self.blocks_in_order():
            block.compile(**kwargs)
        return self

    # ---- construction and loading ------------------------------------------------------------

    @classmethod
    def is_fp32_param(cls, name: str) -> bool:
        """Whether parameter ``name`` stays fp32 in a low-precision model (see :attr:`fp32_modules`)."""
        return matches_module(name, cls.fp32_modules)

    @classmethod
    def parse_config(cls, config: Any) -> Any:
        """``config`` as :attr:`config_class`: as it is, or parsed from a diffusers config dict."""
        if isinstance(config, cls.config_class):
            return config
        if isinstance(config, Mapping):
            return cls.config_class.from_diffusers_config(config)  # type: ignore[attr-defined]
        raise TypeError(
            f"{cls.__name__}.from_config takes a {cls.config_class.__name__} or a diffusers config dict, "
            f"got {type(config).__name__}"
        )

    def materialize(self: D, device: torch.device | str) -> D:
        """Allocate a ``meta`` model on ``device`` and :meth:`init_weights`; ``meta`` stays as it is."""
        if torch.device(device).type != "meta":
            self.to_empty(device=device)
            self.init_weights()
        return self

    @classmethod
    def from_config(cls: type[D], config: Any, device: torch.device | str = "meta") -> D:
        """Build from a config (or diffusers config dict) on ``meta``; random init on another device."""
        cfg = cls.parse_config(config)
        with torch.device("meta"):
            model = cls(cfg)  # type: ignore[call-arg]
        return model.materialize(device)

    @classmethod
    def read_config(cls, folder: Path) -> Any:
        """``folder/config.json`` of a :attr:`diffusers_class` checkpoint, as :attr:`config_class`.

        :raises CheckpointError: a missing or unreadable file, another class, or rejected values.
        """
        from fastvideo.loader.checkpoint import read_config

        return read_config(folder, cls.diffusers_class, cls.__name__, cls.parse_config)

    @classmethod
    def open_checkpoint(cls, folder: Path, model: nn.Module | None = None) -> DiffusersCheckpoint:
        """The safetensors of ``folder`` indexed by our names (headers only, through :attr:`name_mapping`,
        extended for ``model`` with the checkpoint names of attention backends' per-layer modules)."""
        from fastvideo.attention.layers import checkpoint_mapping
        from fastvideo.loader.checkpoint import DiffusersCheckpoint

        mapping = cls.name_mapping
        if mapping is None:  # our own names, the backends' modules included
            return DiffusersCheckpoint(folder, _SameNames())  # type: ignore[arg-type]
        return DiffusersCheckpoint(
            folder, checkpoint_mapping(model, mapping) if model is not None else mapping
        )

    @classmethod
    def load_checkpoint(
        cls,
        model: D,
        ckpt: DiffusersCheckpoint,
        *,
        dtype: torch.dtype | None,
        device: torch.device | str,
        zero_init: Iterable[str] = (),
    ) -> D:
        """Check ``ckpt`` against the ``meta`` ``model`` and load it (``assign=True``), keeping
        :attr:`fp32_modules` in fp32; ``zero_init`` names may be absent (filled with zeros)."""
        from fastvideo.loader.checkpoint import load_pretrained

        return load_pretrained(
            model, ckpt, dtype=dtype, device=device, keep_fp32=cls.is_fp32_param, zero_init=zero_init
        )

    @classmethod
    def from_pretrained(
        cls: type[D],
        folder: str | Path,
        dtype: torch.dtype | None = torch.bfloat16,
        device: torch.device | str = "cpu",
        *,
        attention_backend: str | None = None,
    ) -> D:
        """Load a diffusers :attr:`diffusers_class` folder (``config.json`` + safetensors weights).

        :param dtype: parameter dtype (``None`` keeps the stored dtypes); :attr:`fp32_modules` stay fp32.
        :param attention_backend: the backend the model will run with: its per-layer modules (if it
            declares any, e.g. VSA's gate) are attached to :attr:`sparse_attention_layers`, zeros where
            the checkpoint has none. Modules of any backend that the checkpoint holds are attached and
            loaded either way.
        :returns: the model in eval mode.
        :raises CheckpointError: a missing/corrupt file, weights that don't match the config, or a
            config describing far more parameters than the weights hold (refused before allocating).
        """
        from fastvideo.attention.layers import attach_layer_modules
        from fastvideo.loader.checkpoint import build_checked
        from fastvideo.loader.policy import current_policy

        folder = Path(folder)
        config = cls.read_config(folder)
        model = build_checked(folder, lambda: cls.from_config(config))  # stops absurd configs early
        ckpt = cls.open_checkpoint(folder, model)
        zeros = attach_layer_modules(model, attention_backend, stored=ckpt.shapes)
        policy = current_policy()  # set by transforms (offload, FP8 checkpoint) while a pipeline loads
        if policy is not None and policy.applies_to(model):
            return policy.load(  # type: ignore[return-value]
                model, ckpt, dtype=dtype, device=device, keep_fp32=cls.is_fp32_param, zero_init=zeros
            )
        return cls.load_checkpoint(model, ckpt, dtype=dtype, device=device, zero_init=zeros)


class _SameNames:
    """The name mapping of a checkpoint written with our own parameter names."""

    def to_ours(self, state: Mapping[str, Any]) -> dict[str, Any]:
        return dict(state)

    to_theirs = to_ours
