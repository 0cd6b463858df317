import gzip
import zipfile
from pathlib import Path

import numpy as np
import pytest

from cxr_impressions.data.embeddings import build_matrix, coverage, read_glove
from cxr_impressions.data.tokenizer import Vocabulary
from cxr_impressions.errors import InputError

VOCAB = Vocabulary(("<pad>", "<unk>", "startseq", "endseq", "lungs", "clear", ".", "zzqx"),
                   "startseq", "endseq", 10)


@pytest.fixture
def glove_txt(tmp_path: Path) -> Path:
    rng = np.random.default_rng(1)
    lines = [f"{w} " + " ".join(f"{x:.5f}" for x in rng.normal(size=6))
             for w in ("the", "lungs", ",", "clear", ".", "heart")]
    path = tmp_path / "glove.6d.txt"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_txt_gz_and_zip_give_the_same_matrix(tmp_path: Path, glove_txt: Path) -> None:
    gz = tmp_path / "glove.6d.txt.gz"
    gz.write_bytes(gzip.compress(glove_txt.read_bytes()))
    zipped = tmp_path / "glove.6B.zip"
    with zipfile.ZipFile(zipped, "w") as archive:
        archive.write(glove_txt, "glove.6B.6d.txt")
        archive.writestr("glove.6B.2d.txt", "the 1 2\n")
    matrices = []
    for path, member in ((glove_txt, ""), (gz, ""), (zipped, "glove.6B.6d.txt")):
        rows = read_glove(path, VOCAB.words, member)
        matrix, missing = build_matrix(VOCAB, rows, seed=3)
        matrices.append(matrix)
        assert missing == ["zzqx"] and rows.dim == 6
    np.testing.assert_array_equal(matrices[0], matrices[1])
    np.testing.assert_array_equal(matrices[0], matrices[2])
    with pytest.raises(InputError, match="choose a member with embeddings.member"):
        read_glove(zipped, VOCAB.words)


def test_matrix_rows(glove_txt: Path) -> None:
    rows = read_glove(glove_txt, VOCAB.words)
    matrix, _ = build_matrix(VOCAB, rows, seed=3)
    assert matrix.shape == (8, 6) and matrix.dtype == np.float32
    assert not matrix[0].any()
    np.testing.assert_array_equal(matrix[4], rows.vectors["lungs"])
    np.testing.assert_allclose(matrix[1], np.mean(list(rows.vectors.values()), axis=0),
                               rtol=1e-6)
    again, _ = build_matrix(VOCAB, rows, seed=3)
    other, _ = build_matrix(VOCAB, rows, seed=4)
    np.testing.assert_array_equal(matrix, again)
    assert not np.array_equal(matrix[7], other[7])  # the OOV word's vector follows the seed
    assert set(rows.vectors) == {"lungs", "clear", "."}  # only the vocabulary's rows are kept


def test_coverage(glove_txt: Path) -> None:
    rows = read_glove(glove_txt, VOCAB.words)
    result = coverage(VOCAB, rows, ["clear lungs .", "zzqx lungs . heart"])
    assert result["vocab_words"] == 4 and result["vocab_found"] == 3
    assert result["vocab_coverage"] == 0.75
    assert result["train_token_coverage"] == round(5 / 6, 4)  # "heart" is not in the vocabulary


def test_bad_lines_name_their_line(tmp_path: Path, glove_txt: Path) -> None:
    lines = glove_txt.read_text().splitlines()
    truncated = tmp_path / "truncated.txt"
    truncated.write_text("\n".join(lines[:4] + [lines[4][:20]]) + "\n")
    with pytest.raises(InputError, match=r"truncated\.txt: line 5: expected 7 fields"):
        read_glove(truncated, VOCAB.words)
    bad_number = tmp_path / "bad.txt"
    bad_number.write_text("\n".join([*lines[:1], "lungs 1 2 x 4 5 6"]) + "\n")
    with pytest.raises(InputError, match=r"bad\.txt: line 2: not a number"):
        read_glove(bad_number, VOCAB.words)
    with pytest.raises(InputError, match="vectors have 6 dimensions but embeddings.dim is 300"):
        read_glove(glove_txt, VOCAB.words, expected_dim=300)
    with pytest.raises(InputError, match="GloVe file not found"):
        read_glove(tmp_path / "nope.txt", VOCAB.words)


def test_broken_archives_are_one_line(tmp_path: Path, glove_txt: Path) -> None:
    packed = gzip.compress(glove_txt.read_bytes())
    cases = {
        "plain.txt.gz": glove_txt.read_bytes(),  # not gzip at all
        "truncated.txt.gz": packed[:len(packed) // 2],
        "corrupt.txt.gz": packed[:20] + bytes(b ^ 0x55 for b in packed[20:-8]) + packed[-8:],
        "corrupt.zip": b"PK\x03\x04" + bytes(200),
    }
    zipped = tmp_path / "member.zip"
    with zipfile.ZipFile(zipped, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.write(glove_txt, "glove.6B.6d.txt")
    data = bytearray(zipped.read_bytes())
    data[60:80] = bytes(20)  # inside the member's compressed data: a bad CRC or inflate error
    cases["corrupt-member.zip"] = bytes(data)
    for name, content in cases.items():
        path = tmp_path / name
        path.write_bytes(content)
        kind = "zip" if name.endswith(".zip") else "gzip"
        with pytest.raises(InputError, match=f"^{path}: not a readable {kind} file") as info:
            read_glove(path, VOCAB.words)
        assert "\n" not in str(info.value), name


def test_a_line_that_lost_its_last_number_names_the_line(tmp_path: Path,
                                                         glove_txt: Path) -> None:
    lines = glove_txt.read_text().splitlines()
    assert lines[1].startswith("lungs ")
    lines[1] = lines[1][:lines[1].rindex(" ") + 1]  # the last number gone, its space kept
    path = tmp_path / "lost.txt"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(InputError, match=r"lost\.txt: line 2: expected 7 fields \(a word and 6 "
                                         r"numbers\), found 6$"):
        read_glove(path, VOCAB.words)
    lines[1] = lines[1].rstrip().replace(" ", "  ", 1)  # a number lost, a doubled space kept
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(InputError, match=r"lost\.txt: line 2: not a number"):
        read_glove(path, VOCAB.words)


def test_a_trailing_space_on_every_line_is_accepted(tmp_path: Path, glove_txt: Path) -> None:
    """word2vec's text writer ends every line with a space."""
    path = tmp_path / "spaced.txt"
    path.write_text("".join(f"{line} \n" for line in glove_txt.read_text().splitlines()))
    rows = read_glove(path, VOCAB.words)
    assert rows.dim == 6
    np.testing.assert_array_equal(rows.vectors["lungs"],
                                  read_glove(glove_txt, VOCAB.words).vectors["lungs"])
