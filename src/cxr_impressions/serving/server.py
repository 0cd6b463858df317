"""`cxr serve`: load the bundle once, warm it up, and run the app under uvicorn."""

from __future__ import annotations

import ipaddress
import logging
import os
import socket
import time
from pathlib import Path

from ..errors import InputError
from ..settings.serve import ServeParams

log = logging.getLogger(__name__)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def read_token(params: ServeParams) -> str | None:
    """The API token from the environment variable `serve.token_env`, if set and non-empty."""
    token = os.environ.get(params.token_env, "").strip() if params.token_env else ""
    return token or None


def warm_up(predictor: object, max_batch: int) -> None:
    """Trace the backbone and decoder for one and two views and a full batch, so that the
    first requests do not pay for it."""
    import tensorflow as tf

    blank = tf.zeros((predictor.image_size, predictor.image_size, 3), tf.float32)
    predictor.run([[blank, blank]], explain=predictor.explains)
    predictor.run([[blank]])
    if max_batch > 1:
        predictor.run([[blank, blank]] * max_batch)


def serve(model_dir: str | Path, weights_dir: str, params: ServeParams,
          precision: str | None = None) -> None:
    """Serve until interrupted (Ctrl-C or SIGTERM end it cleanly)."""
    import uvicorn

    from ..captioning.predict import Predictor
    from .app import create_app

    check_address(params.host, params.port)
    token = read_token(params)
    if not is_loopback(params.host) and token is None:
        log.warning("listening on %s without an API token: anyone who can reach it can use "
                    "it; set %s to require 'Authorization: Bearer <token>'", params.host,
                    params.token_env)
    began = time.perf_counter()
    predictor = Predictor(model_dir, weights_dir, precision=precision,
                          backbone_batch=params.backbone_batch)
    requested = precision or predictor.bundle.config["features"].get("precision", "float32")
    warm_up(predictor, params.max_batch)
    app = create_app(predictor, params, token, str(model_dir), requested)
    log.info("model %s (%s, %s) ready in %.1f s; batching up to %d studies, %g ms wait; "
             "http://%s:%d/", predictor.bundle.sha256[:12], predictor.kind,
             predictor.precision, time.perf_counter() - began, params.max_batch,
             params.max_wait_ms, params.host, params.port)
    config = uvicorn.Config(app, host=params.host, port=params.port, log_level="warning",
                            access_log=False, timeout_graceful_shutdown=5)
    server = uvicorn.Server(config)
    server.run()


def check_address(host: str, port: int) -> None:
    """Fail in one line, before the model loads, if the address can't be listened on."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise InputError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as exc:  # the port is taken, or the address is not this machine's
            raise InputError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
