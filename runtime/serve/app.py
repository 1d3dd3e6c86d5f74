"""The ASGI app: OpenAI Images, AUTOMATIC1111's ``/sdapi/v1`` and diffrt's job API over one :class:`~.server.Server`.

``create_app({"name": "package folder"}, ServeConfig(...))`` gives a FastAPI app; ``diffrt serve`` runs it on
uvicorn, and it can be mounted in another app (call ``app.state.server.start()`` there, since mounted apps get no
lifespan events). Every refusal is a JSON body naming the field (OpenAI's error shape, plus ``detail``), with a 4xx
status: 400 unreadable body, 401 missing or wrong key, 404 unknown job or model, 413 body too large, 422 a field's
value, 429 queue full (with Retry-After), 499 cancelled, 503 loading or shutting down, 504 past its deadline.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import json
import secrets
import time
from collections.abc import Mapping
from contextlib import asynccontextmanager
from typing import Any

import PIL.Image
import PIL.ImageFilter
import PIL.ImageOps
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from .errors import ServeError, invalid
from .fields import Fields, parse_size
from .images import decode_base64, decode_bytes, png_base64
from .jobs import Job, JobSpec
from .metrics import log_access
from .models import A1111_ALIASES, A1111_SAMPLERS, scheduler_choice
from .server import ServeConfig, Server

OPEN_PATHS = ("/healthz", "/readyz", "/metrics")

# AUTOMATIC1111 payload fields this server cannot honour: accepted at these values (their defaults), else 422.
A1111_DEFAULTS: dict[str, tuple[Any, ...]] = {
    "enable_hr": (False,),
    "restore_faces": (False,),
    "tiling": (False,),
    "subseed_strength": (0,),
    "seed_resize_from_h": (0, -1),
    "seed_resize_from_w": (0, -1),
    "styles": ([],),
    "s_churn": (0,),
    "s_tmax": (0,),
    "s_tmin": (0,),
    "s_noise": (1,),
    "s_min_uncond": (0,),
    "script_name": ("",),
    "script_args": ([],),
    "alwayson_scripts": ({},),
    "n_iter": (1,),
    "save_images": (False,),
    "resize_mode": (0,),
    "inpainting_fill": (0, 1),
    "inpaint_full_res": (True, False),
    "initial_noise_multiplier": (1,),
    "refiner_checkpoint": ("",),
    "latent_mask": ("",),
}
# Fields that matter only with a feature left at its default above (hires fix), or that change nothing here.
A1111_INERT = (
    "denoising_strength",
    "firstphase_width",
    "firstphase_height",
    "hr_scale",
    "hr_upscaler",
    "hr_second_pass_steps",
    "hr_resize_x",
    "hr_resize_y",
    "hr_checkpoint_name",
    "hr_sampler_name",
    "hr_scheduler",
    "hr_prompt",
    "hr_negative_prompt",
    "subseed",
    "do_not_save_samples",
    "do_not_save_grid",
    "override_settings_restore_afterwards",
    "sampler_index",
    "image_cfg_scale",
    "inpaint_full_res_padding",
    "refiner_switch_at",
    "disable_extra_networks",
    "comments",
    "force_task_id",
    "infotext",
)


def create_app(
    models: Mapping[str, Any] | None = None, config: ServeConfig | None = None, server: Server | None = None
) -> FastAPI:
    """The server's ASGI app over ``models`` ({name: engine package folder}) or an existing ``server``."""
    if server is None:
        if models is None:
            raise ValueError("create_app needs models ({name: package folder}) or a server")
        server = Server(models, config)
    srv = server

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        srv.start()
        yield
        await asyncio.to_thread(srv.shutdown)

    app = FastAPI(title="diffrt serve", lifespan=lifespan, docs_url="/docs", redoc_url=None)
    app.state.server = srv

    _add_error_handlers(app, srv)
    _add_guard(app, srv)
    _add_core_routes(app, srv)
    _add_openai_routes(app, srv)
    _add_job_routes(app, srv)
    _add_a1111_routes(app, srv)
    _add_a1111_info_routes(app, srv)
    return app


