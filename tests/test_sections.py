"""The section parser on report texts written the way MIMIC-CXR writes them."""

import pytest

from cxr_impressions.data.sections import normalise_name, report_sections, split_sections

TYPICAL = """                                 FINAL REPORT
 EXAMINATION:  CHEST (PA AND LAT)

 INDICATION:  ___F with new onset ascites  // eval for infection

 TECHNIQUE:  Chest PA and lateral

 COMPARISON:  None.

 FINDINGS:

 There is no focal consolidation, pleural effusion or pneumothorax.  Bilateral
 nodular opacities that most likely represent nipple shadows. The
 cardiomediastinal silhouette is normal.

 IMPRESSION:

 No acute cardiopulmonary process.
"""


def test_typical_report() -> None:
    fields = report_sections(TYPICAL)
    assert fields["findings"] == (
        "There is no focal consolidation, pleural effusion or pneumothorax. Bilateral nodular "
        "opacities that most likely represent nipple shadows. The cardiomediastinal silhouette "
        "is normal.")
    assert fields["impression"] == "No acute cardiopulmonary process."
    assert fields["comparison"] == "None."
    assert fields["indication"] == "___F with new onset ascites // eval for infection"
    assert fields["examination"] == "CHEST (PA AND LAT)"  # the exam title
    names = [s.name for s in split_sections(TYPICAL)]
    assert names == ["preamble", "examination", "indication", "technique", "comparison",
                     "findings", "impression"]
    assert split_sections(TYPICAL)[0].text == "FINAL REPORT"


def test_text_on_the_header_line_and_lower_case_headers() -> None:
    text = ("Findings: Heart size is normal.\nLungs are clear.\n"
            "Impression: normal chest.\n")
    assert report_sections(text) == {"findings": "Heart size is normal. Lungs are clear.",
                                     "impression": "normal chest.", "comparison": "",
                                     "indication": "", "examination": ""}
    mixed = " FINDINGS: Clear lungs.\n impression:\n\n  No pneumonia.\n"
    assert report_sections(mixed)["impression"] == "No pneumonia."


def test_a_wrapped_sentence_ending_in_a_colon_is_not_a_header() -> None:
    text = (" FINDINGS:  The following is seen on the\n frontal and lateral views:\n"
            " small left effusion.\n\n IMPRESSION:  Small effusion.\n")
    fields = report_sections(text)
    assert fields["findings"] == ("The following is seen on the frontal and lateral views: "
                                  "small left effusion.")
    assert fields["impression"] == "Small effusion."


def test_missing_sections_are_empty() -> None:
    only_impression = "                FINAL REPORT\n IMPRESSION:  No change.\n"
    assert report_sections(only_impression)["findings"] == ""
    assert report_sections(only_impression)["impression"] == "No change."
    no_headers = "                FINAL REPORT\n Chest radiograph, unremarkable.\n"
    empty = {"findings": "", "impression": "", "comparison": "", "indication": "",
             "examination": ""}
    assert report_sections(no_headers) == empty
    assert report_sections("") == empty


def test_addendum_after_the_report_does_not_join_the_impression() -> None:
    text = (TYPICAL + " ___________________________________________________________\n"
            "                                 FINAL ADDENDUM\n"
            " ADDENDUM:  Findings were discussed with Dr. ___ at 10:30 on ___.\n")
    fields = report_sections(text)
    assert fields["impression"] == "No acute cardiopulmonary process."
    sections = split_sections(text)
    assert sections[-1].name == "addendum"
    assert sections[-1].text.startswith("Findings were discussed with Dr. ___ at 10:30")


def test_addendum_before_the_report() -> None:
    text = ("                                 FINAL ADDENDUM\n"
            " ADDENDUM:  The impression should read: right lower lobe pneumonia.\n\n"
            " ______________________________________________________________________________\n"
            + TYPICAL)
    fields = report_sections(text)
    assert fields["impression"] == "No acute cardiopulmonary process."
    assert split_sections(text)[1].text == ("The impression should read: right lower lobe "
                                            "pneumonia.")


def test_empty_title_header_and_repeated_sections_take_the_last_nonempty() -> None:
    text = (" CHEST, PA AND LATERAL:\n\n INDICATION:  Cough.\n\n"
            " FINDINGS:  First read.\n\n WET READ:  preliminary\n\n FINDINGS:  Final read.\n"
            " IMPRESSION:\n\n CONCLUSION:  Clear.\n")
    fields = report_sections(text)
    assert fields["findings"] == "Final read."
    assert fields["impression"] == "Clear."  # the empty IMPRESSION is dropped
    assert fields["indication"] == "Cough."


def test_history_stands_in_for_indication() -> None:
    assert report_sections(" HISTORY:  Fever.\n IMPRESSION: Clear.\n")["indication"] == "Fever."


@pytest.mark.parametrize(("header", "name"), [
    ("IMPRESSION", "impression"), ("Impression", "impression"), ("CONCLUSION", "impression"),
    ("FINDINGS AND IMPRESSION", "impression"), ("FINDINGS/IMPRESSION", "impression"),
    ("IMPRESSON", "impression"), ("FINAL IMPRESSION", "impression"), ("FINDING", "findings"),
    ("PA AND LATERAL VIEWS OF THE CHEST", "findings"), ("REASON FOR EXAM", "indication"),
    ("CLINICAL HISTORY", "history"), ("COMPARISONS", "comparison"),
    ("SOMETHING ELSE", "something else"),
])
def test_header_names_are_normalised(header: str, name: str) -> None:
    assert normalise_name(header) == name
