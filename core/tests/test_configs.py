"""Typed configs: validation messages, overrides, dtype normalization."""

from __future__ import annotations

import dataclasses

import pytest

from fastvideo.configs import ParallelConfig, PipelineConfig, SamplingParams, normalize_dtype


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_inference_steps": -1}, "num_inference_steps must be an integer in [1, 1000], got -1"),
        ({"num_inference_steps": 0}, "num_inference_steps must be an integer in [1, 1000], got 0"),
        (
            {"num_inference_steps": 1_000_000},
            "num_inference_steps must be an integer in [1, 1000], got 1000000",
        ),
        ({"num_frames": 0}, "num_frames must be an integer >= 1, got 0"),
        ({"height": 2.5}, "height must be an integer >= 1, got 2.5"),
        ({"width": True}, "width must be an integer >= 1, got True"),
        ({"seed": -3}, "seed must be an integer in [0, 2**64 - 1], got -3"),
        ({"seed": 2**64}, "seed must be an integer in [0, 2**64 - 1], got 18446744073709551616"),
        ({"seed": 10**400}, f"seed must be an integer in [0, 2**64 - 1], got {10**400}"),
        ({"fps": "24"}, "fps must be an integer >= 1, got '24'"),
        ({"guidance_scale": -0.5}, "guidance_scale must be a number >= 0.0, got -0.5"),
        ({"guidance_scale_2": -1.0}, "guidance_scale_2 must be a number >= 0.0, got -1.0"),
        ({"flow_shift": "3"}, "flow_shift must be a number >= 0.0, got '3'"),
        ({"max_sequence_length": 0}, "max_sequence_length must be an integer in [1, 4096], got 0"),
        ({"max_sequence_length": 10**6}, "max_sequence_length must be an integer in [1, 4096], got 1000000"),
        ({"guidance_scale": float("nan")}, "guidance_scale must be a finite number >= 0.0, got nan"),
        ({"guidance_scale": float("inf")}, "guidance_scale must be a finite number >= 0.0, got inf"),
        ({"guidance_scale_2": float("inf")}, "guidance_scale_2 must be a finite number >= 0.0, got inf"),
        ({"flow_shift": float("nan")}, "flow_shift must be a finite number >= 0.0, got nan"),
        ({"guidance_scale": float("-inf")}, "guidance_scale must be a finite number >= 0.0, got -inf"),
        ({"guidance_scale": 10**400}, f"guidance_scale must be a finite number >= 0.0, got {10**400}"),
    ],
    ids=lambda v: next(iter(v)) if isinstance(v, dict) else None,
)
def test_sampling_params_reject_bad_values(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError) as err:
        SamplingParams(**kwargs)  # type: ignore[arg-type]
    assert str(err.value) == message


def test_sampling_params_prompt_must_be_a_string() -> None:
    with pytest.raises(TypeError, match="prompt must be a string, got list"):
        SamplingParams(prompt=["a", "b"])  # type: ignore[arg-type]


def test_sampling_params_are_frozen_and_keyword_only() -> None:
    params = SamplingParams()
    with pytest.raises(dataclasses.FrozenInstanceError):
        params.seed = 1  # type: ignore[misc]
    with pytest.raises(TypeError):
        SamplingParams("a prompt")  # type: ignore[misc]


def test_with_overrides_ignores_none_and_keeps_the_rest() -> None:
    base = SamplingParams(prompt="a", num_frames=33, seed=7)
    new = base.with_overrides({"num_frames": 17, "seed": None, "guidance_scale": 5.0})
    assert (new.num_frames, new.seed, new.guidance_scale, new.prompt) == (17, 7, 5.0, "a")
    assert base.num_frames == 33  # the original is unchanged
    assert base.with_overrides({}) == base


def test_with_overrides_rejects_unknown_keys() -> None:
    with pytest.raises(TypeError) as err:
        SamplingParams().with_overrides({"steps": 4, "num_frame": 9})
    assert str(err.value).startswith(
        "unknown sampling parameter(s) ['num_frame', 'steps']; valid: audio, backend_options, family_options, flow_shift,"
    )
    assert "num_inference_steps" in str(err.value)


def test_backend_options_merge_option_by_option_and_must_be_nested_mappings() -> None:
    base = SamplingParams(backend_options={"sparse-x": {"window": 3, "ratio": 0.5}})
    new = base.with_overrides({"backend_options": {"sparse-x": {"ratio": 0.7}, "other": {"k": 1}}})
    assert new.backend_options == {"sparse-x": {"window": 3, "ratio": 0.7}, "other": {"k": 1}}
    assert base.backend_options == {"sparse-x": {"window": 3, "ratio": 0.5}}
    with pytest.raises(
        TypeError, match=r"^backend_options must map attention backend names to \{option: value\}"
    ):
        SamplingParams(backend_options={"sparse-x": 0.5})  # type: ignore[dict-item]


def test_with_overrides_validates_the_result() -> None:
    with pytest.raises(ValueError, match=r"num_inference_steps must be an integer in \[1, 1000\], got -2"):
        SamplingParams().with_overrides({"num_inference_steps": -2})