def _add_error_handlers(app: FastAPI, srv: Server) -> None:
    """Every error, ours or the framework's, as a JSON body in OpenAI's shape with the status it names."""

    @app.exception_handler(ServeError)
    async def serve_error(request: Request, error: ServeError):
        return JSONResponse(error.body(), status_code=error.status, headers=error.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, error: RequestValidationError):
        first = error.errors()[0] if error.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ())[1:]) or None
        return JSONResponse(ServeError(422, f"{where}: {first.get('msg', 'invalid')}", where).body(), status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException):
        message = f"{request.method} {request.url.path}: {error.detail}"
        return JSONResponse(ServeError(error.status_code, message).body(), status_code=error.status_code)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, error: Exception):
        return JSONResponse(ServeError(500, f"internal error: {type(error).__name__}: {error}").body(), status_code=500)


def _add_guard(app: FastAPI, srv: Server) -> None:
    """Body limit, keys, metrics, access log (plain ASGI, so streaming and disconnects pass through)."""
    cfg = srv.config
    inner = app.build_middleware_stack

    def build():
        downstream = inner()

        async def guarded(scope, receive, send):
            if scope["type"] != "http":
                return await downstream(scope, receive, send)
            start = time.perf_counter()
            status = {"code": 500}

            async def sending(message):
                if message["type"] == "http.response.start":
                    status["code"] = message["status"]
                await send(message)

            try:
                refusal = _check_request(scope, cfg)
            except ServeError as error:
                refusal = error
            if refusal is not None:
                await _send_error(sending, refusal)
            else:
                received = {"bytes": 0}

                async def limited():
                    message = await receive()
                    if message["type"] == "http.request":
                        received["bytes"] += len(message.get("body", b""))
                        if received["bytes"] > cfg.max_body_bytes:
                            raise _too_large(cfg)
                    return message

                await downstream(scope, limited, sending)
            route = scope.get("route")
            path = getattr(route, "path", None) or "unmatched"
            seconds = time.perf_counter() - start
            srv.metrics.request(path, scope["method"], status["code"], seconds)
            client = scope.get("client") or ("", 0)
            log_access(
                method=scope["method"],
                path=scope["path"],
                route=path,
                status=status["code"],
                seconds=round(seconds, 4),
                client=client[0],
            )

        return guarded

    app.build_middleware_stack = build  # type: ignore[method-assign]


def _add_core_routes(app: FastAPI, srv: Server) -> None:
    """/healthz, /readyz, /metrics and the OpenAI model list."""

    @app.get("/healthz")
    async def healthz():
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz():
        if srv.load_error:
            return JSONResponse({"status": "failed", "detail": srv.load_error}, status_code=503)
        if srv.draining:
            return JSONResponse({"status": "draining"}, status_code=503)
        if not srv.ready:
            return JSONResponse({"status": "loading"}, status_code=503)
        return {"status": "ready", "models": list(srv.queues), "instance": srv.instance}

    @app.get("/metrics")
    async def metrics():
        return Response(srv.metrics.render(), media_type=srv.metrics.content_type)

    @app.get("/v1/models")
    async def list_models():
        srv.queue(None)
        data = [{"id": n, "object": "model", "created": int(srv.started), "owned_by": "diffrt"} for n in srv.queues]
        return {"object": "list", "data": data}


def _add_openai_routes(app: FastAPI, srv: Server) -> None:
    """OpenAI Images: generations (text-to-image) and edits (image-to-image, inpainting with a mask)."""
    cfg = srv.config

    @app.post("/v1/images/generations")
    async def openai_generations(request: Request):
        fields = Fields(await _json_body(request))
        spec = _openai_spec(srv, fields, "txt2img", None, None)
        fields.refuse_unknown("the OpenAI images API")
        job = await _run_sync(request, srv, spec)
        srv.forget(job)
        return _openai_result(job)

    @app.post("/v1/images/edits")
    async def openai_edits(request: Request):
        form = await _form_body(request)
        files = {k: v for k, v in form.items() if hasattr(v, "read")}
        values = {k: v for k, v in form.items() if not hasattr(v, "read")}
        fields = Fields(values, form=True)
        uploads = [v for k, v in files.items() if k in ("image", "image[]")]
        if not uploads:
            raise invalid("image", "image is missing; accepted: an image file (PNG, JPEG or WebP) in the form")
        if len(uploads) > 1:
            raise invalid("image", f"image holds {len(uploads)} files; accepted: one")
        image = decode_bytes("image", await uploads[0].read(), cfg.max_image_pixels)
        mask = None
        if "mask" in files:
            mask = _openai_mask(decode_bytes("mask", await files["mask"].read(), cfg.max_image_pixels))
        spec = _openai_spec(srv, fields, "inpaint" if mask is not None else "img2img", image, mask)
        fields.refuse_unknown("the OpenAI images API")
        job = await _run_sync(request, srv, spec)
        srv.forget(job)
        return _openai_result(job)


