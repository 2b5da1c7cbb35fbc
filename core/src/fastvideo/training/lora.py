"""LoRA: our low-rank adapter layers, and LoRA files in the diffusers / peft format.

A :class:`LoRALinear` is an ``nn.Linear`` (same ``weight`` and ``bias``, so parameter names do not
change) that carries any number of named adapters::

    y = x W^T + b + sum_a scale_a * (drop(x) A_a^T) B_a^T  (+ scale_a * bias_a)

``A_a`` is ``(r, in)``, ``B_a`` is ``(out, r)``; ``scale_a`` is ``alpha / r`` times the user's
weight. Adapters can be merged into ``W`` for inference and unmerged again, bit-exactly (the
original weights are kept on the CPU while merged).

Files: diffusers' ``pytorch_lora_weights.safetensors`` holds ``transformer.<diffusers module>.
lora_A.weight`` / ``lora_B.weight`` and, in its ``lora_adapter_metadata``, the peft ``LoraConfig``
(``r``, ``lora_alpha``, ...). We read that format, peft's own (``base_model.model.`` prefix), and
files in the upstream repository's naming (``diffusion_model.`` prefix, ``lora_down``/``lora_up``
with per-module ``alpha``, ``diff_b`` bias deltas), mapping names through the model family's hooks
(:meth:`~fastvideo.interfaces.ModelFamily.from_diffusers_names`,
:meth:`~fastvideo.interfaces.ModelFamily.from_original_names`). We write the diffusers format with
``alpha / r`` folded into ``lora_B``, so every reader gets the same update.
"""

from __future__ import annotations

import fnmatch
import json
import math
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from fastvideo.errors import CheckpointError

if TYPE_CHECKING:
    from fastvideo.interfaces.model_family import ModelFamily

WEIGHT_NAME = "pytorch_lora_weights.safetensors"
METADATA_KEY = "lora_adapter_metadata"


# ---------------------------------------------------------------- the layer


