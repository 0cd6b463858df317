"""The `parse` section: reading the reports and finding their images."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class ParseParams:
    skip_bad_reports: bool = False
    measure_view_rule: bool = True
