"""The conformance tests every model family's DiT passes, against its diffusers reference.

A family's ``tests/test_model.py`` subclasses :class:`DiTConformance` and fills in a page of
parameters; pytest then runs every check below on its model::

    class TestWanConformance(DiTConformance):
        model_class = WanTransformer
        family = "wan"
        real_configs = CONFIGS                       # real-size diffusers configs (meta device)
        parity_cases = [pytest.param({}, {}, id="t2v"), ...]   # (config overrides, make_inputs kwargs)
        bad_configs = [(dict(freq_dim=33), "freq_dim=33")]
        checkpoint_edits = [...]                     # (edit of the diffusers state dict, error, regex)

        def make_inputs(self, config, **kw):         # the model's positional inputs, seeded
            ...

The family's ``conftest.py`` provides the ``tiny_checkpoint`` fixture: ``make(**overrides) ->
(folder, diffusers model in fp32 with random weights)``, written by diffusers' ``save_pretrained``.

What is checked: fp32 parity with the diffusers model on the same weights; a bf16 load (dtypes as
diffusers keeps them, ``fp32_modules`` included) close to diffusers in bf16; seeded determinism and
finite, non-zero gradients for every parameter; the real-size architectures on the ``meta`` device
(names and shapes through the name mapping, and the config round trip); the name mapping's round
trip, rules and errors; loading errors that name the file or tensor; bad configs and inputs with
one-line messages; the declared metadata (FSDP units, fp32 modules, sparse attention layers, the
sequence-parallel plan) against the modules and calls they describe; regional compilation; and
that the registered family name resolves. Tests that need a family's numbers stay in its file.

Importing this module imports pytest and torch (it is for test suites only).
"""

from __future__ import annotations

import fnmatch
import functools
import json
import math
import re
import shutil
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch

from fastvideo.attention import ALL, use_backend
from fastvideo.errors import CheckpointError
from fastvideo.loader.checkpoint import INDEX_NAME, WEIGHTS_NAME
from fastvideo.loader.mapping import UnmappedKeysError, template_pattern
from fastvideo.testing.checkpoints import assert_same_placeholders, rewrite_checkpoint

Inputs = tuple[Any, ...]


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """``max |out - ref| / max |ref|`` in fp32, the parity metric (NaN, and so failing, if any is)."""
    return ((out.float() - ref.float()).abs().max() / ref.float().abs().max()).item()


@functools.cache
def _meta_reference(class_name: str, config_json: str) -> torch.nn.Module:
    """diffusers' ``class_name`` built from a config on the ``meta`` device (cached: real sizes)."""
    import diffusers

    cfg = {k: v for k, v in json.loads(config_json).items() if not k.startswith("_")}
    with torch.device("meta"):
        return getattr(diffusers, class_name)(**cfg)


