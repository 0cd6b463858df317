"""The `report` section: the HTML report of the test split."""

from __future__ import annotations

import dataclasses

from .fields import at_least


@dataclasses.dataclass(frozen=True)
class ReportParams:
    top_impressions: int = at_least(1, 15)  # the most frequent impressions charted
