"""`cxr serve` under load: latency percentiles, throughput, dynamic batching on/off, peak RSS.

Starts the real server (`cxr serve`, a subprocess on a free loopback port) and drives it with
N concurrent clients (threads, one keep-alive connection each) posting real sample studies
(frontal + lateral JPEGs) to /v1/predict, for a bounded number of requests per level:

  backbone:  in process, before the servers start: the backbone over 16 images (8 studies) in
             calls of --backbone-chunks images (the server's `backbone_batch`), wall and CPU
             seconds an image, rounds interleaved, the best round of each;
  baseline:  the warm in-process `Predictor` on one study (the same work without HTTP,
             queueing or batching), --repeats calls before each level, the median of all;
  batching:  a server with dynamic batching (--max-batch, --max-wait-ms) at 1, 4, 16 clients;
  off:       a second server with --max-batch 1, each level right after the batching one
             (interleaved: a shared machine's load drifts from minute to minute);
  leak:      with --rss-requests 1000, that many requests from 4 clients, the server's RSS
             sampled throughout: the peak over the last 200 against the first 200
             (--rss-seconds caps its time; the table says how many requests ran).

Every non-200 answer counts as a failure. The server's peak RSS is sampled at 20 Hz, and its
CPU time (all threads) per level: CPU s a study, and how many cores were busy on average. On a
machine with C cores, C / (CPU s a study) bounds the throughput any batching could reach.

    python benchmarks/serve.py --model models [--requests 48] [--clients 1,4,16]
        [--rss-requests 1000] [--rss-seconds 1800] [--backbone-chunks 1,2,4,8]
        [--weights-dir ../shared/weights]
Needs a trained model (`bash scripts/repro.sh`).
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def multipart(frontal: Path, lateral: Path) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    body = io.BytesIO()
    for name, path in (("frontal", frontal), ("lateral", lateral)):
        body.write(f"--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"; "
                   f"filename=\"{path.name}\"\r\nContent-Type: image/jpeg\r\n\r\n".encode())
        body.write(path.read_bytes() + b"\r\n")
    body.write(f"--{boundary}--\r\n".encode())
    return body.getvalue(), f"multipart/form-data; boundary={boundary}"


class Server:
    """`cxr serve` in a subprocess, with an RSS sampler."""

    def __init__(self, args: argparse.Namespace, max_batch: int) -> None:
        self.port = free_port()
        self.log = open(  # noqa: SIM115 - open for the server process's lifetime
            Path(os.environ.get("TMPDIR", "/tmp")) / f"serve-bench-{self.port}.log",
            "w")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "cxr_impressions.cli", "serve", "--model", args.model,
             "--weights-dir", args.weights_dir, "--port", str(self.port),
             "--params", str(REPO / "params.yaml"), "--max-batch", str(max_batch),
             "--max-wait-ms", str(args.max_wait_ms), "--queue-size", "64",
             "--timeout-s", "600"], stdout=self.log, stderr=subprocess.STDOUT)
        self.rss = psutil.Process(self.process.pid)
        self.samples: list[tuple[float, int]] = []  # (time, rss bytes)
        self._stop = threading.Event()
        deadline = time.monotonic() + 600
        while True:
            if self.process.poll() is not None:
                raise SystemExit(f"server exited: {Path(self.log.name).read_text()[-2000:]}")
            try:
                connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
                connection.request("GET", "/healthz")
                if connection.getresponse().status == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit("server did not start in 600 s")
            time.sleep(0.5)
        self._sampler = threading.Thread(target=self._sample, daemon=True)
        self._sampler.start()

    def _sample(self) -> None:
        while not self._stop.is_set():
            try:
                self.samples.append((time.monotonic(), self.rss.memory_info().rss))
            except psutil.Error:
                return
            time.sleep(0.05)

    def cpu_seconds(self) -> float:
        """User + system CPU time of the server process, all its threads, so far."""
        times = self.rss.cpu_times()
        return times.user + times.system

    def peak_mb(self, since: float = 0.0, until: float = float("inf")) -> float:
        chosen = [rss for t, rss in self.samples if since <= t <= until]
        return max(chosen) / 2**20 if chosen else float("nan")

    def health(self) -> dict:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        connection.request("GET", "/healthz")
        return json.loads(connection.getresponse().read())

    def stop(self) -> None:
        self._stop.set()
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.log.close()


def drive(server: Server, bodies: list[tuple[bytes, str]], clients: int, requests: int,
          on_done: object = None, stop_at: float = float("inf")) -> dict:
    """`requests` posts from `clients` threads (none started after `stop_at`, a monotonic
    time); latencies, failures, throughput, and the server's CPU time a study."""
    latencies: list[float] = []
    failures: list[str] = []
    lock = threading.Lock()
    counter = iter(range(requests))

    def client() -> None:
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=600)
        while True:
            with lock:
                number = next(counter, None) if time.monotonic() < stop_at else None
            if number is None:
                break
            body, kind = bodies[number % len(bodies)]
            began = time.perf_counter()
            try:
                connection.request("POST", "/v1/predict", body=body,
                                   headers={"Content-Type": kind})
                response = connection.getresponse()
                payload = response.read()
                status = response.status
            except (OSError, http.client.HTTPException) as exc:
                status, payload = 0, str(exc).encode()
                connection.close()
                connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=600)
            elapsed = time.perf_counter() - began
            with lock:
                if status == 200:
                    latencies.append(elapsed)
                else:
                    failures.append(f"{status}: {payload[:200]!r}")
                if on_done is not None:
                    on_done(len(latencies) + len(failures))
        connection.close()

    began, cpu_began = time.perf_counter(), server.cpu_seconds()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - began
    cpu = server.cpu_seconds() - cpu_began
    latencies.sort()

    def percentile(q: float) -> float:
        return latencies[min(len(latencies) - 1, int(round(q * (len(latencies) - 1))))]

    return {"clients": clients, "requests": requests, "ok": len(latencies),
            "failed": len(failures), "failures": failures[:3],
            "p50": percentile(0.50), "p95": percentile(0.95), "p99": percentile(0.99),
            "throughput": len(latencies) / wall, "wall": wall,
            "cpu_per_study": cpu / max(len(latencies), 1), "cores_busy": cpu / wall}


