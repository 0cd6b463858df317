"""`cxr serve` through the real server: a subprocess on a free loopback port, with a tiny
untrained model over random-weight Xception features (71 px), so that it starts in seconds."""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import io
import json
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from cxr_impressions.serving.batching import Batcher, QueueFullError
from cxr_impressions.serving.heap import can_release

from .helpers import SAMPLE, launch_chromium
from .repos import env as repo_env
from .seaweed import free_port

CHROMIUM = os.environ.get("CXR_CHROMIUM", "/usr/bin/chromium")
TOKEN = "test-token-123"
IMAGES = SAMPLE / "images"
# Three sample studies, frontal then lateral.
STUDIES = {"1": ("1_IM-0001-4001.dcm.jpg", "1_IM-0001-3001.dcm.jpg"),
           "2": ("2_IM-0652-1001.dcm.jpg", "2_IM-0652-2001.dcm.jpg"),
           "3": ("3_IM-1384-1001.dcm.jpg", "3_IM-1384-2001.dcm.jpg")}
LIMITS = ["--max-batch", "4", "--max-wait-ms", "30", "--queue-size", "4", "--timeout-s", "120",
          "--max-upload-mb", "1.5", "--max-image-side", "2048", "--heap-trim-s", "0.001"]


def env() -> dict:
    # Deterministic kernels: an untrained model's near-tied beams must not flip on thread
    # timing between the server and `cxr predict`.
    return {**repo_env(), "TF_DETERMINISTIC_OPS": "1"}


def multipart(fields: dict[str, tuple[str | None, bytes, str]]) -> tuple[bytes, str]:
    """A multipart body; a field whose filename is None is a plain text field."""
    boundary = uuid.uuid4().hex
    body = io.BytesIO()
    for name, (filename, data, kind) in fields.items():
        if filename is None:
            body.write(f"--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\""
                       "\r\n\r\n".encode())
        else:
            body.write(f"--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"; "
                       f"filename=\"{filename}\"\r\nContent-Type: {kind}\r\n\r\n".encode())
        body.write(data + b"\r\n")
    body.write(f"--{boundary}--\r\n".encode())
    return body.getvalue(), f"multipart/form-data; boundary={boundary}"


class Client:
    def __init__(self, port: int, token: str | None = TOKEN) -> None:
        self.port = port
        self.token = token

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict | None = None, token: str | None = None,
                chunked: bool = False) -> tuple[int, dict]:
        headers = dict(headers or {})
        token = token if token is not None else self.token
        if token:
            headers["Authorization"] = f"Bearer {token}"
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=180)
        try:
            if chunked:
                connection.request(method, path, body=iter([body[i:i + 65536] for i in
                                                           range(0, len(body), 65536)]),
                                   headers=headers, encode_chunked=True)
            else:
                connection.request(method, path, body=body, headers=headers)
            response = connection.getresponse()
            payload = response.read()
        finally:
            connection.close()
        kind = response.getheader("content-type", "")
        return response.status, (json.loads(payload) if "json" in kind
                                 else {"text": payload.decode()})

    def predict(self, frontal: str | bytes, lateral: str | bytes | None = None,
                explain: bool = False, names: tuple[str, str] = ("f.jpg", "l.jpg"),
                **options: object) -> tuple[int, dict]:
        fields = {}
        for view, item, name in (("frontal", frontal, names[0]), ("lateral", lateral, names[1])):
            if item is None:
                continue
            data = (IMAGES / item).read_bytes() if isinstance(item, str) else item
            fields[view] = (item if isinstance(item, str) else name, data, "image/jpeg")
        body, kind = multipart(fields)
        path = "/v1/predict" + ("?explain=1" if explain else "")
        return self.request("POST", path, body, {"Content-Type": kind}, **options)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    from .tiny_models import serving_bundle

    return serving_bundle(tmp_path_factory.mktemp("bundle") / "models", seed=3)


