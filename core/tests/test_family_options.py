"""Model families' own request settings (``ModelFamily.sampling_options``): carried in
``SamplingParams.family_options``, checked and typed by the family, and given ``fv generate`` flags
the same way attention backends' options are."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest

from fastvideo.configs import SamplingParams
from fastvideo.interfaces.attention import BackendOption
from fastvideo.interfaces.model_family import ModelFamily, ModelSource
from fastvideo.testing import fake_plugins, plugin_module


class Knobby(ModelFamily):
    name = "knobby"
    pipeline_class_names = ("KnobbyPipeline",)
    sampling_options: ClassVar[tuple[BackendOption, ...]] = (
        BackendOption(
            name="motion",
            type=float,
            default=5.0,
            help="How much it moves.",
            cli_flags=("--knob-motion",),
            validate=lambda v: None if v >= 0 else "must be >= 0",
        ),
        BackendOption(name="style", type=str, default="plain"),  # API only: no flag
    )

    @classmethod
    def build_pipeline(cls, source: Any, config: Any) -> Any:
        raise NotImplementedError


class Plain(Knobby):
    name = "plain"
    sampling_options = ()


@pytest.fixture
def families() -> Iterator[None]:
    with fake_plugins(plugin_module("knobby-plugin", fv_register_model_families=lambda: [Knobby, Plain])):
        yield


def source(family: type[ModelFamily]) -> ModelSource:
    return ModelSource(family=family, path=Path("."), model_index={"_class_name": "KnobbyPipeline"})


def params(**options: Any) -> SamplingParams:
    return SamplingParams(height=64, width=64, num_frames=1, family_options=options)


def test_values_are_typed_defaults_filled_and_merged_on_override() -> None:
    assert Knobby.option_values(params()) == {"motion": 5.0, "style": "plain"}
    assert Knobby.option_values(params(knobby={"motion": "10"})) == {"motion": 10.0, "style": "plain"}
    p = params(knobby={"motion": 2}).with_overrides({"family_options": {"knobby": {"style": "bold"}}})
    assert p.family_options == {"knobby": {"motion": 2, "style": "bold"}}  # merged option by option
    assert Knobby.option_values(p) == {"motion": 2.0, "style": "bold"}
    assert Plain.option_values(params()) == {}


def test_bad_options_are_one_line_errors_from_validate() -> None:
    Knobby.validate(params(knobby={"motion": 1.5}), source(Knobby))
    cases = [
        (Knobby, {"knobby": {"motion": "-1"}}, r"^knobby option 'motion' \(--knob-motion\) must be >= 0, got '-1'$"),
        (Knobby, {"knobby": {"motion": "fast"}}, r"^knobby option 'motion' \(--knob-motion\) must be a number"),
        (Knobby, {"knobby": {"speed": 1}}, r"^model family knobby has no option 'speed' \(its options: motion, style\)$"),
        (Plain, {"knobby": {"motion": 1}}, r"^options of model family knobby were given .*this checkpoint is a plain model; drop them$"),
    ]  # fmt: skip
    for family, options, message in cases:
        with pytest.raises(ValueError, match=message):
            family.validate(params(**options), source(family))
    with pytest.raises(TypeError, match=r"^family_options must map model family names to \{option: value\}"):
        SamplingParams(family_options={"knobby": 3.0})  # type: ignore[dict-item]


def test_fv_generate_has_the_declared_flags_and_passes_them_on(
    families: None, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from fastvideo import cli

    with pytest.MonkeyPatch.context() as mp, pytest.raises(SystemExit) as exit_:
        mp.setattr(sys, "argv", ["fv", "generate", "--help"])
        cli.main()
    help_text = capsys.readouterr().out
    assert exit_.value.code == 0
    assert "--knob-motion FLOAT" in help_text and "model family knobby" in help_text
    assert "--style" not in help_text

    seen: dict[str, Any] = {}

    def fake_preflight(model: str, sampling: dict[str, Any], config: Any) -> Any:
        seen.update(sampling)
        raise ValueError("stop here")

    monkeypatch.setattr("fastvideo.generator.preflight", fake_preflight)
    with pytest.raises(SystemExit) as exit_:
        cli.main(["generate", "-p", "x", "--model", "m", "--knob-motion", "7", "--device", "cpu"])
    assert exit_.value.code == 2 and capsys.readouterr().err == "error: stop here\n"
    assert seen["family_options"] == {"knobby": {"motion": "7"}}  # typed by the family's validate
    assert "backend_options" not in seen
