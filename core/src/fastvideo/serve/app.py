"""The HTTP API of ``fv serve`` (FastAPI): the OpenAI videos API, our extras and the web page.

Routes (docs/serve.md): ``POST /v1/videos``, ``GET /v1/videos``, ``GET /v1/videos/{id}``,
``GET /v1/videos/{id}/content``, ``DELETE /v1/videos/{id}``; ``GET /v1/models``;
``GET /v1/fastvideo/videos/{id}/events`` (server-sent progress), ``GET /v1/fastvideo/models``,
``GET /v1/fastvideo/backends``; ``GET /health``; ``GET /`` (the page). Errors are OpenAI's shape,
``{"error": {"message", "type", "param", "code"}}``, with a one-line message.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import secrets
import time
from importlib import resources
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response, StreamingResponse

from fastvideo.serve import ServeSettings
from fastvideo.serve.params import RequestError, Validator
from fastvideo.serve.store import FINISHED, JobStore, QueueFull

PUBLIC = (
    "/health",
    "/",
)  # no API key: the health probe, and the page (it holds no data; its calls send the key)
IMAGE_TYPES = {"image/png": ".png", "image/jpeg": ".jpg", "image/webp": ".webp"}


def error(
    status: int, message: str, *, code: str, param: str | None = None, headers: dict[str, str] | None = None
) -> JSONResponse:
    kind = "invalid_request_error" if status < 500 else "server_error"
    body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    return JSONResponse(body, status_code=status, headers=headers)


def video_object(job: dict[str, Any]) -> dict[str, Any]:
    """A job as OpenAI's ``Video`` object, with our details under ``fastvideo``."""
    err = None
    if job["status"] == "failed":
        err = {"code": job["error_code"] or "failed", "message": job["error_message"] or "the job failed"}
    params = json.loads(job["params"])
    return {
        "id": job["id"],
        "object": "video",
        "model": job["model"],
        "status": job["status"],
        "progress": int(job["progress"]),
        "created_at": job["created_at"],
        "completed_at": job["completed_at"],
        "expires_at": None,
        "prompt": job["prompt"],
        "seconds": job["seconds"],
        "size": job["size"],
        "remixed_from_video_id": None,
        "error": err,
        "fastvideo": {
            "stage": job["stage"],
            "step": job["step"],
            "steps": job["steps"],
            "eta_s": job["eta_s"],
            "priority": job["priority"],
            "attempts": job["attempts"],
            "duration_s": job["duration_s"],
            "params": {k: v for k, v in params.items() if k not in ("prompt", "image")},
        },
    }


class BodyTooLarge(Exception):
    pass


class Limits:
    """ASGI middleware: the API key on every route but :data:`PUBLIC`, and the request size limit."""

    def __init__(self, app: Any, settings: ServeSettings) -> None:
        self.app = app
        self.key = settings.api_key
        self.limit = settings.max_request_bytes

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        origin = headers.get("origin")
        if origin is not None and origin.partition("://")[2].rstrip("/") != headers.get("host", ""):
            # a browser on another site (a form posted to localhost): refused, the page's own calls pass
            response = error(
                403,
                f"cross-origin request from {origin[:80]!r} refused: use the page this server serves, or a "
                "client that sends no Origin header (the SDK, curl)",
                code="cross_origin",
            )
            return await response(scope, receive, send)
        if self.key is not None and scope["path"] not in PUBLIC:
            given = headers.get("authorization", "")
            token = given[7:].strip() if given[:7].lower() == "bearer " else ""
            if not hmac.compare_digest(token.encode(), self.key.encode()):
                what = "wrong API key" if token else "missing API key"
                response = error(
                    401,
                    f"{what}: send the header 'Authorization: Bearer <key>' with the key fv serve was started with",
                    code="invalid_api_key",
                    headers={"WWW-Authenticate": "Bearer"},
                )
                return await response(scope, receive, send)
        length = headers.get("content-length", "")
        if length.isdigit() and int(length) > self.limit:
            return await self._too_large(scope, receive, send, int(length))
        seen = 0
        started = False

        async def counted() -> Any:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise BodyTooLarge
            return message

        async def tracked(message: Any) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, tracked)
        except BodyTooLarge:
            if not started:
                await self._too_large(scope, receive, send, seen)

    async def _too_large(self, scope: Any, receive: Any, send: Any, size: int) -> None:
        limit_mb = self.limit / 2**20
        response = error(
            413,
            f"the request has {size} bytes or more; this server takes at most {self.limit} ({limit_mb:g} MiB, fv serve --max-request-mb)",
            code="request_too_large",
        )
        await response(scope, receive, send)