@contextlib.contextmanager
def running_server(bundle: Path, folder: Path, limits: list[str]) -> Iterator[Client]:
    """`cxr serve` with `limits` and a token, in a subprocess on a free port; its temporary
    folder (`folder`/tmp) watched, its log in `folder`/log.txt."""
    port = free_port()
    spool = folder / "tmp"
    spool.mkdir(parents=True)
    variables = {**env(), "CXR_API_TOKEN": TOKEN, "TMPDIR": str(spool)}
    log = folder / "log.txt"
    with log.open("w") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "cxr_impressions.cli", "serve", "--model", str(bundle),
             "--port", str(port), "--params", str(bundle / "none.yaml"), *limits],
            env=variables, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        client = Client(port)
        deadline = time.monotonic() + 300
        while True:
            assert process.poll() is None, log.read_text()
            try:
                if client.request("GET", "/healthz")[0] == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.5)
        client.spool, client.log, client.process = spool, log, process
        yield client
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def server(bundle: Path, tmp_path_factory) -> Iterator[Client]:
    """`cxr serve` with small limits and a token."""
    with running_server(bundle, tmp_path_factory.mktemp("server"), LIMITS) as client:
        yield client


def test_good_study_gives_impression_labels_decoding_and_identity(server: Client,
                                                                  bundle: Path) -> None:
    from cxr_impressions.captioning.bundle import bundle_hash

    status, body = server.predict(*STUDIES["1"], explain=True)
    assert status == 200, body
    assert body["impression"] == " ".join(body["words"]) and body["words"]
    assert body["normal_template"] is False  # normal_text: decoder
    assert body["appended_findings"] == []  # finding_text: decoder
    assert body["views"] == ["frontal", "lateral"]
    assert body["model"]["sha256"] == bundle_hash(bundle)
    assert body["model"]["precision"] == "float32"
    assert body["decoding"] == {"method": "beam", "beam_size": 3, "length_penalty": 0.7,
                                "no_repeat_ngram": 3, "labels": "independent",
                                "beam_choice": "score", "normal_text": "decoder",
                                "finding_text": "decoder"}
    abnormal = body["labels"]["abnormal"]
    assert 0 <= abnormal["probability"] <= 1
    if abs(abnormal["probability"] - abnormal["threshold"]) > 1e-3:  # both rounded to 4 places
        assert abnormal["predicted"] == (abnormal["probability"] >= abnormal["threshold"])
    maps = np.array(body["attention"]["maps"])
    assert body["attention"]["grid"] == 3
    assert maps.shape == (len(body["words"]) + 1, 2 * 9)
    assert np.allclose(maps.sum(axis=1), 1, atol=1e-3)  # softmax over both views' regions
    status, plain = server.predict(*STUDIES["1"])
    assert status == 200 and "attention" not in plain
    assert plain["impression"] == body["impression"]


def test_model_health_and_openapi(server: Client, bundle: Path) -> None:
    status, info = server.request("GET", "/v1/model")
    assert status == 200
    assert info["kind"] == "transformer" and info["image_size"] == 71 and info["explains"]
    assert info["batching"] == {"max_batch": 4, "max_wait_ms": 30.0, "queue_size": 4,
                                "backbone_batch": 2}
    assert info["limits"]["max_image_side"] == 2048
    status, health = server.request("GET", "/healthz", token="")
    assert status == 200 and health["status"] == "ok" and health["token_required"]
    status, schema = server.request("GET", "/openapi.json", token="")
    assert status == 200
    post = schema["paths"]["/v1/predict"]["post"]
    assert {"400", "401", "413", "503", "504"} <= set(post["responses"])
    assert "multipart/form-data" in post["requestBody"]["content"]


def test_one_view_only(server: Client) -> None:
    status, body = server.predict(STUDIES["2"][0], explain=True)
    assert status == 200, body
    assert body["views"] == ["frontal"]
    assert len(body["attention"]["maps"]) == len(body["words"]) + 1


