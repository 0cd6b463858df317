"""The ASGI app of `cxr serve`: a JSON API and a web page over one loaded model.

FastAPI (on Starlette) with uvicorn: the routes' declarations give the OpenAPI description
(`/openapi.json`) without a second copy to keep in step. Requests run on the event loop up to
the model: uploads are read from the multipart body (Starlette spools them in memory, and past
1 MB to an anonymous temporary file that is closed, and so removed, before the response), decoded
on a worker thread by the one image loader, and queued for the `Batcher`, which decodes
concurrent studies together with the same `Predictor` as `cxr predict`.

Errors are JSON `{"error": "<one line>"}`: 400 bad upload, 401 token, 413 too large (body or
pixels), 503 queue full, 504 timeout.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from contextlib import asynccontextmanager
from importlib import resources

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException

from ..captioning.predict import Prediction, Predictor
from ..data.images import load_image_bytes
from ..data.labeller import label_text
from ..errors import InputError, TooLargeError
from ..reporting.assets import read_static as read_report_static
from ..reporting.heatmaps import grid_side
from ..settings.serve import ServeParams
from .batching import Batcher, QueueFullError

log = logging.getLogger(__name__)

VIEWS = ("frontal", "lateral")
TITLE_FIELD = "exam_title"  # optional text: the study's exam title (model.exam_title)
MAX_TITLE_CHARS = 500
# The page's files, and the report's heat-map script and colour ramp, served from the
# report's static folder so that both pages draw heat-maps with the same code and colours.
STATIC = {"serve.js": "text/javascript", "serve.css": "text/css",
          "heatmap.js": "text/javascript", "ramp.json": "application/json"}
FROM_REPORT = {"heatmap.js", "ramp.json"}
PAGE_POLICY = ("default-src 'self'; img-src 'self' blob: data:; style-src 'self'; "
               "script-src 'self'; connect-src 'self'; frame-ancestors 'none'")


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class _BodyTooLarge(Exception):
    pass


class ErrorBody(BaseModel):
    error: str


class AbnormalLabel(BaseModel):
    probability: float
    predicted: bool
    threshold: float


class Labels(BaseModel):
    abnormal: AbnormalLabel | None  # the model's own label head (conditioned models)
    findings: list[str]  # the rule-based labeller's reading of the impression


class Attention(BaseModel):
    grid: int  # regions per view are grid x grid
    views: list[str]
    words: list[str]
    maps: list[list[float]]  # one row per word, then the end token's: frontal then lateral


class PredictResponse(BaseModel):
    impression: str
    words: list[str]
    # The impression is the exam title's normal template (the study predicted normal, or with
    # template_written or template_read its caption written or read as normal).
    normal_template: bool
    # The findings whose phrases `decode.finding_text: appended` added after the decoder's
    # words, or `phrased` after the exam title's template (empty: every word is the
    # decoder's, or the template's).
    appended_findings: list[str]
    labels: Labels
    views: list[str]
    decoding: dict
    model: dict
    seconds: float
    attention: Attention | None = None


class ModelInfo(BaseModel):
    sha256: str
    directory: str
    kind: str
    backbone: str
    weights: str
    image_size: int
    resize: str
    precision: str
    precision_requested: str
    explains: bool
    reads_exam_title: bool  # model.exam_title: the form's exam_title field is read
    abnormal_threshold: float
    vocab_size: int
    decoding: dict
    batching: dict
    limits: dict


class Health(BaseModel):
    status: str
    pending: int  # studies queued or running
    arriving: int  # requests being uploaded or decoded, not yet queued
    token_required: bool
    batches: int  # batches run so far, the studies in them, and the largest
    studies: int
    largest_batch: int
    dropped: int  # studies whose request timed out (or went away) before their batch ran
    heap_trims: int  # times the free heap went back to the OS (serve.heap_trim_s)


ERRORS = {status: {"model": ErrorBody, "description": text} for status, text in (
    (400, "a missing, corrupt or unsupported image, or a malformed form"),
    (401, "missing or wrong API token (`Authorization: Bearer <token>`)"),
    (413, "the upload or an image's pixel size is over the limit"),
    (503, "the queue is full; retry later"),
    (504, "the study was not decoded within the per-request timeout"))}

PREDICT_BODY = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "required": ["frontal"], "properties": {
        "frontal": {"type": "string", "format": "binary", "description": "PNG, JPEG or DICOM"},
        "lateral": {"type": "string", "format": "binary",
                    "description": "PNG, JPEG or DICOM, optional"},
        "exam_title": {"type": "string", "description": "the report's exam title, optional; "
                       "read by a model trained with model.exam_title"}}}}}}}


def _static(name: str) -> str:
    if name in FROM_REPORT:
        return read_report_static(name)
    return resources.files(__package__).joinpath("static", name).read_text(encoding="utf-8")


def _json_error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


class BodyLimit:
    """ASGI middleware: a request body over `max_bytes` gets 413, by its Content-Length at
    once, or while streaming for a body sent without one (chunked)."""

    def __init__(self, app: object, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: dict, receive: object, send: object) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            response = _json_error(413, f"request body of {int(length)} bytes; at most "
                                        f"{self.max_bytes} (serve.max_upload_mb)")
            await response(scope, receive, send)
            return
        received = 0

        async def limited() -> dict:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise _BodyTooLarge
            return message

        await self.app(scope, limited, send)


def create_app(predictor: Predictor, params: ServeParams, token: str | None = None,
               model_dir: str = "", precision_requested: str = "float32") -> FastAPI:
    """The app around a loaded `predictor`; `token` (if any) guards the /v1 routes."""
    batcher = Batcher(predictor.run, params.max_batch, params.max_wait_ms / 1000,
                      params.queue_size, params.heap_trim_s)
    max_bytes = int(params.max_upload_mb * 1024 * 1024)
    bundle = predictor.bundle
    settings = bundle.config["features"]
    decoding = predictor.decode_params.settings()
    identity = {"sha256": bundle.sha256, "kind": predictor.kind,
                "precision": predictor.precision}

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await batcher.start()
        try:
            yield
        finally:
            await batcher.stop()

    app = FastAPI(title="cxr-impressions", version="1", lifespan=lifespan,
                  docs_url=None, redoc_url=None,  # their pages load scripts from a CDN
                  description="The impression of a chest X-ray study from its images.")
    app.state.batcher = batcher

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        if exc.status == 503:
            headers = {"Retry-After": "1"}
        return _json_error(exc.status, exc.message, headers)

    def check_token(request: Request) -> None:
        if token is None:
            return
        given = request.headers.get("authorization", "")
        scheme, _, value = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(value.strip().encode(),
                                                                 token.encode()):
            raise ApiError(401, "missing or wrong API token: send 'Authorization: Bearer "
                                "<token>'")

    @app.get("/", include_in_schema=False)
    async def page() -> Response:
        return Response(_static("index.html"), media_type="text/html",
                        headers={"Content-Security-Policy": PAGE_POLICY})

    @app.get("/static/{name}", include_in_schema=False)
    async def static(name: str) -> Response:
        if name not in STATIC:
            return _json_error(404, f"no static file {name!r}")
        return Response(_static(name), media_type=STATIC[name])

    @app.get("/healthz", response_model=Health)
    async def healthz() -> dict:
        """Liveness, the studies queued or running and the requests on their way, whether /v1
        needs a token, and batch counts."""
        stats = batcher.stats
        return {"status": "ok", "pending": batcher.pending, "arriving": batcher.on_the_way,
                "token_required": token is not None,
                "batches": stats.batches, "studies": stats.studies,
                "largest_batch": stats.largest, "dropped": stats.dropped,
                "heap_trims": stats.heap_trims}

    @app.get("/v1/model", response_model=ModelInfo, responses={401: ERRORS[401]})
    async def model(request: Request) -> dict:
        """What is loaded: the bundle's hash and settings, the decoding, batching and limits."""
        check_token(request)
        return {"sha256": bundle.sha256, "directory": model_dir, "kind": predictor.kind,
                "backbone": settings["backbone"], "weights": settings["weights"],
                "image_size": predictor.image_size, "resize": predictor.resize,
                "precision": predictor.precision, "precision_requested": precision_requested,
                "explains": predictor.explains, "reads_exam_title": bundle.titles is not None,
                "abnormal_threshold": bundle.abnormal_threshold,
                "vocab_size": len(bundle.vocab), "decoding": decoding,
                "batching": {"max_batch": params.max_batch, "max_wait_ms": params.max_wait_ms,
                             "queue_size": params.queue_size,
                             "backbone_batch": params.backbone_batch},
                "limits": {"max_upload_mb": params.max_upload_mb,
                           "max_image_side": params.max_image_side,
                           "timeout_s": params.timeout_s}}

    async def read_uploads(request: Request) -> tuple[list[tuple[str, bytes]], str]:
        """The study's image uploads and its exam title ("" if the form has none)."""
        try:
            # One file more than the views, so that a file sent as the title is named below.
            form = await request.form(max_files=len(VIEWS) + 1, max_fields=1)
        except _BodyTooLarge:
            raise ApiError(413, f"request body over {max_bytes} bytes "
                                "(serve.max_upload_mb)") from None
        except MultiPartException as exc:
            raise ApiError(400, f"malformed multipart form: {exc.message}") from None
        try:
            if not request.headers.get("content-type", "").startswith("multipart/form-data"):
                raise ApiError(400, "send the images as multipart/form-data fields 'frontal' "
                                    "and (optionally) 'lateral'")
            unknown = sorted(set(form.keys()) - {*VIEWS, TITLE_FIELD})
            if unknown:
                raise ApiError(400, f"unknown form field {unknown[0]!r} (fields: frontal, "
                                    f"lateral, {TITLE_FIELD})")
            if form.get("frontal") is None:
                raise ApiError(400, "no 'frontal' image in the form (fields: frontal, lateral)")
            title = form.get(TITLE_FIELD) or ""
            if not isinstance(title, str):
                raise ApiError(400, f"form field {TITLE_FIELD!r} must be text, not a file")
            if len(title) > MAX_TITLE_CHARS:
                raise ApiError(400, f"form field {TITLE_FIELD!r} is over {MAX_TITLE_CHARS} "
                                    "characters")
            uploads = []
            for view in VIEWS:
                item = form.get(view)
                if item is None:
                    continue
                if not isinstance(item, UploadFile):
                    raise ApiError(400, f"form field {view!r} must be a file upload")
                uploads.append((item.filename or view, await item.read()))
            return uploads, title
        finally:
            await form.close()  # closes (and so deletes) any spooled temporary file

    def decode(uploads: list[tuple[str, bytes]]) -> list:
        images = []
        for name, data in uploads:
            if not data:
                raise InputError(f"{name}: empty file")
            images.append(load_image_bytes(data, name, predictor.image_size,
                                           policy=predictor.resize,
                                           max_side=params.max_image_side))
        return images

    @app.post("/v1/predict", response_model=PredictResponse, response_model_exclude_none=True,
              openapi_extra=PREDICT_BODY,
              responses={k: ERRORS[k] for k in (400, 401, 413, 503, 504)})
    async def predict(request: Request, explain: bool = False) -> dict:
        """The impression of one study (a frontal and an optional lateral image), its labels,
        the decoding settings and the model's identity; `?explain=1` adds each word's
        attention over both views."""
        began = time.perf_counter()
        check_token(request)
        if explain and not predictor.explains:
            raise ApiError(400, f"explain needs a model with spatial attention; the "
                                f"{predictor.kind} model has none")
        timed_out = ApiError(504, f"no result within {params.timeout_s:g} s (serve.timeout_s)")
        with batcher.arriving():  # a batch about to run may wait for this study
            uploads, exam_title = await read_uploads(request)
            try:
                images = await asyncio.to_thread(decode, uploads)
            except TooLargeError as exc:
                raise ApiError(413, str(exc)) from None
            except InputError as exc:
                raise ApiError(400, str(exc)) from None
            remaining = params.timeout_s - (time.perf_counter() - began)
            if remaining <= 0:  # a slow upload spent it all: don't take a place in the queue
                raise timed_out
            try:
                future = batcher.submit(images, explain, exam_title)
            except QueueFullError as exc:
                raise ApiError(503, f"server busy: {exc}") from None
        try:
            # On timeout the future is cancelled: a batch not yet started drops the study.
            result: Prediction = await asyncio.wait_for(future, remaining)
        except TimeoutError:
            raise timed_out from None
        return _response(result, len(images), decoding, identity, bundle.abnormal_threshold,
                         time.perf_counter() - began)

    app.add_middleware(BodyLimit, max_bytes=max_bytes)
    return app


def _response(result: Prediction, views: int, decoding: dict, identity: dict,
              threshold: float, seconds: float) -> dict:
    words = result.text.split()
    findings = sorted(k for k, v in label_text(result.text).items() if v and k != "abnormal")
    abnormal = None
    if result.abnormal is not None:
        abnormal = {"probability": round(float(result.abnormal), 4),
                    "predicted": bool(result.abnormal >= threshold),
                    "threshold": round(threshold, 4)}
    body = {"impression": result.text, "words": words, "normal_template": result.template,
            "appended_findings": list(result.appended),
            "labels": {"abnormal": abnormal, "findings": findings},
            "views": list(VIEWS[:views]), "decoding": decoding, "model": identity,
            "seconds": round(seconds, 4)}
    if result.maps is not None:
        maps = np.asarray(result.maps, dtype=np.float64)
        body["attention"] = {"grid": grid_side(maps.shape[1] // 2) or 0,
                             "views": list(VIEWS), "words": words + ["<end>"],
                             "maps": np.round(maps, 5).tolist()}
    return body