def test_do_cfg() -> None:
    assert not SamplingParams(guidance_scale=1.0).do_cfg
    assert SamplingParams(guidance_scale=1.5).do_cfg


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("bf16", "bf16"),
        ("bfloat16", "bf16"),
        ("torch.bfloat16", "bf16"),
        ("FP16", "fp16"),
        ("half", "fp16"),
        ("float16", "fp16"),
        ("float", "fp32"),
        ("float32", "fp32"),
        (None, None),
    ],
)
def test_dtype_names_are_normalized(value: str | None, expected: str | None) -> None:
    assert normalize_dtype(value) == expected
    config = PipelineConfig(dtype=value, vae_dtype=value, text_encoder_dtype=value)
    assert (config.dtype, config.vae_dtype, config.text_encoder_dtype) == (expected, expected, expected)


def test_dtype_normalization_works_on_torch_dtypes() -> None:
    import torch

    assert PipelineConfig(dtype=torch.bfloat16).dtype == "bf16"  # type: ignore[arg-type]


def test_bad_dtype_names_the_field() -> None:
    with pytest.raises(ValueError) as err:
        PipelineConfig(vae_dtype="int8")
    assert str(err.value) == "vae_dtype must be one of bf16, fp16, fp32, got 'int8'"


def test_pipeline_config_overrides() -> None:
    config = PipelineConfig().with_overrides(
        {"dtype": "float16", "device": None, "attention_backend": "sdpa"}
    )
    assert (config.dtype, config.device, config.attention_backend) == ("fp16", None, "sdpa")
    with pytest.raises(
        TypeError, match=r"unknown pipeline option\(s\) \['gpus'\]; valid: attention_backend,"
    ):
        PipelineConfig().with_overrides({"gpus": 2})


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_gpus": 0}, "num_gpus must be an integer >= 1, got 0"),
        ({"sp_size": 0}, "sp_size must be an integer >= 1, got 0"),
        ({"ring_size": -1}, "ring_size must be an integer >= 1, got -1"),
        ({"tp_size": 1.5}, "tp_size must be an integer >= 1, got 1.5"),
        ({"timeout_s": float("inf")}, "timeout_s must be a finite number >= 1.0, got inf"),
        ({"timeout_s": float("nan")}, "timeout_s must be a finite number >= 1.0, got nan"),
    ],
    ids=["num_gpus", "sp_size", "ring_size", "tp_size", "timeout_inf", "timeout_nan"],
)
def test_parallel_config_validation(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError) as err:
        ParallelConfig(**kwargs)  # type: ignore[arg-type]
    assert str(err.value) == message


def test_seed_upper_bound_is_inclusive() -> None:
    assert SamplingParams(seed=2**64 - 1).seed == 2**64 - 1
    assert SamplingParams(num_inference_steps=1000, max_sequence_length=4096).num_inference_steps == 1000


@pytest.mark.parametrize(
    ("cls", "kwargs", "message"),
    [
        (SamplingParams, {"negative_prompt": 5}, "negative_prompt must be a string or None, got int (5)"),
        (SamplingParams, {"image": 3}, "image must be a string or None, got int (3)"),
        (PipelineConfig, {"attention_backend": 1}, "attention_backend must be a string or None, got int (1)"),
        (PipelineConfig, {"device": 0}, "device must be a string or None, got int (0)"),
        (PipelineConfig, {"token": b"x"}, "token must be a string or None, got bytes (b'x')"),
        (PipelineConfig, {"progress": "no"}, "progress must be True or False, got str ('no')"),
        (PipelineConfig, {"compile": 1}, "compile must be True or False or None, got int (1)"),
        (PipelineConfig, {"parallel": {"num_gpus": 2}}, "parallel must be a ParallelConfig, got dict"),
        (
            ParallelConfig,
            {"strategies": "ulysses"},
            "strategies must be a list of names, got str ('ulysses')",
        ),
        (
            ParallelConfig,
            {"strategies": ["a", 2]},
            "strategies must be a list of names (strings), got int (2)",
        ),
        (ParallelConfig, {"fsdp": "yes"}, "fsdp must be True or False, got str ('yes')"),
    ],
    ids=lambda v: next(iter(v)) if isinstance(v, dict) else None,
)
def test_configs_reject_wrong_types(cls: type, kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(TypeError) as err:
        cls(**kwargs)
    assert str(err.value).startswith(message)
    assert "\n" not in str(err.value)


def test_bad_dtype_value_names_the_field() -> None:
    with pytest.raises(ValueError) as err:
        PipelineConfig(dtype=3)  # type: ignore[arg-type]
    assert str(err.value) == "dtype must be one of bf16, fp16, fp32, got 3"


def test_path_and_device_objects_are_normalized() -> None:
    import pathlib

    import torch

    assert SamplingParams(image=pathlib.Path("cat.png")).image == "cat.png"
    assert PipelineConfig(device=torch.device("cuda", 1)).device == "cuda:1"
    assert ParallelConfig(strategies=["a", "b"]).strategies == ("a", "b")
