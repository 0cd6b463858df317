"""Two runs' test outputs compared study by study: `cxr compare OLD [NEW]`.

`dvc metrics diff` says how two revisions' scores differ, not whether the difference is more
than the draw of test studies would give. Both runs' evaluate stages wrote the model's text for
every test study (`metrics/eval/per_study.csv`); scoring both on the same bootstrap resamples of
the studies gives each metric's difference an interval (the evaluate stage's own bootstrap,
`bootstrap.significance`, with NEW in the place of the model and OLD in that of a baseline).

Either side may pool several runs (the folds of `clean.split: kfold`, each tested on its own
studies), and may name a baseline of its table in the place of the model, so that a k-fold
candidate is compared with the constant on every study at once.
"""

from __future__ import annotations

import io
import subprocess
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..data.labeller import label_text
from ..errors import InputError
from .bootstrap import (
    CLINICAL_METRICS,
    TEXT_METRICS,
    metric_values,
    significance,
    study_statistics,
)

PER_STUDY = "metrics/eval/per_study.csv"
COLUMNS = ("uid", "reference", "model")
MeteorStatistics = Callable[[Sequence[str], Sequence[str]], np.ndarray]


@dataclass(frozen=True)
class RunOutputs:
    """One run's model output on its test studies, in uid order."""

    source: str  # what the user named: a file, a git revision, or several, comma-separated
    uids: np.ndarray
    references: list[str]
    texts: list[str]


def read_run(sources: str, system: str = "model", repo: Path = Path(".")) -> RunOutputs:
    """A run's per-study outputs of one system (`model`, or a baseline the evaluate stage scored
    beside it: `constant`, `closest_constant`, `title_constant`, `nearest_neighbour`). `sources`
    names a file, or a git revision of `repo` whose `metrics/eval/per_study.csv` DVC reads (from
    the cache, or the remote); or several of these, comma-separated, whose test studies are
    pooled: the folds of `clean.split: kfold`, which test every study once."""
    names = [name.strip() for name in sources.split(",")]
    if "" in names:
        raise InputError(f"{sources}: an empty name in the comma-separated list of runs")
    tables = [_read_table(name, system, repo) for name in names]
    table = pd.concat(tables, ignore_index=True)
    twice = table["uid"].duplicated(keep=False)
    if twice.any():
        uid = table.loc[twice, "uid"].iloc[0]
        found_in = " and ".join(table.loc[table["uid"] == uid, "source"])
        raise InputError(f"{found_in}: study {uid} is in both; pooled runs need disjoint test "
                         "studies (the folds of one clean.seed and clean.folds)")
    table = table.sort_values("uid", key=_uid_order, kind="stable")
    return RunOutputs(sources, table["uid"].to_numpy(), table["reference"].tolist(),
                      table[system].tolist())


def _read_table(source: str, system: str, repo: Path) -> pd.DataFrame:
    path = Path(source)
    if path.is_dir():
        raise InputError(f"{source}: a folder; name a per-study CSV ({PER_STUDY}) or a git "
                         "revision")
    text = path.read_text(encoding="utf-8") if path.is_file() else _at_revision(source, repo)
    try:
        table = pd.read_csv(io.StringIO(text), keep_default_na=False, dtype={"uid": str})
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise InputError(f"{source}: not a per-study CSV ({exc})") from None
    missing = [c for c in COLUMNS if c not in table.columns]
    if missing:
        raise InputError(f"{source}: not a per-study table of the evaluate stage (no column "
                         f"{missing[0]!r})")
    # Besides the model, a system is a text column the evaluate stage scored: a baseline, with
    # its BLEU-4 column beside it.
    systems = ["model", *(c for c in table.columns
                          if c != "model" and f"{c}_bleu4" in table.columns)]
    if system not in systems:
        raise InputError(f"{source}: no system {system!r} in this table (it has "
                         f"{', '.join(systems)})")
    if table.empty:
        raise InputError(f"{source}: no studies")
    if table["uid"].duplicated().any():
        raise InputError(f"{source}: study {table['uid'][table['uid'].duplicated()].iloc[0]} "
                         "appears twice")
    return table[["uid", "reference", system]].assign(source=source)


def _uid_order(uids: pd.Series) -> pd.Series:
    numbers = pd.to_numeric(uids, errors="coerce")
    return numbers if numbers.notna().all() else uids


def _at_revision(rev: str, repo: Path) -> str:
    known = subprocess.run(["git", "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}"],
                           cwd=repo, capture_output=True, text=True)
    commit = known.stdout.strip() if known.returncode == 0 else _experiment_commit(rev, repo)
    if commit is None:
        raise InputError(f"{rev}: neither a file nor a git revision here (a branch, tag, commit "
                         "or DVC experiment)")
    import dvc.api

    try:
        return dvc.api.read(PER_STUDY, repo=str(repo), rev=commit, encoding="utf-8")
    except Exception as exc:  # DVC's errors for a missing file or cache object vary by cause
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"{rev}: {PER_STUDY} could not be read at this revision ({first}); "
                         "`dvc pull` it, or run `dvc repro evaluate` there") from None


def _experiment_commit(name: str, repo: Path) -> str | None:
    """The commit of the DVC experiment `name` (`dvc exp show` lists them; git itself does not
    resolve their names), or None."""
    from dvc.repo.experiments.utils import AmbiguousExpRefInfo, resolve_name
    from dvc.scm import SCM, SCMError

    try:
        scm = SCM(str(repo))
        ref = resolve_name(scm, name).get(name)
    except SCMError:
        return None
    except AmbiguousExpRefInfo:
        raise InputError(f"{name}: more than one DVC experiment has this name; name it by its "
                         "commit (dvc exp show --sha)") from None
    return None if ref is None else scm.get_ref(str(ref))


