"""Ulysses exchanges through peer memory on one host, moved by the GPUs' copy engines.

NCCL's all-to-all runs as kernels: while an exchange overlaps attention, NCCL's blocks take SMs
from it. Between GPUs of one host (NVLink / PCIe peer access), the same exchange can be plain
``cudaMemcpyAsync`` calls into the peers' memory, which the copy engines carry out without any SM.
:class:`PeerExchange` does that with PyTorch's symmetric memory: every rank of the Ulysses group
allocates one buffer that all of them map, the send side copies each chunk straight into its peer's
buffer on a separate high-priority stream, and a barrier (a one-thread kernel on that stream) tells
both sides the chunks are in. The compute stream waits on a CUDA event, never on the host.

Inference only (no autograd): :class:`fastvideo.parallel.sequence.SequenceSharding` uses it on CUDA
when nothing requires grad and every rank of the group is on this host, unless
``FASTVIDEO_ULYSSES_EXCHANGE=nccl`` says otherwise (docs/parallel.md).
"""

from __future__ import annotations

import ctypes
import math
import os
import socket
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist

if TYPE_CHECKING:
    from torch.distributed import ProcessGroup

EXCHANGES = ("auto", "nccl", "peer")
_ALIGN = 256  # bytes; every region of the buffer starts on this boundary


def exchange_mode(wanted: str | None = None) -> str:
    """``auto``, ``nccl`` or ``peer``: ``wanted``, else ``FASTVIDEO_ULYSSES_EXCHANGE``, else ``auto``."""
    mode = wanted or os.environ.get("FASTVIDEO_ULYSSES_EXCHANGE", "").strip() or "auto"
    if mode not in EXCHANGES:
        raise ValueError(
            f"Ulysses exchange must be one of {', '.join(EXCHANGES)}, got {mode!r} "
            f"(FASTVIDEO_ULYSSES_EXCHANGE or exchange=); use auto to pick peer copies when they work"
        )
    return mode