def _add_job_routes(app: FastAPI, srv: Server) -> None:
    """The native job API: create, read, cancel, and follow as server-sent events."""

    @app.post("/v1/jobs", status_code=202)
    async def create_job(request: Request):
        fields = Fields(await _json_body(request))
        spec = _native_spec(srv, fields)
        fields.refuse_unknown("the job API")
        job = srv.submit(spec)
        position = srv.queues[spec.model].position(job)
        return JSONResponse(
            {**job.summary(), "position": position, "events": f"/v1/jobs/{job.id}/events"},
            status_code=202,
            headers={"Location": f"/v1/jobs/{job.id}"},
        )

    @app.get("/v1/jobs/{job_id}")
    async def get_job(job_id: str):
        job = srv.job(job_id)
        body = {**job.summary(), "position": srv.queues[job.spec.model].position(job)}
        if job.state == "done":
            body["images"] = [png_base64(im) for im in job.images]
        return body

    @app.delete("/v1/jobs/{job_id}")
    async def delete_job(job_id: str):
        job = srv.job(job_id)
        if not job.finished_state:
            srv.cancel(job, "cancelled by DELETE /v1/jobs/" + job_id)
            await asyncio.to_thread(job.wait, 60)
        return job.summary()

    @app.get("/v1/jobs/{job_id}/events")
    async def job_events(job_id: str, request: Request):
        job = srv.job(job_id)
        last = request.headers.get("last-event-id")
        start = int(last) + 1 if last and last.isdigit() else 0
        return StreamingResponse(
            _sse(request, srv, job, start),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )


def _add_a1111_routes(app: FastAPI, srv: Server) -> None:
    """AUTOMATIC1111: txt2img, img2img (and inpainting), progress, interrupt."""

    @app.post("/sdapi/v1/txt2img")
    async def a1111_txt2img(request: Request):
        fields = Fields(await _json_body(request))
        spec, send = _a1111_spec(srv, fields, "txt2img")
        job = await _run_sync(request, srv, spec)
        srv.forget(job)
        return _a1111_result(job, fields, send, [])

    @app.post("/sdapi/v1/img2img")
    async def a1111_img2img(request: Request):
        fields = Fields(await _json_body(request))
        spec, send = _a1111_spec(srv, fields, "img2img")
        include = fields.bool("include_init_images", False)
        job = await _run_sync(request, srv, spec)
        srv.forget(job)
        return _a1111_result(job, fields, send, [spec.image] if include else [])

    @app.get("/sdapi/v1/progress")
    async def a1111_progress(skip_current_image: bool = False):
        running = srv.running_jobs() if srv.ready else []
        job = max(running, key=lambda j: j.started or 0) if running else None
        queued = srv.queued_count() if srv.ready else 0
        state = {
            "skipped": False,
            "interrupted": bool(job and job.interrupted),
            "job": job.id if job else "",
            "job_count": len(running) + queued,
            "job_timestamp": time.strftime("%Y%m%d%H%M%S", time.localtime(job.started)) if job else "0",
            "job_no": 0,
            "sampling_step": job.step if job else 0,
            "sampling_steps": job.total_steps if job else 0,
        }
        progress = (job.step / job.total_steps) if job and job.total_steps else 0.0
        image = None
        if job is not None and job.preview is not None and not skip_current_image:
            image = png_base64(job.preview)
        eta = job.eta_s() if job else 0.0
        return {
            "progress": progress,
            "eta_relative": eta or 0.0,
            "state": state,
            "current_image": image,
            "textinfo": None,
            "current_task": job.id if job else None,
        }

    @app.post("/sdapi/v1/interrupt")
    async def a1111_interrupt():
        for job in srv.running_jobs():
            job.interrupted = True
        return {}

    @app.post("/sdapi/v1/skip")
    async def a1111_skip():
        for job in srv.running_jobs():
            job.interrupted = True
        return {}