def _plain(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """A config dict without private keys, tuples as lists (how JSON stores them)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items() if not k.startswith("_")}


def _pop(state: dict[str, Any], name: str) -> None:
    del state[name]


class _ModuleStack:
    """Names of the modules whose forward is running, innermost last (forward hooks)."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.names: list[str] = []
        self.handles = []
        for name, module in model.named_modules():
            self.handles.append(module.register_forward_pre_hook(functools.partial(self._enter, name)))
            self.handles.append(module.register_forward_hook(self._leave, always_call=True))

    def _enter(self, name: str, module: torch.nn.Module, args: Any) -> None:
        self.names.append(name)

    def _leave(self, module: torch.nn.Module, args: Any, output: Any) -> None:
        self.names.pop()

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


class DiTConformance:
    """Base class of a family's model conformance tests (see the module docstring)."""

    #: our DiT (a :class:`fastvideo.models.DiT`); its ``diffusers_class`` is the reference.
    model_class: ClassVar[Any]  # a fastvideo.models.DiT subclass
    #: the registered model family name.
    family: ClassVar[str]
    #: real-size diffusers configs by preset name, for the ``meta``-device checks.
    real_configs: ClassVar[Mapping[str, Mapping[str, Any]]] = {}
    #: ``pytest.param(config overrides, make_inputs kwargs, id=...)``: fp32 parity cases.
    parity_cases: ClassVar[Sequence[Any]] = ()
    parity_tolerance: ClassVar[float] = 1e-4
    #: (overrides, inputs) of the bf16 load check, and the relative error it allows (rounding).
    low_precision_case: ClassVar[tuple[dict, dict]] = ({}, {})
    low_precision_tolerance: ClassVar[float] = 3e-2
    #: parameters that must be among those kept in fp32 (beyond the comparison with diffusers).
    fp32_expected: ClassVar[tuple[str, ...]] = ()
    #: (overrides, inputs) of the determinism / gradient check and of the attention-call check.
    grad_case: ClassVar[tuple[dict, dict]] = ({}, {})
    #: config overrides under which every declared module exists (e.g. the optional image layers).
    metadata_overrides: ClassVar[dict[str, Any]] = {}
    #: (overrides, inputs) under which every sequence-parallel argument has all the video tokens.
    sp_case: ClassVar[tuple[dict, dict]] = ({}, {})
    #: ``(bad config kwargs, regex of the ValueError)``.
    bad_configs: ClassVar[Sequence[tuple[dict, str]]] = ()
    #: ``pytest.param(edit(inputs) -> inputs, regex of the ValueError, id=...)`` beyond a bad latent.
    bad_inputs: ClassVar[Sequence[Any]] = ()
    #: a config.json change rejected on load, and the regex of the CheckpointError.
    bad_checkpoint_config: ClassVar[tuple[dict, str]] = ({}, "")
    #: Edits of the tiny diffusers weights and the errors that must name the tensor: a name to drop,
    #: a ``(name, shape)`` the config has no place for, and ``(name, wrong shape, the config's shape)``;
    #: ``unmapped_example`` is added as the unmapped one. More: ``checkpoint_edits``.
    missing_example: ClassVar[str] = ""
    unexpected_example: ClassVar[tuple[str, tuple[int, ...]]] = ("", ())
    mis_shaped_example: ClassVar[tuple[str, tuple[int, ...], tuple[int, ...]]] = ("", (), ())
    #: ``pytest.param(edit(state dict), error class, regex, id=...)``: further edits.
    checkpoint_edits: ClassVar[Sequence[Any]] = ()
    #: ``max_shard_size`` that splits the tiny checkpoint into several files.
    shard_size: ClassVar[str] = "20KB"
    #: The config key of the block count (the absurd-config test sets it to 100000).
    layers_key: ClassVar[str] = "num_layers"
    #: the rules every one of which some real config uses (default: all of the mapping's).
    used_rules: ClassVar[Sequence[tuple[str, str]] | None] = None
    #: ``{their name: our name}`` examples of the mapping (values must pass through untouched).
    mapping_examples: ClassVar[Mapping[str, str]] = {}
    #: a diffusers name no rule maps (a LoRA weight), for the unmapped-names error.
    unmapped_example: ClassVar[str] = ""

    def make_inputs(self, config: Any, **kwargs: Any) -> Inputs:
        """The model's positional inputs for a diffusers config (seeded, CPU, fp32)."""
        raise NotImplementedError

    def run(self, model: Any, args: Inputs) -> torch.Tensor:
        """Our model's prediction on ``make_inputs``' arguments, shaped like the latents ``args[0]``
        (override for a DiT with other outputs, e.g. a video and an audio stream)."""
        return model(*args)

    def run_reference(self, ref: Any, args: Inputs) -> torch.Tensor:
        """diffusers' prediction on the same arguments, in :meth:`run`'s layout; a family whose DiT
        takes other inputs than diffusers' (LTX-Video's packed tokens) converts them here, and the
        output back."""
        return ref(*args, return_dict=False)[0]

    # ---- pytest plumbing ------------------------------------------------------------------------

    def pytest_generate_tests(self, metafunc: pytest.Metafunc) -> None:
        """Parametrize the kit's tests from the subclass's parameters (an empty list skips the test)."""
        params = {
            "test_forward_matches_reference_fp32": (("overrides", "inputs"), self.parity_cases),
            "test_real_size_names_and_shapes_match_reference": ("real_config", sorted(self.real_configs)),
            "test_real_names_round_trip_one_to_one": ("real_config", sorted(self.real_configs)),
            "test_config_rejects_bad_values_with_numbers": (("bad", "words"), self.bad_configs),
            "test_bad_inputs_say_what_to_pass": (
                ("edit", "words"),
                [*self._latent_cases(), *self.bad_inputs],
            ),
            "test_state_dict_mismatch_names_the_tensor": (
                ("edit", "error", "words"),
                [*self._checkpoint_cases(), *self.checkpoint_edits],
            ),
        }
        if metafunc.function.__name__ in params:
            names, values = params[metafunc.function.__name__]
            metafunc.parametrize(names, list(values))

    def _checkpoint_cases(self) -> list[Any]:
        def put(name: str, shape: tuple[int, ...]) -> Callable[[dict], None]:
            return lambda sd: sd.__setitem__(name, torch.zeros(shape))  # name, shape: this call's

        cases = []
        if self.missing_example:
            name = self.missing_example
            words = rf"missing 1 tensor.*{re.escape(name)}"
            cases.append(
                pytest.param(functools.partial(_pop, name=name), CheckpointError, words, id="missing")
            )
        if self.unexpected_example[0]:
            name, shape = self.unexpected_example
            words = rf"unexpected tensor.*{re.escape(name)} \({WEIGHTS_NAME}"
            cases.append(pytest.param(put(name, shape), CheckpointError, words, id="unexpected"))
        if self.unmapped_example:
            name = self.unmapped_example
            cases.append(pytest.param(put(name, (4, 4)), UnmappedKeysError, re.escape(name), id="unmapped"))
        if self.mis_shaped_example[0]:
            name, bad, want = self.mis_shaped_example
            words = rf"{re.escape(name)} .*{re.escape(str(bad))}, the config needs {re.escape(str(want))}"
            cases.append(pytest.param(put(name, bad), CheckpointError, words, id="shape-mismatch"))
        return cases

    def _latent_cases(self) -> list[Any]:
        def odd_height(args: Inputs) -> Inputs:
            return (args[0][..., :-1, :], *args[1:])

        return [
            pytest.param(
                odd_height, r"must be divisible by the patch \(t, h, w\)", id="latent-not-patch-multiple"
            )
        ]

    @pytest.fixture(autouse=True)
    def _dense_sdpa(self) -> Iterator[None]:
        with use_backend("sdpa"):  # other installed attention plugins must not change the numbers
            yield

    def load(self, folder: Path, dtype: torch.dtype | None = torch.float32) -> Any:
        return self.model_class.from_pretrained(folder, dtype=dtype)

    def tiny_config(self, ref: Any) -> Any:
        return self.model_class.parse_config(dict(ref.config))

    # ---- numerics against diffusers -------------------------------------------------------------

    def test_forward_matches_reference_fp32(
        self, tiny_checkpoint: Callable, overrides: dict, inputs: dict
    ) -> None:
        folder, ref = tiny_checkpoint(**overrides)
        ours = self.load(folder)
        args = self.make_inputs(ref.config, **inputs)
        with torch.no_grad():
            expected = self.run_reference(ref, args)
            out = self.run(ours, args)
        assert out.shape == expected.shape == (args[0].shape[0], ref.config.out_channels, *args[0].shape[2:])
        assert rel_err(out, expected) <= self.parity_tolerance

    def low_precision_inputs(self, args: Inputs) -> Inputs:
        """bf16 copies of the floating inputs, except the timestep (argument 1)."""
        return tuple(
            a.bfloat16() if i != 1 and isinstance(a, torch.Tensor) and a.is_floating_point() else a
            for i, a in enumerate(args)
        )

    def test_bf16_load_keeps_reference_dtypes_and_is_close(self, tiny_checkpoint: Callable) -> None:
        """A bf16 load has diffusers' dtypes tensor by tensor (its fp32-kept modules are exactly
        our ``fp32_modules``), and the bf16 forwards differ by rounding only."""
        import diffusers

        overrides, inputs = self.low_precision_case
        folder, _ = tiny_checkpoint(**overrides)
        ours = self.load(folder, dtype=torch.bfloat16)
        ref_class = getattr(diffusers, self.model_class.diffusers_class)
        ref = ref_class.from_pretrained(folder, torch_dtype=torch.bfloat16)
        mapping = self.model_class.name_mapping
        expected = mapping.to_ours({k: v.dtype for k, v in ref.state_dict().items()})
        got = {k: v.dtype for k, v in ours.state_dict().items()}
        assert got == expected
        fp32 = {k for k, d in got.items() if d == torch.float32}
        assert fp32 == {k for k in got if self.model_class.is_fp32_param(k)}
        assert set(self.fp32_expected) <= fp32
        args = self.low_precision_inputs(self.make_inputs(ref.config, **inputs))
        with torch.no_grad():
            out, expected_out = self.run(ours, args), self.run_reference(ref, args)
        assert out.dtype == torch.bfloat16
        assert rel_err(out, expected_out) <= self.low_precision_tolerance

    def test_seeded_determinism_and_finite_gradients(self, tiny_checkpoint: Callable) -> None:
        overrides, inputs = self.grad_case
        folder, ref = tiny_checkpoint(**overrides)
        model = self.load(folder)
        args = self.make_inputs(ref.config, **inputs)
        with torch.no_grad():
            assert torch.equal(self.run(model, args), self.run(model, args))
        model.train()
        self.run(model, args).square().mean().backward()
        for name, p in model.named_parameters():
            assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name
        cfg = self.tiny_config(ref)
        built = []
        for _ in range(2):
            torch.manual_seed(0)
            built.append(self.model_class.from_config(cfg, device="cpu").state_dict())
        assert all(torch.equal(built[0][k], built[1][k]) for k in built[0])

    def test_from_config_on_cpu_initializes_and_runs(self, tiny_checkpoint: Callable) -> None:
        _, ref = tiny_checkpoint()
        model = self.model_class.from_config(self.tiny_config(ref), device="cpu")
        assert all(torch.isfinite(p).all() and p.device.type == "cpu" for p in model.parameters())
        args = self.make_inputs(ref.config)
        with torch.no_grad():
            out = self.run(model, args)
        assert out.shape == (args[0].shape[0], ref.config.out_channels, *args[0].shape[2:])
        assert torch.isfinite(out).all()

    def test_compile_blocks_keeps_outputs_and_names(self, tiny_checkpoint: Callable) -> None:
        folder, ref = tiny_checkpoint()
        model = self.load(folder)
        args = self.make_inputs(ref.config)
        names = list(model.state_dict())
        with torch.no_grad():
            eager = self.run(model, args)
            compiled = self.run(model.compile_blocks(backend="eager"), args)
        assert list(model.state_dict()) == names
        torch.testing.assert_close(compiled, eager)

    # ---- real sizes and the name mapping ----------------------------------------------------------

    def reference_on_meta(self, name: str) -> torch.nn.Module:
        cfg = json.dumps(_plain(self.real_configs[name]), sort_keys=True)
        return _meta_reference(self.model_class.diffusers_class, cfg)

    def test_real_size_names_and_shapes_match_reference(self, real_config: str) -> None:
        """Built from the real config on ``meta``: every diffusers tensor has exactly one of ours,
        same shape; our config writes back diffusers' config."""
        ref = self.reference_on_meta(real_config)
        cfg = self.real_configs[real_config]
        ours = self.model_class.from_config(cfg)
        assert all(p.is_meta for p in ours.parameters())
        theirs = {k: tuple(v.shape) for k, v in ref.state_dict().items()}
        mine = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
        assert len(mine) == len(theirs)
        assert self.model_class.name_mapping.to_theirs(mine) == theirs
        assert _plain(self.model_class.parse_config(cfg).to_diffusers_config()) == _plain(ref.config)  # type: ignore[arg-type]

    def test_real_names_round_trip_one_to_one(self, real_config: str) -> None:
        mapping = self.model_class.name_mapping
        names = list(self.reference_on_meta(real_config).state_dict())
        ours = mapping.to_ours({k: k for k in names})
        assert len(ours) == len(names)  # no two diffusers names land on one of ours
        assert set(ours) == set(self.model_class.from_config(self.real_configs[real_config]).state_dict())
        assert mapping.to_theirs(dict(ours)) == {d: d for d in names}

    def test_every_rule_is_used_by_a_real_checkpoint(self) -> None:
        rules = self.used_rules if self.used_rules is not None else self.model_class.name_mapping.rules
        names = {n for c in self.real_configs for n in self.reference_on_meta(c).state_dict()}
        assert names, f"{type(self).__name__} declares no real_configs"
        for theirs, ours in rules:
            pattern = template_pattern(theirs)
            assert any(pattern.fullmatch(n) for n in names), (
                f"rule {theirs} -> {ours} matches no diffusers name"
            )

    def test_rules_use_the_same_placeholders_on_both_sides(self) -> None:
        assert_same_placeholders(self.model_class.name_mapping.rules)

    def test_mapping_renames_and_passes_values_through(self) -> None:
        assert self.mapping_examples, f"{type(self).__name__}: declare mapping_examples {{their name: ours}}"
        mapping = self.model_class.name_mapping
        values = {theirs: object() for theirs in self.mapping_examples}
        out = mapping.to_ours(values)
        assert out.keys() == set(self.mapping_examples.values())
        assert all(out[ours] is values[theirs] for theirs, ours in self.mapping_examples.items())
        assert mapping.to_theirs(out) == values

    def test_unmapped_names_are_all_listed(self) -> None:
        assert self.mapping_examples and self.unmapped_example, (
            f"{type(self).__name__}: declare mapping_examples and unmapped_example"
        )
        mapping = self.model_class.name_mapping
        known = next(iter(self.mapping_examples))
        with pytest.raises(
            UnmappedKeysError, match=rf"2 diffusers name\(s\).*{re.escape(self.unmapped_example)}, foo"
        ) as info:
            mapping.to_ours({self.unmapped_example: 0, known: 1, "foo": 2})
        assert info.value.keys == [self.unmapped_example, "foo"]
        with pytest.raises(UnmappedKeysError, match=rf"{mapping.ours} name\(s\).*{re.escape(known)}"):
            mapping.to_theirs({known: 0})  # a diffusers name is not one of ours

    def test_checkpoint_reads_headers_then_tensors(self, tiny_checkpoint: Callable, tmp_path: Path) -> None:
        folder, ref = tiny_checkpoint()
        ref.save_pretrained(tmp_path, max_shard_size=self.shard_size)
        open_ = self.model_class.open_checkpoint
        assert len(open_(folder).files) == 1 and len(open_(tmp_path).files) > 1
        mapping = self.model_class.name_mapping
        expected = mapping.to_ours({k: tuple(v.shape) for k, v in ref.state_dict().items()})
        theirs = mapping.to_ours(ref.state_dict())
        for path in (folder, tmp_path):
            ckpt = open_(path)
            assert ckpt.shapes == expected
            ckpt.check_against(expected)
            tensors = dict(ckpt.tensors())
            assert tensors.keys() == theirs.keys() and all(torch.equal(tensors[k], theirs[k]) for k in theirs)

    # ---- loading errors ---------------------------------------------------------------------------

    def test_sharded_checkpoint_loads_like_single_file(
        self, tiny_checkpoint: Callable, tmp_path: Path
    ) -> None:
        folder, ref = tiny_checkpoint()
        ref.save_pretrained(tmp_path, max_shard_size=self.shard_size)
        assert (tmp_path / INDEX_NAME).is_file() and not (tmp_path / WEIGHTS_NAME).exists()
        sharded = self.load(tmp_path).state_dict()
        single = self.load(folder).state_dict()
        assert sharded.keys() == single.keys() and all(torch.equal(sharded[k], single[k]) for k in single)
        shard = sorted(json.loads((tmp_path / INDEX_NAME).read_text())["weight_map"].values())[-1]
        (tmp_path / shard).unlink()
        with pytest.raises(CheckpointError, match=shard):
            self.load(tmp_path)

    def test_missing_files_and_wrong_class_name_the_path(
        self, tiny_checkpoint: Callable, tmp_path: Path
    ) -> None:
        with pytest.raises(CheckpointError, match=r"config\.json not found"):
            self.load(tmp_path)
        (tmp_path / "transformer").mkdir()
        shutil.copy(tiny_checkpoint()[0] / "config.json", tmp_path / "transformer" / "config.json")
        with pytest.raises(CheckpointError, match=r"did you mean .*transformer"):
            self.load(tmp_path)
        with pytest.raises(CheckpointError, match=f"{WEIGHTS_NAME} or {INDEX_NAME}"):
            self.load(tmp_path / "transformer")
        path = tmp_path / "transformer" / "config.json"
        path.write_text(
            json.dumps({**json.loads(path.read_text()), "_class_name": "OtherTransformer3DModel"})
        )
        with pytest.raises(
            CheckpointError,
            match=f"describes a OtherTransformer3DModel; {self.model_class.__name__} loads "
            f"{self.model_class.diffusers_class}",
        ):
            self.load(tmp_path / "transformer")

    def test_bad_config_value_is_a_checkpoint_error(self, tiny_checkpoint: Callable, tmp_path: Path) -> None:
        change, words = self.bad_checkpoint_config
        if not change:
            pytest.skip(f"{type(self).__name__} declares no bad_checkpoint_config")
        shutil.copytree(tiny_checkpoint()[0], tmp_path / "bad")
        path = tmp_path / "bad" / "config.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), **change}))
        with pytest.raises(CheckpointError, match=words):
            self.load(tmp_path / "bad")

    def test_truncated_and_corrupt_safetensors_name_the_file(
        self, tiny_checkpoint: Callable, tmp_path: Path
    ) -> None:
        src = tiny_checkpoint()[0]
        damages = {"truncated": lambda b: b[: len(b) // 2], "corrupt": lambda b: b"\xff" * 64 + b[64:]}
        for name, damage in damages.items():
            folder = tmp_path / name
            shutil.copytree(src, folder)
            path = folder / WEIGHTS_NAME
            path.write_bytes(damage(path.read_bytes()))
            with pytest.raises(CheckpointError, match=f"{name}/{WEIGHTS_NAME}"):
                self.load(folder)

    @pytest.mark.parametrize("how", ["truncate", "flip", "drop", "reshape"])
    @pytest.mark.parametrize("sharded", [False, True], ids=["single", "sharded"])
    def test_damaged_copy_is_a_one_line_error(
        self, tiny_checkpoint: Callable, tmp_path: Path, how: str, sharded: bool
    ) -> None:
        """A damaged copy of the tiny DiT (:func:`fastvideo.testing.corrupt_copy`) fails to load
        with one line naming the damaged file or tensor; it never loads silently."""
        from fastvideo.testing.checkpoints import corrupt_copy

        folder, ref = tiny_checkpoint()
        if sharded:
            ref.save_pretrained(tmp_path / "sharded", max_shard_size=self.shard_size)
            folder = tmp_path / "sharded"
        damaged = corrupt_copy(folder, tmp_path / "damaged", how)
        with pytest.raises(CheckpointError) as info:
            self.load(damaged.path.parent)
        message = str(info.value)
        named = str(damaged.path) if how == "truncate" else damaged.tensor
        assert "\n" not in message and named is not None and named in message, message

    def test_absurd_config_is_refused_before_building_it(
        self, tiny_checkpoint: Callable, tmp_path: Path
    ) -> None:
        """A config describing far more layers than the weights hold (:attr:`layers_key` = 100000) stops
        while the model is built on meta, naming the config and the stored parameter count."""
        import time

        from safetensors import safe_open

        src = tiny_checkpoint()[0]
        with safe_open(str(src / WEIGHTS_NAME), "pt") as f:
            stored = sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())
        folder = tmp_path / "ckpt"
        shutil.copytree(src, folder)
        cfg = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps({**cfg, self.layers_key: 100_000}))
        start = time.perf_counter()
        with pytest.raises(CheckpointError) as err:
            self.load(folder)
        assert time.perf_counter() - start < 5 and isinstance(err.value, ValueError)
        assert str(err.value).startswith(f"{folder / 'config.json'} describes at least "), err.value
        assert f"the weights ({WEIGHTS_NAME}) hold {stored:,}: the config does not match" in str(err.value)

    def test_state_dict_mismatch_names_the_tensor(
        self, tiny_checkpoint: Callable, tmp_path: Path, edit: Callable, error: type, words: str
    ) -> None:
        folder = rewrite_checkpoint(tiny_checkpoint()[0], tmp_path / "ckpt", edit)
        with pytest.raises(error, match=words):
            self.load(folder)

    # ---- bad configs and inputs ---------------------------------------------------------------------

    def test_config_rejects_bad_values_with_numbers(self, bad: dict, words: str) -> None:
        with pytest.raises(ValueError, match=re.escape(words)):
            self.model_class.config_class(**bad)

    def test_bad_inputs_say_what_to_pass(self, tiny_checkpoint: Callable, edit: Callable, words: str) -> None:
        folder, ref = tiny_checkpoint()
        model = self.load(folder)
        args = edit(self.make_inputs(ref.config))
        with pytest.raises(ValueError, match=words) as info, torch.no_grad():
            self.run(model, args)
        assert "\n" not in str(info.value)  # one line

    # ---- declared metadata --------------------------------------------------------------------------

    def test_class_metadata_names_real_modules(self, tiny_checkpoint: Callable) -> None:
        cls = self.model_class
        model = cls.from_config(self.tiny_config(tiny_checkpoint(**self.metadata_overrides)[1]))
        classes = {type(m).__name__ for m in model.modules()}
        assert set(cls.fsdp_units) <= classes
        names = [n for n, _ in model.named_parameters()]
        for entry in cls.fp32_modules:  # every entry keeps something
            assert any(cls.is_fp32_param(n) and entry.split(".")[-1] in n.split(".") for n in names), entry
        assert all(len(getattr(model, b)) for b in cls.block_lists)
        modules = [n for n, _ in model.named_modules()]
        for pattern in cls.sparse_attention_layers:
            assert any(fnmatch.fnmatch(n, pattern) for n in modules), pattern
        if cls.sequence_parallel_plan is not None:
            from fastvideo.parallel.sequence import read_plan

            assert read_plan(model) is cls.sequence_parallel_plan  # every shard name is a block argument

    def test_sparse_attention_layers_are_the_layers_that_admit_sparse_backends(
        self, tiny_checkpoint: Callable, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Every attention call inside a module the class declares sparse admits every backend
        (``allow=ALL``), and every other call admits dense backends only."""
        from fastvideo.attention import selector

        overrides, inputs = self.grad_case
        folder, ref = tiny_checkpoint(**overrides)
        model = self.load(folder)
        stack = _ModuleStack(model)
        calls: list[tuple[str, Any]] = []
        local = selector.attention_local

        def spy(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, **kw: Any) -> torch.Tensor:
            calls.append((stack.names[-1], kw.get("allow")))
            return local(q, k, v, **kw)

        monkeypatch.setattr(selector, "attention_local", spy)
        try:
            with torch.no_grad():
                self.run(model, self.make_inputs(ref.config, **inputs))
        finally:
            stack.remove()
        assert calls
        declared = self.model_class.sparse_attention_layers
        sparse = {n for n, allow in calls if allow == ALL}
        assert sparse == {n for n, _ in calls if any(fnmatch.fnmatch(n, p) for p in declared)}

    def test_sequence_parallel_plan_names_the_token_arguments(self, tiny_checkpoint: Callable) -> None:
        """Each named argument reaches every block with all video tokens on its token dim, and the
        last block's output has them on the declared dim."""
        plan = self.model_class.sequence_parallel_plan
        if plan is None:
            pytest.skip(f"{self.model_class.__name__} declares no sequence_parallel_plan")
        overrides, inputs = self.sp_case
        folder, ref = tiny_checkpoint(**overrides)
        model = self.load(folder)
        args = self.make_inputs(ref.config, **inputs)
        tokens = math.prod(model.token_grid(args[0].shape))
        blocks = list(model.blocks_in_order())
        seen, outputs = [], []

        def check(module: torch.nn.Module, a: tuple, kw: dict, output: Any) -> None:
            values = {
                n: (a[i] if i is not None and i < len(a) else kw[n])
                for n, (i, _) in plan.resolve(module).items()
            }
            seen.append({n: values[n].shape[d] for n, (_, d) in plan.resolve(module).items()})
            outputs.append(output)

        handles = [b.register_forward_hook(check, with_kwargs=True) for b in blocks]
        with torch.no_grad():
            self.run(model, args)
        for h in handles:
            h.remove()
        assert seen == [dict.fromkeys(plan.shard, tokens)] * len(blocks)
        out = outputs[-1]
        spec = {None: plan.output} if isinstance(plan.output, int) else dict(plan.output)
        for index, dim in spec.items():
            assert (out if index is None else out[index]).shape[dim] == tokens

    def test_registered_family_name_resolves(self) -> None:
        from fastvideo.registry import get_registry

        entry = get_registry().get("model_family", self.family)
        assert entry.cls.name == self.family  # type: ignore[attr-defined]