class PeerExchange:
    """The peer-memory buffer of one Ulysses group and the stream its copies run on.

    Create it on every rank of ``group`` (it is a collective, like everything that grows the
    buffer); :func:`peer_exchange` keeps one per group.
    """

    def __init__(self, group: ProcessGroup, timeout_s: float = 600.0) -> None:
        from torch.distributed import _symmetric_memory as symm

        self._symm = symm
        self.group = group
        self.rank = dist.get_rank(group)
        self.size = dist.get_world_size(group)
        self.device = torch.device("cuda", torch.cuda.current_device())
        self.stream = torch.cuda.Stream(self.device, priority=-1)  # copies and barriers, high priority
        self.timeout_ms = int(timeout_s * 1000)
        self.capacity = 0
        self._handle: Any = None
        self._buffers: list[torch.Tensor] = []  # [rank]: that rank's buffer, mapped here (uint8)
        self._plans: dict[tuple[Any, ...], _Plan] = {}  # per shape: the buffer layout and its views
        self.memcpy2d = _cuda_memcpy2d()  # one strided copy per peer and head group; None: per piece
        try:
            if symm.get_backend(self.device) is None:
                symm.set_backend("CUDA")
        except (AttributeError, RuntimeError):  # older torch: one backend; or already chosen
            pass

    def reserve(self, nbytes: int) -> None:
        """Grow the buffer to at least ``nbytes`` on every rank (collective; same size everywhere)."""
        if nbytes <= self.capacity:
            return
        nbytes = -(-nbytes // (64 << 20)) * (64 << 20)  # whole 64 MiB steps: few regrowths
        torch.cuda.synchronize(self.device)  # no copy still targets the old buffers
        self._buffers, self._handle, self._plans = [], None, {}
        local = self._symm.empty(nbytes, dtype=torch.uint8, device=self.device)
        self._handle = self._symm.rendezvous(local, self.group)
        self._buffers = [
            local if r == self.rank else self._handle.get_buffer(r, (nbytes,), torch.uint8)
            for r in range(self.size)
        ]
        self.capacity = nbytes

    def region(self, rank: int, offset: int, shape: Sequence[int], dtype: torch.dtype) -> torch.Tensor:
        """A ``shape`` tensor of ``dtype`` at byte ``offset`` of ``rank``'s buffer."""
        nbytes = math.prod(shape) * dtype.itemsize
        return self._buffers[rank][offset : offset + nbytes].view(dtype).view(*shape)

    def barrier(self) -> None:
        """On the current stream: every rank's earlier copies on its exchange stream are in."""
        self._handle.barrier(channel=0, timeout_ms=self.timeout_ms)

    # ---- Ulysses attention ------------------------------------------------------------------

    def _plan(self, n: int, b: int, lc: int, groups: tuple[int, ...], d: int, dtype: torch.dtype) -> _Plan:
        """The buffer layout for one call shape, and the views into every rank's buffer (cached)."""
        key = (n, b, lc, groups, d, dtype)
        plan = self._plans.get(key)
        if plan is not None:
            return plan
        u, esize, layout, offset = self.size, dtype.itemsize, [], 0
        for g in groups:
            in_bytes = n * b * u * lc * g * d * esize
            out_at = offset + -(-in_bytes // _ALIGN) * _ALIGN
            out_bytes = u * b * lc * g * d * esize
            layout.append((offset, out_at))
            offset = out_at + -(-out_bytes // _ALIGN) * _ALIGN
        self.reserve(offset)  # may regrow (and drop every cached plan): views are taken after it
        plan = _Plan(
            ins=[
                [self.region(p, at, (n, b, u, lc, g, d), dtype) for p in range(u)]
                for g, (at, _) in zip(groups, layout, strict=True)
            ],
            outs=[
                [self.region(p, at, (u, b, lc, g, d), dtype) for p in range(u)]
                for g, (_, at) in zip(groups, layout, strict=True)
            ],
        )
        self._plans[key] = plan
        return plan

    def _send(self, dst: torch.Tensor, src: torch.Tensor) -> None:
        """Copy ``src`` into ``dst`` (same shape ``(rows, ...)``, each row contiguous, rows evenly
        strided) on the current stream: one 2D memcpy by a copy engine, else one memcpy per row."""
        if self.memcpy2d is not None and dst.shape[0] > 1:
            row = dst[0].numel() * dst.element_size()
            err = self.memcpy2d(
                dst.data_ptr(),
                dst.stride(0) * dst.element_size(),
                src.data_ptr(),
                src.stride(0) * src.element_size(),
                row,
                dst.shape[0],
                _CUDA_MEMCPY_DEFAULT,
                torch.cuda.current_stream(self.device).cuda_stream,
            )
            if err:
                raise RuntimeError(
                    f"cudaMemcpy2DAsync failed with CUDA error {err} in the peer Ulysses exchange"
                )
            return
        for i in range(dst.shape[0]):
            dst[i].copy_(src[i])

    @torch.compiler.disable  # streams, events and peer buffers: eager inside regionally compiled blocks
    def ulysses_attention(
        self,
        packed: Sequence[torch.Tensor],
        attend: Callable[..., torch.Tensor],
    ) -> torch.Tensor:
        """As :func:`fastvideo.parallel.comm.ulysses_attention`, with the exchanges done by copy engines.

        ``packed``: per head group, ``(n, B, U, Lc, g, D)`` from :func:`pack_groups` (slot
        ``[:, :, s]``: our tokens of rank ``s``'s heads of the group). Rank ``r``'s buffer holds, per
        group, ``in_j`` in that same layout (slot ``[:, :, s]``: rank ``s``'s tokens of our heads) and
        ``out_j`` ``(U, B, Lc, g, D)`` (slot ``[s]``: our tokens of rank ``s``'s heads). The chunks for
        a peer travel as one strided ``cudaMemcpy2DAsync`` per head group on the exchange stream into
        the peer's ``in_j`` (our own chunk is copied on the compute stream); each group's attention
        waits only for its own chunks, and the outputs go back the same way while the next group
        attends. Returns ``(B, Lc, H, D)``.
        """
        n, b, u, lc, _, d = packed[0].shape
        groups = tuple(p.shape[4] for p in packed)
        rank, dtype = self.rank, packed[0].dtype
        if u != self.size:
            raise ValueError(f"Ulysses peer exchange: packed for {u} ranks, but the group has {self.size}")
        if torch.is_grad_enabled() and any(p.requires_grad for p in packed):
            raise RuntimeError("the peer Ulysses exchange runs inference only; use NCCL's (exchange='nccl')")
        plan = self._plan(n, b, lc, groups, d, dtype)

        compute, copier = torch.cuda.current_stream(self.device), self.stream
        packed = [send.contiguous() for send in packed]
        ready = torch.cuda.Event()
        ready.record(compute)
        copier.wait_event(ready)
        # our own slot: SM copies on the compute stream, one fused launch over the contiguous (Lc, g, D)
        # pieces (a strided copy_ takes a slow generic kernel; a local memcpy by a copy engine ran at
        # ~100 GB/s on an H200 and would queue ahead of the peers' chunks)
        dst, src = [], []
        for send, ins in zip(packed, plan.ins, strict=True):
            dst += list(_rows(ins[rank], rank).unbind(0))
            src += list(_rows(send, rank).unbind(0))
        torch._foreach_copy_(dst, src)
        arrived = []
        with torch.cuda.stream(copier):
            for send, ins in zip(packed, plan.ins, strict=True):
                for p in range(u):
                    if p != rank:  # (n*B, Lc, g, D) rows, contiguous each, evenly strided
                        self._send(_rows(ins[p], rank), _rows(send, p))
                send.record_stream(copier)
                self.barrier()
                done = torch.cuda.Event()
                done.record(copier)
                arrived.append(done)

        returned = []
        for ins, outs, done in zip(plan.ins, plan.outs, arrived, strict=True):
            compute.wait_event(done)
            g = ins[rank].shape[4]
            out = attend(*ins[rank].view(n, b, u * lc, g, d).unbind(0))  # (B, U*Lc, g, D)
            out = out.contiguous()
            finished = torch.cuda.Event()
            finished.record(compute)
            copier.wait_event(finished)
            with torch.cuda.stream(copier):
                for p in range(u):
                    if p != rank:  # (B, Lc, g, D) rows: our tokens of rank p's heads
                        self._send(outs[p][rank], out.unflatten(1, (u, lc))[:, p])
                self.barrier()
                back = torch.cuda.Event()
                back.record(copier)
            out.record_stream(copier)
            returned.append((out, back))

        pieces = {}  # (rank p, group j) -> our tokens of rank p's heads of group j, (B, Lc, g, D)
        for j, ((out, back), outs) in enumerate(zip(returned, plan.outs, strict=True)):
            compute.wait_event(back)
            for p in range(u):
                pieces[p, j] = out[:, rank * lc : (rank + 1) * lc] if p == rank else outs[rank][p]
        # heads in order: rank 0's groups, rank 1's, ...: one concatenating kernel
        return torch.cat([pieces[p, j] for p in range(u) for j in range(len(groups))], dim=2)


def _rows(t: torch.Tensor, slot: int) -> torch.Tensor:
    """Slot ``[:, :, slot]`` of an ``(n, B, U, Lc, g, D)`` tensor as ``(n*B, Lc, g, D)`` rows (a view:
    each row contiguous, the rows evenly strided; ``view`` raises rather than copy)."""
    n, b, _, lc, g, d = t.shape
    return t[:, :, slot].view(n * b, lc, g, d)


class _Plan:
    """Views of every rank's buffer for one call shape: ``ins[j][p]`` ``(n, B, U, Lc, g, D)`` and
    ``outs[j][p]`` ``(U, B, Lc, g, D)``, head group ``j``, rank ``p``."""

    __slots__ = ("ins", "outs")

    def __init__(self, ins: list[list[torch.Tensor]], outs: list[list[torch.Tensor]]) -> None:
        self.ins, self.outs = ins, outs


_CUDA_MEMCPY_DEFAULT = 4  # cudaMemcpyDefault: direction from the (unified) addresses


def _cuda_memcpy2d() -> Callable[..., int] | None:
    """``cudaMemcpy2DAsync`` of the CUDA runtime this process already loaded (for torch), or ``None``
    when there is none to find (the exchange then issues one memcpy per contiguous piece).
    ``FASTVIDEO_PEER_MEMCPY2D=0`` asks for the per-piece copies."""
    if os.environ.get("FASTVIDEO_PEER_MEMCPY2D", "1") == "0":
        return None
    paths = []
    try:  # only a runtime already mapped: never a second copy beside torch's
        with open("/proc/self/maps") as maps:
            paths = sorted({line.split()[-1] for line in maps if "/libcudart.so" in line})
    except OSError:
        pass
    for path in paths:
        try:
            fn = ctypes.CDLL(path).cudaMemcpy2DAsync
        except (OSError, AttributeError):
            continue
        fn.restype = ctypes.c_int
        fn.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p, ctypes.c_size_t]
        fn.argtypes += [ctypes.c_size_t, ctypes.c_size_t, ctypes.c_int, ctypes.c_void_p]
        return fn  # type: ignore[no-any-return]
    return None


def pack_groups(tensors: Sequence[torch.Tensor], ranks: int, groups: Sequence[int]) -> list[torch.Tensor]:
    """``(B, Lc, H, D)`` tensors -> per head group ``(n, B, U, Lc, g, D)``: slot ``[:, :, s]`` holds
    rank ``s``'s heads of the group (``U = ranks``; ``groups`` split the ``H / U`` heads of a rank).

    Plain tensor code, so that under torch.compile it fuses with whatever produced the tensors
    (RoPE, for q and k) and writes the send layout directly.
    """
    b, lc, h, d = tensors[0].shape
    views = [t.view(b, lc, ranks, h // ranks, d).transpose(1, 2) for t in tensors]  # (B, U, Lc, hp, D)
    out, start = [], 0
    for g in groups:
        out.append(torch.stack([v[..., start : start + g, :] for v in views]))
        start += g
    return out


_EXCHANGES: dict[str, PeerExchange | None] = {}


def peer_exchange(group: ProcessGroup, timeout_s: float = 600.0) -> PeerExchange | None:
    """The group's :class:`PeerExchange`, made on first use (collective), or ``None`` where peer copies
    cannot work: not CUDA, ranks on different hosts, or GPUs without peer access."""
    key = group.group_name
    if key in _EXCHANGES:
        return _EXCHANGES[key]
    exchange = None
    if torch.cuda.is_available() and dist.get_backend(group) == "nccl":
        me = (socket.gethostname(), torch.cuda.current_device())
        everyone: list[Any] = [None] * dist.get_world_size(group)
        dist.all_gather_object(everyone, me, group=group)
        same_host = all(host == me[0] for host, _ in everyone)
        peer_ok = same_host and all(
            dev == me[1] or torch.cuda.can_device_access_peer(me[1], dev) for _, dev in everyone
        )
        ok = torch.tensor([1 if peer_ok else 0], device="cuda")
        dist.all_reduce(ok, op=dist.ReduceOp.MIN, group=group)  # every rank decides the same
        if ok.item():
            exchange = PeerExchange(group, timeout_s)
    _EXCHANGES[key] = exchange
    return exchange


def forget_exchanges() -> None:
    """Drop every group's buffer (the process groups are going away)."""
    if any(e is not None for e in _EXCHANGES.values()):
        torch.cuda.synchronize()  # no copy still runs into a buffer about to be freed
    _EXCHANGES.clear()
