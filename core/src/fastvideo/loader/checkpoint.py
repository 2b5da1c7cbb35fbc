"""Reading a diffusers transformer folder into a model of ours through a :class:`NameMapping`.

:class:`DiffusersCheckpoint` reads a diffusers folder (``diffusion_pytorch_model.safetensors`` or a
sharded ``...safetensors.index.json``) and checks names and shapes against a model before any tensor
data is read. :func:`read_config` and :func:`load_pretrained` are the two halves of a model's
``from_pretrained``::

    config = read_config(folder, "WanTransformer3DModel", "WanTransformer", WanConfig.from_diffusers_config)
    model = WanTransformer.from_config(config, device="meta")
    return load_pretrained(model, DiffusersCheckpoint(folder, MAPPING), dtype=torch.bfloat16)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from fastvideo.errors import CheckpointError
from fastvideo.loader.mapping import NameMapping, UnmappedKeysError
from fastvideo.loader.validate import (
    StoredTensors,
    check_config_values,
    compare_tensors,
    meta_build,
    read_json,
)
from fastvideo.loader.weights import verify_safetensors, weight_files

if TYPE_CHECKING:
    import torch

C = TypeVar("C")
M = TypeVar("M", bound="torch.nn.Module")
B = TypeVar("B")

WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
INDEX_NAME = "diffusion_pytorch_model.safetensors.index.json"


def _open(path: Path, device: str = "cpu") -> Any:  # safetensors' handle has no public type
    from safetensors import SafetensorError, safe_open

    try:
        return safe_open(str(path), framework="pt", device=device)
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"cannot read {path}: {e} (truncated or corrupt? download it again)") from e


class DiffusersCheckpoint:
    """The safetensors files of a diffusers transformer folder, indexed by our parameter names.

    Opening reads only the headers (each verified against the file size): names, shapes and which
    file holds each tensor. A plugin either passes its ``mapping`` or subclasses with a ``mapping``
    class attribute (then ``Checkpoint(folder)`` is enough).
    """

    mapping: NameMapping

    def __init__(self, folder: str | Path, mapping: NameMapping | None = None) -> None:
        if mapping is not None:
            self.mapping = mapping
        elif getattr(self, "mapping", None) is None:
            raise TypeError(
                f"{type(self).__name__} needs a NameMapping: pass mapping=... or set a `mapping` "
                "class attribute in a subclass"
            )
        mapping = self.mapping
        self.folder = Path(folder)
        self.files = self._weight_files()
        self.source: dict[str, tuple[str, Path]] = {}  # our name -> (their name, file)
        self.shapes: dict[str, tuple[int, ...]] = {}  # our name -> shape
        for path in self.files:
            header = verify_safetensors(path)
            try:
                names = mapping.to_ours({k: k for k in header if k != "__metadata__"})
            except UnmappedKeysError as e:
                raise UnmappedKeysError(f"{path}: {e}", e.keys) from None
            for ours, theirs in names.items():
                self.source[ours] = (theirs, path)
                self.shapes[ours] = tuple(header[theirs]["shape"])

    def _weight_files(self) -> list[Path]:
        return checkpoint_files(self.folder)

    @property
    def numel(self) -> int:
        """How many values the checkpoint's tensors hold (from the headers)."""
        return self._stored().numel

    def _stored(self) -> StoredTensors:
        return StoredTensors(shapes=dict(self.shapes), files={n: p for n, (_, p) in self.source.items()})

    def _theirs(self, name: str) -> str:
        if name in self.source:
            return self.source[name][0]
        try:
            return next(iter(self.mapping.to_theirs({name: name})))
        except UnmappedKeysError:
            return name

    def build(self, factory: Callable[[], B]) -> B:
        """``factory()`` (a model built on ``meta``), stopped at once if the config describes far more
        parameters than this checkpoint holds (see :func:`fastvideo.loader.validate.meta_build`)."""
        where = (
            self.files[0].name if len(self.files) == 1 else f"the {len(self.files)} shards in {self.folder}"
        )
        return meta_build(factory, stored_numel=self.numel, config=self.folder / "config.json", weights=where)

    def check_against(self, expected: Mapping[str, tuple[int, ...]]) -> None:
        """Compare with a model's ``{our name: shape}``.

        :raises CheckpointError: (a ``ValueError`` too) naming missing, unexpected and mis-shaped
            tensors, their files, both shapes and both parameter counts.
        """
        compare_tensors(expected, self._stored(), config=self.folder / "config.json", display=self._theirs)

    def tensors(
        self, device: str | torch.device = "cpu", names: Iterable[str] | None = None
    ) -> Iterator[tuple[str, torch.Tensor]]:
        """Yield ``(our name, tensor)`` for every mapped tensor (those of ``names`` only, when given; the
        others are never read), file by file, on ``device``.

        :raises CheckpointError: unreadable data, or NaN values (bit rot: no trained weight is NaN).
        """
        by_file: dict[Path, list[tuple[str, str]]] = {}
        only = None if names is None else set(names)
        for ours, (theirs, path) in self.source.items():
            if only is not None and ours not in only:
                continue
            by_file.setdefault(path, []).append((ours, theirs))
        for path, pairs in by_file.items():
            with _open(path, str(device)) as f:
                for ours, theirs in pairs:
                    try:
                        tensor = f.get_tensor(theirs)
                    except Exception as e:  # safetensors raises its own error types for bad data
                        raise CheckpointError(f"cannot read tensor {theirs} from {path}: {e}") from e
                    if tensor.is_floating_point() and bool(tensor.isnan().any()):  # no trained weight is NaN
                        raise CheckpointError(
                            f"tensor {theirs} in {path} holds NaN values: the file is corrupt; download it again"
                        )
                    yield ours, tensor


