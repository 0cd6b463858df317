"""Exploratory tables for `dvc plots`: text lengths, images per report, views, top impressions."""

from __future__ import annotations

import pandas as pd

from .text import normalise


def length_distribution(reports: pd.DataFrame) -> pd.DataFrame:
    """Reports per normalised length in words, for findings and impressions (0 = empty)."""
    columns = {}
    for field in ("findings", "impression"):
        lengths = reports[field].fillna("").map(lambda t: len(normalise(t, "").split()))
        columns[field] = lengths.value_counts()
    table = pd.DataFrame(columns).fillna(0).astype(int).sort_index()
    table.index.name = "words"
    return table.reset_index()


def images_per_report(images: pd.DataFrame, reports: pd.DataFrame) -> pd.DataFrame:
    per = images[images["exists"]].groupby("uid").size().reindex(reports["uid"], fill_value=0)
    table = per.value_counts().sort_index().rename("reports").rename_axis("images").reset_index()
    return table


def view_counts(images: pd.DataFrame) -> pd.DataFrame:
    found = images[images["exists"]]
    table = found.groupby(["view", "view_source"]).size().rename("images").reset_index()
    return table


def top_impressions(reports: pd.DataFrame, n: int = 20) -> pd.DataFrame:
    """The `n` most frequent normalised impressions, with the share of reports each covers."""
    text = reports["impression"].fillna("").map(lambda t: normalise(t, ""))
    text = text[text != ""]
    counts = text.value_counts().head(n)
    table = counts.rename("reports").rename_axis("impression").reset_index()
    table["share"] = (table["reports"] / len(text)).round(4)
    table["cumulative_share"] = table["share"].cumsum().round(4)
    return table
