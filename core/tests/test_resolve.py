"""Model resolution (preset | local folder | Hub repo id) and request validation, with a fake family."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest

from fastvideo.configs import SamplingParams
from fastvideo.errors import CheckpointError, ModelNotCachedError, ModelNotFoundError
from fastvideo.interfaces import ModelFamily, Preset
from fastvideo.interfaces.model_family import ModelSource
from fastvideo.resolve import find_preset, resolve, resolve_family
from fastvideo.testing import fake_plugins, plugin_env, plugin_module, run_python, write_hf_cache


class FakeFamily(ModelFamily):
    name = "fake-fam"
    pipeline_class_names = ("FakePipeline",)
    spatial_factor = 16
    temporal_factor = 4
    default_sampling: ClassVar[dict[str, Any]] = {
        "num_frames": 33,
        "height": 256,
        "width": 256,
        "guidance_scale": 4.0,
    }
    presets: ClassVar[tuple[Preset, ...]] = (
        Preset(
            name="fake-1b",
            repo_id="FvTest/Fake-1B-Diffusers",
            aliases=("fake",),
            sampling={"num_inference_steps": 8, "height": 128},
        ),
    )

    @classmethod
    def build_pipeline(cls, source, config):  # type: ignore[no-untyped-def]
        raise NotImplementedError


def _folder(path: Path, class_name: str) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "model_index.json").write_text(
        json.dumps({"_class_name": class_name, "transformer": ["diffusers", "X"]})
    )
    return path


@pytest.fixture
def family(tmp_path: Path) -> Iterator[type[ModelFamily]]:
    local = _folder(tmp_path / "shipped", "FakePipeline")

    class WithLocal(FakeFamily):
        presets = (*FakeFamily.presets, Preset(name="fake-local", local_path=str(local)))

    with fake_plugins(plugin_module("fake-family-plugin", fv_register_model_families=lambda: [WithLocal])):
        yield WithLocal


@pytest.mark.parametrize(
    "model", ["fake-1b", "fake", "FAKE-1B", "fvtest/fake-1b-diffusers", " FvTest/Fake-1B-Diffusers "]
)
def test_preset_found_by_name_alias_or_repo_id(family: type[ModelFamily], model: str) -> None:
    match = find_preset(model)
    assert match is not None
    assert (match.family, match.preset.name) == (family, "fake-1b")
    assert resolve_family(model) == (family, family.presets[0], "FvTest/Fake-1B-Diffusers", None)


def test_local_folder_is_detected_by_class_name(family: type[ModelFamily], tmp_path: Path) -> None:
    folder = _folder(tmp_path / "ckpt", "FakePipeline")
    fam, preset, where, index = resolve_family(str(folder))
    assert (fam, preset, where) == (family, None, folder.resolve())
    assert index == {"_class_name": "FakePipeline", "transformer": ["diffusers", "X"]}
    source = resolve(str(folder))
    assert (source.family, source.path, source.preset, source.repo_id) == (
        family,
        folder.resolve(),
        None,
        None,
    )
    assert source.class_name == "FakePipeline"


def test_preset_with_a_local_path(family: type[ModelFamily], tmp_path: Path) -> None:
    source = resolve("fake-local")
    assert source.path == tmp_path / "shipped"
    assert source.preset is not None and source.preset.name == "fake-local"
    assert source.model_index["_class_name"] == "FakePipeline"


def test_folder_of_an_unhandled_pipeline(family: type[ModelFamily], tmp_path: Path) -> None:
    folder = _folder(tmp_path / "other", "OtherPipeline")
    with pytest.raises(ModelNotFoundError) as err:
        resolve_family(str(folder))
    assert str(err.value) == (
        f"No installed family handles {str(folder)!r} (_class_name 'OtherPipeline'). "
        "Installed families: fake-fam (see `fv models list`)."
    )


def test_folder_of_a_known_family_that_is_not_installed(family: type[ModelFamily], tmp_path: Path) -> None:
    folder = _folder(tmp_path / "ckpt", "HunyuanVideoPipeline")
    with pytest.raises(
        ModelNotFoundError,
        match=r"is a hunyuan model, but the hunyuan family is not installed; pip install fastvideo-hunyuan$",
    ):
        resolve_family(str(folder))


def test_folder_without_model_index(family: type[ModelFamily], tmp_path: Path) -> None:
    with pytest.raises(
        CheckpointError, match=re.escape("is not a diffusers-format folder: model_index.json is missing")
    ):
        resolve_family(str(tmp_path))


def test_unknown_name_suggests_presets(family: type[ModelFamily]) -> None:
    with pytest.raises(ModelNotFoundError) as err:
        resolve_family("fake-1")
    assert str(err.value) == (
        "Unknown model 'fake-1': not a preset, a local diffusers folder or a known Hub repo. "
        "Did you mean 'fake-1b', 'fake-local'? Installed families: fake-fam (see `fv models list`)."
    )


def test_hub_repo_of_a_family_that_is_not_installed_offline(
    family: type[ModelFamily], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotFoundError) as err:
        resolve_family("hunyuanvideo-community/HunyuanVideo")
    assert str(err.value) == (
        "'hunyuanvideo-community/HunyuanVideo' is a hunyuan model, but the hunyuan family is not installed; "
        "pip install fastvideo-hunyuan"
    )


def test_unknown_hub_repo_offline(family: type[ModelFamily], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(
        ModelNotCachedError, match=r"^fvtest/unknown-model is not in the local Hugging Face cache"
    ):
        resolve_family("fvtest/unknown-model")


def test_cached_hub_repo_is_detected_by_the_installed_family(dummy_site: Path, tmp_path: Path) -> None:
    index = json.dumps({"_class_name": "GoodPipeline", "scheduler": ["diffusers", "X"]})
    snapshot = write_hf_cache(tmp_path / "hf", "fvtest/cached-good", {"model_index.json": index})
    proc = run_python(
        """
        from fastvideo.resolve import resolve, resolve_family
        family, preset, where, index = resolve_family("fvtest/cached-good")
        print(family.name, preset, where, index["_class_name"])
        source = resolve("fvtest/cached-good")
        print(source.family.name, source.repo_id, source.path)
        """,
        env=plugin_env(
            dummy_site, HF_HOME=str(tmp_path / "hf"), HF_HUB_OFFLINE="1", FASTVIDEO_PLUGINS="fvtest-good"
        ),
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [
        "good-family None fvtest/cached-good GoodPipeline",
        f"good-family fvtest/cached-good {snapshot}",
    ]


# ---------------------------------------------------------------- defaults and validation of a request


def _source(family: type[ModelFamily], preset: Preset | None = None) -> ModelSource:
    return ModelSource(family=family, path=Path(), model_index={}, preset=preset)


def test_sampling_defaults_layer_generic_family_and_preset() -> None:
    params = FakeFamily.sampling_defaults(_source(FakeFamily, FakeFamily.presets[0]))
    generic = SamplingParams()
    assert (params.num_frames, params.width, params.guidance_scale) == (33, 256, 4.0)  # family
    assert (params.height, params.num_inference_steps) == (128, 8)  # preset
    assert (params.seed, params.fps) == (generic.seed, generic.fps)  # generic
    assert FakeFamily.sampling_defaults(_source(FakeFamily)).height == 256


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"height": 250}, "height=250 is not divisible by 16, which fake-fam requires; use 240 or 256"),
        ({"width": 8}, "width=8 is not divisible by 16, which fake-fam requires; use 16 or 32"),
        ({"num_frames": 32}, "num_frames=32 is invalid for fake-fam: it must be 4*k+1 (e.g. 29 or 33)"),
    ],
    ids=["height", "width", "frames"],
)
def test_validate_explains_the_family_rules(override: dict[str, int], message: str) -> None:
    params = FakeFamily.sampling_defaults(_source(FakeFamily)).with_overrides(override)
    with pytest.raises(ValueError) as err:
        FakeFamily.validate(params, _source(FakeFamily))
    assert str(err.value) == message


def test_validate_accepts_a_valid_request() -> None:
    params = SamplingParams(num_frames=37, height=512, width=912)
    FakeFamily.validate(params, _source(FakeFamily))


def test_preset_needs_exactly_one_location() -> None:
    with pytest.raises(ValueError, match="preset 'x' needs exactly one of repo_id or local_path"):
        Preset(name="x")
    with pytest.raises(ValueError, match="needs exactly one"):
        Preset(name="x", repo_id="a/b", local_path="/c")


# ---------------------------------------------------------------- fastvideo.json of local folders


def _with_settings(folder: Path, settings: object) -> Path:
    (folder / "fastvideo.json").write_text(json.dumps(settings))
    return folder


def test_local_folder_takes_the_sampling_defaults_of_its_preset(
    family: type[ModelFamily], tmp_path: Path
) -> None:
    folder = _with_settings(_folder(tmp_path / "copy", "FakePipeline"), {"preset": "fake-1b", "sampling": {}})
    source = resolve(str(folder))
    assert source.path == folder.resolve() and source.preset is not None
    preset_source = ModelSource(family=family, path=Path(), model_index={}, preset=family.presets[0])
    expected = family.sampling_defaults(preset_source)
    assert family.sampling_defaults(source) == expected
    assert (expected.height, expected.num_inference_steps) == (128, 8)  # the preset's, not the family's
    # the file's own entries win over the preset's
    _with_settings(folder, {"preset": "fake-1b", "sampling": {"num_inference_steps": 3, "fps": 12}})
    params = family.sampling_defaults(resolve(str(folder)))
    assert (params.height, params.num_inference_steps, params.fps) == (128, 3, 12)


def test_local_folder_with_sampling_and_no_known_preset(family: type[ModelFamily], tmp_path: Path) -> None:
    folder = _with_settings(
        _folder(tmp_path / "export", "FakePipeline"),
        {"preset": None, "sampling": {"num_frames": 9, "height": 64, "width": 96}},
    )
    fam, preset, _, _ = resolve_family(str(folder))
    assert fam is family and preset is not None and preset.name == "export"
    params = family.sampling_defaults(resolve(str(folder)))
    assert (params.num_frames, params.height, params.width, params.guidance_scale) == (9, 64, 96, 4.0)
    _with_settings(folder, {"preset": "no-such-preset", "sampling": {"height": 32}})  # falls back to the file
    assert family.sampling_defaults(resolve(str(folder))).height == 32


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", 'expected {"preset": NAME, "sampling": {...}}'),
        ('{"sampling": {"steps": 4}}', "unknown sampling parameter(s) ['steps']"),
        ('{"sampling": {"guidance_scale": NaN}}', "guidance_scale must be a finite number >= 0.0, got nan"),
    ],
    ids=["json", "shape", "unknown-key", "nan"],
)
def test_bad_folder_settings_name_the_file(
    family: type[ModelFamily], tmp_path: Path, content: str, message: str
) -> None:
    folder = _folder(tmp_path / "bad", "FakePipeline")
    (folder / "fastvideo.json").write_text(content)
    with pytest.raises(ValueError) as err:
        resolve_family(str(folder))
    assert str(err.value).startswith(f"{folder.resolve() / 'fastvideo.json'}: ")
    assert message in str(err.value) and "\n" not in str(err.value)


def test_folder_settings_round_trip(family: type[ModelFamily], tmp_path: Path) -> None:
    from fastvideo.resolve import folder_settings, write_folder_settings

    base = _folder(tmp_path / "a", "FakePipeline")
    hub_like = ModelSource(family=family, path=base, model_index={}, preset=family.presets[0])
    settings = folder_settings(hub_like)
    assert settings["preset"] == "fake-1b" and settings["family"] == "fake-fam"
    assert "prompt" not in settings["sampling"] and settings["sampling"]["num_inference_steps"] == 8
    copy = _folder(tmp_path / "b", "FakePipeline")
    write_folder_settings(copy, hub_like)
    assert family.sampling_defaults(resolve(str(copy))) == family.sampling_defaults(hub_like)


# ---------------------------------------------------------------- the text encoder's length limit


def test_max_sequence_length_is_bounded_by_the_text_encoder(tmp_path: Path) -> None:
    folder = _folder(tmp_path / "ckpt", "FakePipeline")
    (folder / "text_encoder").mkdir()
    (folder / "text_encoder" / "config.json").write_text(json.dumps({"max_position_embeddings": 77}))
    (folder / "tokenizer").mkdir()
    (folder / "tokenizer" / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 10**30}))
    source = ModelSource(family=FakeFamily, path=folder, model_index={})
    assert FakeFamily.max_sequence_length(source) == 77
    params = FakeFamily.sampling_defaults(source)
    FakeFamily.validate(params.with_overrides({"max_sequence_length": 77}), source)
    with pytest.raises(ValueError) as err:
        FakeFamily.validate(params.with_overrides({"max_sequence_length": 78}), source)
    assert str(err.value) == (
        "max_sequence_length=78 is more than this checkpoint's text encoder takes (77 tokens); use at most 77"
    )
    (folder / "text_encoder" / "config.json").write_text(
        json.dumps({"d_model": 64})
    )  # T5: relative positions
    assert FakeFamily.max_sequence_length(source) is None
    assert FakeFamily.max_sequence_length(_source(FakeFamily)) is None  # no local files
