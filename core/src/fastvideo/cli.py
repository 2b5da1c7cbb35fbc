"""The ``fv`` command line (Typer). Heavy imports happen inside commands, never at import time."""

from __future__ import annotations

import contextlib
import functools
import inspect
import json
import os
import re
import sys
import time
import traceback
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

app = typer.Typer(
    name="fv",
    help="fastvideo: fast video diffusion inference and post-training.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
plugins_app = typer.Typer(help="Installed plugins.", no_args_is_help=True)
models_app = typer.Typer(help="Model families and presets.", no_args_is_help=True)
app.add_typer(plugins_app, name="plugins")
app.add_typer(models_app, name="models")

USAGE_ERROR = 2
MAX_SEED = 2**64 - 1


def _err(message: str, code: int) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


def _debug() -> bool:
    return os.environ.get("FASTVIDEO_DEBUG", "") not in ("", "0")


def _show_plugin_tracebacks() -> None:
    """Under ``FASTVIDEO_DEBUG=1``: the traceback of every broken plugin's failure, on stderr."""
    if not _debug():
        return
    from fastvideo.plugins import broken_plugins

    for info in broken_plugins():
        if info.traceback:
            typer.echo(
                f"traceback of plugin {info.dist} ({info.broken}):\n{info.traceback.rstrip()}", err=True
            )


def _with_broken_note(message: str, exc: BaseException) -> str:
    """An unknown model/backend error names the plugins that failed to load (they may be why)."""
    from fastvideo.errors import ModelNotFoundError, UnknownNameError

    if not isinstance(exc, (UnknownNameError, ModelNotFoundError)):
        return message
    from fastvideo.plugins import broken_note

    note = broken_note()
    return f"{message} (note: {note})" if note else message


def _version_callback(value: bool) -> None:
    if not value:
        return
    from fastvideo.plugins import BUILTIN_DIST, _core_version, _entry_points

    typer.echo(f"{BUILTIN_DIST} {_core_version()}")
    seen: set[str] = set()
    for ep in _entry_points():  # metadata only: no plugin is imported
        dist = ep.dist.name if ep.dist else ep.name
        if dist not in seen:
            seen.add(dist)
            version = ep.dist.version if ep.dist else "?"
            typer.echo(f"{dist} {version} (plugin)")
    raise typer.Exit(0)


@app.callback()
def _root(
    version: Annotated[
        Optional[bool],
        typer.Option(
            "--version", is_eager=True, callback=_version_callback, help="Core and plugin versions."
        ),
    ] = None,
) -> None:
    """fastvideo: fast video diffusion inference and post-training."""


@contextlib.contextmanager
def _clean_errors() -> Iterator[None]:
    """Bad input -> one line on stderr and exit 2; other failures -> one line and exit 1.

    ``FASTVIDEO_DEBUG=1`` shows the traceback instead.
    """
    from fastvideo.errors import FastVideoError

    debug = _debug()
    try:
        yield
    except typer.Exit:
        raise
    except (ValueError, FastVideoError) as exc:
        if debug:
            _show_plugin_tracebacks()
            raise
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise _err(_with_broken_note(message, exc), USAGE_ERROR) from None
    except KeyboardInterrupt:
        raise _err("interrupted", 130) from None
    except Exception as exc:
        if debug:
            raise
        raise _err(f"{type(exc).__name__}: {exc} (set FASTVIDEO_DEBUG=1 for the traceback)", 1) from None


# ---------------------------------------------------------------- generate


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:48] or "video"


def _image_or_video(image: str | None, video: str | None) -> str | None:
    """The conditioning input: ``--video`` is a clip given where a family conditions on frames
    (it travels as ``SamplingParams.image``, which such families read as an image or a clip)."""
    if image is not None and video is not None:
        raise ValueError("--image and --video both given; pass one conditioning input")
    return video if video is not None else image


def _default_output(prompt: str, seed: int | None) -> Path:
    """``outputs/<prompt-slug>-<seed>.mp4``, numbered so an existing file is never replaced."""
    base = Path("outputs") / f"{_slug(prompt)}{'' if seed is None else f'-{seed}'}"
    path, n = base.with_suffix(".mp4"), 1
    while path.exists():
        path, n = Path(f"{base}-{n}.mp4"), n + 1
    return path