def check_same_studies(new: RunOutputs, old: RunOutputs) -> None:
    """Stop unless both runs scored the same test studies against the same references."""
    if len(new.uids) != len(old.uids) or (new.uids != old.uids).any():
        common = len(set(new.uids) & set(old.uids))
        raise InputError(f"{old.source} and {new.source}: different test studies "
                         f"({len(old.uids)} and {len(new.uids)}, {common} in common); a paired "
                         "comparison needs the same split")
    for uid, theirs, ours in zip(new.uids, old.references, new.references, strict=True):
        if theirs != ours:
            raise InputError(f"{old.source} and {new.source}: study {uid} has different "
                             "references (another clean.* setting?); a paired comparison needs "
                             "the same reference texts")


def compare_runs(new: RunOutputs, old: RunOutputs, meteor: MeteorStatistics | None,
                 resamples: int, seed: int) -> dict[str, dict[str, float | None]]:
    """Per metric: `old`, `new`, and `diff` (new minus old) with its paired 95% interval
    (`low`, `high`); distinct impressions and the top impression's share without one."""
    check_same_studies(new, old)
    references = new.references
    reference_labels = [label_text(r) for r in references]
    statistics = {}
    for name, run in (("new", new), ("old", old)):
        meteor_statistics = None if meteor is None else meteor(references, run.texts)
        statistics[name] = study_statistics(references, run.texts, meteor_statistics,
                                            reference_labels)
    everything = np.ones((1, len(references)))
    points = {name: {k: float(v[0]) for k, v in metric_values(s, everything).items()}
              for name, s in statistics.items()}
    paired = significance(statistics, resamples, seed, reference="new")["new_vs_old"]
    result: dict[str, dict[str, float | None]] = {}
    for metric in (*TEXT_METRICS, *CLINICAL_METRICS):
        if metric in paired:
            result[metric] = {"old": points["old"][metric], "new": points["new"][metric],
                              **paired[metric]}
    for name, value in (("distinct", lambda texts: float(len(set(texts)))),
                        ("top_share", _top_share)):
        before, after = value(old.texts), value(new.texts)
        result[name] = {"old": before, "new": after, "diff": after - before, "low": None,
                        "high": None}
    return result


def _top_share(texts: Sequence[str]) -> float:
    return Counter(texts).most_common(1)[0][1] / len(texts)


NAMES = {"bleu1": "BLEU-1", "bleu2": "BLEU-2", "bleu3": "BLEU-3", "bleu4": "BLEU-4",
         "meteor": "METEOR", "rouge_l": "ROUGE-L", "cider": "CIDEr",
         "abnormal_precision": "abnormal precision", "abnormal_recall": "abnormal recall",
         "abnormal_f1": "abnormal F1", "findings_macro_f1": "findings macro-F1",
         "distinct": "distinct impressions", "top_share": "top impression's share"}
BETTER, WORSE = "▲", "▼"  # the paired interval lies above (below) 0


def comparison_rows(result: dict[str, dict], old: str, new: str) -> list[tuple[str, ...]]:
    """The table `cxr compare` prints: a header, then per metric the two values and the paired
    difference with its interval and mark."""
    rows = [("metric", old, new, f"{new} − {old}", "")]
    for metric, entry in result.items():
        if metric == "distinct":
            cells = (f"{entry['old']:.0f}", f"{entry['new']:.0f}", f"{entry['diff']:+.0f}")
        elif metric == "top_share":
            cells = (f"{entry['old']:.1%}", f"{entry['new']:.1%}",
                     f"{entry['diff'] * 100:+.1f} points")
        else:
            cells = (f"{entry['old']:.3f}", f"{entry['new']:.3f}",
                     f"{entry['diff']:+.3f} [{entry['low']:+.3f}, {entry['high']:+.3f}]")
        mark = ("" if entry["low"] is None else BETTER if entry["low"] > 0
                else WORSE if entry["high"] < 0 else "")
        rows.append((NAMES[metric], *cells, mark))
    return rows


def render(rows: list[tuple[str, ...]], markdown: bool) -> str:
    if markdown:
        lines = ["| " + " | ".join(rows[0][:4]) + " |", "|---|---:|---:|---:|"]
        lines += ["| " + " | ".join((*r[:3], f"{r[3]} {r[4]}".strip())) + " |" for r in rows[1:]]
        return "\n".join(lines)
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    return "\n".join(f"{r[0]:<{widths[0]}}  " + "  ".join(
        f"{c:>{w}}" for c, w in zip(r[1:4], widths[1:], strict=True)) + f" {r[4]}".rstrip()
        for r in rows)


def verdict(result: dict[str, dict], old: str, new: str) -> str:
    """One line: where NEW is significantly better or worse than OLD, and where within noise."""
    better = [NAMES[m] for m, e in result.items() if e["low"] is not None and e["low"] > 0]
    worse = [NAMES[m] for m, e in result.items() if e["high"] is not None and e["high"] < 0]
    tied = [NAMES[m] for m, e in result.items()
            if e["low"] is not None and e["low"] <= 0 <= e["high"]]
    return (f"{new} vs {old}: better on {', '.join(better) or 'nothing'}; worse on "
            f"{', '.join(worse) or 'nothing'}; within noise on {', '.join(tied) or 'nothing'}.")
