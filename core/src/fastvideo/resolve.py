"""Model resolution: preset name | Hugging Face repo id | local diffusers folder -> family + files.

Order: presets (names and aliases) first, then a local folder, then a repo id that a preset
declares, then detectors on ``_class_name`` of ``model_index.json`` (local folder or Hub).

A local folder may carry its sampling defaults in ``fastvideo.json`` (:data:`FOLDER_SETTINGS`):
``{"preset": "wan-toy", "sampling": {"num_frames": 17, ...}}``. ``fv train`` writes it into its
exports and the shipped ``wan-toy`` has one, so a copy or a fine-tune of a preset samples like the
preset (its ``sampling`` entries win over the named preset's).
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.resources
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastvideo.errors import ModelNotCachedError, ModelNotFoundError
from fastvideo.interfaces.model_family import ModelFamily, ModelSource, Preset
from fastvideo.registry import KNOWN_PROVIDERS, get_registry

#: ``_class_name`` / repo-id patterns of families whose plugin may not be installed.
KNOWN_FAMILY_PATTERNS: tuple[tuple[str, str], ...] = (
    (r"^wan|/wan|wan2\.", "wan"),
    (r"hunyuan", "hunyuan"),
    (r"^ltx|/ltx|lightricks", "ltx"),
    (r"cosmos", "cosmos"),
    (r"step-?video", "stepvideo"),
)

#: The file of a local model folder that holds its sampling defaults and the preset it derives from.
FOLDER_SETTINGS = "fastvideo.json"

_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")


@dataclass(frozen=True)
class PresetMatch:
    family: type[ModelFamily]
    preset: Preset


def families() -> list[type[ModelFamily]]:
    return get_registry().classes("model_family")  # type: ignore[return-value]


def all_presets() -> list[PresetMatch]:
    return [PresetMatch(fam, p) for fam in families() for p in fam.presets]


def find_preset(model: str) -> PresetMatch | None:
    """A preset whose name, alias or repo id equals ``model`` (case-insensitive)."""
    key = model.strip().lower()
    for m in all_presets():
        names = {m.preset.name, *m.preset.aliases}
        if key in names or (m.preset.repo_id and m.preset.repo_id.lower() == key):
            return m
    return None


def detect_family(model_index: dict[str, Any]) -> type[ModelFamily] | None:
    matches = [fam for fam in families() if fam.detect(model_index)]
    return matches[0] if matches else None


def _preset_path(family: type[ModelFamily], preset: Preset) -> Path:
    assert preset.local_path is not None
    path = Path(preset.local_path)
    if not path.is_absolute():
        package = family.__module__.split(".")[0]
        path = Path(str(importlib.resources.files(package))) / preset.local_path
    return path


def _missing_family(model: str, model_index: dict[str, Any] | None = None) -> ModelNotFoundError | None:
    """The error for a model of a known family whose plugin is not installed, if it is one."""
    installed = [f.name for f in families()]
    haystack = f"{model} {model_index.get('_class_name', '') if model_index else ''}".lower()
    for pattern, fam in KNOWN_FAMILY_PATTERNS:
        if fam not in installed and re.search(pattern, haystack):
            pkg = KNOWN_PROVIDERS["model_family"][fam]
            return ModelNotFoundError(
                f"{model!r} is a {fam} model, but the {fam} family is not installed; pip install {pkg}"
            )
    return None


def _not_found(model: str, model_index: dict[str, Any] | None = None) -> ModelNotFoundError:
    missing = _missing_family(model, model_index)
    if missing is not None:
        return missing
    installed = [f.name for f in families()]
    candidates = [p.preset.name for p in all_presets()] + [
        p.preset.repo_id for p in all_presets() if p.preset.repo_id
    ]
    close = difflib.get_close_matches(model, candidates, n=3, cutoff=0.5)
    msg = f"Unknown model {model!r}: not a preset, a local diffusers folder or a known Hub repo."
    if model_index is not None:
        msg = f"No installed family handles {model!r} (_class_name {model_index.get('_class_name')!r})."
    if close:
        msg += f" Did you mean {', '.join(repr(c) for c in close)}?"
    msg += f" Installed families: {', '.join(installed) or 'none'} (see `fv models list`)."
    return ModelNotFoundError(msg)


def folder_settings(source: ModelSource) -> dict[str, Any]:
    """What :data:`FOLDER_SETTINGS` of a folder made from ``source`` holds: the preset it derives from
    (when it is an installed preset) and ``source``'s sampling defaults (the fields that are set)."""
    params = source.family.sampling_defaults(source)
    sampling = {
        k: v
        for k, v in dataclasses.asdict(params).items()
        # the request's own inputs and switches (the soundtrack toggle) are no model default
        if k not in ("prompt", "image", "audio") and v is not None and v != {}  # no empty backend_options
    }
    preset = source.preset.name if source.preset is not None else None
    if preset is not None and find_preset(preset) is None:
        preset = None  # a folder's own defaults (see _folder_preset), not an installed preset
    return {"preset": preset, "family": source.family.name, "sampling": sampling}