@app.command()
def generate(
    ctx: typer.Context,
    prompt: Annotated[str, typer.Option("--prompt", "-p", help="What the video shows.")],
    model: Annotated[
        str, typer.Option("--model", "-m", help="Preset, Hub repo id or local diffusers folder.")
    ] = "wan",
    negative_prompt: Annotated[Optional[str], typer.Option(help="What to avoid (CFG).")] = None,
    num_frames: Annotated[Optional[int], typer.Option(help="Frames (Wan: 4k+1).")] = None,
    height: Annotated[Optional[int], typer.Option(help="Height in pixels.")] = None,
    width: Annotated[Optional[int], typer.Option(help="Width in pixels.")] = None,
    num_inference_steps: Annotated[Optional[int], typer.Option("--num-inference-steps", "--steps")] = None,
    guidance_scale: Annotated[Optional[float], typer.Option(help="Classifier-free guidance scale.")] = None,
    guidance_scale_2: Annotated[
        Optional[float], typer.Option(help="Guidance of the low-noise expert (MoE).")
    ] = None,
    seed: Annotated[
        Optional[int], typer.Option(min=0, max=MAX_SEED, help="Random seed, 0 to 2**64-1.")
    ] = None,
    fps: Annotated[Optional[int], typer.Option(help="Frames per second of the mp4.")] = None,
    flow_shift: Annotated[Optional[float], typer.Option(help="Flow-matching timestep shift.")] = None,
    image: Annotated[Optional[str], typer.Option(help="Conditioning image (I2V / TI2V).")] = None,
    video: Annotated[
        Optional[str], typer.Option(help="Conditioning clip, for families that take one.")
    ] = None,
    max_sequence_length: Annotated[Optional[int], typer.Option(help="Text tokens.")] = None,
    audio: Annotated[
        Optional[bool], typer.Option("--audio/--no-audio", help="Decode and write the soundtrack [on].")
    ] = None,
    output: Annotated[
        Optional[Path], typer.Option("--output", "-o", help="mp4 path [outputs/<prompt>-<seed>.mp4].")
    ] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing output file.")] = False,
    lossless: Annotated[bool, typer.Option(help="Bit-exact RGB H.264 (CRF 0) instead of yuv420p.")] = False,
    attention_backend: Annotated[Optional[str], typer.Option(help="sdpa, flash-attn, or a plugin's.")] = None,
    sampler: Annotated[
        Optional[str], typer.Option(help="checkpoint, flow-euler, unipc, few-step, or a plugin's [preset's].")
    ] = None,
    num_gpus: Annotated[
        Optional[int],
        typer.Option(min=1, help="GPUs (one worker each) [1; under torchrun: WORLD_SIZE]."),
    ] = None,
    sp_size: Annotated[
        Optional[int], typer.Option(help="Ulysses degree [GPUs / (ring size x CFG degree)].")
    ] = None,
    ring_size: Annotated[int, typer.Option(help="Ring-attention degree (with --sp-size > 1: USP).")] = 1,
    cfg_parallel: Annotated[bool, typer.Option(help="Run the two CFG branches on different GPUs.")] = False,
    fsdp: Annotated[bool, typer.Option(help="Shard the DiT's weights over the GPUs (FSDP2).")] = False,
    tp_size: Annotated[int, typer.Option(help="Tensor-parallel degree of the text encoders.")] = 1,
    dist_timeout: Annotated[
        float, typer.Option(help="Timeout of collectives between GPUs, seconds.")
    ] = 600.0,
    dtype: Annotated[Optional[str], typer.Option(help="DiT dtype: bf16, fp16 or fp32.")] = None,
    compile: Annotated[
        Optional[bool],
        typer.Option("--compile/--no-compile", help="torch.compile the DiT blocks [on for CUDA]."),
    ] = None,
    guardrail: Annotated[
        Optional[bool],
        typer.Option("--guardrail/--no-guardrail", help="A family's safety checker [on where it has one]."),
    ] = None,
    quantize: Annotated[
        Optional[str], typer.Option(help="fp8 (FP8 linears in the DiT blocks) or fp8-storage (weights only).")
    ] = None,
    fp8_checkpoint: Annotated[
        Optional[str], typer.Option(help="Pre-quantized FP8 DiT .safetensors (LightX2V / Kijai) to load.")
    ] = None,
    cache: Annotated[
        Optional[str], typer.Option(help="Step cache: teacache, firstblock or magcache.")
    ] = None,
    cache_threshold: Annotated[
        Optional[float], typer.Option(min=0.0, help="Step-cache threshold [the cache's published default].")
    ] = None,
    text_kv_cache: Annotated[
        bool, typer.Option(help="Reuse cross-attention keys/values per prompt (lossless).")
    ] = True,
    offload: Annotated[
        Optional[str],
        typer.Option(help="layer: DiT blocks streamed from CPU, encoders/VAE offloaded when idle."),
    ] = None,
    device: Annotated[Optional[str], typer.Option(help="cuda, cuda:N or cpu [cuda when available].")] = None,
    revision: Annotated[Optional[str], typer.Option(help="Hub revision.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON summary of the result.")] = False,
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
    lora: Annotated[
        Optional[list[str]],
        typer.Option("--lora", help="LoRA file or folder, PATH[:scale]; repeatable (merged)."),
    ] = None,
) -> None:
    """Generate a video and write it as mp4.

    The installed attention backends and model families add their options' flags (e.g.
    --vsa-sparsity, --motion-score); see the end of the option list.
    """
    started = time.perf_counter()
    with _clean_errors():
        from fastvideo.configs import ParallelConfig, PipelineConfig
        from fastvideo.generator import preflight
        from fastvideo.video import check_output_path

        sampling = {
            "prompt": prompt,
            "negative_prompt": negative_prompt,
            "num_frames": num_frames,
            "height": height,
            "width": width,
            "num_inference_steps": num_inference_steps,
            "guidance_scale": guidance_scale,
            "guidance_scale_2": guidance_scale_2,
            "seed": seed,
            "fps": fps,
            "flow_shift": flow_shift,
            "image": _image_or_video(image, video),
            "max_sequence_length": max_sequence_length,
            "audio": audio,
            "backend_options": ctx.meta.get(_BACKEND_OPTIONS) or None,
            "family_options": ctx.meta.get(_FAMILY_OPTIONS) or None,
        }
        sampling = {k: v for k, v in sampling.items() if v is not None}
        config = PipelineConfig(
            device=device,
            dtype=dtype,
            compile=compile,
            attention_backend=attention_backend,
            quantize=quantize,
            fp8_checkpoint=fp8_checkpoint,
            cache=cache,
            cache_threshold=cache_threshold,
            text_kv_cache=text_kv_cache,
            offload=offload,
            sampler=sampler,
            guardrail=guardrail,
            revision=revision,
            progress=progress and not as_json,
            parallel=ParallelConfig(
                num_gpus=num_gpus if num_gpus is not None else _world_size(),
                sp_size=sp_size,
                ring_size=ring_size,
                cfg_parallel=cfg_parallel,
                fsdp=fsdp,
                tp_size=tp_size,
                timeout_s=dist_timeout,
            ),
        )
        if output is not None:
            check_output_path(output, overwrite=overwrite)
        _check_device(device)
        plan = preflight(model, sampling, config)  # resolved and validated once, before anything loads
        params = plan.params
        path = output if output is not None else _default_output(params.prompt, params.seed)
        flag = "--video" if video is not None else "--image"
        for image in plan.family.image_files(params.image) if params.image is not None else ():
            if not Path(image).is_file():
                raise ValueError(f"{flag} {image!r} does not exist")
        from fastvideo.generator import parse_lora_spec

        for spec in lora or []:
            if not Path(parse_lora_spec(spec)[0]).expanduser().exists():
                missing = parse_lora_spec(spec)[0]
                raise ValueError(f"--lora {spec!r}: {missing!r} does not exist (PATH[:scale])")

        if config.parallel.num_gpus > 1:
            from fastvideo.parallel.launch import Request, exit_worker, generate_distributed, launched

            request = Request(model, config, sampling, str(path), overwrite, lossless, tuple(lora or ()))
            summary = generate_distributed(request)  # rank 0 writes; None on the other torchrun ranks
            if summary is not None:
                _report(model, summary, as_json, time.perf_counter() - started)
            if launched():
                exit_worker(0)  # see exit_worker: skip the finalization that can abort a gloo rank
            return

        from fastvideo.generator import VideoGenerator

        gen = VideoGenerator.from_config(model, config, sampling_overrides=sampling, plan=plan)
        for spec in lora or []:
            gen.load_lora(spec)
        if lora:
            gen.merge_loras()
        result = gen.generate_video(output_path=path, overwrite=overwrite, lossless=lossless)
        _report(model, result.summary(), as_json, time.perf_counter() - started)


