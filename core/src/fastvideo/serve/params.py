"""Requests of ``POST /v1/videos`` -> sampling overrides, checked like ``fv generate`` checks its flags.

The OpenAI fields (``prompt``, ``model``, ``size`` as ``WIDTHxHEIGHT``, ``seconds``) plus ours
(``num_frames``, ``seed``, ``num_inference_steps``, ``guidance_scale``, ``negative_prompt``, ``fps``,
``priority``). Values come as strings (multipart forms, what the OpenAI SDK sends) or JSON values. A
value of the wrong type is a :class:`RequestError` with status 422; a value the model rejects is 400
with the one-line message ``fv generate`` prints for it (the family's own check, through
:func:`fastvideo.generator.preflight`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

MAX_SEED = 2**64 - 1

#: Accepted names -> the SamplingParams field they set (aliases in the second group).
FIELDS = {
    "negative_prompt": "negative_prompt",
    "num_frames": "num_frames",
    "seed": "seed",
    "num_inference_steps": "num_inference_steps",
    "guidance_scale": "guidance_scale",
    "fps": "fps",
    # aliases
    "frames": "num_frames",
    "steps": "num_inference_steps",
    "guidance": "guidance_scale",
}
OTHER = ("prompt", "model", "size", "seconds", "priority", "input_reference")
_INTS = {"num_frames", "seed", "num_inference_steps", "fps"}
_SIZE = re.compile(r"^\s*(\d{1,5})\s*[xX]\s*(\d{1,5})\s*$")


class RequestError(ValueError):
    """A bad request: one line, an HTTP status (400 or 422) and the parameter it is about."""

    def __init__(self, message: str, *, status: int = 400, param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.param = param


@dataclass(frozen=True)
class JobRequest:
    model: str
    prompt: str
    overrides: dict[str, Any]  # SamplingParams fields the request set (the prompt included)
    size: str  # WIDTHxHEIGHT of the video that will be made
    seconds: str
    priority: int


def _int(name: str, value: Any, low: int, high: int | None = None) -> int:
    text = str(value).strip()
    if isinstance(value, bool) or not re.fullmatch(r"[+-]?\d+", text):
        raise RequestError(f"{name} must be an integer, got {str(value)[:40]!r}", status=422, param=name)
    number = int(text)
    if number < low or (high is not None and number > high):
        top = f" to {high if high < 2**63 else '2**64-1'}" if high is not None else " or more"
        raise RequestError(f"{name} must be {low}{top}, got {number}", param=name)
    return number


def _float(name: str, value: Any) -> float:
    try:
        number = float(str(value).strip())
    except ValueError:
        raise RequestError(
            f"{name} must be a number, got {str(value)[:40]!r}", status=422, param=name
        ) from None
    if number != number or number in (float("inf"), float("-inf")):
        raise RequestError(f"{name} must be a finite number, got {value!r}", param=name)
    return number


class Validator:
    """Checks requests against the models the server was started with (their defaults read once)."""

    def __init__(
        self,
        models: tuple[str, ...],
        config: Any,
        *,
        max_prompt_chars: int = 4000,
        max_pixels: int | None = None,
    ) -> None:
        from fastvideo.generator import preflight

        self.models = models
        self.config = config
        self.max_prompt_chars = max_prompt_chars
        self.max_pixels = max_pixels  # frames x height x width of one video
        self.plans = {m: preflight(m, {}, config, validate=False) for m in models}

    def family(self, model: str) -> str:
        return str(self.plans[model].family.name)

    def defaults(self, model: str) -> dict[str, Any]:
        import dataclasses

        p = self.plans[model].params
        keep = ("num_frames", "height", "width", "num_inference_steps", "guidance_scale", "seed", "fps")
        return {k: v for k, v in dataclasses.asdict(p).items() if k in keep}

    def parse(self, fields: dict[str, Any], *, image: str | None = None) -> JobRequest:
        """Check ``fields`` (the form or JSON body) and resolve them against the model's defaults."""
        unknown = sorted(k for k in fields if k not in FIELDS and k not in OTHER)
        if unknown:
            valid = ", ".join(sorted((*OTHER, *FIELDS)))
            raise RequestError(
                f"unknown parameter {unknown[0]!r}; valid parameters: {valid}", param=unknown[0]
            )
        model = self._model(fields.get("model"))
        prompt = fields.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            raise RequestError(
                "prompt is required: a non-empty text describing the video", status=422, param="prompt"
            )
        if len(prompt) > self.max_prompt_chars:
            raise RequestError(
                f"prompt has {len(prompt)} characters; this server takes at most {self.max_prompt_chars}",
                param="prompt",
            )
        overrides: dict[str, Any] = {"prompt": prompt}
        seen: dict[str, str] = {}
        for key, value in fields.items():
            target = FIELDS.get(key)
            if target is None or value is None or value == "":
                continue
            if target in seen:
                raise RequestError(f"{seen[target]} and {key} set the same thing; give one", param=key)
            seen[target] = key
            if target == "negative_prompt":
                overrides[target] = str(value)
            elif target == "seed":
                overrides[target] = _int(key, value, 0, MAX_SEED)
            elif target in _INTS:
                overrides[target] = _int(key, value, 1)
            else:
                overrides[target] = _float(key, value)
        size = fields.get("size")
        if size not in (None, ""):
            match = _SIZE.match(str(size))
            if not match:
                raise RequestError(
                    f"size must be WIDTHxHEIGHT in pixels (e.g. 832x480), got {str(size)[:40]!r}",
                    status=422,
                    param="size",
                )
            overrides["width"], overrides["height"] = int(match[1]), int(match[2])
            if 0 in (overrides["width"], overrides["height"]):
                raise RequestError(f"size must be at least 1x1, got {size!r}", param="size")
        seconds = fields.get("seconds")
        if seconds not in (None, ""):
            if "num_frames" in overrides:
                raise RequestError(
                    f"seconds and {seen['num_frames']} set the same thing; give one", param="seconds"
                )
            secs = _float("seconds", seconds)
            if secs <= 0:
                raise RequestError(f"seconds must be more than 0, got {seconds!r}", param="seconds")
            fps = overrides.get("fps", self.plans[model].params.fps)
            overrides["num_frames"] = round(secs * fps) + 1  # a clip of s seconds spans s*fps frame intervals
        if image is not None:
            overrides["image"] = image
        priority = (
            _int("priority", fields["priority"], -1000, 1000)
            if fields.get("priority") not in (None, "")
            else 0
        )
        params = self._check(model, overrides)
        pixels = params.num_frames * params.height * params.width
        if self.max_pixels is not None and pixels > self.max_pixels:
            raise RequestError(
                f"a video of {params.num_frames} frames of {params.width}x{params.height} is {pixels} pixels; this "
                f"server makes at most {self.max_pixels} (fv serve --max-pixels): ask for fewer frames or a smaller size"
            )
        video_seconds = (
            str(seconds).strip() if seconds not in (None, "") else f"{(params.num_frames - 1) / params.fps:g}"
        )
        return JobRequest(
            model, prompt, overrides, f"{params.width}x{params.height}", video_seconds, priority
        )

    def _model(self, model: Any) -> str:
        if model in (None, ""):
            return self.models[0]
        if model not in self.models:
            raise RequestError(
                f"model {str(model)[:80]!r} is not served here; this server serves: {', '.join(self.models)}",
                param="model",
            )
        return str(model)

    def _check(self, model: str, overrides: dict[str, Any]) -> Any:
        """The family's checks (what ``fv generate`` runs before loading); the resolved parameters."""
        from fastvideo.generator import preflight

        try:
            return preflight(model, overrides, self.config).params
        except (ValueError, TypeError) as exc:
            message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise RequestError(message) from None