def _add_a1111_info_routes(app: FastAPI, srv: Server) -> None:
    """AUTOMATIC1111: models, samplers, options (the checkpoint choice)."""

    @app.get("/sdapi/v1/sd-models")
    async def a1111_models():
        srv.queue(None)
        return [
            {
                "title": name,
                "model_name": name,
                "hash": q.model.info.sha256[:10],
                "sha256": q.model.info.sha256,
                "filename": str(q.model.path),
                "config": None,
            }
            for name, q in srv.queues.items()
        ]

    @app.get("/sdapi/v1/samplers")
    async def a1111_samplers():
        return [
            {
                "name": name,
                "aliases": A1111_ALIASES.get(name, []),
                "options": {"diffrt_scheduler": cls, **{k: str(v) for k, v in overrides.items()}},
            }
            for name, (cls, overrides) in A1111_SAMPLERS.items()
        ]

    @app.get("/sdapi/v1/schedulers")
    async def a1111_schedulers():
        return [{"name": "automatic", "label": "Automatic"}, {"name": "karras", "label": "Karras"}]

    @app.get("/sdapi/v1/scripts")
    async def a1111_scripts():
        return {"txt2img": [], "img2img": []}

    @app.get("/sdapi/v1/options")
    async def a1111_get_options():
        model = srv.current_model
        sha = srv.queues[model].model.info.sha256 if model in srv.queues else ""
        return {"sd_model_checkpoint": model, "sd_checkpoint_hash": sha}

    @app.post("/sdapi/v1/options")
    async def a1111_set_options(request: Request):
        fields = Fields(await _json_body(request))
        name = fields.str("sd_model_checkpoint")
        fields.raw("sd_checkpoint_hash")
        fields.refuse_unknown("the options this server has (sd_model_checkpoint)")
        if name is not None:
            srv.queue(name)  # known?
            srv.current_model = name
        return {}


# ----- request bodies ---
def _check_request(scope: dict, cfg: ServeConfig) -> ServeError | None:
    headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", ())}
    length = headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > cfg.max_body_bytes:
        return _too_large(cfg)
    if cfg.api_keys and scope["path"] not in OPEN_PATHS:
        if not _authorized(headers.get("authorization", ""), cfg.api_keys):
            return ServeError(
                401,
                "a valid API key is required; accepted: the header 'Authorization: Bearer KEY'",
                "authorization",
                {"WWW-Authenticate": "Bearer"},
            )
    return None


def _authorized(header: str, keys: tuple[str, ...]) -> bool:
    scheme, _, value = header.partition(" ")
    value = value.strip()
    if scheme.lower() == "basic":  # AUTOMATIC1111 clients send HTTP basic auth: the password is the key
        try:
            value = base64.b64decode(value, validate=True).decode("utf-8").partition(":")[2]
        except (ValueError, UnicodeDecodeError):
            return False
    elif scheme.lower() != "bearer":
        return False
    ok = False
    for key in keys:  # every key compared, in constant time each
        ok |= hmac.compare_digest(value.encode("utf-8"), key.encode("utf-8"))
    return ok


def _too_large(cfg: ServeConfig) -> ServeError:
    return ServeError(
        413, f"the request body is larger than {cfg.max_body_bytes} bytes; accepted: a smaller body", "body"
    )


async def _send_error(send, error: ServeError) -> None:
    body = json.dumps(error.body()).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.lower().encode(), v.encode()) for k, v in error.headers.items()]
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _json_body(request: Request) -> dict[str, Any]:
    raw = await request.body()
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as error:
        raise ServeError(
            400, f"the request body is not valid JSON ({error}); accepted: a JSON object", "body"
        ) from None
    if not isinstance(body, dict):
        raise ServeError(400, f"the request body is JSON {type(body).__name__}; accepted: a JSON object", "body")
    return body