def checkpoint_files(folder: str | Path) -> list[Path]:
    """The safetensors files of a diffusers component folder (one file, or the shards of its index)."""
    folder = Path(folder)
    if (folder / WEIGHTS_NAME).is_file():
        return [folder / WEIGHTS_NAME]
    if not (folder / INDEX_NAME).is_file():
        raise CheckpointError(f"no weights in {folder}: expected {WEIGHTS_NAME} or {INDEX_NAME}")
    return weight_files(folder, stem=WEIGHTS_NAME)  # only INDEX_NAME starts with it


def build_checked(folder: str | Path, factory: Callable[[], B]) -> B:
    """``factory()`` (a model built on ``meta``), stopped at once if the config describes far more
    parameters than the weights in ``folder`` hold (counted from the safetensors headers, before any
    name mapping: for models whose mapping depends on the built model)."""
    import math

    files = checkpoint_files(folder)
    numel = sum(
        math.prod(info["shape"])
        for path in files
        for name, info in verify_safetensors(path).items()
        if name != "__metadata__"
    )
    where = files[0].name if len(files) == 1 else f"the {len(files)} shards in {folder}"
    return meta_build(factory, stored_numel=numel, config=Path(folder) / "config.json", weights=where)


def read_config(folder: Path, class_name: str, loader: str, parse: Callable[[dict[str, Any]], C]) -> C:
    """``folder/config.json`` of a diffusers ``class_name``, parsed by ``parse`` into our config.

    :param loader: our class, named in the error when the folder holds another diffusers class.
    :raises CheckpointError: a missing or unreadable file, another class, or values ``parse`` rejects.
    """
    path = folder / "config.json"
    if not path.is_file():
        nested = (folder / "transformer" / "config.json").is_file()
        hint = f"; did you mean {folder / 'transformer'}?" if nested else ""
        raise CheckpointError(f"{path} not found: expected a diffusers {class_name} folder{hint}")
    config = read_json(path)
    check_config_values(config, path)
    name = config.get("_class_name", class_name)
    if name != class_name:
        raise CheckpointError(f"{path} describes a {name}; {loader} loads {class_name} checkpoints")
    try:
        return parse(config)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: {e}") from e


def load_pretrained(
    model: M,
    ckpt: DiffusersCheckpoint,
    *,
    dtype: torch.dtype | None,
    device: torch.device | str = "cpu",
    keep_fp32: Callable[[str], bool] | None = None,
    zero_init: Iterable[str] = (),
) -> M:
    """Check ``ckpt`` against ``model`` (built on ``meta``), then load it with ``assign=True``.

    :param dtype: parameter dtype (``None`` keeps the stored dtypes); names for which ``keep_fp32``
        is true stay fp32 (diffusers' ``_keep_in_fp32_modules``).
    :param zero_init: our names the checkpoint may lack; they are filled with zeros.
    :returns: the model, in eval mode.
    :raises CheckpointError: missing, unexpected or mis-shaped tensors, or unreadable data.
    """
    import torch

    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    zeros = list(zero_init)
    ckpt.check_against({k: v for k, v in expected.items() if k not in zeros})
    state = {}
    for name, tensor in ckpt.tensors(device=device):
        target = torch.float32 if dtype is not None and keep_fp32 and keep_fp32(name) else dtype
        state[name] = tensor if target is None or not tensor.is_floating_point() else tensor.to(target)
    for name in zeros:
        state[name] = torch.zeros(expected[name], device=device, dtype=dtype or torch.float32)
    model.load_state_dict(state, strict=True, assign=True)
    return model.eval()