def write_folder_settings(folder: str | Path, source: ModelSource) -> Path:
    """Write :data:`FOLDER_SETTINGS` into ``folder`` for a model made from ``source``."""
    path = Path(folder) / FOLDER_SETTINGS
    path.write_text(json.dumps(folder_settings(source), indent=2, ensure_ascii=False) + "\n")
    return path


def _folder_preset(family: type[ModelFamily], folder: Path) -> Preset | None:
    """The preset that a local folder's :data:`FOLDER_SETTINGS` gives: the named preset (when it is
    one of ``family``'s) with the file's sampling entries on top, or a preset of the folder's own
    defaults; None without the file."""
    path = folder / FOLDER_SETTINGS
    if not path.is_file():
        return None
    try:
        settings = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: not valid JSON ({exc}); fix or delete the file") from None
    sampling = settings.get("sampling") if isinstance(settings, dict) else None
    if not isinstance(settings, dict) or not isinstance(sampling, (dict, type(None))):
        raise ValueError(f'{path}: expected {{"preset": NAME, "sampling": {{...}}}}; fix or delete the file')
    sampling = {k: v for k, v in (sampling or {}).items() if v is not None}
    from fastvideo.configs import SamplingParams

    try:
        SamplingParams().with_overrides(sampling)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{path}: {exc}") from None
    named = settings.get("preset")
    match = find_preset(named) if isinstance(named, str) else None
    if match is not None and match.family is family:
        return dataclasses.replace(match.preset, sampling={**match.preset.sampling, **sampling})
    return Preset(name=folder.name, local_path=str(folder), sampling=sampling)


def resolve_family(
    model: str, *, revision: str | None = None, token: str | None = None
) -> tuple[type[ModelFamily], Preset | None, str | Path, dict[str, Any] | None]:
    """Family, preset, location (repo id or local path) and, when read, the model index.

    Does not download weights: at most ``model_index.json`` of a repo that no preset declares.
    """
    match = find_preset(model)
    if match is not None:
        if match.preset.local_path is not None:
            return match.family, match.preset, _preset_path(match.family, match.preset), None
        return match.family, match.preset, str(match.preset.repo_id), None
    path = Path(model).expanduser()
    if path.is_dir():
        from fastvideo.loader.components import read_model_index

        index = read_model_index(path)
        family = detect_family(index)
        if family is None:
            raise _not_found(model, index)
        return family, _folder_preset(family, path.resolve()), path.resolve(), index
    if _REPO_ID.match(model):
        from fastvideo.loader.hub import fetch_model

        try:
            index_file = fetch_model(model, revision=revision, token=token, filename="model_index.json")
        except (ModelNotCachedError, ModelNotFoundError):
            missing = _missing_family(model)  # installing the family's plugin is the first fix
            if missing is None:
                raise
            raise missing from None
        from fastvideo.loader.validate import read_json

        index = read_json(index_file)
        family = detect_family(index)
        if family is None:
            raise _not_found(model, index)
        return family, None, model, index
    raise _not_found(model)


def resolve(
    model: str,
    *,
    revision: str | None = None,
    token: str | None = None,
    local_files_only: bool = False,
) -> ModelSource:
    """Resolve ``model`` to a :class:`ModelSource` with every file local (downloading if needed)."""
    family, preset, where, _ = resolve_family(model, revision=revision, token=token)
    return fetch_source(
        family, preset, where, revision=revision, token=token, local_files_only=local_files_only
    )


def fetch_source(
    family: type[ModelFamily],
    preset: Preset | None,
    where: str | Path,
    *,
    revision: str | None = None,
    token: str | None = None,
    local_files_only: bool = False,
) -> ModelSource:
    """The :class:`ModelSource` of what :func:`resolve_family` found, with every file local
    (``where``, a Hub repo id, is downloaded)."""
    from fastvideo.loader.components import read_model_index
    from fastvideo.loader.hub import fetch_model

    repo_id = None
    if isinstance(where, str):
        repo_id = where
        where = fetch_model(where, revision=revision, token=token, local_files_only=local_files_only)
    index = read_model_index(where)
    return ModelSource(family=family, path=Path(where), model_index=index, preset=preset, repo_id=repo_id)
