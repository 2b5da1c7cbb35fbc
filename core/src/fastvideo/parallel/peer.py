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
        self._buffers, self._handle = [], None
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
        ``out_j`` ``(U, B, Lc, g, D)`` (slot ``[s]``: our tokens of rank ``s``'s heads). Every chunk
        for a peer travels as a ``cudaMemcpyAsync`` on the exchange stream into the peer's ``in_j``
        (our own chunk is copied on the compute stream); each group's attention waits only for its
        own chunks, and the outputs go back the same way while the next group attends. Returns
        ``(B, Lc, H, D)``.
        """
        n, b, u, lc, _, d = packed[0].shape
        groups = [p.shape[4] for p in packed]
        rank, dtype, esize = self.rank, packed[0].dtype, packed[0].element_size()
        if u != self.size:
            raise ValueError(f"Ulysses peer exchange: packed for {u} ranks, but the group has {self.size}")
        if torch.is_grad_enabled() and any(p.requires_grad for p in packed):
            raise RuntimeError("the peer Ulysses exchange runs inference only; use NCCL's (exchange='nccl')")
        layout, offset = [], 0
        for g in groups:
            in_bytes = n * b * u * lc * g * d * esize
            out_at = offset + -(-in_bytes // _ALIGN) * _ALIGN
            out_bytes = u * b * lc * g * d * esize
            layout.append((offset, out_at))
            offset = out_at + -(-out_bytes // _ALIGN) * _ALIGN
        self.reserve(offset)

        compute, copier = torch.cuda.current_stream(self.device), self.stream
        packed = [send.contiguous() for send in packed]
        ready = torch.cuda.Event()
        ready.record(compute)
        copier.wait_event(ready)
        # our own slot: SM copies on the compute stream, one fused launch over the contiguous (Lc, g, D)
        # pieces (a strided copy_ takes a slow generic kernel; a local memcpy by a copy engine ran at
        # ~100 GB/s on an H200 and would queue ahead of the peers' chunks)
        dst, src = [], []
        for send, g, (in_at, _) in zip(packed, groups, layout, strict=True):
            mine = self.region(rank, in_at, (n, b, u, lc, g, d), dtype)
            dst += [mine[i, bb, rank] for i in range(n) for bb in range(b)]
            src += [send[i, bb, rank] for i in range(n) for bb in range(b)]
        torch._foreach_copy_(dst, src)
        arrived = []
        with torch.cuda.stream(copier):
            for send, g, (in_at, _) in zip(packed, groups, layout, strict=True):
                for p in range(u):
                    if p == rank:
                        continue
                    theirs = self.region(p, in_at, (n, b, u, lc, g, d), dtype)
                    for i in range(n):
                        for bb in range(b):  # contiguous (Lc, g, D) pieces: plain memcpys
                            theirs[i, bb, rank].copy_(send[i, bb, p])
                send.record_stream(copier)
                self.barrier()
                done = torch.cuda.Event()
                done.record(copier)
                arrived.append((self.region(rank, in_at, (n, b, u, lc, g, d), dtype), done))

        returned = []
        for g, (mine, done), (_, out_at) in zip(groups, arrived, layout, strict=True):
            compute.wait_event(done)
            out = attend(*mine.view(n, b, u * lc, g, d).unbind(0))  # (B, U*Lc, g, D)
            out = out.contiguous()
            finished = torch.cuda.Event()
            finished.record(compute)
            copier.wait_event(finished)
            with torch.cuda.stream(copier):
                for p in range(u):
                    if p == rank:
                        continue
                    theirs = self.region(p, out_at, (u, b, lc, g, d), dtype)
                    for bb in range(b):
                        theirs[rank, bb].copy_(out[bb, p * lc : (p + 1) * lc])
                self.barrier()
                back = torch.cuda.Event()
                back.record(copier)
            out.record_stream(copier)
            returned.append((out, back))

        pieces = {}  # (rank p, group j) -> our tokens of rank p's heads of group j, (B, Lc, g, D)
        for j, (g, (out, back), (_, out_at)) in enumerate(zip(groups, returned, layout, strict=True)):
            compute.wait_event(back)
            theirs = self.region(rank, out_at, (u, b, lc, g, d), dtype)
            for p in range(u):
                pieces[p, j] = out[:, rank * lc : (rank + 1) * lc] if p == rank else theirs[p]
        # heads in order: rank 0's groups, rank 1's, ...: one concatenating kernel
        return torch.cat([pieces[p, j] for p in range(u) for j in range(len(groups))], dim=2)


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