def warm_predictor(args: argparse.Namespace) -> object:
    from cxr_impressions.captioning.predict import Predictor

    return Predictor(args.model, args.weights_dir)


def in_process_call(predictor: object, study: object) -> float:
    """One warm `predict` of one study, from its files, as `cxr predict` runs it."""
    predictor.predict([study])  # the first call traces; later ones are warm
    began = time.perf_counter()
    predictor.predict([study])
    return time.perf_counter() - began


def backbone_rates(predictor: object, images: list, chunks: list[int], rounds: int
                   ) -> dict[int, tuple[float, float]]:
    """{chunk: (wall s, CPU s) an image} for the backbone and pooling (`Predictor.inputs`)
    over `images` (studies' decoded images) in calls of `chunk` images; the best of
    `rounds` interleaved rounds (a shared machine's interruptions only ever add time)."""
    count = sum(len(study) for study in images)
    best: dict[int, tuple[float, float]] = {}
    for chunk in chunks:  # trace each call shape first
        predictor.backbone_batch = chunk
        predictor.inputs(images[:1])
        predictor.inputs(images)
    for number in range(rounds):
        for chunk in chunks if number % 2 == 0 else chunks[::-1]:
            predictor.backbone_batch = chunk
            wall, cpu = time.perf_counter(), time.process_time()
            predictor.inputs(images)
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            old = best.get(chunk, (float("inf"), float("inf")))
            best[chunk] = (min(old[0], wall / count), min(old[1], cpu / count))
    return best