class LoRALinear(nn.Linear):
    """An ``nn.Linear`` with named low-rank adapters (see the module docstring)."""

    def __init__(self, base: nn.Linear) -> None:
        super().__init__(base.in_features, base.out_features, bias=base.bias is not None, device="meta")
        self.weight = base.weight
        self.bias = base.bias
        self.lora_A = nn.ParameterDict()  # name -> (r, in)
        self.lora_B = nn.ParameterDict()  # name -> (out, r)
        self.lora_bias = nn.ParameterDict()  # name -> (out,), optional
        self.lora_scale: dict[str, float] = {}
        self.lora_dropout: dict[str, float] = {}
        self.active: list[str] = []
        self.merged: tuple[str, ...] = ()
        self._backup: torch.Tensor | None = None  # the weight before merging (CPU)
        self._backup_bias: torch.Tensor | None = None

    def add(
        self,
        name: str,
        a: torch.Tensor,
        b: torch.Tensor,
        *,
        scale: float = 1.0,
        bias: torch.Tensor | None = None,
        dropout: float = 0.0,
        trainable: bool = False,
    ) -> None:
        """Add adapter ``name`` with ``A (r, in)``, ``B (out, r)`` (and an optional bias delta)."""
        if name in self.lora_A:
            raise ValueError(f"adapter {name!r} already exists; remove it first or pick another name")
        r = a.shape[0]
        if a.shape != (r, self.in_features) or b.shape != (self.out_features, r):
            raise CheckpointError(
                f"LoRA shapes A {tuple(a.shape)} and B {tuple(b.shape)} do not fit a Linear "
                f"{self.in_features}->{self.out_features} (expected A (r, {self.in_features}), B ({self.out_features}, r))"
            )
        self.unmerge()
        self.lora_A[name] = nn.Parameter(a, requires_grad=trainable)
        self.lora_B[name] = nn.Parameter(b, requires_grad=trainable)
        if bias is not None:
            self.lora_bias[name] = nn.Parameter(bias, requires_grad=trainable)
        self.lora_scale[name] = float(scale)
        self.lora_dropout[name] = float(dropout)
        self.active.append(name)

    def remove(self, name: str) -> None:
        self.unmerge()
        for table in (self.lora_A, self.lora_B, self.lora_bias):
            if name in table:
                del table[name]
        self.lora_scale.pop(name, None)
        self.lora_dropout.pop(name, None)
        if name in self.active:
            self.active.remove(name)

    def delta(self, name: str) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``scale * B @ A`` (out, in) and the scaled bias delta, in fp32."""
        s = self.lora_scale[name]
        w = s * (self.lora_B[name].float() @ self.lora_A[name].float())
        b = s * self.lora_bias[name].float() if name in self.lora_bias else None
        return w, b

    @torch.no_grad()
    def merge(self) -> None:
        """Fold every active adapter into ``weight`` (and ``bias``); forward then skips them."""
        if self.merged == tuple(self.active) or not self.active:
            return
        self.unmerge()
        self._backup = self.weight.detach().to("cpu", copy=True)
        w = self.weight.float()
        bias = self.bias.float() if self.bias is not None else None
        for name in self.active:
            dw, db = self.delta(name)
            w = w + dw.to(w.device)
            if db is not None:
                if bias is None:
                    raise ValueError(f"adapter {name!r} has a bias delta but the layer has no bias")
                bias = bias + db.to(bias.device)
        if self.bias is not None and bias is not None and self.lora_bias:
            self._backup_bias = self.bias.detach().to("cpu", copy=True)
            self.bias.copy_(bias.to(self.bias.dtype))
        self.weight.copy_(w.to(self.weight.dtype))
        self.merged = tuple(self.active)

    @torch.no_grad()
    def unmerge(self) -> None:
        """Restore the exact weights from before :meth:`merge`."""
        if not self.merged:
            return
        assert self._backup is not None
        self.weight.copy_(self._backup.to(self.weight.device))
        if self._backup_bias is not None and self.bias is not None:
            self.bias.copy_(self._backup_bias.to(self.bias.device))
        self._backup = self._backup_bias = None
        self.merged = ()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.linear(x, self.weight, self.bias)
        for name in self.active:
            if name in self.merged:
                continue
            h = x
            p = self.lora_dropout[name]
            if p > 0 and self.training:
                h = F.dropout(h, p)
            a, b = self.lora_A[name], self.lora_B[name]
            lora = F.linear(F.linear(h, a.to(x.dtype)), b.to(x.dtype))  # (..., out)
            out = out + self.lora_scale[name] * lora.to(out.dtype)
            if name in self.lora_bias:
                out = out + self.lora_scale[name] * self.lora_bias[name].to(out.dtype)
        return out

    def extra_repr(self) -> str:
        ranks = {n: self.lora_A[n].shape[0] for n in self.lora_A}
        return f"{super().extra_repr()}, adapters={ranks}, merged={list(self.merged)}"


# ---------------------------------------------------------------- attaching adapters


def _linear_names(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]


def match_targets(model: nn.Module, targets: Sequence[str]) -> list[str]:
    """Names of the Linear modules of ``model`` that match any ``fnmatch`` glob of ``targets``."""
    linears = _linear_names(model)
    found = [n for n in linears if any(fnmatch.fnmatchcase(n, t) for t in targets)]
    if not found:
        raise ValueError(
            f"LoRA targets {list(targets)} match no Linear layer of {type(model).__name__}; "
            f"module names look like {', '.join(linears[:4])} (globs such as 'blocks.*.self_attn.q')"
        )
    return found


def lora_layer(model: nn.Module, name: str) -> LoRALinear:
    """The :class:`LoRALinear` at module ``name``, replacing a plain ``nn.Linear`` there on first use."""
    parent_name, _, child = name.rpartition(".")
    try:
        parent = model.get_submodule(parent_name) if parent_name else model
        module = getattr(parent, child)
    except AttributeError:
        raise CheckpointError(f"{type(model).__name__} has no module {name!r} to put a LoRA on") from None
    if isinstance(module, LoRALinear):
        return module
    if not isinstance(module, nn.Linear):
        raise CheckpointError(
            f"LoRA on {name!r} is not supported: it is a {type(module).__name__}, LoRA adapts Linear layers only"
        )
    layer = LoRALinear(module)
    setattr(parent, child, layer)
    return layer


def lora_layers(model: nn.Module) -> dict[str, LoRALinear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, LoRALinear)}


def add_trainable_lora(
    model: nn.Module,
    targets: Sequence[str],
    *,
    rank: int,
    alpha: float | None = None,
    dropout: float = 0.0,
    name: str = "default",
    seed: int = 0,
) -> list[str]:
    """Attach a trainable adapter to every Linear matching ``targets``: A like nn.Linear's init
    (Kaiming-uniform, from a generator seeded with ``seed``), B zero, so training starts at the base model."""
    modules = match_targets(model, targets)
    gen = torch.Generator().manual_seed(seed)
    scale = (alpha if alpha is not None else rank) / rank
    for module_name in modules:
        layer = lora_layer(model, module_name)
        a = torch.empty(rank, layer.in_features)
        nn.init.kaiming_uniform_(a, a=math.sqrt(5), generator=gen)
        device = layer.weight.device
        b = torch.zeros(layer.out_features, rank, device=device)
        layer.add(name, a.to(device), b, scale=scale, dropout=dropout, trainable=True)
    return modules


def set_adapter_scale(model: nn.Module, name: str, scale: float, *, base_scales: Mapping[str, float]) -> None:
    """Set adapter ``name``'s user weight: each layer's scale becomes ``base_scales[layer] * scale``."""
    for layer_name, layer in lora_layers(model).items():
        if name in layer.lora_A:
            was_merged = bool(layer.merged)
            layer.unmerge()
            layer.lora_scale[name] = base_scales[layer_name] * scale
            if was_merged:
                layer.merge()


def remove_adapter(model: nn.Module, name: str) -> None:
    for layer in lora_layers(model).values():
        layer.remove(name)


def merge_adapters(model: nn.Module) -> None:
    for layer in lora_layers(model).values():
        layer.merge()


def unmerge_adapters(model: nn.Module) -> None:
    for layer in lora_layers(model).values():
        layer.unmerge()


# ---------------------------------------------------------------- files


@dataclass
class LoRAWeights:
    """One module's adapter as read from a file, in our module naming."""

    a: torch.Tensor  # (r, in)
    b: torch.Tensor  # (out, r)
    scale: float = 1.0  # alpha / r from the file (not the user's weight)
    bias: torch.Tensor | None = None  # (out,) bias delta (diffusers lora_B.bias, upstream diff_b)