def _check_device(device: str | None) -> None:
    """``--device cuda`` / ``cuda:N`` that this machine cannot give: one clear error before any loading."""
    if device is None or not device.strip().lower().startswith("cuda"):
        return
    import torch

    spec = device.strip().lower()
    index = spec.partition(":")[2]
    if not torch.cuda.is_available():
        build = "a CPU-only build" if torch.version.cuda is None else f"built for CUDA {torch.version.cuda}"
        raise ValueError(
            f"--device {device}: CUDA is not available here (torch {torch.__version__}, {build}, sees no GPU); "
            "use --device cpu, or leave --device out to pick the best device"
        )
    count = torch.cuda.device_count()
    if index and (not index.isdigit() or int(index) >= count):
        raise ValueError(
            f"--device {device}: this machine has {count} CUDA device(s), cuda:0 to cuda:{count - 1}"
        )


#: ``ctx.meta`` key under which the flags of attention backends' options collect their values.
_BACKEND_OPTIONS = "fastvideo.backend_options"
#: the same for model families' ``sampling_options`` (``--motion-score``).
_FAMILY_OPTIONS = "fastvideo.family_options"


def _option_flags() -> list[tuple[tuple[str, ...], str, Any, str, str]]:
    """``(flags, owner, option, ctx.meta key, owner kind)`` of every option that declares flags: the
    attention backends', then the model families' (a flag already taken stays with the first)."""
    from fastvideo.attention.options import cli_flags
    from fastvideo.registry import get_registry

    out = [
        (flags, backend, option, _BACKEND_OPTIONS, "attention backend")
        for flags, backend, option in cli_flags()
    ]
    for family in get_registry().classes("model_family"):  # sorted by name
        for option in getattr(family, "sampling_options", ()):
            if option.cli_flags:
                name = str(getattr(family, "name"))  # noqa: B009
                out.append((tuple(option.cli_flags), name, option, _FAMILY_OPTIONS, "model family"))
    return out


