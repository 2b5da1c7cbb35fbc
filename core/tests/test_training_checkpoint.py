"""Resuming never runs code from a checkpoint, and a damaged checkpoint is a one-line error.

A run on the example plugin's tiny checkpoint writes two checkpoints (step 2 and 4); each test damages a copy of step 4 and
resumes. The crafted files are checked against torch's own readers first (``pickle.load`` of
``.metadata``, ``torch.load(weights_only=False)`` of a value: what DCP does), so the payloads
are known to run when decoded the unsafe way.
"""

from __future__ import annotations

import hashlib
import io
import json
import pickle
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from fastvideo.errors import CheckpointError
from fastvideo.testing import fake_plugins
from fastvideo.training import checkpoint as ckpt
from fastvideo.training.config import load_config
from fastvideo.training.data import write_synthetic_dataset
from fastvideo.training.trainer import Trainer
from fastvideo_example import plugin as example_plugin


class _Payload:
    """Unpickling it creates ``path``: the stand-in for arbitrary code."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (self.path, "w"))


@pytest.fixture(autouse=True)
def example_family() -> Iterator[None]:
    """The core's built-ins and the example plugin only (no installed plugin)."""
    with fake_plugins(example_plugin):
        yield


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from fastvideo_example.checkpoint import make_checkpoint

    root = tmp_path_factory.mktemp("ckpt")
    model = make_checkpoint(root / "tiny", seed=0)
    data = write_synthetic_dataset(
        root / "data", count=4, latent_shape=(16, 3, 8, 8), text_dim=32, max_sequence_length=16
    )
    out = root / "run"
    overrides = {
        "model.path": str(model),
        "data.path": str(data),
        "max_steps": 4,
        "mixed_precision": "fp32",
        "data.batch_size": 2,
        "logging.every_steps": 100,
        "checkpoint.every_steps": 2,
        "export.enabled": False,
    }
    with fake_plugins(example_plugin):  # module-scoped: set up before the autouse fixture
        trainer = Trainer(load_config(None, {**overrides, "output_dir": str(out)}))
        trainer.train()
    weights = {k: v.clone() for k, v in trainer.algorithm.model.state_dict().items()}
    return {"out": out, "overrides": overrides, "weights4": weights}


def _copy(run: dict[str, Any], tmp_path: Path) -> tuple[Path, Any]:
    out = tmp_path / "run"
    shutil.copytree(run["out"] / "checkpoints", out / "checkpoints")
    return out, load_config(None, {**run["overrides"], "output_dir": str(out)})


def _shard(folder: Path) -> Path:
    return sorted(folder.glob("*.distcp"))[0]


def _forge_manifest(folder: Path) -> None:
    """Rewrite COMPLETE so that it matches the folder: an attacker who can write the folder can."""
    info = json.loads((folder / ckpt.COMPLETE).read_text())
    info["files"] = {
        p.name: {"size": p.stat().st_size, "sha256": hashlib.sha256(p.read_bytes()).hexdigest()}
        for p in folder.iterdir()
        if p.name != ckpt.COMPLETE
    }
    (folder / ckpt.COMPLETE).write_text(json.dumps(info))


def _resume(cfg: Any, request: Any) -> Trainer:
    trainer = Trainer(cfg, resume=request).setup()
    path = trainer._resume_path()
    assert path is not None
    trainer.load_checkpoint(path)
    return trainer


def _one_line(exc: pytest.ExceptionInfo[BaseException]) -> str:
    text = str(exc.value)
    assert "\n" not in text, text
    return text


def _tree_hash(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in folder.rglob("*")
        if p.is_file()
    }