def main() -> None:
    cli = argparse.ArgumentParser(description=__doc__,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
    cli.add_argument("--model", default=str(REPO / "models"))
    cli.add_argument("--sample", default=str(REPO / "data" / "sample"))
    cli.add_argument("--weights-dir", default=str(REPO.parent / "shared" / "weights"))
    cli.add_argument("--requests", type=int, default=48, help="requests per load level")
    cli.add_argument("--clients", default="1,4,16")
    cli.add_argument("--max-batch", type=int, default=8)
    cli.add_argument("--max-wait-ms", type=float, default=20.0)
    cli.add_argument("--repeats", type=int, default=3,
                     help="in-process baseline calls before each level")
    cli.add_argument("--rss-requests", type=int, default=0,
                     help="also run the leak check over this many requests (e.g. 1000)")
    cli.add_argument("--backbone-chunks", default="1,2,4,8",
                     help="backbone call sizes to time in process ('' to skip)")
    cli.add_argument("--backbone-rounds", type=int, default=2)
    cli.add_argument("--rss-seconds", type=float, default=float("inf"),
                     help="stop the leak check after this long; it reports what ran")
    args = cli.parse_args()
    levels = [int(c) for c in args.clients.split(",")]
    load_began = os.getloadavg()

    from cxr_impressions.captioning.predict import studies_from_projections

    sample = Path(args.sample)
    studies, _ = studies_from_projections(sample / "indiana_projections.csv", sample / "images")
    studies = [s for s in studies if s.lateral is not None][:16]
    bodies = [multipart(s.frontal, s.lateral) for s in studies]

    predictor, study = warm_predictor(args), studies[0]
    chunks = [int(c) for c in args.backbone_chunks.split(",") if c.strip()]
    rates = backbone_rates(predictor, [predictor.load(s) for s in studies[:8]], chunks,
                           args.backbone_rounds) if chunks else {}
    predictor.backbone_batch = 2  # the server's default, for the baseline
    baseline_times: list[float] = []
    rows, leak = [], None
    servers = {"on": Server(args, args.max_batch), "off": Server(args, 1)}
    modes = {"on": f"batching (max {args.max_batch})", "off": "no batching (max 1)"}
    try:
        for server in servers.values():
            drive(server, bodies, 2, 4)  # warm-up, as the baseline's first call
        # Interleaved, so that the shared machine's drifting load hits every mode alike.
        for clients in levels:
            baseline_times += [in_process_call(predictor, study) for _ in range(args.repeats)]
            for key, server in servers.items():
                began = time.monotonic()
                result = drive(server, bodies, clients, args.requests)
                result.update(mode=modes[key], peak_mb=server.peak_mb(began))
                rows.append(result)
                print(f"{modes[key]}, {clients} clients: {result['throughput']:.2f} studies/s",
                      file=sys.stderr)
        health = servers["on"].health()
        servers["off"].stop()
        del predictor
        if args.rss_requests:
            server = servers["on"]
            marks: dict[int, float] = {}
            began = time.monotonic()
            checked = drive(server, bodies, 4, args.rss_requests,
                            on_done=lambda n: marks.setdefault(n, time.monotonic()),
                            stop_at=began + args.rss_seconds)
            done = checked["ok"] + checked["failed"]
            window = min(200, done // 2)
            first = server.peak_mb(began, marks[window])
            last = server.peak_mb(marks[done - window], marks[done])
            step = 100  # the peak over each 100 requests: growth that levels off, or a leak
            timeline = [server.peak_mb(marks[n - step] if n > step else began, marks[n])
                        for n in range(step, done + 1, step)]
            leak = (done, args.rss_requests, window, first, last, checked["failed"],
                    checked["wall"], timeline)
        peak_on = servers["on"].peak_mb()
    finally:
        for server in servers.values():
            server.stop()
    baseline = statistics.median(baseline_times)

    print(f"\n{args.model}: {len(bodies)} sample studies (frontal + lateral JPEG) cycled, "
          f"{args.requests} requests per level")
    print(f"machine: {cpu_name()}; load average {load_began[0]:.1f} at the start, "
          f"{os.getloadavg()[0]:.1f} at the end (other processes share the cores)")
    print(f"in-process warm Predictor, one study: {baseline * 1000:.0f} ms (median of "
          f"{len(baseline_times)}, taken before each level)\n")
    if rates:
        base = rates.get(2, next(iter(rates.values())))
        print(f"backbone in process, 16 images (best of {args.backbone_rounds} rounds):")
        print(f"{'images a call':>13} {'wall s/image':>12} {'CPU s/image':>11} "
              f"{'CPU vs 2 a call':>15}")
        for chunk, (wall, cpu) in rates.items():
            print(f"{chunk:>13} {wall:12.3f} {cpu:11.3f} {cpu / base[1]:14.2f}x")
        print()
    print(f"{'mode':22} {'clients':>7} {'ok':>4} {'failed':>6} {'p50 ms':>8} {'p95 ms':>8} "
          f"{'p99 ms':>8} {'studies/s':>9} {'CPU s/study':>11} {'cores busy':>10} "
          f"{'peak RSS MB':>11}")
    for r in rows:
        print(f"{r['mode']:22} {r['clients']:>7} {r['ok']:>4} {r['failed']:>6} "
              f"{r['p50'] * 1000:8.0f} {r['p95'] * 1000:8.0f} {r['p99'] * 1000:8.0f} "
              f"{r['throughput']:9.2f} {r['cpu_per_study']:11.2f} {r['cores_busy']:10.2f} "
              f"{r['peak_mb']:11.0f}")
    for r in rows:
        for failure in r["failures"]:
            print(f"  failure ({r['mode']}, {r['clients']} clients): {failure}")
    on = {r["clients"]: r for r in rows if r["mode"].startswith("batching")}
    off = {r["clients"]: r for r in rows if r["mode"].startswith("no batching")}
    low, high = levels[0], levels[-1]
    print(f"\nbatches run: {health['batches']} for {health['studies']} studies, largest "
          f"{health['largest_batch']}")
    ratio = on[low]["p50"] / baseline
    print(f"p50 at {low} client / in-process latency = {ratio:.2f}x (goal <= 1.2: "
          f"{'met' if ratio <= 1.2 else 'NOT met'})")
    scale = on[high]["throughput"] / on[low]["throughput"]
    print(f"throughput {high} clients / {low} client = {scale:.2f}x (goal >= 1.5: "
          f"{'met' if scale >= 1.5 else 'NOT met'})")
    cores = os.cpu_count() or 1
    bound = cores / on[high]["cpu_per_study"]
    print(f"  bound on this machine: {cores} cores / {on[high]['cpu_per_study']:.2f} CPU s a "
          f"study at {high} clients = {bound:.2f} studies/s = "
          f"{bound / on[low]['throughput']:.2f}x the {low}-client throughput (which kept "
          f"{on[low]['cores_busy']:.2f} of {cores} cores busy)")
    if high in off:
        print(f"throughput at {high} clients, batching / no batching = "
              f"{on[high]['throughput'] / off[high]['throughput']:.2f}x")
    failed = sum(r["failed"] for r in rows)
    print(f"failed requests: {failed} (goal 0: {'met' if failed == 0 else 'NOT met'})")
    print(f"server peak RSS with batching: {peak_on:.0f} MB")
    if leak:
        n, asked, window, first, last, failed, wall, timeline = leak
        growth = last / first - 1
        ran = f"{n} requests" + ("" if n == asked else f" (of {asked} asked; --rss-seconds "
                                                        f"{args.rss_seconds:g} ran out)")
        print(f"leak check over {ran} from 4 clients in {wall:.0f} s, {failed} failed: peak "
              f"RSS first {window} {first:.0f} MB, last {window} {last:.0f} MB ({growth:+.1%}; "
              f"goal within 5%: {'met' if abs(growth) <= 0.05 else 'NOT met'})")
        print("  peak RSS MB by 100 requests: " + ", ".join(f"{mb:.0f}" for mb in timeline))


def cpu_name() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
    except OSError:
        return "?"
    lines = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
    flags = set(lines.get("Flags", "").split())
    have = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags]
    lacks = [f for f in ("avx512_bf16", "amx_bf16") if f not in flags]
    return (f"{lines.get('Model name', '?').strip()}, {os.cpu_count()} cores; flags include "
            f"{', '.join(have) or 'none of avx2/avx512'}"
            + (f"; no {' or '.join(lacks)}" if lacks else ""))


if __name__ == "__main__":
    main()
