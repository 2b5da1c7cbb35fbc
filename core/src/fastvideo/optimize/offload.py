"""Layerwise offload: the DiT blocks live in (pinned) CPU memory and are copied to the GPU one group
ahead of use, on a side CUDA stream, so that copies overlap the previous group's compute; a group's
GPU copies are dropped right after it ran. The DiT's other modules (embeddings, head) stay on the
GPU. The host waits for the GPU to finish a group before it starts copying the one after next, so no
more than about two groups are on the GPU however far ahead the host could queue kernels. Text
encoders, image encoders and the VAE live on the CPU and are moved to the GPU only while
the stage that uses them runs.

Weights are never changed: offloading swaps each parameter's storage between a CPU copy made once
(``p.data``), so outputs are bit for bit those of the resident model. The hooks are eager code
(``torch.compiler.disable``), so regionally compiled blocks keep working; FSDP (which owns the
parameters' storage) is not supported.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn


def _tensors(modules: Iterable[nn.Module]) -> list[torch.Tensor]:
    """The parameters and buffers of ``modules`` (each once)."""
    seen: set[int] = set()
    out = []
    for m in modules:
        for t in [*m.parameters(), *m.buffers()]:
            if id(t) not in seen:
                seen.add(id(t))
                out.append(t)
    return out


class ParamGroup:
    """The weights of some modules, kept as CPU copies (pinned for CUDA) and swapped in and out."""

    def __init__(self, modules: Sequence[nn.Module], device: torch.device) -> None:
        self.tensors = _tensors(modules)
        pin = device.type == "cuda"
        self.stored = []
        for t in self.tensors:
            cpu = t.data.to("cpu", copy=True) if t.device.type != "cpu" else t.data
            self.stored.append(cpu.pin_memory() if pin and not cpu.is_pinned() else cpu)
        self.resident = True
        self.offload()

    def copies(self, device: torch.device) -> list[torch.Tensor]:
        """Copies of the stored weights on ``device`` (asynchronous from pinned memory)."""
        return [s.to(device, non_blocking=True, copy=True) for s in self.stored]

    def load(self, tensors: list[torch.Tensor]) -> None:
        for t, new in zip(self.tensors, tensors, strict=True):
            t.data = new
        self.resident = True

    def offload(self) -> None:
        for t, cpu in zip(self.tensors, self.stored, strict=True):
            t.data = cpu
        self.resident = False


class LayerOffload:
    """Streams ``model``'s blocks to ``device`` group by group (``group_size`` blocks per group).

    ``stats["copies"]`` counts group uploads; ``max_resident`` the most groups on the device at once.
    """

    def __init__(self, model: nn.Module, device: torch.device | str, group_size: int = 1) -> None:
        self.device = torch.device(device)
        if not hasattr(model, "blocks_in_order"):
            raise TypeError(f"layer offload needs a fastvideo DiT (with blocks), got {type(model).__name__}")
        blocks = list(model.blocks_in_order())  # type: ignore[operator]
        if group_size < 1:
            raise ValueError(f"group_size must be >= 1, got {group_size}")
        in_blocks = {id(t) for t in _tensors(blocks)}
        for t in _tensors([model]):  # everything outside the blocks stays on the device
            if id(t) not in in_blocks and t.device != self.device:
                t.data = t.data.to(self.device)
        self.groups = [
            ParamGroup(blocks[i : i + group_size], self.device) for i in range(0, len(blocks), group_size)
        ]
        self.cuda = self.device.type == "cuda"
        self.stream = torch.cuda.Stream(self.device) if self.cuda else None
        self.pending: dict[int, tuple[list[torch.Tensor], Any]] = {}
        self.done: dict[int, Any] = {}  # group -> CUDA event recorded after its block(s) ran
        self.stats = {"copies": 0, "max_resident": 0}
        self.handles = []
        for g, i in enumerate(range(0, len(blocks), group_size)):
            first, last = blocks[i], blocks[min(i + group_size, len(blocks)) - 1]
            self.handles.append(first.register_forward_pre_hook(self._pre_hook(g)))
            self.handles.append(last.register_forward_hook(self._post_hook(g), always_call=True))

    def _pre_hook(self, g: int) -> Any:
        @torch.compiler.disable
        def hook(module: nn.Module, args: Any) -> None:
            self.onload(g)

        return hook

    def _post_hook(self, g: int) -> Any:
        @torch.compiler.disable
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            self.groups[g].offload()
            if self.cuda:  # when the GPU is done with this group, its copies can be freed
                event = torch.cuda.Event()
                event.record(torch.cuda.current_stream(self.device))
                self.done[g] = event

        return hook

    def _fetch(self, g: int) -> None:
        """Start copying group ``g`` to the device (on the side stream) unless it is on its way."""
        if g in self.pending or self.groups[g].resident:
            return
        self.stats["copies"] += 1
        if self.stream is None:
            self.pending[g] = (self.groups[g].copies(self.device), None)
            return
        self.stream.wait_stream(torch.cuda.current_stream(self.device))  # the weights' last readers
        with torch.cuda.stream(self.stream):
            copies = self.groups[g].copies(self.device)
            event = torch.cuda.Event()
            event.record(self.stream)
        self.pending[g] = (copies, event)

    def onload(self, g: int) -> None:
        """Group ``g`` on the device now (waiting for its copy), and the next group's copy started."""
        self._fetch(g)
        copies, event = self.pending.pop(g)
        if event is not None:
            current = torch.cuda.current_stream(self.device)
            current.wait_event(event)
            for t in copies:
                t.record_stream(current)  # the allocator keeps them until the compute stream is done
        self.groups[g].load(copies)
        # Throttle: the host waits until the GPU finished the previous group before it starts the next
        # copy, else it would queue copies (and keep their memory) as far ahead as it queues kernels.
        previous = self.done.pop((g - 1) % len(self.groups), None)
        if previous is not None:
            previous.synchronize()
        self._fetch((g + 1) % len(self.groups))  # prefetch; after the last group, the first (next call)
        resident = sum(grp.resident for grp in self.groups) + len(self.pending)
        self.stats["max_resident"] = max(self.stats["max_resident"], resident)

    def remove(self) -> None:
        """Stop offloading: hooks removed, every block back on the device."""
        for h in self.handles:
            h.remove()
        self.pending.clear()
        for grp in self.groups:
            grp.load(grp.copies(self.device))