def test_corrupt_and_fake_images_get_400_and_the_server_goes_on(server: Client) -> None:
    truncated = (IMAGES / STUDIES["1"][0]).read_bytes()[:3000]
    status, body = server.predict(truncated, names=("cut.jpg", ""))
    assert status == 400 and body["error"] == "cut.jpg: not a PNG, JPEG or DICOM image, or corrupt"
    status, body = server.predict(STUDIES["1"][0], b"just some text, honest\n" * 20,
                                  names=("", "notes.png"))
    assert status == 400 and body["error"].startswith("notes.png: not a PNG, JPEG or DICOM")
    from PIL import Image

    gif = io.BytesIO()
    Image.new("L", (64, 64)).save(gif, format="GIF")
    status, body = server.predict(gif.getvalue(), names=("x.gif", ""))
    assert status == 400 and "GIF images are not supported" in body["error"]
    status, body = server.predict(b"", names=("empty.png", ""))
    assert status == 400 and body["error"] == "empty.png: empty file"
    body, kind = multipart({"lateral": ("l.jpg", (IMAGES / STUDIES["1"][1]).read_bytes(),
                                        "image/jpeg")})
    status, answer = server.request("POST", "/v1/predict", body, {"Content-Type": kind})
    assert status == 400 and "no 'frontal' image" in answer["error"]
    assert server.predict(*STUDIES["1"])[0] == 200  # still serving


def test_the_exam_title_field(server: Client) -> None:
    images = {view: (name, (IMAGES / name).read_bytes(), "image/jpeg")
              for view, name in zip(("frontal", "lateral"), STUDIES["1"], strict=True)}
    status, info = server.request("GET", "/v1/model")
    assert status == 200 and info["reads_exam_title"] is False
    plain = server.predict(*STUDIES["1"])[1]["impression"]
    # A model trained without titles takes the field and writes what it writes without it.
    body, kind = multipart({**images, "exam_title": (None, b"Xray Chest PA and Lateral", "")})
    status, answer = server.request("POST", "/v1/predict", body, {"Content-Type": kind})
    assert status == 200 and answer["impression"] == plain
    body, kind = multipart({**images, "exam_title": ("title.txt", b"Xray", "text/plain")})
    status, answer = server.request("POST", "/v1/predict", body, {"Content-Type": kind})
    assert status == 400, (status, answer)
    assert answer.get("error") == "form field 'exam_title' must be text, not a file", answer
    body, kind = multipart({**images, "exam_title": (None, b"x" * 501, "")})
    status, answer = server.request("POST", "/v1/predict", body, {"Content-Type": kind})
    assert status == 400 and "over 500 characters" in answer["error"]
    body, kind = multipart({**images, "notes": (None, b"hello", "")})
    status, answer = server.request("POST", "/v1/predict", body, {"Content-Type": kind})
    assert status == 400 and answer["error"].startswith("unknown form field 'notes'")


def test_oversized_upload_and_image_get_413(server: Client) -> None:
    big = os.urandom(int(1.6 * 1024 * 1024))
    status, body = server.predict(big, names=("big.png", ""))
    assert status == 413 and "serve.max_upload_mb" in body["error"]
    body_bytes, kind = multipart({"frontal": ("big.png", big, "image/png")})
    status, body = server.request("POST", "/v1/predict", body_bytes, {"Content-Type": kind},
                                  chunked=True)  # no Content-Length: counted while streaming
    assert status == 413 and "serve.max_upload_mb" in body["error"]
    from PIL import Image

    wide = io.BytesIO()
    Image.new("L", (3000, 8)).save(wide, format="PNG")
    status, body = server.predict(wide.getvalue(), names=("wide.png", ""))
    assert status == 413 and body["error"] == "wide.png: 3000x8 pixels; at most 2048 per side"
    assert server.predict(*STUDIES["1"])[0] == 200


def test_uploads_over_the_spool_size_leave_nothing_on_disk(server: Client) -> None:
    from PIL import Image

    noisy = io.BytesIO()  # ~1.2 MB: past Starlette's 1 MB in-memory spool
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (640, 640, 3), np.uint8)).save(
        noisy, format="PNG")
    assert 1024 * 1024 < len(noisy.getvalue()) < 1.5 * 1024 * 1024
    status, body = server.predict(noisy.getvalue(), names=("noise.png", ""))
    assert status == 200, body
    # TensorFlow's autograph writes its generated code there too; nothing else may be left.
    left = [p.name for p in server.spool.iterdir()
            if not p.name.startswith("__autograph_generated_file")]
    assert left == []


def test_wrong_or_missing_token_gets_401(server: Client) -> None:
    status, body = server.predict(*STUDIES["1"], token="wrong")
    assert status == 401 and "API token" in body["error"]
    anonymous = Client(server.port, token=None)
    assert anonymous.predict(*STUDIES["1"])[0] == 401
    assert anonymous.request("GET", "/v1/model")[0] == 401
    assert anonymous.request("GET", "/")[0] == 200  # the page itself is public