def _strip_suffix(key: str) -> tuple[str, str] | None:
    """``(module, kind)`` of a LoRA tensor name, kind in A, B, bias, alpha, diff; None when not LoRA."""
    table = (
        (".lora_A.weight", "A"),
        (".lora_down.weight", "A"),
        (".lora_B.weight", "B"),
        (".lora_up.weight", "B"),
        (".lora_B.bias", "bias"),
        (".diff_b", "bias"),
        (".alpha", "alpha"),
        (".diff", "diff"),
    )
    for suffix, kind in table:
        if key.endswith(suffix):
            return key[: -len(suffix)], kind
    return None


_PREFIXES = (
    ("transformer_2.", "transformer_2", "diffusers"),
    ("transformer.", "transformer", "diffusers"),
    ("base_model.model.", "transformer", "diffusers"),
    ("diffusion_model.", "transformer", "original"),
)


def read_lora_file(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Tensors and the parsed ``lora_adapter_metadata`` of a LoRA safetensors file (or a folder holding one)."""
    from safetensors import safe_open

    path = Path(path).expanduser()
    if path.is_dir():
        files = [path / WEIGHT_NAME] if (path / WEIGHT_NAME).is_file() else sorted(path.glob("*.safetensors"))
        if len(files) != 1:
            raise ValueError(
                f"LoRA folder {str(path)!r} holds {len(files)} .safetensors files; expected {WEIGHT_NAME} "
                f"or exactly one file: pass the file itself"
            )
        path = files[0]
    if not path.is_file():
        raise ValueError(
            f"LoRA file {str(path)!r} does not exist; pass a .safetensors file or a folder with {WEIGHT_NAME}"
        )
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            tensors = {k: f.get_tensor(k) for k in f.keys()}
            raw_meta = f.metadata() or {}
    except Exception as exc:
        raise CheckpointError(f"{path}: not a readable safetensors LoRA file ({exc})") from None
    meta: dict[str, Any] = {}
    if METADATA_KEY in raw_meta:
        try:
            meta = json.loads(raw_meta[METADATA_KEY])
        except ValueError:
            raise CheckpointError(f"{path}: {METADATA_KEY} is not valid JSON") from None
    return tensors, meta


def _pattern_value(patterns: Mapping[str, Any], module: str, default: Any) -> Any:
    """peft's ``rank_pattern`` / ``alpha_pattern`` lookup: a key matches a module-name suffix (regex)."""
    for key, value in patterns.items():
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return default


def _peft_scale(meta: Mapping[str, Any], module: str, rank: int) -> float | None:
    """alpha / r from a peft LoraConfig dict (None when it does not give lora_alpha)."""
    if "lora_alpha" not in meta:
        return None
    alpha = float(_pattern_value(meta.get("alpha_pattern") or {}, module, meta["lora_alpha"]))
    r = int(_pattern_value(meta.get("rank_pattern") or {}, module, meta.get("r", rank)))
    if r != rank:
        raise CheckpointError(f"LoRA metadata says rank {r} for {module!r} but its tensors have rank {rank}")
    return alpha / math.sqrt(r) if meta.get("use_rslora") else alpha / r


def parse_lora(
    tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, Any], family: type[ModelFamily]
) -> dict[str, dict[str, LoRAWeights]]:
    """``{component: {our module name: LoRAWeights}}`` from a LoRA file's tensors, any supported format."""
    groups: dict[tuple[str, str, str], dict[str, torch.Tensor]] = {}
    ignored: list[str] = []
    for key, tensor in tensors.items():
        component, naming, rest = "transformer", "", key
        for prefix, comp, kind in _PREFIXES:
            if key.startswith(prefix):
                component, naming, rest = comp, kind, key[len(prefix) :]
                break
        parsed = _strip_suffix(rest)
        if parsed is None:
            raise CheckpointError(
                f"LoRA tensor {key!r} is not a LoRA weight (expected names ending in .lora_A.weight / "
                f".lora_B.weight, or .lora_down/.lora_up/.alpha); unsupported LoRA format"
            )
        module, kind = parsed
        if key.startswith(("lora_unet_", "lora_te")):
            raise CheckpointError(
                f"LoRA tensor {key!r} is in the kohya/musubi naming, which is not supported; convert it to "
                "the diffusers format (diffusers' WanPipeline.lora_state_dict does) first"
            )
        if kind == "diff" and "norm" in module.rsplit(".", 1)[-1]:
            ignored.append(key)  # norm deltas in upstream files are zeros (diffusers drops them too)
            continue
        groups.setdefault((component, naming, module), {})[kind] = tensor
    by_comp: dict[str, dict[str, LoRAWeights]] = {}
    for component in sorted({c for c, _, _ in groups}):
        entries = {(n, m): v for (c, n, m), v in groups.items() if c == component}
        meta = {k[len(component) + 1 :]: v for k, v in metadata.items() if k.startswith(component + ".")}
        by_comp[component] = _to_ours(entries, meta, family)
    return by_comp


