"""Sequence parallelism: a DiT's blocks run on token shards, attention gathers what it needs.

A model opts in by declaring a :class:`~fastvideo.parallel.plan.SequenceParallelPlan` as a class
attribute (plain data, no distributed code)::

    sequence_parallel_plan = SequenceParallelPlan(
        blocks="blocks",                                # ModuleList attribute(s) holding the blocks, in call order
        shard={"x": 1, "temb6": 1, "cos": 0, "sin": 0},  # block forward argument names -> token dim
        output=1,                                       # token dim of the last block's output (or {index: dim})
    )

The names are looked up in each block's ``forward`` signature when the plan is applied (a name the
block does not take is an error), and arguments are found by name whether passed by position or
by keyword.

Forward hooks then, from outside the model:

* before each block, cut every token argument that is still whole (its token dim equals the full
  token count ``L``) into ``P`` shards, after zero-padding ``L`` to a multiple of ``P`` (so any
  token count works); an argument with another size there (one timestep for all tokens, or the
  hidden states already sharded by the previous block) passes through;
* after the last block, all-gather the output and drop the padding.

Activation checkpointing recomputes a block in the backward pass, after the forward's hooks have
ended: :func:`recompute_contexts` (the checkpoint's ``context_fn``) reinstates, for the recompute,
the sharding that was live when the block first ran (its handler and token count), and the hooks
then leave the output sharded (the recomputed output is discarded; no all-gather runs twice).

Inside the blocks, layers call ``fastvideo.attention.attention(..., sequence_parallel=True)`` for
attention among the sharded tokens (video self-attention). This module's handler then runs

* **Ulysses** (``sp_size``): one all-to-all turns token shards of all heads into all tokens of
  ``H / sp_size`` heads, the selected backend attends (any backend: ``sdpa``, ``vsa``, ...; padding
  is cut off first), and a second all-to-all turns the result back. The heads go in groups
  (:func:`head_groups`) whose exchanges run while the previous group attends. For inference on the
  GPUs of one host the exchanges are copy-engine copies through peer memory
  (:mod:`fastvideo.parallel.peer`), elsewhere NCCL's all-to-all;
* **ring** (``ring_size``): keys/values travel around the ring, partial results merge by
  log-sum-exp (:mod:`fastvideo.parallel.ring`); works for any head count;
* **USP** (both): Ulysses inside groups of ``sp_size`` ranks, ring across them.

Layers that attend from the sharded tokens to replicated ones (cross-attention to text) call
``attention`` without ``sequence_parallel``: queries stay local, keys and values are whole, no
communication. Joint-attention models pass their text tokens as ``replicated=(q, k, v)``.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Collection, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import torch

from fastvideo.attention import selector
from fastvideo.parallel import comm
from fastvideo.parallel.peer import PeerExchange, exchange_mode, pack_groups, peer_exchange
from fastvideo.parallel.plan import SequenceParallelPlan, as_plan
from fastvideo.parallel.ring import ring_attention

if TYPE_CHECKING:
    from torch import nn

    from fastvideo.parallel.state import ParallelState

Replicated = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def read_plan(model: nn.Module) -> SequenceParallelPlan:
    """The model's ``sequence_parallel_plan``, checked against its blocks' ``forward`` signatures."""
    name = type(model).__name__
    plan = as_plan(getattr(model, "sequence_parallel_plan", None), name)
    lists = [getattr(model, b, None) for b in plan.blocks]
    if not all(lists) or not all(len(x) for x in lists):  # type: ignore[arg-type]
        raise ValueError(
            f"{name}.sequence_parallel_plan names blocks {plan.blocks}, but {name} has no such non-empty lists"
        )
    for blocks in lists:
        for block in blocks:  # type: ignore[union-attr]
            plan.resolve(block, name)
    return plan


class SequenceSharding:
    """The hooks of one model, and the attention handler while its blocks run.

    Apply with :meth:`apply`; the model keeps working in one process after :meth:`remove`.
    """

    def __init__(
        self,
        model: nn.Module,
        state: ParallelState,
        head_groups: HeadGroups | None = None,
        exchange: str | None = None,
    ) -> None:
        self.state = state
        self.head_groups = head_groups  # Ulysses head groups (see head_groups()); None: the default
        # Ulysses exchange: auto, nccl or peer (fastvideo.parallel.peer)
        self.exchange = exchange_mode(exchange)
        self._peer: PeerExchange | None = None  # this forward's peer exchange, when it uses one
        self.last_exchange = ""  # "peer" or "nccl": what the last forward's Ulysses exchanges used
        self.plan = read_plan(model)
        self.model_name = type(model).__name__
        self.length = 0  # full token count of the forward running now
        self.padded = 0
        self._cache: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # id(whole) -> (whole, shard)
        self._handles: list[Any] = []
        self._replaying = False  # inside an activation-checkpoint recompute (see recompute_contexts)
        self._check_heads(model)

    def _check_heads(self, model: nn.Module) -> None:
        heads = getattr(getattr(model, "config", None), "num_attention_heads", None)
        u = self.state.ulysses_size
        if isinstance(heads, int) and heads % u:
            raise ValueError(head_message(self.model_name, heads, self.state))

    # ---- hooks -----------------------------------------------------------------------------

    def apply(self, model: nn.Module) -> None:
        blocks = [b for name in self.plan.blocks for b in getattr(model, name)]
        for block in blocks:
            self._handles.append(block.register_forward_pre_hook(self._shard_inputs, with_kwargs=True))
        begin = blocks[0].register_forward_pre_hook(self._begin, prepend=True, with_kwargs=True)
        self._handles.insert(0, begin)
        self._handles.append(blocks[-1].register_forward_hook(self._gather_output))
        self._handles.append(model.register_forward_hook(self._end, always_call=True))
        model._fv_sequence_sharding = self  # type: ignore[assignment]

    def remove(self, model: nn.Module) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        if getattr(model, "_fv_sequence_sharding", None) is self:
            del model._fv_sequence_sharding

    @contextlib.contextmanager
    def replay(self, length: int, padded: int) -> Iterator[None]:
        """This sharding as a forward over ``length`` tokens (``padded``) left it, for a recompute."""
        saved = (selector.sequence_parallel_handler(), self.length, self.padded, self._peer, self._replaying)
        self.length, self.padded, self._peer, self._replaying = length, padded, None, True
        selector.set_sequence_parallel(self.attend)
        try:
            yield
        finally:
            handler, self.length, self.padded, self._peer, self._replaying = saved
            selector.set_sequence_parallel(handler)

    @torch.compiler.disable  # runs eagerly inside regionally compiled blocks
    def _begin(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        if self._replaying:  # the recompute of the first block: replay() set the forward's state
            return
        first = self.plan.first
        x = self._argument(module, args, kwargs, first)
        if not isinstance(x, torch.Tensor):
            raise ValueError(
                f"{self.model_name}: {type(module).__name__}.forward got no tensor for {first!r}, the first "
                "argument of sequence_parallel_plan.shard (it defines the token count)"
            )
        dim = self.plan.shard[first]
        self.length = x.shape[dim]
        p = self.state.sp_size
        if self.length < p:
            raise ValueError(
                f"{self.model_name}: {self.length} tokens cannot be split over {p} sequence-parallel ranks; "
                f"use a larger video or fewer ranks (sp_size x ring_size)"
            )
        self.padded = comm.padded_length(self.length, p)
        self._cache.clear()
        self._peer = self._pick_exchange(module, x)
        self.last_exchange = "peer" if self._peer is not None else "nccl"
        selector.set_sequence_parallel(self.attend)

    def _pick_exchange(self, block: nn.Module, x: torch.Tensor) -> PeerExchange | None:
        """The peer exchange when this forward's plain Ulysses attention can use it (CUDA, one host,
        no autograd), else ``None`` (NCCL all-to-all). ``exchange="peer"`` insists: it raises
        where peer copies cannot run. USP (ring_size > 1) and joint attention (replicated tokens)
        always take NCCL's all-to-all."""
        st = self.state
        if self.exchange == "nccl" or st.ulysses_size == 1 or st.ring_size > 1:
            return None
        training = torch.is_grad_enabled() and (
            x.requires_grad or any(p.requires_grad for p in block.parameters())
        )
        reason = None
        if training:
            reason = "it runs inference only (no autograd); training uses NCCL's all-to-all"
        elif x.device.type != "cuda":
            reason = f"it needs CUDA devices, and this run is on {x.device.type}"
        else:
            assert st.ulysses_group is not None
            exchange = peer_exchange(st.ulysses_group, st.config.timeout_s)
            if exchange is not None:
                return exchange
            reason = "the Ulysses group's GPUs are not all on this host with peer access"
        if self.exchange == "peer":
            raise ValueError(
                f"the peer Ulysses exchange was requested, but {reason}; "
                f"unset FASTVIDEO_ULYSSES_EXCHANGE (or pass exchange='auto') to use NCCL"
            )
        return None

    def _shard(self, t: Any, dim: int) -> Any:
        if not isinstance(t, torch.Tensor) or t.ndim <= dim or t.shape[dim] != self.length:
            return t
        hit = self._cache.get(id(t))
        if hit is not None and hit[0] is t:
            return hit[1]
        out = comm.shard(t, dim, self.state.sp_size, self.state.sp_rank)
        self._cache[id(t)] = (t, out)
        return out

    @torch.compiler.disable  # runs eagerly inside regionally compiled blocks
    def _shard_inputs(
        self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[tuple[Any, ...], dict[str, Any]]:
        args_l = list(args)
        for name, (index, dim) in self.plan.resolve(module, self.model_name).items():
            if index is not None and index < len(args_l):
                args_l[index] = self._shard(args_l[index], dim)
            elif name in kwargs:
                kwargs[name] = self._shard(kwargs[name], dim)
        return tuple(args_l), kwargs

    def _argument(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], name: str) -> Any:
        """The value a block call passes for argument ``name`` (by position or keyword), or None."""
        index, _ = self.plan.resolve(module, self.model_name)[name]
        if index is not None and index < len(args):
            return args[index]
        return kwargs.get(name)

    @torch.compiler.disable  # runs eagerly inside regionally compiled blocks
    def _gather_output(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> Any:
        if self._replaying:  # a recompute's output is discarded: no collective for it
            return output
        selector.set_sequence_parallel(None)
        group = self.state.sp_group
        assert group is not None
        spec = self.plan.output
        if isinstance(output, torch.Tensor):
            return comm.gather_unpad(output, int(spec), self.length, group)  # type: ignore[arg-type]
        out = list(output)
        for index, dim in dict(spec).items():  # type: ignore[arg-type]
            out[index] = comm.gather_unpad(out[index], dim, self.length, group)
        return type(output)(out)

    @torch.compiler.disable  # runs eagerly inside regionally compiled blocks
    def _end(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        selector.set_sequence_parallel(None)
        self._cache.clear()
        self._peer = None

    # ---- attention ---------------------------------------------------------------------------

    def attend(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        *,
        attn_mask: torch.Tensor | None,
        scale: float | None,
        is_causal: bool,
        allow: str | Collection[str],
        replicated: Replicated | None,
        replicated_mask: torch.Tensor | None,
        extras: dict[str, torch.Tensor] | None = None,
    ) -> Any:
        """Attention among all tokens of the sequence-parallel group, from this rank's shards.

        ``extras`` (a backend's per-token tensors from its layer modules, laid out like ``q``)
        travel with q, k, v.
        """
        keys = sorted(extras or {})
        extra = tuple(extras[key] for key in keys) if extras else ()
        if attn_mask is not None or is_causal:
            raise ValueError(
                "sequence-parallel attention takes no attn_mask or is_causal (padding is handled); pass "
                "masks of replicated tokens as replicated_mask"
            )
        st = self.state
        u, r = st.ulysses_size, st.ring_size
        if u > 1:
            if q.shape[2] % u:
                raise ValueError(head_message(self.model_name, q.shape[2], st))
            assert st.ulysses_group is not None
            if r == 1 and replicated is None:
                groups = head_groups(q.shape[2] // u, self.head_groups)

                def local(
                    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *rest: torch.Tensor
                ) -> torch.Tensor:
                    moved = dict(zip(keys, rest, strict=True))
                    return self._local(q, k, v, scale, allow, None, None, moved)[0]

                moving = (q, k, v, *extra)
                if self._peer is not None:
                    return self._peer.ulysses_attention(pack_groups(moving, u, groups), local)
                return comm.ulysses_attention(moving, st.ulysses_group, local, groups)
            q, k, v, *rest = comm.seq_to_heads((q, k, v, *extra), st.ulysses_group)  # (B, Lp/R, H/U, D)
            extra = tuple(rest)
            if replicated is not None:
                replicated = tuple(t.chunk(u, dim=2)[st.ulysses_rank] for t in replicated)  # type: ignore[assignment]
        if r == 1:
            moved = dict(zip(keys, extra, strict=True))
            out, rep_out = self._local(q, k, v, scale, allow, replicated, replicated_mask, moved)
        else:
            self._check_ring(q, k, v, allow)
            block = self.padded // r
            valid = [min(max(self.length - j * block, 0), block) for j in range(r)]
            assert st.ring_group is not None
            out, rep_out = ring_attention(
                q,
                k,
                v,
                group=st.ring_group,
                valid=valid,
                scale=scale,
                replicated=replicated,
                replicated_mask=replicated_mask,
            )
        if u > 1:
            assert st.ulysses_group is not None
            out = comm.heads_to_seq(out, st.ulysses_group)  # (B, Lp/P, H, D)
            if rep_out is not None:
                rep_out = comm.all_gather(rep_out, 2, st.ulysses_group)  # (B, Lt, H, D)
        return out if replicated is None else (out, rep_out)

    def _local(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        scale: float | None,
        allow: str | Collection[str],
        replicated: Replicated | None,
        replicated_mask: torch.Tensor | None,
        extras: dict[str, torch.Tensor],
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Ulysses: every token of a head subset is here; attend without the padding."""
        n, padded = self.length, q.shape[1]
        if padded > n:
            q, k, v = (t[:, :n] for t in (q, k, v))
            extras = {key: t[:, :n] for key, t in extras.items()}
        if replicated is None:
            out = selector.attention_local(q, k, v, scale=scale, allow=allow, extras=extras)
            rep_out = None
        else:
            out, rep_out = selector.joint_local(
                q, k, v, replicated, replicated_mask, scale=scale, allow=allow, extras=extras
            )
        if padded > n:
            out = torch.cat([out, out.new_zeros(out.shape[0], padded - n, *out.shape[2:])], dim=1)
        return out, rep_out

    def _check_ring(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, allow: str | Collection[str]
    ) -> None:
        if torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v)):
            raise NotImplementedError(
                "ring attention runs forward only (inference); train with Ulysses (sp_size) instead of ring_size"
            )
        backend = selector.select_backend(q, k, v, None, allow)
        if backend.sparse:
            raise ValueError(
                f"ring attention computes dense attention, but attention backend {backend.name!r} is sparse; "
                f"use Ulysses (--sp-size) with {backend.name!r}, or a dense backend with --ring-size"
            )


HeadGroups = int | Sequence[int]
#: Ulysses head groups per attention call unless the caller or the environment says otherwise: this
#: many equal groups, the last one then halved (see :func:`head_groups`).
DEFAULT_HEAD_GROUPS = 3


def head_groups(heads: int, wanted: HeadGroups | None = None) -> tuple[int, ...]:
    """How Ulysses splits ``heads`` heads per rank into groups whose exchanges overlap attention
    (:func:`fastvideo.parallel.comm.ulysses_attention`): the group sizes.

    ``wanted``: a number of equal groups (the largest divisor of ``heads`` up to it), or the sizes
    themselves. Default: ``FASTVIDEO_ULYSSES_HEAD_GROUPS`` (``3`` or ``1,4,1``), else
    :data:`DEFAULT_HEAD_GROUPS` equal groups with the last one split in two (6 heads: ``2,2,1,1``).
    Each group's return trip runs under the next group's attention except the last one's, which
    the output waits for, together with whatever the ranks drifted apart during that group; a
    smaller last group shortens both. Measured on Wan 1.3B over 2 H200s with the peer exchange
    (docs/benchmarks.md, paired runs): ``2,2,1,1`` 1.88x-1.96x, median 1.915x, against 1.88x-1.96x,
    median 1.895x for ``2,2,2`` (within the run-to-run spread); one group, 2 groups and 6 groups
    were slower than 3.
    """
    default = False
    if wanted is None:
        raw = os.environ.get("FASTVIDEO_ULYSSES_HEAD_GROUPS", "").strip()
        try:
            parts = [int(p) for p in raw.split(",")] if raw else []
        except ValueError:
            raise ValueError(
                f"FASTVIDEO_ULYSSES_HEAD_GROUPS must be a number of groups or comma-separated group sizes "
                f"(3 or 1,4,1), got {raw!r}; unset it for the default"
            ) from None
        wanted = parts[0] if len(parts) == 1 else parts or None
    if wanted is None:
        wanted, default = DEFAULT_HEAD_GROUPS, True
    if isinstance(wanted, int):
        if wanted < 1:
            raise ValueError(f"the number of Ulysses head groups must be >= 1, got {wanted}")
        n = max(c for c in range(1, min(wanted, heads) + 1) if heads % c == 0)
        g = heads // n
        if default and g > 1:  # the last group halved
            return (g,) * (n - 1) + (g - g // 2, g // 2)
        return (g,) * n
    sizes = tuple(wanted)
    if sum(sizes) != heads or min(sizes, default=0) < 1:
        raise ValueError(
            f"Ulysses head groups {','.join(map(str, sizes))} must be positive and sum to the {heads} heads "
            f"per rank; pass sizes that do, or a number of equal groups"
        )
    return sizes


def head_message(model: str, heads: int, state: ParallelState) -> str:
    u, n = state.ulysses_size, state.world_size // state.cfg_size
    fits = [d for d in range(1, n + 1) if heads % d == 0 and n % d == 0]
    best = max(fits)
    ring = f"--sp-size 1 --ring-size {n} (ring attention)"
    fix = ring if best == 1 else f"--sp-size {best} --ring-size {n // best} (USP) or {ring}"
    return f"{model} has {heads} attention heads, which Ulysses degree sp_size={u} does not divide; use {fix}"


def recompute_contexts() -> tuple[
    contextlib.AbstractContextManager[Any], contextlib.AbstractContextManager[Any]
]:
    """``context_fn`` for activation checkpointing (``torch.utils.checkpoint``): called as a block
    starts its forward, it returns a no-op for the forward and, for the block's recompute in the
    backward pass, the sequence-parallel state live now (:meth:`SequenceSharding.replay`), since the
    forward's hooks have cleared it by then. Outside a sequence-parallel forward: two no-ops."""
    handler = selector.sequence_parallel_handler()
    sharding = getattr(handler, "__self__", None)
    if not isinstance(sharding, SequenceSharding):
        return contextlib.nullcontext(), contextlib.nullcontext()
    return contextlib.nullcontext(), sharding.replay(sharding.length, sharding.padded)
