"""How a DiT's weights are read and placed while a pipeline loads, set by pipeline transforms.

A family loads its DiTs with :meth:`fastvideo.models.DiT.from_pretrained` (built on ``meta``, then
filled from the safetensors). Transforms that change where weights live or what they are read from
(layerwise offload, a pre-quantized FP8 checkpoint) say so *before* the family builds its pipeline,
through :meth:`fastvideo.interfaces.PipelineTransform.prepare_load`, which sets fields of one
:class:`LoadPolicy`. While the policy is active, ``DiT.from_pretrained`` fills the ``meta`` model
through :meth:`LoadPolicy.load`:

* ``stream_blocks``: the tensors of the DiT's blocks are read into (pinned, for CUDA) CPU memory and
  only the other modules (embeddings, head) go to the device, so the whole DiT is never on the device;
* ``fp8_checkpoint``: the block linears the file stores in FP8 become FP8 linears filled straight from
  the file (weights and scales), never materialised in high precision; the folder's tensors are read
  only for what the file lacks;
* ``defer_weights``: nothing is read yet; the DiT stays on ``meta`` (parameters in their final dtypes)
  with its checkpoint attached, for a sharded training run to fill each rank's shards after FSDP2
  has split it (:mod:`fastvideo.loader.deferred`).

Families need not know about it; a policy with nothing set loads as before.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from torch import nn

    from fastvideo.loader.checkpoint import DiffusersCheckpoint

_ACTIVE: contextvars.ContextVar[LoadPolicy | None] = contextvars.ContextVar(
    "fastvideo_load_policy", default=None
)


def current_policy() -> LoadPolicy | None:
    """The policy :meth:`LoadPolicy.active` set, if any (None: load as the family asks)."""
    return _ACTIVE.get()


@dataclass
class LoadPolicy:
    """What the transforms of one pipeline ask of its DiTs' loading (see the module docstring)."""

    stream_blocks: bool = False
    fp8_checkpoint: str | None = None
    fp8_mode: str = "fp8"
    defer_weights: bool = False
    #: ``(component path, info)`` of each DiT loaded through the policy (for the logs and the tests).
    loaded: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    #: the DiTs whose blocks were left in CPU memory (the offload transform streams those it finds).
    streamed: list[Any] = field(default_factory=list)

    def is_default(self) -> bool:
        return not self.stream_blocks and self.fp8_checkpoint is None and not self.defer_weights

    @contextlib.contextmanager
    def active(self) -> Iterator[LoadPolicy]:
        """Make this the policy of the DiTs loaded inside the ``with`` (no-op when nothing is set)."""
        token = _ACTIVE.set(None if self.is_default() else self)
        try:
            yield self
        finally:
            _ACTIVE.reset(token)

    def applies_to(self, model: nn.Module) -> bool:
        return not self.is_default() and hasattr(model, "blocks_in_order")

    def load(
        self,
        model: nn.Module,
        ckpt: DiffusersCheckpoint,
        *,
        dtype: torch.dtype | None,
        device: torch.device | str,
        keep_fp32: Callable[[str], bool] | None = None,
        zero_init: Iterable[str] = (),
    ) -> nn.Module:
        """Fill ``model`` (built on ``meta``) from ``ckpt`` as this policy says (``assign=True``).

        :raises CheckpointError: the folder does not match the model (as ``load_pretrained``).
        :raises ValueError: the FP8 file does not match the model, or a second DiT with ``fp8_checkpoint``.
        """
        import torch

        if self.defer_weights and dtype is not None:
            if self.stream_blocks or self.fp8_checkpoint is not None:
                raise ValueError(
                    "deferred (sharded) loading does not combine with offload or an FP8 checkpoint"
                )
            from fastvideo.loader.deferred import defer

            defer(model, ckpt, dtype=dtype, keep_fp32=keep_fp32, zero_init=zero_init)
            self.loaded.append((str(ckpt.folder), {"deferred": True}))
            return model.eval()
        device = torch.device(device)
        cpu = torch.device("cpu")
        expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        zeros = set(zero_init)
        ckpt.check_against({k: v for k, v in expected.items() if k not in zeros})
        streamed = _block_prefixes(model) if self.stream_blocks else ()
        pin = self.stream_blocks and device.type == "cuda"
        info: dict[str, Any] = {"streamed_tensors": 0, "fp8_linears": 0}

        def place(name: str, tensor: torch.Tensor) -> torch.Tensor:
            if name.startswith(streamed):
                info["streamed_tensors"] += 1
                tensor = tensor.to(cpu)
                return tensor.pin_memory() if pin else tensor
            return tensor.to(device)

        def cast(name: str, tensor: torch.Tensor) -> torch.Tensor:
            if dtype is None or not tensor.is_floating_point():
                return tensor
            return tensor.to(torch.float32 if keep_fp32 and keep_fp32(name) else dtype)

        state: dict[str, torch.Tensor] = {}
        if self.fp8_checkpoint is not None:
            if any(i.get("fp8_checkpoint") for _, i in self.loaded):
                raise ValueError(
                    "--fp8-checkpoint holds one DiT; this pipeline has several (an MoE): quantize with --quantize fp8"
                )
            from fastvideo.optimize.fp8 import prequantized_on_meta

            fp8_state, fp8_names, count = prequantized_on_meta(
                model, self.fp8_checkpoint, self.fp8_mode, device
            )
            for name, tensor in fp8_state.items():
                state[name] = place(name, tensor if name in fp8_names else cast(name, tensor))
            info.update(fp8_linears=count, fp8_checkpoint=str(self.fp8_checkpoint))
            # the FP8 transform has nothing left to load
            setattr(model, "fp8_checkpoint_loaded", str(self.fp8_checkpoint))  # noqa: B010
        wanted = {name for name in model.state_dict() if name not in state and name not in zeros}
        for name, tensor in ckpt.tensors(device=cpu, names=wanted):  # one tensor at a time, then placed
            state[name] = place(name, cast(name, tensor))
        for name in zeros:
            zero = torch.zeros(expected[name], dtype=dtype or torch.float32)
            state[name] = place(name, cast(name, zero))
        model.load_state_dict(state, strict=True, assign=True)
        self.loaded.append((str(ckpt.folder), info))
        if streamed:
            self.streamed.append(model)
        return model.eval()


def _block_prefixes(model: nn.Module) -> tuple[str, ...]:
    """``"<block name>."`` of each of the DiT's blocks."""
    blocks = {id(b) for b in model.blocks_in_order()}  # type: ignore[operator]
    return tuple(f"{name}." for name, module in model.named_modules() if id(module) in blocks)