def _map_names(entries: Iterable[tuple[str, str]], family: type[ModelFamily]) -> dict[tuple[str, str], str]:
    """Our module name for each ``(naming, module)``; naming "" tries diffusers', then the original."""
    out: dict[tuple[str, str], str] = {}
    pending = list(entries)
    diff = [m for n, m in pending if n in ("diffusers", "")]
    if diff:
        try:
            mapped = family.from_diffusers_names([m + ".weight" for m in diff])
        except CheckpointError:
            mapped = {}
            for m in diff:  # map what can be mapped; the rest may be in the original naming
                try:
                    mapped.update(family.from_diffusers_names([m + ".weight"]))
                except CheckpointError:
                    pass
        for n, m in pending:
            if n in ("diffusers", "") and m + ".weight" in mapped:
                out[(n, m)] = mapped[m + ".weight"].removesuffix(".weight")
    rest = [m for (n, m) in pending if (n, m) not in out and n in ("original", "")]
    if rest:
        original = family.from_original_names(rest)
        for n, m in pending:
            if (n, m) not in out and m in original:
                out[(n, m)] = original[m]
    unknown = [m for key in pending if key not in out for m in [key[1]]]
    if unknown:
        raise CheckpointError(
            f"{len(unknown)} LoRA module name(s) match no module of the {family.name} DiT: "
            f"{', '.join(unknown[:5])}{' ...' if len(unknown) > 5 else ''} (is this LoRA for another model?)"
        )
    return out


