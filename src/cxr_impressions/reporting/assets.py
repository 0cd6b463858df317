"""The report page's static files (`static/`): stylesheet, script and the heat-map colour ramp."""

from __future__ import annotations

import json
from functools import cache
from importlib import resources


def read_static(name: str) -> str:
    """The text of `static/<name>`, shipped inside the package."""
    return resources.files(__package__).joinpath("static", name).read_text(encoding="utf-8")


@cache
def ramp_anchors() -> list[list[int]]:
    """The heat-map ramp's RGB anchors, the one definition shared by the page and the PNGs."""
    return json.loads(read_static("ramp.json"))["anchors"]
