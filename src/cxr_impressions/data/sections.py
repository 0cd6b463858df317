"""Sections of a free-text radiology report, as MIMIC-CXR writes them.

A MIMIC-CXR report is plain text with headers, e.g.::

                                     FINAL REPORT
     EXAMINATION:  CHEST (PA AND LAT)

     INDICATION:  ___F with cough

     FINDINGS:
     The lungs are clear. ...

     IMPRESSION:  No acute cardiopulmonary process.

The approach follows the MIMIC-CXR authors' section code (the `txt/` folder of the MIT-LCP
mimic-cxr repository): a header starts a line and ends with a colon; its name is normalised
(synonyms, common misspellings, and view descriptions such as "PA AND LATERAL VIEWS OF THE
CHEST" count as findings); empty FINDINGS or IMPRESSION sections are dropped (a report can open
with an empty "CHEST, PA AND LATERAL:" title line); and where a name occurs twice, the last one
wins. Unlike that code, which only takes upper-case headers, a header in lower or mixed case
also counts when its name is a known section name ("Impression:"), so that a sentence that
happens to wrap onto a new line before a colon does not. The text after a header on the same
line belongs to the section, as does everything up to the next header, a separator line of
underscores, or a "FINAL REPORT" / "FINAL ADDENDUM" banner, so an addendum written above or
below the report never runs into its impression.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# A header: at the start of a line, a name of letters, spaces and ( ) / , & - , then a colon.
_HEADER = re.compile(r"^[ \t]*(?P<name>[A-Za-z][A-Za-z ()/,&-]{0,60}?)[ \t]*:", re.MULTILINE)
# Lines that end a section without starting a named one.
_BREAK = re.compile(r"^[ \t]*(?:_{5,}|FINAL (?:REPORT|ADDENDUM)|PRELIMINARY REPORT)[ \t]*$",
                    re.MULTILINE | re.IGNORECASE)

# Exact names (lower case) -> the section they are. Built from the section names the MIMIC-CXR
# reports use, with their frequent variants and misspellings.
_NAMES = {
    "impression": "impression", "impressions": "impression", "conclusion": "impression",
    "conclusions": "impression", "findings and impression": "impression",
    "findings/impression": "impression", "findings / impression": "impression",
    "impression and findings": "impression", "summary": "impression",
    "impresion": "impression", "impresson": "impression", "impession": "impression",
    "imprssion": "impression", "impressoin": "impression", "mpression": "impression",
    "findings": "findings", "finding": "findings", "findngs": "findings", "findins": "findings",
    "finidngs": "findings", "report": "findings",
    "comparison": "comparison", "comparisons": "comparison", "comparison exam": "comparison",
    "comparison film": "comparison", "reference exam": "comparison", "comparision": "comparison",
    "comparsion": "comparison",
    "indication": "indication", "indications": "indication", "clinical indication": "indication",
    "reason for exam": "indication", "reason for examination": "indication",
    "reason for study": "indication", "idication": "indication",
    "history": "history", "clinical history": "history", "clinical information": "history",
    "patient history": "history", "pfi": "history",
    "examination": "examination", "exam": "examination", "type of examination": "examination",
    "technique": "technique", "procedure": "technique",
    "notification": "notification", "recommendation": "recommendations",
    "recommendations": "recommendations", "recommendation(s)": "recommendations",
    "addendum": "addendum", "wet read": "wet read", "wetread": "wet read",
    "note": "note", "comment": "comment", "comments": "comment", "date": "date",
}
# Names that contain one of these words are that section ("FINAL IMPRESSION", "NEW FINDINGS").
_CONTAINS = ("impression", "findings", "history", "comparison", "addendum")
# Headers that describe the views taken are the findings ("CHEST, PA AND LATERAL:").
_VIEW_WORDS = re.compile(
    r"\b(?:chest|portable|pa and lat|lateral and pa|ap and lat|lateral and ap|frontal and"
    r"|two views|frontal view|pa view|ap view|one view|lateral view|frontal upright"
    r"|frontal semi-upright|bone window|ribs|supine)")


@dataclass(frozen=True)
class Section:
    name: str  # normalised: "findings", "impression", ..., "preamble", or the header in lower case
    header: str  # as written ("" for the preamble)
    text: str  # whitespace collapsed to single spaces
    start: int  # offset of the text in the report


def normalise_name(header: str) -> str:
    """A header's section name: "FINDINGS AND IMPRESSION" -> "impression", "Finding" ->
    "findings", "PA AND LATERAL VIEWS OF THE CHEST" -> "findings"."""
    name = " ".join(header.lower().split())
    if name in _NAMES:
        return _NAMES[name]
    for word in _CONTAINS:
        if word in name:
            return word
    if _VIEW_WORDS.search(name):
        return "findings"
    return name


def _is_header(match: re.Match[str]) -> bool:
    header = match["name"].strip()
    if header.isupper():
        return True
    # Lower or mixed case only for a known name: "Impression:" is a header, while a wrapped
    # sentence such as "seen on the lateral view:" is not.
    return " ".join(header.lower().split()) in _NAMES


def split_sections(text: str) -> list[Section]:
    """The report's sections in order, the text before the first header as "preamble"."""
    boundaries: list[tuple[int, int, str]] = []  # (start of the header, start of its text, name)
    for match in _HEADER.finditer(text):
        if _is_header(match):
            boundaries.append((match.start(), match.end(), match["name"].strip()))
    ends = sorted([b[0] for b in boundaries] + [m.start() for m in _BREAK.finditer(text)]
                  + [len(text)])
    first = boundaries[0][0] if boundaries else len(text)
    sections = [Section("preamble", "", _collapse(text[:first]), 0)]
    for header_start, text_start, header in boundaries:
        end = next(e for e in ends if e > header_start)
        sections.append(Section(normalise_name(header), header,
                                _collapse(text[text_start:end]), text_start))
    return sections


def _collapse(text: str) -> str:
    return " ".join(text.split())


def report_sections(text: str) -> dict[str, str]:
    """FINDINGS, IMPRESSION, COMPARISON, INDICATION and EXAMINATION (the exam title, as
    `model.exam_title` reads it) of one report ("" where missing).

    The last non-empty section of each name wins, as in the authors' code; INDICATION falls back
    to HISTORY, which MIMIC-CXR reports often use instead.
    """
    found: dict[str, str] = {}
    for section in split_sections(text):
        if section.text:
            found[section.name] = section.text
    return {
        "findings": found.get("findings", ""),
        "impression": found.get("impression", ""),
        "comparison": found.get("comparison", ""),
        "indication": found.get("indication", found.get("history", "")),
        "examination": found.get("examination", ""),
    }