def _with_backend_option_flags(func: Callable[..., Any]) -> Callable[..., Any]:
    """``fv generate``'s callback with one more option per flag set that registered attention
    backends declare for their options (``BackendOption.cli_flags``, e.g. ``--vsa-sparsity``). Given
    values are collected, as typed, into ``ctx.meta[_BACKEND_OPTIONS]`` (``{backend: {option:
    value}}``) and checked later against the selected backend; model families' ``sampling_options``
    flags likewise into ``ctx.meta[_FAMILY_OPTIONS]``. Flags ``fv generate`` has are skipped."""
    signature = inspect.signature(func, eval_str=True)
    params = list(signature.parameters.values())
    taken = {"--" + p.name.replace("_", "-") for p in params}
    for p in params:
        info = next((m for m in getattr(p.annotation, "__metadata__", ()) if hasattr(m, "param_decls")), None)
        taken.update(d for d in getattr(info, "param_decls", ()) or () if d.startswith("-"))
    added: dict[str, tuple[str, str, str]] = {}
    for flags, backend, option, key, kind in _option_flags():
        free = [f for f in flags if f not in taken]
        if not free:
            continue
        taken.update(free)
        name = f"backend_option_{len(added)}"
        added[name] = (backend, option.name, key)
        flag = typer.Option(
            *free,
            metavar=option.type.__name__.upper(),
            help=f"{option.help} [{kind} {backend}; default {option.default}]",
        )
        params.append(
            inspect.Parameter(
                name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Annotated[Optional[str], flag]
            )
        )
    if not added:
        return func

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        given: dict[str, dict[str, dict[str, Any]]] = {_BACKEND_OPTIONS: {}, _FAMILY_OPTIONS: {}}
        for name, (backend, option, key) in added.items():
            value = kwargs.pop(name, None)
            if value is not None:
                given[key].setdefault(backend, {})[option] = value
        kwargs["ctx"].meta.update(given)
        return func(*args, **kwargs)

    wrapper.__signature__ = signature.replace(parameters=params)  # type: ignore[attr-defined]
    wrapper.__annotations__ = {p.name: p.annotation for p in params}
    return wrapper


