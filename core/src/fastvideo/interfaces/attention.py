"""Base class of attention backends.

A complete tiny backend plugin::

    # my_attn/backend.py
    import torch.nn.functional as F
    from fastvideo.interfaces import AttentionBackend

    class MathAttention(AttentionBackend):
        name = "math"
        priority = -10                  # never chosen automatically over sdpa

        def forward(self, q, k, v, *, attn_mask=None, scale=None, is_causal=False, step=None):
            q, k, v = (t.transpose(1, 2) for t in (q, k, v))           # [B, H, L, D]
            out = F.scaled_dot_product_attention(q, k, v, attn_mask, scale=scale, is_causal=is_causal)
            return out.transpose(1, 2)                                  # [B, L, H, D]

    # my_attn/plugin.py
    from fastvideo import hookimpl
    FASTVIDEO_PLUGIN_API = 1

    @hookimpl
    def fv_register_attention_backends():
        from my_attn.backend import MathAttention
        return [MathAttention]

A backend that needs settings declares them as :class:`BackendOption` s (``options``); one that needs
learned parameters in the model declares them as :class:`LayerModule` s (``layer_modules``). Core
carries both without knowing what they mean (see :class:`AttentionBackend`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    import torch
    from torch import nn

    from fastvideo.attention.context import StepContext

_TYPES = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
_TRUE, _FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0")


def _parse(text: str, tp: type) -> Any:
    """A command-line or config string as ``tp`` (bool, int or float); ``text`` itself if it is not one."""
    word = text.strip().lower()
    if tp is bool:
        return True if word in _TRUE else False if word in _FALSE else text
    try:
        return tp(word)
    except ValueError:
        return text


@dataclass(frozen=True, kw_only=True)
class BackendOption:
    """One setting of an attention backend (``vsa``'s ``sparsity``, a window size, ...).

    Core adds ``cli_flags`` to ``fv generate``, accepts the option in the Python API
    (``backend_options={"<backend>": {"<name>": value}}``) and in ``fv train``'s ``attention:``
    section, checks values with :meth:`check`, and hands them to the backend through the step
    context (:meth:`fastvideo.attention.StepContext.backend_options`).

    :param name: lower_snake name, unique within the backend.
    :param type: ``float``, ``int``, ``bool`` or ``str``; an int is accepted for a float. Structured
        values (per-layer window sizes) are a ``str`` that ``validate`` and
        :meth:`AttentionBackend.option_values` parse (``"3,3,3"``): one flag, one config key.
    :param default: the value when none is given.
    :param help: one line for ``--help``.
    :param cli_flags: ``fv generate`` flags (``("--vsa-sparsity", "--sparsity")``); empty: API and
        config only.
    :param validate: ``value -> None`` when valid, else what is wrong (``"must be in [0, 1)"``).
    :param training_only: a parameter of a training schedule (a ramp's length): accepted in ``fv
        train``'s config only, and read by :meth:`AttentionBackend.option_values`, never by ``forward``.
    """

    name: str
    type: type
    default: Any
    help: str = ""
    cli_flags: tuple[str, ...] = ()
    validate: Callable[[Any], str | None] | None = None
    training_only: bool = False

    def describe(self, backend: str) -> str:
        """How errors name the option: ``vsa option 'sparsity' (--vsa-sparsity)``."""
        flag = f" ({self.cli_flags[0]})" if self.cli_flags else ""
        return f"{backend} option {self.name!r}{flag}"

    def check(self, value: Any, backend: str, *, label: str | None = None) -> Any:
        """``value`` as :attr:`type` (strings from a command line or a config are parsed).

        :param label: how the error names the option (default: :meth:`describe`).
        :raises ValueError: one line naming the option, its flag, what it accepts and what it got.
        """
        what = label or self.describe(backend)
        expected = _TYPES.get(self.type, self.type.__name__)
        out = value
        if isinstance(value, str) and self.type is not str:
            out = _parse(value, self.type)
        elif self.type is float and isinstance(out, int) and not isinstance(out, bool):
            out = float(out)
        if not isinstance(out, self.type) or (self.type is not bool and isinstance(out, bool)):
            raise ValueError(f"{what} must be {expected}, got {value!r}")
        problem = self.validate(out) if self.validate is not None else None
        if problem:
            raise ValueError(f"{what} {problem}, got {value!r}")
        return out


@dataclass(frozen=True, kw_only=True)
class LayerModule:
    """A learned module that a backend adds to each sparse attention layer of a model.

    A model lists its sparse attention layers in a ``sparse_attention_layers`` class attribute (globs
    over module names, e.g. ``("blocks.*.self_attn",)``). When the backend is selected, or a
    checkpoint holds the module, core attaches ``build(layer)`` to each such layer as attribute
    ``name`` (our parameter names: ``blocks.3.self_attn.<name>.weight``). Parameters a checkpoint
    lacks start at zero, so a module must leave attention as it was at zero (VSA's gate does).

    :param name: attribute name on the layer (``"gate_compress"``).
    :param build: ``layer -> nn.Module``, called with torch imported (on the ``meta`` device while
        a checkpoint loads).
    :param checkpoint_names: how checkpoints in the model's own format (diffusers) name the module,
        relative to the layer: ``{layer}`` is their name of the layer, ``{parent}`` that of the
        module holding it (``"{parent}.to_gate_compress"``). The first is written on export, the
        others are accepted when reading.
    """

    name: str
    build: Callable[[nn.Module], nn.Module]
    checkpoint_names: tuple[str, ...] = ()


class AttentionBackend(ABC):
    """One way of computing ``softmax(q k^T * scale) v`` on ``[B, L, H, D]`` tensors.

    Class attributes:
        name: registered lower-kebab name (``"sdpa"``, ``"flash-attn"``, ``"vsa"``).
        priority: higher wins when no backend is requested; ``sdpa`` has 0.
        sparse: True for backends that approximate attention (they run only in layers whose
            allow-list admits sparse backends, e.g. video self-attention, never cross-attention).
        requires: the pip requirement that provides what the backend needs, named in errors.
        options: the backend's settings (:class:`BackendOption`). Their values arrive in the step
            context, already checked and completed with defaults: ``step.backend_options(self.name)``
            (or :meth:`option`). Example: ``vsa`` declares ``sparsity`` (``--vsa-sparsity``) and the
            training ramp ``sparsity_ramp_steps`` / ``sparsity_increment``, turned into the
            sparsity of each training step by :meth:`option_values`.
        layer_modules: learned per-layer modules (:class:`LayerModule`) the backend needs, e.g.
            ``vsa``'s gate projection. In a layer that holds them, the dispatcher calls
            :meth:`layer_inputs` with the layer and its input hidden states, and passes what it
            returns to ``forward`` as keyword arguments (per-token tensors laid out like ``q``; a
            sequence-parallel run moves them with ``q``). Other backends never see them.

    Declarations are class attributes and must not import torch: ``fv --help`` reads them.
    """

    name: ClassVar[str]
    priority: ClassVar[int] = 0
    sparse: ClassVar[bool] = False
    requires: ClassVar[str | None] = None
    options: ClassVar[tuple[BackendOption, ...]] = ()
    layer_modules: ClassVar[tuple[LayerModule, ...]] = ()

    @classmethod
    def option_values(
        cls, options: Mapping[str, Any], *, step: int | None = None, total: int | None = None
    ) -> dict[str, Any]:
        """The option values ``forward`` reads, from checked ``options`` (missing ones: defaults).

        ``step`` (optimizer steps done, from 0) and ``total`` are given during training, so that a
        backend can turn schedule options into the value of that step (``vsa``: its sparsity ramp).
        The default ignores them and leaves out ``training_only`` options.
        """
        return {o.name: options.get(o.name, o.default) for o in cls.options if not o.training_only}

    def option(self, step: StepContext | None, name: str) -> Any:
        """Option ``name`` of this backend in the step context ``step`` (its default without one)."""
        values = step.backend_options(self.name) if step is not None else {}
        if name in values:
            return values[name]
        for o in self.options:
            if o.name == name:
                return o.default
        raise KeyError(f"{self.name} declares no option {name!r}")

    def layer_inputs(self, layer: nn.Module, hidden: torch.Tensor, q: torch.Tensor) -> dict[str, Any]:
        """Extra ``forward`` arguments computed by this backend's :attr:`layer_modules` of ``layer``.

        :param hidden: the layer's input hidden states ``[B, L, D]`` (its first forward argument),
            whose tokens are those of ``q`` ``[B, L, H, D]``.
        :returns: keyword arguments for ``forward``; tensors must be laid out like ``q`` (``[B, L,
            H, *]``), as sequence parallelism moves them with it. The default returns nothing.
        """
        return {}

    @classmethod
    def is_available(cls) -> bool:
        """Whether the backend can run in this environment (packages, devices)."""
        return cls.unavailable_reason() is None

    @classmethod
    def unavailable_reason(cls) -> str | None:
        """Why the backend cannot run here (``None`` when it can). Shown by ``fv doctor``."""
        return None

    @classmethod
    def doctor_notes(cls) -> list[str]:
        """Extra lines ``fv doctor`` prints under the backend (which kernel path runs and why, e.g.
        whether an optional compiled kernel was built). Must not fail; the default has none."""
        return []

    def supports(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, **kwargs: Any) -> str | None:
        """Why this backend cannot take these inputs (dtype, head dim, mask...), or ``None``.

        The dispatcher falls back to the best dense backend when this returns a reason.
        """
        return None

    @abstractmethod
    def forward(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        *,
        attn_mask: torch.Tensor | None = None,
        scale: float | None = None,
        is_causal: bool = False,
        step: StepContext | None = None,
    ) -> torch.Tensor:
        """Attention on ``[B, L, H, D]`` inputs, returning ``[B, Lq, H, Dv]``.

        ``attn_mask`` is boolean (True = attend) or additive, broadcastable to ``[B, H, Lq, Lk]``.
        ``step`` is the current denoising step's context, for backends that need the latent grid
        or their options. A backend with :attr:`layer_modules` also takes the keyword arguments its
        :meth:`layer_inputs` returns (each with a default: layers without the modules pass none).
        """