class IdleOffload:
    """Modules (text encoder, VAE) kept on the CPU and moved to ``device`` only while ``with`` runs."""

    def __init__(self, modules: Sequence[nn.Module], device: torch.device | str) -> None:
        self.device = torch.device(device)
        self.group = ParamGroup(modules, self.device)

    def __enter__(self) -> IdleOffload:
        self.group.load(self.group.copies(self.device))
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.device.type == "cuda":
            torch.cuda.current_stream(self.device).synchronize()
        self.group.offload()


def referenced(obj: Any, candidates: Sequence[Any], depth: int = 3) -> list[Any]:
    """The objects of ``candidates`` that ``obj`` holds (in attributes, lists, dicts; ``depth`` levels)."""
    ids = {id(c): c for c in candidates}
    found: dict[int, Any] = {}

    def walk(value: Any, level: int) -> None:
        if id(value) in ids:
            found[id(value)] = value
            return
        if level == 0 or isinstance(value, (str, bytes, int, float, torch.Tensor)):
            return
        if isinstance(value, dict):
            items: Iterable[Any] = value.values()
        elif isinstance(value, (list, tuple, set)):
            items = value
        elif hasattr(value, "__dict__") and not isinstance(value, nn.Module):
            items = vars(value).values()
        else:
            return
        for item in items:
            walk(item, level - 1)

    walk(obj, depth)
    return list(found.values())


def offload_stage(stage: Any, modules: Sequence[nn.Module], device: torch.device | str) -> IdleOffload:
    """Run ``stage`` with ``modules`` on ``device``, keeping them on the CPU between runs."""
    idle = IdleOffload(modules, device)
    forward = stage.forward

    def offloaded_forward(batch: Any) -> Any:
        with idle:
            return forward(batch)

    stage.forward = offloaded_forward
    return idle