def _add_backend_option_flags() -> None:
    """Give ``fv generate`` the flags of the registered attention backends' and model families' options."""
    for info in app.registered_commands:
        if getattr(info.callback, "__wrapped__", info.callback) is generate:  # again: the registry may differ
            info.callback = _with_backend_option_flags(generate)


def _world_size() -> int:
    """``WORLD_SIZE`` when torchrun started this process, else 1."""
    value = os.environ.get("WORLD_SIZE", "1")
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"WORLD_SIZE={value!r} must be a positive integer (set by torchrun)")
    return int(value)


def _report(model: str, summary: dict[str, Any], as_json: bool, wall_s: float) -> None:
    """``wrote x.mp4 (17 frames, 64x64, generated in 1.8 s, 2.0 s total)``, or the JSON summary.

    *generated in*: the generation itself (denoising, decoding, writing); *total*: the whole
    command, loading the model included (``wall_s`` in the JSON).
    """
    if as_json:
        typer.echo(json.dumps({"model": model, **summary, "wall_s": round(wall_s, 4)}, indent=2))
    else:
        generated = summary["timings_s"].get("total", 0.0)
        size = f"{summary['width']}x{summary['height']}, " if "width" in summary else ""
        typer.echo(
            f"wrote {summary['path']} ({summary['frames']} frames, {size}"
            f"generated in {generated:.1f} s, {wall_s:.1f} s total)"
        )


# ---------------------------------------------------------------- plugins / models


@plugins_app.command("list")
def plugins_list(
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
    check: Annotated[bool, typer.Option(help="Exit 1 when a plugin is broken.")] = False,
) -> None:
    """Installed plugins: distribution, version, what each registers; broken ones with the reason."""
    from fastvideo.plugins import plugin_infos
    from fastvideo.registry import get_registry

    get_registry()
    infos = plugin_infos()
    rows: list[dict[str, Any]] = [
        {
            "name": i.name,
            "distribution": i.dist,
            "version": i.version,
            "module": i.module,
            "registers": i.registered,
            "commands": i.commands,
            "broken": i.broken,
            "output": i.output,
        }
        for i in infos
    ]
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
    else:
        for r in rows:
            kinds = [(k.replace("_", " "), v) for k, v in r["registers"].items()]
            if r["commands"]:
                kinds.append(("commands", r["commands"]))
            regs = "; ".join(f"{k}: {', '.join(v)}" for k, v in kinds) or "-"
            status = f"BROKEN: {r['broken']}" if r["broken"] else regs
            typer.echo(f"{r['distribution']} {r['version']} [{r['name']}]  {status}")
            for printed in r["output"]:
                typer.echo(f"  note: printed on stdout during {_one_line(printed)}")
    _show_plugin_tracebacks()
    if check and any(r["broken"] for r in rows):
        raise typer.Exit(1)


@plugins_app.command("new")
def plugins_new(
    name: Annotated[str, typer.Argument(help="Plugin name, lower-kebab (my-model): writes fastvideo-NAME/.")],
    kind: Annotated[
        str, typer.Option(help="What the plugin adds: family, attention or training.")
    ] = "family",
    output: Annotated[Path, typer.Option(help="Folder to create fastvideo-NAME in.")] = Path("."),
    force: Annotated[
        bool, typer.Option("--force", help="Replace an existing non-empty fastvideo-NAME folder.")
    ] = False,
) -> None:
    """Write a new plugin package (pyproject, README, hooks, a working module and its tests)."""
    from fastvideo import scaffold

    with _clean_errors():
        target = scaffold.create_plugin(name, kind, output, force=force)
    typer.echo(f"wrote {target} ({kind} plugin {scaffold.check_name(name).dist}); next:")
    for step in scaffold.next_steps(kind, target, scaffold.check_name(name)):
        typer.echo(f"  {step}")


def _one_line(text: str, limit: int = 200) -> str:
    flat = " | ".join(line.strip() for line in text.splitlines() if line.strip())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def _warn_broken_plugins(what: str) -> None:
    """One ``warning:`` line on stderr per broken plugin (stdout stays parseable)."""
    from fastvideo.plugins import broken_plugins

    for info in broken_plugins():
        typer.echo(f"warning: plugin {info.dist} is broken, {what}: {info.broken}", err=True)
    _show_plugin_tracebacks()