async def _form_body(request: Request):
    kind = request.headers.get("content-type", "")
    if not kind.startswith("multipart/form-data"):
        raise ServeError(400, f"the request body is {kind or 'untyped'}; accepted: multipart/form-data", "body")
    try:
        return await request.form(max_files=4, max_fields=64)
    except ServeError:
        raise
    except Exception as error:
        raise ServeError(
            400, f"the multipart body is unreadable ({type(error).__name__}); accepted: a form", "body"
        ) from None


# ----- requests -> job specs ---
def _size(srv: Server, model: str | None, width: int | None, height: int | None) -> tuple[int, int]:
    cfg = srv.config
    default_h, default_w = srv.model(model).default_size
    width = default_w if width is None else width
    height = default_h if height is None else height
    for name, value in (("width", width), ("height", height)):
        if not 8 <= value <= cfg.max_side or value % 8:
            raise invalid(name, f"{name}={value} is not supported; accepted: a multiple of 8 from 8 to {cfg.max_side}")
    if width * height > cfg.max_pixels:
        raise invalid("size", f"{width}x{height} is {width * height} pixels; accepted: at most {cfg.max_pixels}")
    return width, height


def _common(
    srv: Server, fields: Fields, model: str | None, steps_name: str, guidance_name: str, guidance_default: float
) -> dict[str, Any]:
    cfg = srv.config
    timeout = fields.float("timeout_s", None, 0.001, 86400.0)
    if cfg.request_timeout_s is not None:
        timeout = cfg.request_timeout_s if timeout is None else min(timeout, cfg.request_timeout_s)
    return {
        "steps": fields.int(steps_name, cfg.default_steps, 1, cfg.max_steps),
        "guidance_scale": fields.float(guidance_name, guidance_default, 0.0, 100.0),
        "timeout_s": timeout,
        "preview_every": cfg.preview_every,
    }


def _seed(seed: int | None) -> int:
    return secrets.randbits(32) if seed is None else seed


def _openai_spec(srv: Server, fields: Fields, task: str, image, mask) -> JobSpec:
    cfg = srv.config
    model = fields.str("model")
    srv.queue(model)
    prompt = fields.str("prompt", required=True)
    n = fields.int("n", 1, 1, cfg.max_n)
    size = parse_size("size", fields.raw("size"))
    fields.str("response_format", "b64_json", ("b64_json",))
    fields.accept_defaults(
        {
            "quality": ("auto", "standard"),
            "style": ("vivid", "natural"),
            "background": ("auto",),
            "moderation": ("auto", "low"),
            "output_format": ("png",),
            "output_compression": (100,),
            "input_fidelity": ("low",),
            "partial_images": (0,),
            "stream": (False,),
        },
        "this server (PNG images, returned whole)",
    )
    fields.str("user")
    if image is not None and size is None:
        size = image.size
    try:
        width, height = _size(srv, model, *(size or (None, None)))
    except ServeError as error:  # OpenAI's field is size
        raise invalid(
            "size", error.message.replace("width=", "size width ").replace("height=", "size height ")
        ) from None
    return _diffrt_spec(srv, fields, model, task, prompt, n, (width, height), image, mask)


def _openai_mask(mask: PIL.Image.Image) -> PIL.Image.Image:
    """OpenAI's mask: fully transparent pixels are the ones to edit. A mask without alpha is read as AUTOMATIC1111
    reads one: white is repainted."""
    if "A" in mask.getbands():
        alpha = mask.getchannel("A")
        return alpha.point(lambda a: 255 if a < 128 else 0)
    return mask.convert("L")


def _openai_result(job: Job) -> dict[str, Any]:
    return {
        "created": int(job.finished or time.time()),
        "data": [{"b64_json": png_base64(im), "revised_prompt": None} for im in job.images],
        "seed": job.spec.seed,
    }