def create_app(settings: ServeSettings, store: JobStore, validator: Validator) -> FastAPI:
    """The application; ``store`` and ``validator`` are shared by every request."""
    from starlette.exceptions import HTTPException

    app = FastAPI(title="fastvideo", docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(Limits, settings=settings)
    app.state.max_request_bytes = settings.max_request_bytes
    workers_per_model = settings.workers

    @app.exception_handler(RequestError)
    async def _bad_request(request: Request, exc: RequestError) -> JSONResponse:
        return error(exc.status, str(exc), code="invalid_value", param=exc.param)

    @app.exception_handler(HTTPException)
    async def _http_error(request: Request, exc: HTTPException) -> JSONResponse:
        if exc.status_code == 404:
            message = f"no route {request.method} {request.url.path}; see docs/serve.md"
        elif exc.status_code == 405:
            message = f"{request.method} is not allowed on {request.url.path}"
        else:
            message = str(exc.detail).splitlines()[0]
        return error(exc.status_code, message, code="not_found" if exc.status_code == 404 else "bad_request")

    def job_or_404(video_id: str) -> dict[str, Any]:
        job = store.get(video_id)
        if job is None:
            raise NotFound(video_id)
        return job

    class NotFound(Exception):
        pass

    @app.exception_handler(NotFound)
    async def _no_video(request: Request, exc: NotFound) -> JSONResponse:
        return error(404, f"no video with id {str(exc)[:80]!r}", code="not_found", param="video_id")

    # ------------------------------------------------------------ the OpenAI videos API

    @app.post("/v1/videos")
    async def create_video(request: Request) -> JSONResponse:
        fields, upload = await _read_body(request)
        image = None
        if upload is not None:
            image = _save_image(settings, *upload)
        try:
            job = await asyncio.to_thread(validator.parse, fields, image=image)
            row = await asyncio.to_thread(
                store.add,
                model=job.model,
                prompt=job.prompt,
                params=job.overrides,
                size=job.size,
                seconds=job.seconds,
                priority=job.priority,
                max_queue=settings.max_queue,
                workers=workers_per_model,
                input_path=image,
            )
        except QueueFull as exc:
            if image:
                Path(image).unlink(missing_ok=True)
            return error(
                429,
                f"{exc}; retry after {exc.retry_after_s} s (fv serve --max-queue {settings.max_queue})",
                code="queue_full",
                headers={"Retry-After": str(exc.retry_after_s)},
            )
        except RequestError:
            if image:
                Path(image).unlink(missing_ok=True)
            raise
        return JSONResponse(video_object(row))

    @app.get("/v1/videos")
    def list_videos(after: str | None = None, limit: str = "20", order: str = "desc") -> JSONResponse:
        from fastvideo.serve.params import _int

        count = _int("limit", limit, 1, 100)
        if order not in ("asc", "desc"):
            raise RequestError(
                f"order must be 'asc' or 'desc', got {order[:20]!r}", status=422, param="order"
            )
        try:
            rows, more = store.page(after=after or None, limit=count, order=order)
        except KeyError:
            raise RequestError(
                f"after={(after or '')[:80]!r} is no video id of this server", param="after"
            ) from None
        data = [video_object(r) for r in rows]
        return JSONResponse(
            {
                "object": "list",
                "data": data,
                "has_more": more,
                "first_id": data[0]["id"] if data else None,
                "last_id": data[-1]["id"] if data else None,
            }
        )

    @app.get("/v1/videos/{video_id}")
    def retrieve_video(video_id: str) -> JSONResponse:
        job = job_or_404(video_id)
        headers = {} if job["status"] in FINISHED else {"openai-poll-after-ms": "250"}
        return JSONResponse(video_object(job), headers=headers)

    @app.get("/v1/videos/{video_id}/content", response_model=None)
    def video_content(video_id: str, variant: str = "video") -> Response:
        job = job_or_404(video_id)
        if variant != "video":
            raise RequestError(
                f"variant {variant[:20]!r} is not available here; use variant=video", param="variant"
            )
        if job["status"] != "completed":
            state = job["status"].replace("_", " ")
            return error(
                409, f"video {video_id} is {state}; its content exists once it is completed", code="not_ready"
            )
        path = Path(job["video_path"] or "")
        if not path.is_file():
            return error(
                410, f"the file of video {video_id} is gone from the server's data directory", code="gone"
            )
        return FileResponse(path, media_type="video/mp4", filename=f"{video_id}.mp4")

    @app.delete("/v1/videos/{video_id}")
    def delete_video(video_id: str) -> JSONResponse:
        job = store.delete(video_id)
        if job is None:
            raise NotFound(video_id)
        for key in ("video_path", "input_path"):
            if job[key]:
                Path(job[key]).unlink(missing_ok=True)
        (settings.videos_dir / f"{video_id}.mp4").unlink(
            missing_ok=True
        )  # a run cut short may have written it
        return JSONResponse({"id": video_id, "object": "video.deleted", "deleted": True})

    @app.get("/v1/models")
    def list_models() -> JSONResponse:
        data = [{"id": m, "object": "model", "created": 0, "owned_by": "fastvideo"} for m in settings.models]
        return JSONResponse({"object": "list", "data": data})

    # ------------------------------------------------------------ our extras

    @app.get("/v1/fastvideo/videos/{video_id}/events")
    async def video_events(video_id: str) -> StreamingResponse:
        job_or_404(video_id)
        return StreamingResponse(
            _events(store, video_id), media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
        )

    @app.get("/v1/fastvideo/models")
    def fastvideo_models() -> JSONResponse:
        workers = store.workers()
        data = []
        for model in settings.models:
            mine = [_worker_info(w) for w in workers if w["model"] == model]
            data.append(
                {
                    "id": model,
                    "family": validator.family(model),
                    "workers": mine,
                    "backends": sorted({w["backend"] for w in mine if w["backend"]}),
                    "defaults": validator.defaults(model),
                }
            )
        return JSONResponse({"object": "list", "data": data})

    @app.get("/v1/fastvideo/backends")
    def fastvideo_backends() -> JSONResponse:
        by_backend: dict[str, list[str]] = {}
        for w in store.workers():
            if w["backend"] and w["state"] == "ready":
                by_backend.setdefault(w["backend"], []).append(w["name"])
        data = [{"name": b, "workers": names} for b, names in sorted(by_backend.items())]
        return JSONResponse({"object": "list", "data": data})

    @app.get("/health")
    def health() -> JSONResponse:
        workers = store.workers()
        ready = sum(w["state"] == "ready" for w in workers)
        expected = settings.workers * len(settings.models)
        status = (
            "ok"
            if ready == expected
            else "loading"
            if any(w["state"] == "loading" for w in workers)
            else "degraded"
        )
        return JSONResponse(
            {"status": status, "workers": {"ready": ready, "expected": expected}, "jobs": store.counts()}
        )

    @app.get("/", response_class=HTMLResponse)
    def page() -> HTMLResponse:
        html = resources.files("fastvideo.serve").joinpath("page.html").read_text(encoding="utf-8")
        return HTMLResponse(html, headers={"Cache-Control": "no-cache"})

    return app


def _worker_info(w: dict[str, Any]) -> dict[str, Any]:
    return {k: w[k] for k in ("name", "state", "backend", "device", "pid", "error")}


async def _read_body(request: Request) -> tuple[dict[str, Any], tuple[str, bytes] | None]:
    """The fields of a multipart/urlencoded form or a JSON object, and the uploaded image (its
    content type and bytes) if any."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind == "application/json":
        try:
            body = await request.json()
        except ValueError:
            raise RequestError("the body is not valid JSON", status=422) from None
        if not isinstance(body, dict):
            raise RequestError(f"the body must be a JSON object, got {type(body).__name__}", status=422)
        if "input_reference" in body:
            raise RequestError(
                "input_reference must be uploaded as a file in a multipart form", param="input_reference"
            )
        return body, None
    if kind not in ("multipart/form-data", "application/x-www-form-urlencoded"):
        raise RequestError(
            f"send the request as multipart/form-data or JSON, got content-type {kind or 'none'!r}",
            status=415,
        )
    form = await request.form(max_part_size=request.app.state.max_request_bytes)
    fields: dict[str, Any] = {}
    upload = None
    for key, value in form.multi_items():
        if key in fields:
            raise RequestError(f"{key} is given twice", param=key)
        if not isinstance(value, str):  # an UploadFile
            if key != "input_reference":
                raise RequestError(f"only input_reference may be a file, got a file for {key!r}", param=key)
            data = await value.read()
            upload = (value.content_type or "", data)
            fields[key] = "<file>"
        else:
            fields[key] = value
    fields.pop("input_reference", None)
    return fields, upload


def _save_image(settings: ServeSettings, content_type: str, data: bytes) -> str:
    """Write an uploaded image into the data directory (atomically); its path."""
    suffix = IMAGE_TYPES.get(content_type.lower())
    if suffix is None:
        sniff = {b"\x89PNG": ".png", b"\xff\xd8\xff": ".jpg", b"RIFF": ".webp"}
        suffix = next((s for magic, s in sniff.items() if data.startswith(magic)), None)
    if suffix is None:
        raise RequestError(
            f"input_reference must be a PNG, JPEG or WebP image, got {content_type or 'an unknown type'}",
            param="input_reference",
        )
    settings.inputs_dir.mkdir(parents=True, exist_ok=True)
    path = settings.inputs_dir / f"{secrets.token_hex(12)}{suffix}"
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    tmp.replace(path)
    return str(path)


async def _events(store: JobStore, video_id: str) -> Any:
    """Server-sent events: ``progress`` whenever the job changes, then ``done`` (or ``deleted``)."""
    last: tuple[Any, ...] | None = None
    beat = time.monotonic()
    while True:
        job = await asyncio.to_thread(store.get, video_id)
        if job is None:
            yield f"event: deleted\ndata: {json.dumps({'id': video_id})}\n\n"
            return
        state = (job["status"], job["progress"], job["stage"], job["step"])
        if state != last:
            last = state
            payload = {
                "id": video_id,
                "status": job["status"],
                "progress": job["progress"],
                "stage": job["stage"],
                "step": job["step"],
                "steps": job["steps"],
                "eta_s": job["eta_s"],
            }
            if job["status"] == "failed":
                payload["error"] = {"code": job["error_code"], "message": job["error_message"]}
            yield f"event: progress\ndata: {json.dumps(payload)}\n\n"
            beat = time.monotonic()
        if job["status"] in FINISHED:
            yield f"event: done\ndata: {json.dumps(video_object(job))}\n\n"
            return
        if time.monotonic() - beat > 15:
            yield ": keep-alive\n\n"
            beat = time.monotonic()
        await asyncio.sleep(0.1)
