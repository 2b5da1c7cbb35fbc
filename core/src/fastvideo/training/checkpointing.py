"""What a training checkpoint holds and how a run finds the one to resume from.

:class:`CheckpointManager` turns the run's state into one DCP state dict and back: the trainer's
counters (``trainer``), each rank's RNG states (``rng-rank<N>``), the algorithm's own state
(``algorithm``) and, for every role, ``model-<role>``, ``optim-<role>``, ``sched-<role>`` and
``ema-<role>``. Writing and reading the files (atomically, with the ``COMPLETE`` marker) is
:mod:`fastvideo.training.checkpoint`'s job.
"""

from __future__ import annotations

import random
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fastvideo.errors import CheckpointError
from fastvideo.training import checkpoint as ckpt
from fastvideo.training.roles import RoleState

#: The key older checkpoints stored the (single) EMA under; read as the evaluated role's EMA.
LEGACY_EMA = "ema"


def rng_state() -> dict[str, Any]:
    state = {
        "torch": torch.get_rng_state().numpy().tobytes(),
        "numpy": _numpy_state(),
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state().numpy().tobytes()
    return state


def _numpy_state() -> tuple[Any, ...]:
    """numpy's global RNG state as plain data (no ndarray), which checkpoints decode without pickle globals."""
    name, key, pos, has_gauss, cached = np.random.get_state()
    return (str(name), np.asarray(key, dtype=np.uint32).tobytes(), int(pos), int(has_gauss), float(cached))


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(torch.frombuffer(bytearray(state["torch"]), dtype=torch.uint8))
    name, key, *rest = state["numpy"]
    np.random.set_state((name, np.frombuffer(key, dtype=np.uint32).copy(), *rest))
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(torch.frombuffer(bytearray(state["cuda"]), dtype=torch.uint8))


class CheckpointManager:
    """Saves, finds and restores the checkpoints of one run under ``root``."""

    def __init__(self, root: Path, *, rank: int, world_size: int, keep_last: int, eval_role: str) -> None:
        self.root = Path(root)
        self.rank = rank
        self.world_size = world_size
        self.keep_last = keep_last
        self.eval_role = eval_role
        self._verified: dict[Path, Any] = {}  # checkpoint -> its verified DCP metadata

    # ---------------------------------------------------------------- state dicts

    @staticmethod
    def _model_state(reg: RoleState) -> dict[str, Any]:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        opts = StateDictOptions(ignore_frozen_params=reg.trainable_only)
        return get_model_state_dict(reg.model, options=opts)

    def state(
        self,
        roles: Mapping[str, RoleState],
        *,
        counters: dict[str, int],
        algorithm: dict[str, Any],
        keys: set[str] | None = None,
    ) -> dict[str, Any]:
        """The state dict of a checkpoint (only ``keys`` of it when given: a load template)."""
        from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

        state: dict[str, Any] = {"trainer": {**counters, "world_size": self.world_size}}
        state[f"rng-rank{self.rank}"] = rng_state()
        if algorithm:
            state["algorithm"] = algorithm
        for role, reg in roles.items():
            if not reg.spec.trainable:
                continue  # a frozen model is reloaded from its source, not from checkpoints
            state[f"model-{role}"] = self._model_state(reg)
            if reg.optimizer is not None:
                state[f"optim-{role}"] = get_optimizer_state_dict(reg.model, reg.optimizer)
            if reg.scheduler is not None:
                state[f"sched-{role}"] = reg.scheduler.state_dict()
            if reg.ema is not None:
                key = f"ema-{role}"
                if keys is not None and key not in keys and role == self.eval_role and LEGACY_EMA in keys:
                    key = LEGACY_EMA
                state[key] = reg.ema.state_dict()
        if keys is not None:
            state = {k: v for k, v in state.items() if k in keys}
        return state

    def save(
        self,
        step: int,
        roles: Mapping[str, RoleState],
        *,
        counters: dict[str, int],
        algorithm: dict[str, Any],
    ) -> Path:
        state = self.state(roles, counters=counters, algorithm=algorithm)
        return ckpt.save(self.root, step, state, keep_last=self.keep_last, world_size=self.world_size)

    def load(
        self, path: str | Path, roles: Mapping[str, RoleState], *, algorithm: dict[str, Any]
    ) -> tuple[dict[str, int], dict[str, Any] | None]:
        """Restore every role's model, optimizer, schedule and EMA and this rank's RNG states from
        ``path``; returns the trainer's counters and the algorithm's state (``None`` if not saved)."""
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            set_model_state_dict,
            set_optimizer_state_dict,
        )

        path = Path(path)
        metadata = self._verified.pop(path, None)
        if metadata is None:
            metadata = ckpt.verify(path)
        keys = ckpt.saved_keys(path, metadata)
        wanted = [f"model-{r}" for r, reg in roles.items() if reg.spec.trainable]
        missing = [k for k in wanted if k not in keys]
        if missing:
            raise CheckpointError(
                f"{path} holds no {missing[0]!r}: it was written by another algorithm ({sorted(keys)})"
            )
        template = self.state(roles, counters={"step": 0, "data_position": 0}, algorithm=algorithm, keys=keys)
        state = ckpt.load(path, template, metadata)
        for role, reg in roles.items():
            if f"model-{role}" not in state:
                continue
            strict = StateDictOptions(strict=not reg.trainable_only)
            set_model_state_dict(reg.model, state[f"model-{role}"], options=strict)
            if reg.optimizer is not None and f"optim-{role}" in state:
                set_optimizer_state_dict(reg.model, reg.optimizer, state[f"optim-{role}"])
            if reg.scheduler is not None and f"sched-{role}" in state:
                reg.scheduler.load_state_dict(state[f"sched-{role}"])
            if reg.ema is not None:
                ema = state.get(f"ema-{role}", state.get(LEGACY_EMA) if role == self.eval_role else None)
                if ema is not None:
                    reg.ema.load_state_dict(ema)
        if f"rng-rank{self.rank}" in state:
            set_rng_state(state[f"rng-rank{self.rank}"])
        counters = {k: int(v) for k, v in state["trainer"].items() if k in ("step", "data_position")}
        return counters, state.get("algorithm")

    # ---------------------------------------------------------------- which one to resume

    def resume_path(self, request: str | Path | bool | None, output_dir: Path) -> Path | None:
        """The checkpoint to resume from: none (refusing to overwrite an existing run), the latest
        complete one (``True``/``"auto"``/``"latest"``), or the folder named."""
        if request in (None, False):
            found = ckpt.latest(self.root)
            if found is not None:
                raise ValueError(
                    f"{output_dir} already holds checkpoint {found.name}; pass --resume to continue it "
                    f"or choose another output_dir"
                )
            return None
        if request in (True, "auto", "latest"):
            return self.newest_intact()
        path = Path(str(request))
        if not ckpt.is_complete(path):
            raise ValueError(
                f"--resume-from {path}: not a complete checkpoint (a step-N folder with a COMPLETE marker)"
            )
        self._verified[path] = ckpt.verify(path)  # an explicit checkpoint that is damaged is an error
        return path

    def newest_intact(self) -> Path | None:
        """The newest checkpoint that passes :func:`ckpt.verify`; a damaged newer one is skipped with a
        warning. Raises when checkpoints exist but none is usable (starting over would discard them)."""
        found = ckpt.complete_checkpoints(self.root)
        skipped: list[tuple[Path, str]] = []
        for path in reversed(found):
            try:
                self._verified[path] = ckpt.verify(path)
            except CheckpointError as exc:
                skipped.append((path, str(exc).removesuffix(f"; {ckpt.DAMAGED_HINT}")))
                continue
            if self.rank == 0:
                for bad, reason in skipped:
                    warnings.warn(
                        f"checkpoint {bad.name} is unusable ({reason}); resuming from {path.name}, the newest "
                        f"intact checkpoint",
                        stacklevel=2,
                    )
            return path
        if skipped:
            bad, reason = skipped[0]
            more = f" (and {len(skipped) - 1} older one(s))" if len(skipped) > 1 else ""
            raise CheckpointError(
                f"no intact checkpoint under {self.root}: {bad.name}{more} unusable ({reason}); "
                f"repair or remove the damaged checkpoints, or choose another output_dir"
            )
        return None