def _native_spec(srv: Server, fields: Fields) -> JobSpec:
    cfg = srv.config
    model = fields.str("model")
    srv.queue(model)
    prompt = fields.str("prompt", required=True)
    image = decode_base64("image", fields.raw("image"), cfg.max_image_pixels) if fields.has("image") else None
    mask = decode_base64("mask", fields.raw("mask"), cfg.max_image_pixels).convert("L") if fields.has("mask") else None
    if mask is not None and image is None:
        raise invalid("mask", "mask was given without image; accepted: a mask with an image (inpainting)")
    task = "inpaint" if mask is not None else "img2img" if image is not None else "txt2img"
    size = parse_size("size", fields.raw("size")) if fields.has("size") else None
    width, height = fields.int("width", None, 8, cfg.max_side), fields.int("height", None, 8, cfg.max_side)
    if size is not None:
        width, height = size
    if image is not None and width is None and height is None:
        width, height = image.size
    width, height = _size(srv, model, width, height)
    n = fields.int("n", 1, 1, cfg.max_n)
    spec = _diffrt_spec(srv, fields, model, task, prompt, n, (width, height), image, mask)
    preview = fields.int("preview_every", None, 0, cfg.max_steps)
    if preview is not None:
        spec.preview_every = preview
    return spec


def _diffrt_spec(
    srv: Server, fields: Fields, model: str | None, task: str, prompt: str, n: int, size: tuple[int, int], image, mask
) -> JobSpec:
    """The job of an OpenAI or native request: its images fitted to ``size``, diffrt's own fields read."""
    width, height = size
    if image is not None:
        image = image.convert("RGB").resize((width, height), PIL.Image.LANCZOS)
        mask = mask.resize((width, height), PIL.Image.NEAREST) if mask is not None else None
    common = _common(srv, fields, model, "steps", "guidance_scale", srv.model(model).base.default_guidance_scale)
    return JobSpec(
        model=model or srv.current_model,
        task=task,
        prompt=prompt,
        negative_prompt=fields.str("negative_prompt"),
        n=n,
        width=width,
        height=height,
        seed=_seed(fields.seed()),
        scheduler=scheduler_choice("scheduler", fields.str("scheduler")),
        adapters=fields.adapters(),
        strength=fields.float("strength", 0.8 if task == "img2img" else 1.0, 0.0, 1.0),
        eta=fields.float("eta", 0.0, 0.0, 1.0),
        image=image,
        mask=mask,
        **common,
    )


def _a1111_spec(srv: Server, fields: Fields, task: str) -> tuple[JobSpec, bool]:
    cfg = srv.config
    fields.accept_defaults(A1111_DEFAULTS, "this server (diffrt's AUTOMATIC1111 API)")
    for name in A1111_INERT:
        fields.raw(name)
    overrides = fields.raw("override_settings", {})
    if not isinstance(overrides, dict):
        raise invalid(
            "override_settings", 'override_settings is not an object; accepted: {"sd_model_checkpoint": name}'
        )
    unknown = [k for k in overrides if k not in ("sd_model_checkpoint",)]
    if unknown:
        raise invalid(
            f"override_settings.{unknown[0]}",
            f"override_settings.{unknown[0]} is not supported; accepted: sd_model_checkpoint",
        )
    model = overrides.get("sd_model_checkpoint") or srv.current_model
    srv.queue(model)
    prompt = fields.str("prompt", "")
    n = fields.int("batch_size", 1, 1, cfg.max_n)
    width, height = _size(
        srv, model, fields.int("width", 512, 8, cfg.max_side), fields.int("height", 512, 8, cfg.max_side)
    )
    sampler = fields.str("sampler_name") or fields.str("sampler_index")
    kind = (fields.str("scheduler") or "automatic").lower()
    if kind not in ("automatic", "karras"):
        raise invalid("scheduler", f"scheduler={kind!r} is not supported; accepted: 'automatic' or 'karras'")
    scheduler = scheduler_choice("sampler_name", sampler, karras=kind == "karras")
    eta = fields.raw("eta")
    eta = fields.float("eta", 0.0, 0.0, 1.0) if eta is not None else 0.0
    image = mask = None
    strength = 1.0
    if task == "img2img":
        images = fields.raw("init_images", [])
        if not isinstance(images, list) or len(images) != 1:
            count = len(images) if isinstance(images, list) else "no list of"
            raise invalid("init_images", f"init_images holds {count} images; accepted: a list of one base64 image")
        image = decode_base64("init_images[0]", images[0], cfg.max_image_pixels)
        image = image.convert("RGB").resize((width, height), PIL.Image.LANCZOS)
        strength = fields.float("denoising_strength", 0.75, 0.0, 1.0)
        if fields.has("mask"):
            mask = decode_base64("mask", fields.raw("mask"), cfg.max_image_pixels).convert("L")
            mask = mask.resize((width, height), PIL.Image.NEAREST)
            if fields.int("inpainting_mask_invert", 0, 0, 1):
                mask = PIL.ImageOps.invert(mask)
            blur = fields.int("mask_blur", 4, 0, 64)
            if blur:
                mask = mask.filter(PIL.ImageFilter.GaussianBlur(blur))
            task = "inpaint"
        else:
            fields.raw("mask_blur")
            fields.raw("inpainting_mask_invert")
    send = fields.bool("send_images", True)
    common = _common(srv, fields, model, "steps", "cfg_scale", 7.0)
    spec = JobSpec(
        model=model,
        task=task,
        prompt=prompt,
        negative_prompt=fields.str("negative_prompt"),
        n=n,
        width=width,
        height=height,
        seed=_seed(fields.seed()),
        scheduler=scheduler,
        adapters=fields.adapters(),
        strength=strength,
        eta=eta,
        image=image,
        mask=mask,
        **common,
    )
    fields.raw("include_init_images")
    fields.refuse_unknown("AUTOMATIC1111's API as this server serves it")
    return spec, send