def test_queue_full_gets_503_and_the_rest_succeed(server: Client) -> None:
    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(lambda _: server.predict(*STUDIES["2"]), range(16)))
    codes = [status for status, _ in results]
    assert set(codes) <= {200, 503} and codes.count(503) >= 1 and codes.count(200) >= 4
    busy = next(body for status, body in results if status == 503)
    assert busy["error"].startswith("server busy:")
    assert server.predict(*STUDIES["2"])[0] == 200


def test_request_over_the_timeout_gets_504_and_the_server_goes_on(bundle: Path,
                                                                   tmp_path: Path) -> None:
    """Both ways a request outlives `timeout_s` (1 s), whatever the machine's speed: a
    study waiting for its batch to fill (a batch waits up to max_wait_ms, 8 s, while another
    request is still uploading), and a request whose slow upload spends the time (it is
    never queued). The timeout leaves a loaded CI machine time to decode the first study, so
    that it is queued (at 0.2 s it sometimes was not)."""
    limits = ["--timeout-s", "1", "--max-batch", "4", "--max-wait-ms", "8000"]
    expected = {"error": "no result within 1 s (serve.timeout_s)"}
    with running_server(bundle, tmp_path, limits) as client:
        body, kind = multipart({"frontal": ("f.jpg", (IMAGES / STUDIES["1"][0]).read_bytes(),
                                            "image/jpeg")})
        slow = http.client.HTTPConnection("127.0.0.1", client.port, timeout=60)
        try:
            slow.putrequest("POST", "/v1/predict")
            for name, value in (("Content-Type", kind), ("Content-Length", str(len(body))),
                                ("Authorization", f"Bearer {TOKEN}")):
                slow.putheader(name, value)
            slow.endheaders()
            slow.send(body[:1000])  # the rest comes later
            deadline = time.monotonic() + 30
            while client.request("GET", "/healthz")[1]["arriving"] != 1:
                assert time.monotonic() < deadline
                time.sleep(0.05)
            began = time.monotonic()
            assert client.predict(*STUDIES["1"]) == (504, expected)
            assert time.monotonic() - began < 5  # answered at its timeout, not its batch's
            slow.send(body[1000:])
            response = slow.getresponse()
            assert (response.status, json.loads(response.read())) == (504, expected)
        finally:
            slow.close()
        deadline = time.monotonic() + 30
        while (health := client.request("GET", "/healthz")[1])["pending"]:
            assert time.monotonic() < deadline, health
            time.sleep(0.2)
        # The waiting study was dropped from its batch unrun, the slow one never queued; the
        # server answers on.
        assert (health["dropped"], health["studies"], health["arriving"]) == (1, 0, 0), health
        assert client.request("GET", "/v1/model")[0] == 200
        status, answer = client.predict(b"not an image", names=("bad.png", ""))
        assert status == 400 and answer["error"].startswith("bad.png: not a PNG")
        assert client.process.poll() is None


def cxr_predict_csv(bundle: Path, tmp_path: Path) -> dict[str, str]:
    projections = tmp_path / "projections.csv"
    rows = ["uid,filename,projection"]
    for uid, (frontal, lateral) in STUDIES.items():
        rows += [f"{uid},{frontal},Frontal", f"{uid},{lateral},Lateral"]
    projections.write_text("\n".join(rows) + "\n")
    out = tmp_path / "predictions.csv"
    result = subprocess.run(
        [sys.executable, "-m", "cxr_impressions.cli", "predict", "--projections",
         str(projections), "--images", str(IMAGES), "--model", str(bundle), "--out", str(out)],
        capture_output=True, text=True, timeout=600, env=env())
    assert result.returncode == 0, result.stderr
    import pandas as pd

    return dict(pd.read_csv(out, dtype=str, keep_default_na=False).itertuples(index=False))


