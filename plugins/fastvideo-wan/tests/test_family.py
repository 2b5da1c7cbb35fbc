"""``WanFamily`` reading a checkpoint's configs: the strides it derives and the errors for bad configs."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from fastvideo.errors import CheckpointError
from fastvideo.interfaces.model_family import ModelSource
from fastvideo_wan.family import WanFamily


def _source(tmp_path: Path, vae: Any, dit: Any) -> ModelSource:
    for name, config in (("vae", vae), ("transformer", dit)):
        (tmp_path / name).mkdir()
        text = config if isinstance(config, str) else json.dumps(config)
        (tmp_path / name / "config.json").write_text(text)
    return ModelSource(family=WanFamily, path=tmp_path, model_index={"_class_name": "WanPipeline"})


def test_factors_come_from_the_vae_and_dit_configs(tmp_path: Path) -> None:
    source = _source(
        tmp_path, {"scale_factor_spatial": 16, "scale_factor_temporal": 4}, {"patch_size": [1, 2, 2]}
    )
    assert WanFamily.factors(source) == (32, 4)


@pytest.mark.parametrize(
    ("vae", "dit", "where", "shown"),
    [
        ({"scale_factor_spatial": 0}, {"patch_size": [1, 2, 2]}, "vae", "scale_factor_spatial=0"),
        ({"scale_factor_temporal": 0}, {"patch_size": [1, 2, 2]}, "vae", "scale_factor_temporal=0"),
        ({}, {"patch_size": [1, 0, 2]}, "transformer", "patch_size=[1, 0, 2]"),
    ],
    ids=["spatial", "temporal", "patch"],
)
def test_zero_stride_or_patch_size_names_the_file(
    tmp_path: Path, vae: dict, dit: dict, where: str, shown: str
) -> None:
    source = _source(tmp_path, vae, dit)
    with pytest.raises(
        ValueError, match=re.escape(f"{tmp_path / where / 'config.json'}: {shown} must be a positive")
    ):
        WanFamily.factors(source)


def test_invalid_config_json_names_the_file_and_position(tmp_path: Path) -> None:
    source = _source(tmp_path, '{"z_dim": 16', {"patch_size": [1, 2, 2]})
    with pytest.raises(
        CheckpointError,
        match=re.escape(f"{tmp_path / 'vae' / 'config.json'}: invalid JSON at line 1 column 13: "),
    ):
        WanFamily.factors(source)