def test_manifest_lists_every_file_with_size_and_sha256(run: dict[str, Any]) -> None:
    folder = run["out"] / "checkpoints" / "step-00000004"
    info = json.loads((folder / ckpt.COMPLETE).read_text())
    on_disk = {p.name for p in folder.iterdir()} - {ckpt.COMPLETE}
    assert set(info["files"]) == on_disk and ".metadata" in on_disk
    for name, rec in info["files"].items():
        data = (folder / name).read_bytes()
        assert rec == {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def test_resume_restores_the_weights(run: dict[str, Any], tmp_path: Path) -> None:
    _, cfg = _copy(run, tmp_path)
    trainer = _resume(cfg, True)
    assert trainer.step == 4
    state = trainer.algorithm.model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in run["weights4"].items())


@pytest.mark.parametrize("forge", [False, True], ids=["planted", "planted-and-manifest-forged"])
def test_crafted_metadata_never_runs(run: dict[str, Any], tmp_path: Path, forge: bool) -> None:
    out, cfg = _copy(run, tmp_path)
    step4 = out / "checkpoints" / "step-00000004"
    crafted = pickle.dumps(_Payload(tmp_path / "PWNED"))
    # the payload is live: torch's reader (pickle.load) would create the marker
    probe = tmp_path / "probe"
    pickle.loads(pickle.dumps(_Payload(probe)))
    assert probe.exists()
    (step4 / ".metadata").write_bytes(crafted)
    if forge:
        _forge_manifest(step4)
    expected = "references io.open" if forge else "is truncated"

    with pytest.raises(CheckpointError) as exc:
        _resume(cfg, str(step4))
    assert str(step4 / ".metadata") in _one_line(exc) and expected in str(exc.value)
    assert not (tmp_path / "PWNED").exists()

    with pytest.warns(
        UserWarning, match=r"step-00000004 is unusable \(.*\.metadata.*resuming from step-00000002"
    ):
        trainer = _resume(cfg, True)
    assert trainer.step == 2
    assert not (tmp_path / "PWNED").exists()


def test_crafted_value_in_a_shard_never_runs(run: dict[str, Any], tmp_path: Path) -> None:
    """A shard whose pickled value would run code, with a matching manifest: refused by the decoder."""
    import torch.distributed.checkpoint as dcp

    out, cfg = _copy(run, tmp_path)
    step4 = out / "checkpoints" / "step-00000004"
    marker = tmp_path / "PWNED"
    buf = io.BytesIO()
    torch.save({"x": _Payload(tmp_path / "probe")}, buf)
    buf.seek(0)
    torch.load(buf, weights_only=False)  # what DCP's own planner does: the payload runs
    assert (tmp_path / "probe").exists()

    trainer = Trainer(cfg, resume=str(step4)).setup()
    counters = {"step": 4, "data_position": 0}
    state = trainer.checkpoints.state(
        trainer.registry, counters=counters, algorithm=trainer.algorithm.state_dict()
    )
    state["trainer"]["data_position"] = _Payload(marker)
    shutil.rmtree(step4)
    with ckpt._quiet():
        dcp.save(state, checkpoint_id=str(step4), no_dist=True)
    (step4 / ckpt.COMPLETE).write_text(json.dumps({"step": 4, "world_size": 1}))
    _forge_manifest(step4)
    assert not marker.exists()

    with pytest.raises(CheckpointError) as exc:
        _resume(cfg, str(step4))
    assert "'trainer.data_position' is not plain data" in _one_line(exc)
    assert not marker.exists()


def _truncate(step: Path) -> Path:
    shard = _shard(step)
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    return shard


def _empty(step: Path) -> Path:
    shard = _shard(step)
    shard.write_bytes(b"")
    return shard