def test_load_test_no_failures_and_batching_keeps_each_answer(server: Client) -> None:
    """A few dozen concurrent requests: none fails, and a study's answer is the same whatever
    batch it was decoded in."""
    jobs = [uid for _ in range(8) for uid in STUDIES]  # 24 requests from 4 clients
    began = time.monotonic()
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda uid: server.predict(*STUDIES[uid]), jobs))
    assert time.monotonic() - began < 300
    assert [status for status, _ in answers] == [200] * len(jobs)
    by_study: dict[str, set[str]] = {}
    for uid, (_, body) in zip(jobs, answers, strict=True):
        by_study.setdefault(uid, set()).add(body["impression"])
    assert all(len(texts) == 1 for texts in by_study.values()), by_study
    health = server.request("GET", "/healthz")[1]
    assert health["largest_batch"] > 1  # concurrent requests were decoded together
    assert 0 < health["heap_trims"] <= health["batches"]  # --heap-trim-s 0.001: after each batch


def test_server_answers_equal_cxr_predict(server: Client, bundle: Path, tmp_path: Path) -> None:
    expected = cxr_predict_csv(bundle, tmp_path)
    assert set(expected) == set(STUDIES)
    for uid, views in STUDIES.items():
        status, body = server.predict(*views)
        assert status == 200 and body["impression"] == expected[uid], uid


def test_page_in_headless_chromium(server: Client, tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    from cxr_impressions.reporting.assets import read_static

    # The heat-map script and colours are the report's own files, not copies.
    assert server.request("GET", "/static/heatmap.js")[1] == {"text": read_static("heatmap.js")}
    assert server.request("GET", "/static/ramp.json")[1] == json.loads(read_static("ramp.json"))
    with sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        try:
            page = browser.new_page(viewport={"width": 900, "height": 1000})
            problems: list[str] = []
            page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
            page.on("requestfailed", lambda request: problems.append(request.url))
            page.goto(f"http://127.0.0.1:{server.port}/")
            page.wait_for_selector("body[data-ready='1']", timeout=30000)
            assert page.is_visible("#token")  # the server asks for a token
            page.fill("#token", TOKEN)
            page.set_input_files("#frontal", str(IMAGES / STUDIES["1"][0]))
            page.set_input_files("#lateral", str(IMAGES / STUDIES["1"][1]))
            page.fill("#exam-title", "Xray Chest PA and Lateral")  # sent, and accepted
            page.click("#run")
            page.wait_for_selector("body[data-state='done']", timeout=120000)
            words = page.locator("#impression .word")
            assert words.count() >= 2
            assert page.locator("#labels li").count() == 2
            heat = ("c => { const x = c.getContext('2d').getImageData(0, 0, c.width, c.height)"
                    ".data; let s = 0; for (let i = 3; i < x.length; i += 4) s += x[i] * (i % 97);"
                    " return s; }")
            canvases = page.locator("canvas.heat")
            mean_maps = [canvases.nth(v).evaluate(heat) for v in range(2)]
            assert all(m > 0 for m in mean_maps)  # both views carry the mean map
            words.nth(1).hover()
            assert [canvases.nth(v).evaluate(heat) for v in range(2)] != mean_maps
            page.screenshot(path=str(tmp_path / "serve.png"), full_page=True)
            assert (tmp_path / "serve.png").stat().st_size > 10_000
            assert not problems, problems
        finally:
            browser.close()


def test_batcher_groups_requests_and_bounds_its_queue() -> None:
    seen: list[int] = []

    def run(images: list, explain: list, exam_titles: list) -> list:
        seen.append(len(images))
        time.sleep(0.05)
        return [f"study {i[0]} {t}" for i, t in zip(images, exam_titles, strict=True)]

    async def scenario() -> list:
        batcher = Batcher(run, max_batch=2, max_wait_s=0.2, queue_size=5)
        await batcher.start()
        try:
            futures = [batcher.submit([n], False, f"title {n}") for n in range(5)]
            with pytest.raises(QueueFullError, match="5 studies queued or running"):
                batcher.submit([5], False)
            return await asyncio.gather(*futures)
        finally:
            await batcher.stop()

    # Each study's result, with its own exam title, whatever batch it ran in.
    assert asyncio.run(scenario()) == [f"study {n} title {n}" for n in range(5)]
    assert seen == [2, 2, 1]


def test_a_lone_study_waits_for_a_batch_only_while_another_is_on_its_way() -> None:
    def run(images: list, explain: list, exam_titles: list) -> list:
        return [len(images)] * len(images)

    async def scenario() -> tuple[float, list]:
        batcher = Batcher(run, max_batch=4, max_wait_s=5.0, queue_size=8)
        await batcher.start()
        try:
            began = time.monotonic()
            alone = await batcher.submit([0], False)  # nothing else arriving: runs at once
            waited = time.monotonic() - began
            with batcher.arriving():
                first = batcher.submit([1], False)
                await asyncio.sleep(0.3)  # the first study's batch waits for this one
                second = batcher.submit([2], False)
            return waited, [alone, *await asyncio.gather(first, second)]
        finally:
            await batcher.stop()

    waited, sizes = asyncio.run(scenario())
    assert waited < 2.0 and sizes == [1, 2, 2]


def test_batcher_trims_the_heap_at_most_every_heap_trim_s() -> None:
    def run(images: list, explain: list, exam_titles: list) -> list:
        time.sleep(0.02)
        return [None] * len(images)

    async def trims(heap_trim_s: float) -> int:
        batcher = Batcher(run, max_batch=1, max_wait_s=0.0, queue_size=8,
                          heap_trim_s=heap_trim_s)
        await batcher.start()
        try:
            await asyncio.gather(*(batcher.submit([n], False) for n in range(6)))
            await asyncio.sleep(0.1)  # the last batch's trim follows its answer
            return batcher.stats.heap_trims
        finally:
            await batcher.stop()

    if not can_release():
        pytest.skip("this C library has no malloc_trim")
    assert asyncio.run(trims(0.0)) == 0  # off
    assert asyncio.run(trims(1e-6)) == 6  # due after every batch
    assert asyncio.run(trims(3600.0)) == 0  # never due within the test


def test_release_free_heap_gives_fragmented_free_pages_back() -> None:
    """What the server's heap trims are for: free blocks interleaved with live ones keep their
    pages in glibc's heap (RSS stays up after the free) until `release_free_heap`."""
    if not can_release():
        pytest.skip("this C library has no malloc_trim")
    script = (
        "import psutil\n"
        "from cxr_impressions.serving.heap import release_free_heap\n"
        "rss = lambda: psutil.Process().memory_info().rss / 2**20\n"
        "live, freed = [], [bytearray(2000) for _ in range(150_000)]\n"
        "for i in range(0, len(freed), 50): live.append(freed[i]); freed[i] = None\n"
        "del freed\n"
        "before = rss(); assert release_free_heap(); print(before, rss())\n")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         check=True).stdout
    before, after = map(float, out.split())
    assert before - after > 150, (before, after)  # ~290 MB freed but held, before the trim