@models_app.command("list")
def models_list(
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Model families with their presets and Hub repo ids."""
    from fastvideo.registry import get_registry

    reg = get_registry()
    out: list[dict[str, Any]] = []
    for name, entry in sorted(reg.entries["model_family"].items()):
        fam: Any = entry.cls
        out.append(
            {
                "family": name,
                "distribution": entry.dist,
                "pipelines": list(fam.pipeline_class_names),
                "presets": [
                    {
                        "name": p.name,
                        "aliases": list(p.aliases),
                        "repo_id": p.repo_id,
                        "local_path": p.local_path,
                        "workload": p.workload,
                        "sampling": dict(p.sampling),
                    }
                    for p in fam.presets
                ],
            }
        )
    _warn_broken_plugins("so its model families are missing here")
    if as_json:
        typer.echo(json.dumps(out, indent=2))
        return
    if not out:
        typer.echo("no model families installed (pip install fastvideo-wan)")
    for fam in out:
        typer.echo(f"{fam['family']} ({fam['distribution']})")
        for p in fam["presets"]:
            alias = f" (alias: {', '.join(p['aliases'])})" if p["aliases"] else ""
            typer.echo(f"  {p['name']}{alias}  {p['repo_id'] or p['local_path']}  [{p['workload']}]")


@app.command()
def doctor() -> None:
    """Torch, CUDA and GPUs; which attention backends can run here and why the others cannot."""
    with _clean_errors():
        import platform

        import torch

        from fastvideo.attention.selector import _classes, resolve_backend_name

        typer.echo(f"python {platform.python_version()}, torch {torch.__version__}")
        if torch.cuda.is_available():
            typer.echo(f"CUDA {torch.version.cuda}, {torch.cuda.device_count()} GPU(s):")
            for i in range(torch.cuda.device_count()):
                p = torch.cuda.get_device_properties(i)
                typer.echo(f"  cuda:{i} {p.name}, {p.total_memory / 2**30:.0f} GiB, sm_{p.major}{p.minor}")
        else:
            typer.echo("CUDA: not available (CPU only)")
        typer.echo("attention backends:")
        for name, cls in sorted(_classes().items(), key=lambda kv: -kv[1].priority):
            reason = cls.unavailable_reason()
            typer.echo(f"  {name:12s} {'available' if reason is None else 'unavailable: ' + reason}")
            for line in cls.doctor_notes():
                typer.echo(f"  {'':12s} {line}")
        typer.echo(f"default: {resolve_backend_name(None)}")
        _doctor_plugins()


# ---------------------------------------------------------------- serve


@app.command()
def serve(
    model: Annotated[
        list[str], typer.Option("--model", "-m", help="Preset or local folder to serve; repeatable.")
    ],
    host: Annotated[
        str, typer.Option(help="Address to bind; any other than 127.0.0.1 exposes the server.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port (0: a free one, printed at start-up).")] = 8000,
    workers: Annotated[
        int, typer.Option(min=1, help="Worker processes per model, each with the model loaded.")
    ] = 1,
    num_gpus: Annotated[int, typer.Option(min=1, help="GPUs per worker.")] = 1,
    data_dir: Annotated[
        Optional[Path], typer.Option(help="Jobs (SQLite) and videos [~/.cache/fastvideo/serve].")
    ] = None,
    api_key: Annotated[
        Optional[str],
        typer.Option(
            envvar="FASTVIDEO_API_KEY", help="Require 'Authorization: Bearer KEY' on every route but /health."
        ),
    ] = None,
    max_queue: Annotated[int, typer.Option(min=1, help="Jobs waiting or running; beyond it 429.")] = 64,
    max_pixels: Annotated[
        Optional[int],
        typer.Option(min=1, help="Largest video, frames x height x width [what the model takes]."),
    ] = None,
    max_request_mb: Annotated[
        float, typer.Option(min=0.001, help="Largest request body (an image upload), MiB.")
    ] = 20.0,
    requeue_interrupted: Annotated[
        bool,
        typer.Option(help="Run again the jobs a stopped server left running (default: mark them failed)."),
    ] = False,
    device: Annotated[Optional[str], typer.Option(help="cuda, cuda:N or cpu [cuda when available].")] = None,
    dtype: Annotated[Optional[str], typer.Option(help="DiT dtype: bf16, fp16 or fp32.")] = None,
    compile: Annotated[
        Optional[bool],
        typer.Option("--compile/--no-compile", help="torch.compile the DiT blocks [on for CUDA]."),
    ] = None,
    attention_backend: Annotated[Optional[str], typer.Option(help="sdpa, flash-attn, or a plugin's.")] = None,
) -> None:
    """Serve models over HTTP: the OpenAI videos API, a job queue that survives restarts, a web page at /.

    Needs the serve extra: pip install 'fastvideo-core[serve]'. See docs/serve.md.
    """
    with _clean_errors():
        import importlib.util

        from fastvideo.serve import INSTALL_HINT, ServeSettings, default_data_dir

        for dist, module in (
            ("fastapi", "fastapi"),
            ("uvicorn", "uvicorn"),
            ("python-multipart", "python_multipart"),
        ):
            if importlib.util.find_spec(module) is None:
                raise _err(f"fv serve needs {dist}, which is not installed: {INSTALL_HINT}", 1)
        settings = ServeSettings(
            models=tuple(model),
            host=host,
            port=port,
            workers=workers,
            num_gpus=num_gpus,
            data_dir=(data_dir or default_data_dir()).expanduser(),
            api_key=api_key,
            max_queue=max_queue,
            max_request_bytes=int(max_request_mb * 2**20),
            max_pixels=max_pixels,
            requeue_interrupted=requeue_interrupted,
            device=device,
            dtype=dtype,
            compile=compile,
            attention_backend=attention_backend,
        )
        from fastvideo.serve.server import run

        run(settings)


def _doctor_plugins() -> None:
    """Plugins (broken ones with their reason) and distributions that fight over ``fastvideo``."""
    from fastvideo.plugins import plugin_infos
    from fastvideo.registry import get_registry

    get_registry()
    infos = plugin_infos()
    typer.echo("plugins:")
    for info in infos:
        state = f"BROKEN: {info.broken}" if info.broken else "ok"
        typer.echo(f"  {info.dist} {info.version}: {state}")
    broken = [i.dist for i in infos if i.broken]
    if broken:
        typer.echo(
            f"warning: {len(broken)} broken plugin(s): {', '.join(broken)}; see `fv plugins list`", err=True
        )
    _show_plugin_tracebacks()
    for dist, version in _other_fastvideo_distributions():
        typer.echo(
            f"warning: the distribution {dist} {version} also installs the import package 'fastvideo', "
            f"so it and fastvideo-core overwrite each other's files; pip uninstall {dist} "
            "(then pip install --force-reinstall fastvideo-core)",
            err=True,
        )


def _other_fastvideo_distributions() -> list[tuple[str, str]]:
    """Installed distributions other than fastvideo-core that provide the ``fastvideo`` package
    (e.g. FastVideo's own PyPI package ``fastvideo``), from their RECORD / top_level.txt."""
    import importlib.metadata as md

    from fastvideo.plugins import BUILTIN_DIST, _normalize

    names = md.packages_distributions().get("fastvideo", [])
    out: dict[str, str] = {}
    for name in names:
        if _normalize(name) == BUILTIN_DIST:
            continue
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = "?"
    return sorted(out.items())


def _command_name(entry: Any) -> str | None:
    """The name under which a Typer command or sub-app entry will appear (None if unknown)."""
    name = getattr(entry, "name", None)
    if not isinstance(name, str):
        sub = getattr(entry, "typer_instance", None)
        name = getattr(getattr(sub, "info", None), "name", None)
    if not isinstance(name, str):
        callback = getattr(entry, "callback", None)
        name = getattr(callback, "__name__", None)
        name = name.lower().replace("_", "-") if isinstance(name, str) else None
    return name


def _register_plugin_commands() -> None:
    """Let every plugin add its sub-commands (built-ins first, then plugins in load order).

    A plugin's hook runs guarded (see :func:`fastvideo.plugins.run_guarded`); one that fails,
    or that replaces or removes a command already there (a built-in's or an earlier plugin's), is
    undone and marked broken.
    """
    from fastvideo.plugins import PluginFailed, hook_of, ordered_hookimpls, run_guarded

    taken = {n for e in [*app.registered_commands, *app.registered_groups] if (n := _command_name(e))}
    for info, impl in ordered_hookimpls("fv_register_commands"):
        if info.broken:
            continue
        if info.dist in _COMMANDS_ADDED:  # registered by an earlier main() in this process: not a hijack
            info.commands.extend(n for n in _COMMANDS_ADDED[info.dist] if n not in info.commands)
            continue
        before = (list(app.registered_commands), list(app.registered_groups))
        try:
            run_guarded(info, "fv_register_commands", hook_of(impl, "fv_register_commands", app=app))
        except PluginFailed:
            _restore_commands(before)
            continue
        added, kept = _added_commands(before)
        names = [_command_name(e) or "?" for e in added]
        clash = sorted({n for n in names if n in taken} | {n for n in names if names.count(n) > 1})
        if not kept or clash:
            _restore_commands(before)
            what = f"the command(s) {', '.join(repr(n) for n in clash)}" if clash else "existing commands"
            info.broken = f"fv_register_commands tried to replace {what} of `fv`; a plugin may only add new command names"
            continue
        info.commands.extend(names)
        taken.update(names)
        _COMMANDS_ADDED[info.dist] = names


#: Distribution -> the commands it added to :data:`app` (once per process: ``app`` is global).
_COMMANDS_ADDED: dict[str, list[str]] = {}


def _restore_commands(before: tuple[list[Any], list[Any]]) -> None:
    app.registered_commands[:] = before[0]
    app.registered_groups[:] = before[1]


def _added_commands(before: tuple[list[Any], list[Any]]) -> tuple[list[Any], bool]:
    """The entries added since ``before``, and whether every earlier entry is still in place."""
    added: list[Any] = []
    kept = True
    for now, then in ((app.registered_commands, before[0]), (app.registered_groups, before[1])):
        kept = kept and len(now) >= len(then) and all(a is b for a, b in zip(now, then, strict=False))
        added += now[len(then) :]
    return added, kept


def _show_warning(message: Warning | str, *args: Any, **kwargs: Any) -> None:
    """Warnings (e.g. a plugin rejected for a duplicate name) as one ``warning:`` line each."""
    lines = str(message).splitlines()
    typer.echo(f"warning: {lines[0] if lines else type(message).__name__}", err=True)


def _usage_error(exc: BaseException) -> bool:
    """A Click-style error of the command line (bad option, missing value): it has an int
    ``exit_code`` and ``format_message()``, whichever click (the package, or typer's own) raised it."""
    return isinstance(getattr(exc, "exit_code", None), int) and callable(getattr(exc, "format_message", None))


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``fv``.

    Command-line errors: one ``error:`` line and exit 2. Anything that escapes a command (an
    exception, or a ``BaseException`` such as torch's ``CheckpointException``): one ``error:`` line
    and exit 1, or its traceback with ``FASTVIDEO_DEBUG=1``. Ctrl-C: exit 130.
    """
    args = sys.argv[1:] if argv is None else list(argv)
    warnings.showwarning = _show_warning
    code: Any = 0
    try:
        if args != ["--version"]:  # versions come from metadata: no plugin needs to load
            with _clean_errors():  # e.g. a bad FASTVIDEO_PLUGIN_TIMEOUT
                _register_plugin_commands()
                _add_backend_option_flags()
        command = typer.main.get_command(app)
        code = command.main(args=args, prog_name="fv", standalone_mode=False)
    except typer.Exit as exc:
        code = exc.exit_code
    except typer.Abort:
        typer.echo("error: aborted", err=True)
        code = 130
    except KeyboardInterrupt:
        typer.echo("error: interrupted", err=True)
        code = 130
    except SystemExit:
        raise
    except BaseException as exc:
        code = _last_resort(exc)
    sys.exit(code if isinstance(code, int) else 0)


def _last_resort(exc: BaseException) -> int:
    """Report what escaped the command; returns the exit code."""
    if _usage_error(exc):
        ctx = getattr(exc, "ctx", None)
        message = exc.format_message()  # type: ignore[attr-defined]
        if ctx is not None and message == ctx.get_help():  # no_args_is_help: the help is the answer
            typer.echo(message)
            return 0
        hint = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
        first = message.splitlines()[0] if message else type(exc).__name__
        typer.echo(f"error: {first}{hint}", err=True)
        code = exc.exit_code  # type: ignore[attr-defined]
        return code if code else USAGE_ERROR
    if _debug():
        traceback.print_exception(exc)
        return 1
    text = str(exc).splitlines()[0] if str(exc) else ""
    typer.echo(
        f"error: {type(exc).__name__}{': ' + text if text else ''} (set FASTVIDEO_DEBUG=1 for the traceback)",
        err=True,
    )
    return 1


if __name__ == "__main__":
    main()