def _flip(step: Path) -> Path:
    shard = _shard(step)
    data = bytearray(shard.read_bytes())
    for i in range(len(data) // 2, len(data) // 2 + 8):
        data[i] ^= 0xFF
    shard.write_bytes(bytes(data))
    return shard


def _drop_metadata(step: Path) -> Path:
    (step / ".metadata").unlink()
    return step / ".metadata"


def _legacy(step: Path) -> Path:
    marker = step / ckpt.COMPLETE
    marker.write_text(json.dumps({"step": 4, "world_size": 1, "time": 0.0}))
    return marker


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (_truncate, "is truncated"),
        (_empty, "is empty (0 bytes"),
        (_flip, "does not match the sha256 recorded in COMPLETE"),
        (_drop_metadata, "is missing"),
        (_legacy, "has no file manifest"),
    ],
    ids=["truncated", "zero-length", "flipped", "no-metadata", "no-manifest"],
)
def test_damaged_checkpoint_is_one_line_and_auto_resume_falls_back(
    run: dict[str, Any], tmp_path: Path, damage: Any, message: str
) -> None:
    out, cfg = _copy(run, tmp_path)
    step4 = out / "checkpoints" / "step-00000004"
    file = damage(step4)
    before = _tree_hash(out)

    with pytest.raises(CheckpointError) as exc:
        _resume(cfg, str(step4))
    line = _one_line(exc)
    assert str(file) in line and message in line

    with pytest.warns(UserWarning) as caught:
        trainer = _resume(cfg, True)
    warned = [str(w.message) for w in caught if "unusable" in str(w.message)]
    assert len(warned) == 1 and str(file) in warned[0] and "resuming from step-00000002" in warned[0]
    assert trainer.step == 2 and trainer.data_position == 4
    assert _tree_hash(out) == before  # nothing on disk was touched


def test_auto_resume_with_no_intact_checkpoint_is_an_error(run: dict[str, Any], tmp_path: Path) -> None:
    out, cfg = _copy(run, tmp_path)
    _truncate(out / "checkpoints" / "step-00000004")
    shard2 = _empty(out / "checkpoints" / "step-00000002")
    with pytest.raises(CheckpointError) as exc:
        Trainer(cfg, resume=True).train()
    line = _one_line(exc)
    assert "no intact checkpoint" in line and "step-00000004 (and 1 older one(s)) unusable" in line
    assert str(_shard(out / "checkpoints" / "step-00000004")) in line
    assert shard2.stat().st_size == 0 and ckpt.latest(out / "checkpoints").name == "step-00000004"  # type: ignore[union-attr]


def test_metadata_pointing_outside_the_checkpoint_is_refused(run: dict[str, Any], tmp_path: Path) -> None:
    out, cfg = _copy(run, tmp_path)
    step4 = out / "checkpoints" / "step-00000004"
    meta = ckpt.verify(step4)
    for info in meta.storage_data.values():
        info.relative_path = "../../secret"
    (step4 / ".metadata").write_bytes(pickle.dumps(meta))
    _forge_manifest(step4)
    with pytest.raises(CheckpointError, match=r"points at '../../secret', which is not a data file"):
        _resume(cfg, str(step4))


def test_metadata_unpickler_accepts_dcp_metadata_and_nothing_else(
    run: dict[str, Any], tmp_path: Path
) -> None:
    import builtins
    import os
    import subprocess

    from torch.distributed.checkpoint import FileSystemReader

    folder = run["out"] / "checkpoints" / "step-00000004"
    ours = ckpt._parse_metadata((folder / ".metadata").read_bytes(), folder / ".metadata")
    theirs = FileSystemReader(str(folder)).read_metadata()  # torch's own (unrestricted) reader
    assert ours.state_dict_metadata == theirs.state_dict_metadata and ours.storage_data == theirs.storage_data
    for target in (os.system, builtins.eval, subprocess.Popen, torch.load, shutil.rmtree):
        with pytest.raises(CheckpointError, match="which no DCP metadata holds; refusing to unpickle it"):
            ckpt._parse_metadata(pickle.dumps(target), tmp_path / ".metadata")
    with pytest.raises(CheckpointError, match="not a DCP metadata file \\(it holds a dict\\)"):
        ckpt._parse_metadata(pickle.dumps({"a": 1}), tmp_path / ".metadata")