def test_serve_flags_and_taken_port_are_one_line_errors(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        for args, message in (
                (["--max-batch", "0"], "error: cxr serve: serve.max_batch must be >= 1, got 0"),
                (["--port", str(port)], f"error: cannot listen on 127.0.0.1:{port}: "),
        ):
            result = subprocess.run(
                [sys.executable, "-m", "cxr_impressions.cli", "serve", "--model",
                 str(tmp_path), "--params", str(tmp_path / "none.yaml"), *args],
                capture_output=True, text=True, timeout=120, env=env())
            assert result.returncode == 2
            assert result.stderr.strip().splitlines()[-1].startswith(message), result.stderr
            assert "Traceback" not in result.stderr


def test_predictor_runs_the_bundles_precision(bundle: Path, tmp_path: Path,
                                              caplog: pytest.LogCaptureFixture) -> None:
    import shutil

    from cxr_impressions.captioning.predict import Predictor
    from cxr_impressions.features.backbones import bf16_support

    copy = tmp_path / "models"
    shutil.copytree(bundle, copy)
    config = json.loads((copy / "config.json").read_text())
    config["features"]["precision"] = "bfloat16"
    (copy / "config.json").write_text(json.dumps(config))
    with caplog.at_level("WARNING"):
        predictor = Predictor(copy, "unused: weights none")
    if bf16_support() is None:
        assert predictor.precision == "float32"
        assert any("running the backbone in float32" in r.getMessage() for r in caplog.records)
    else:
        assert predictor.precision == "bfloat16"
    assert Predictor(copy, "unused", precision="float32").precision == "float32"