def _a1111_result(job: Job, fields: Fields, send: bool, extra: list) -> dict[str, Any]:
    spec = job.spec
    info = {
        "prompt": spec.prompt,
        "all_prompts": [spec.prompt] * spec.n,
        "negative_prompt": spec.negative_prompt or "",
        "seed": spec.seed,
        "all_seeds": [spec.seed] * spec.n,
        "width": spec.width,
        "height": spec.height,
        "steps": spec.steps,
        "cfg_scale": spec.guidance_scale,
        "sampler_name": fields.body.get("sampler_name"),
        "sd_model_name": spec.model,
        "batch_size": spec.n,
        "denoising_strength": spec.strength,
        "interrupted": job.interrupted,
        "job_timestamp": time.strftime("%Y%m%d%H%M%S", time.localtime(job.started)),
    }
    images = [png_base64(im) for im in [*job.images, *extra]] if send else []
    parameters = {k: v for k, v in fields.body.items() if k not in ("init_images", "mask")}
    return {"images": images, "parameters": parameters, "info": json.dumps(info)}


# ----- waiting for a job ---
async def _run_sync(request: Request, srv: Server, spec: JobSpec) -> Job:
    """Submit, wait for the job; a client that disconnects cancels it (at its next step)."""
    job = srv.submit(spec)
    loop = asyncio.get_running_loop()
    changed = asyncio.Event()
    stop = job.listen(lambda: loop.call_soon_threadsafe(changed.set))
    try:
        while not job.finished_state:
            try:
                await asyncio.wait_for(changed.wait(), 0.25)
            except asyncio.TimeoutError:
                pass
            changed.clear()
            if not job.finished_state and await request.is_disconnected():
                srv.cancel(job, "cancelled: the client disconnected")
                await asyncio.to_thread(job.wait, 60)
                break
    except asyncio.CancelledError:  # the server is stopping the request: stop its job too
        srv.cancel(job, "cancelled: the request was dropped")
        raise
    finally:
        stop()
    if job.state != "done":
        raise job.error or ServeError(500, f"job {job.id} ended {job.state}")
    return job


async def _sse(request: Request, srv: Server, job: Job, start: int):
    loop = asyncio.get_running_loop()
    changed = asyncio.Event()
    stop = job.listen(lambda: loop.call_soon_threadsafe(changed.set))
    seq = start
    try:
        while True:
            events = job.events_since(seq)
            for event in events:
                seq = event["seq"] + 1
                data = dict(event)
                if data.pop("preview", False) and job.preview is not None:
                    data["preview_png"] = png_base64(job.preview)
                if data["type"] == "queued":
                    data["position"] = srv.queues[job.spec.model].position(job) or data.get("position")
                yield f"id: {event['seq']}\nevent: {event['type']}\ndata: {json.dumps(data)}\n\n"
                if event["type"] in ("done", "failed", "cancelled"):
                    return
            try:
                await asyncio.wait_for(changed.wait(), 15)
            except asyncio.TimeoutError:
                yield ": keep-alive\n\n"
            changed.clear()
            if await request.is_disconnected():
                return
    finally:
        stop()
