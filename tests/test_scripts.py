"""The README's two commands stop at once, with one line, when a system program is missing."""

import os
import shutil
import subprocess
from pathlib import Path

from .helpers import REPO


def _run(script: str, path: str, **extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(["/bin/bash", str(REPO / "scripts" / script)], cwd=REPO,
                          env={**os.environ, "PATH": path, **extra}, capture_output=True,
                          text=True, timeout=60)


def test_repro_and_test_stop_without_java(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"  # a PATH with what the scripts need before the check, no java
    bin_dir.mkdir()
    for tool in ("dirname",):
        (bin_dir / tool).symlink_to(shutil.which(tool))
    for script in ("repro.sh", "test.sh"):
        result = _run(script, str(bin_dir))
        assert result.returncode == 1, result.stderr
        assert result.stderr.splitlines() == [
            "error: java not found: evaluate's METEOR needs a Java runtime (Debian/Ubuntu: "
            "sudo apt-get install default-jre-headless)"], result.stderr
        assert result.stdout == ""  # stopped before setting anything up


def test_test_script_stops_without_chromium() -> None:
    result = _run("test.sh", os.environ["PATH"], CXR_CHROMIUM="/nonexistent/chromium")
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        "error: /nonexistent/chromium not found: the report tests need Chromium (Debian/Ubuntu: "
        "sudo apt-get install chromium; or set CXR_CHROMIUM=/path/to/chromium)"]