def _to_ours(
    entries: Mapping[tuple[str, str], Mapping[str, torch.Tensor]],
    meta: Mapping[str, Any],
    family: type[ModelFamily],
) -> dict[str, LoRAWeights]:
    names = _map_names(entries, family)
    out: dict[str, LoRAWeights] = {}
    for key, parts in entries.items():
        module = key[1]
        if "diff" in parts:
            raise CheckpointError(
                f"LoRA entry {module!r} holds a full weight delta (.diff), which is not supported"
            )
        if "A" not in parts or "B" not in parts:
            if set(parts) == {"bias"}:
                raise CheckpointError(f"LoRA entry {module!r} has only a bias delta, which is not supported")
            missing = "lora_A/lora_down" if "A" not in parts else "lora_B/lora_up"
            raise CheckpointError(f"LoRA entry {module!r} has no {missing} weight")
        a, b = parts["A"].float(), parts["B"].float()
        rank = a.shape[0]
        if a.ndim != 2 or b.ndim != 2 or b.shape[1] != rank:
            raise CheckpointError(
                f"LoRA entry {module!r}: A {tuple(a.shape)} and B {tuple(b.shape)} are not (r, in) and (out, r)"
            )
        scale = 1.0
        if "alpha" in parts:
            scale = float(parts["alpha"]) / rank
        else:
            peft = _peft_scale(meta, module, rank)
            scale = peft if peft is not None else 1.0
        bias = parts["bias"].float() if "bias" in parts else None
        ours = names[key]
        if ours in out:
            raise CheckpointError(f"LoRA file has two entries for module {ours!r}")
        out[ours] = LoRAWeights(a=a, b=b, scale=scale, bias=bias)
    return out


def attach_lora(
    model: nn.Module,
    weights: Mapping[str, LoRAWeights],
    *,
    name: str,
    scale: float = 1.0,
    dtype: torch.dtype | None = None,
) -> dict[str, float]:
    """Add adapter ``name`` from parsed ``weights`` to ``model`` (frozen). Returns each layer's file
    scale (alpha / r), which :func:`set_adapter_scale` multiplies by the user's weight."""
    base: dict[str, float] = {}
    for module, w in weights.items():
        layer = lora_layer(model, module)
        device = layer.weight.device
        dt = dtype if dtype is not None else layer.weight.dtype
        bias = w.bias.to(device, dt) if w.bias is not None else None
        layer.add(name, w.a.to(device, dt), w.b.to(device, dt), scale=w.scale * scale, bias=bias)
        base[module] = w.scale
    return base


def lora_tensors(model: nn.Module, name: str = "default") -> dict[str, LoRAWeights]:
    """Adapter ``name`` of every layer, in our module naming (full tensors, fp32, CPU)."""
    out = {}
    for module, layer in lora_layers(model).items():
        if name in layer.lora_A:
            bias = layer.lora_bias[name].detach().float().cpu() if name in layer.lora_bias else None
            out[module] = LoRAWeights(
                a=_full(layer.lora_A[name]),
                b=_full(layer.lora_B[name]),
                scale=layer.lora_scale[name],
                bias=bias,
            )
    return out


def _full(t: torch.Tensor) -> torch.Tensor:
    """A plain CPU fp32 copy (gathers a DTensor shard first)."""
    full = getattr(t, "full_tensor", None)
    t = full() if callable(full) else t
    return t.detach().float().cpu().clone()


def save_lora_file(
    weights: Mapping[str, LoRAWeights],
    family: type[ModelFamily],
    path: str | Path,
    *,
    component: str = "transformer",
) -> Path:
    """Write ``weights`` (our names) in diffusers' format: ``<component>.<diffusers module>.lora_A.weight``
    / ``lora_B.weight`` with the scale folded into B, plus peft metadata (``lora_alpha == r``)."""
    from safetensors.torch import save_file

    path = Path(path)
    if path.suffix != ".safetensors":
        path = path / WEIGHT_NAME
    names = family.to_diffusers_names([m + ".weight" for m in weights])
    tensors: dict[str, torch.Tensor] = {}
    ranks = set()
    targets = []
    for module, w in weights.items():
        theirs = names[module + ".weight"].removesuffix(".weight")
        targets.append(theirs)
        ranks.add(w.a.shape[0])
        tensors[f"{component}.{theirs}.lora_A.weight"] = w.a.contiguous()
        tensors[f"{component}.{theirs}.lora_B.weight"] = (w.b * w.scale).contiguous()
        if w.bias is not None:
            tensors[f"{component}.{theirs}.lora_B.bias"] = (w.bias * w.scale).contiguous()
    if len(ranks) != 1:
        raise ValueError(f"all adapters of one file must share a rank, got ranks {sorted(ranks)}")
    rank = ranks.pop()
    config = {
        "r": rank,
        "lora_alpha": rank,  # the scale is folded into B
        "target_modules": sorted(targets),
        "lora_dropout": 0.0,
        "lora_bias": any(w.bias is not None for w in weights.values()),
    }
    meta = {
        "format": "pt",
        METADATA_KEY: json.dumps({f"{component}.{k}": v for k, v in config.items()}, sort_keys=True),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(tensors, str(tmp), metadata=meta)
    os.chmod(tmp, 0o644)
    tmp.replace(path)
    return path
