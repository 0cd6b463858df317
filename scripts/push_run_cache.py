"""Push DVC's run-cache to a remote with every object its runs need (after `dvc push`).

`dvc push --run-cache` uploads the run records (which deps and params gave which outputs) but
not the objects of the stages' `cache: false` outputs (our metrics, plots and tables for git),
which DVC keeps in the local cache only for the run-cache. Without them a teammate's
`dvc repro --pull` finds the run but not all its outputs, and reruns the stage (train, evaluate
and report here). This pushes the records and those objects; tests/test_team.py checks that a
teammate then gets a stage from the run-cache without running it.

    python scripts/push_run_cache.py            # the default remote (`team`)
    python scripts/push_run_cache.py -r NAME
"""

from __future__ import annotations

import argparse
import sys


def push_run_cache(remote: str | None) -> tuple[int, int]:
    """(run records pushed, objects pushed) from the repo in the current directory."""
    from dvc.repo import Repo

    with Repo(".") as repo:
        runs = repo.stage_cache.push(remote)
        pushed = 0
        for objects in repo.stage_cache.get_used_objs(runs, remote=remote).values():
            pushed += len(repo.cloud.push(objects, remote=remote).transferred)
    return len(runs), pushed


def main() -> int:
    cli = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    cli.add_argument("-r", "--remote", default=None, help="the DVC remote (default: core.remote)")
    args = cli.parse_args()
    from dvc.exceptions import DvcException

    try:
        runs, objects = push_run_cache(args.remote)
    except DvcException as exc:
        print(f"error: push_run_cache: {exc}", file=sys.stderr)
        return 2
    print(f"{runs} run records and {objects} objects of their outputs pushed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
