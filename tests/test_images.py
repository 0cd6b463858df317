"""The one image loader on DICOM files written here from the sample's real images."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cxr_impressions.data.images import (
    decode_dicom,
    encode_dicom,
    image_dataset,
    load_image,
    thumbnail,
)
from cxr_impressions.errors import InputError

from .helpers import SAMPLE

SOURCE = SAMPLE / "images" / "1051_IM-0039-5001.dcm.jpg"
EXPLICIT = "1.2.840.10008.1.2.1"
RLE = "1.2.840.10008.1.2.5"
JPEG_LS = "1.2.840.10008.1.2.4.80"
J2K_LOSSLESS = "1.2.840.10008.1.2.4.90"
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"


@pytest.fixture(scope="module")
def grey() -> np.ndarray:
    return np.asarray(Image.open(SOURCE).convert("L"))


@pytest.mark.parametrize("syntax", [EXPLICIT, RLE, JPEG_LS, J2K_LOSSLESS])
def test_lossless_syntaxes_decode_exactly_at_12_bits(grey: np.ndarray, syntax: str) -> None:
    stored = grey.astype(np.uint16) * 16 + 7  # 12-bit values, 7..4087
    pixels = decode_dicom(encode_dicom(stored, bits=12, syntax=syntax))
    assert pixels.shape == (*grey.shape, 1) and pixels.dtype == np.float32
    # No window: the image's own min..max maps to 0..255, without rounding to 8 bits first.
    expected = (stored - stored.min()) / (stored.max() - stored.min()) * 255.0
    np.testing.assert_allclose(pixels[..., 0], expected, atol=1e-3)


@pytest.mark.parametrize("syntax", [JPEG_LS, J2K_LOSSLESS, JPEG_BASELINE])
def test_gdcm_alone_decodes_the_compressed_syntaxes(grey: np.ndarray, syntax: str) -> None:
    """GDCM is the runtime decoder (the encoders are test-only extras); it must manage alone."""
    import io

    import pydicom
    from pydicom.pixels import pixel_array

    ds = pydicom.dcmread(io.BytesIO(encode_dicom(grey, bits=8, syntax=syntax)))
    decoded = pixel_array(ds, decoding_plugin="gdcm").astype(int)
    tolerance = 6 if syntax == JPEG_BASELINE else 0  # JPEG quality 95 is lossy
    assert np.abs(decoded - grey.astype(int)).max() <= tolerance


def test_jpeg_baseline_within_codec_tolerance(grey: np.ndarray) -> None:
    pixels = decode_dicom(encode_dicom(grey, bits=8, syntax=JPEG_BASELINE))[..., 0]
    span = grey.max() - grey.min()
    expected = (grey.astype(np.float64) - grey.min()) / span * 255.0
    error = np.abs(pixels - expected)
    assert error.mean() < 1.5 and error.max() < 12


def test_16_bit_window_and_rescale(grey: np.ndarray) -> None:
    stored = grey.astype(np.uint16) * 256  # 0..65280
    # Modality values are stored * 0.5 - 1000; the window shows -1000 .. 15320 of them.
    pixels = decode_dicom(encode_dicom(stored, bits=16, window=(7160.0, 16320.0),
                                       rescale=(0.5, -1000.0)))[..., 0]
    values = stored * 0.5 - 1000.0
    expected = np.clip((values - (7160.0 - 0.5)) / (16320.0 - 1) + 0.5, 0, 1) * 255.0
    np.testing.assert_allclose(pixels, expected, atol=1e-3)
    assert pixels.max() == 255.0  # the bright half is saturated by this window
    assert (pixels == 255.0).sum() == (values > 15320).sum() > 0


def test_monochrome1_is_inverted(grey: np.ndarray) -> None:
    normal = decode_dicom(encode_dicom(grey, bits=8))
    inverted = decode_dicom(encode_dicom(255 - grey, bits=8, photometric="MONOCHROME1"))
    np.testing.assert_allclose(inverted, normal, atol=1e-3)


def test_dicom_without_pixel_data_is_one_line(tmp_path: Path, grey: np.ndarray) -> None:
    path = tmp_path / "empty.dcm"
    path.write_bytes(encode_dicom(grey, with_pixels=False))
    with pytest.raises(InputError, match=r"empty\.dcm: DICOM file has no pixel data$"):
        load_image(path, 32)
    with pytest.raises(InputError, match="no pixel data"):
        thumbnail(path, 32)


def test_unsupported_transfer_syntax_is_one_line(grey: np.ndarray) -> None:
    import io

    import pydicom

    ds = pydicom.dcmread(io.BytesIO(encode_dicom(grey, bits=8, syntax=RLE)))
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.201"  # HTJ2K: no plugin installed
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    with pytest.raises(InputError) as caught:
        decode_dicom(out.getvalue(), "x.dcm")
    message = str(caught.value)
    assert message.startswith("x.dcm: DICOM ") and "\n" not in message
    assert "not supported" in message or "can't be decoded" in message


def test_pipeline_reads_dicom_png_and_jpeg_alike(tmp_path: Path, grey: np.ndarray) -> None:
    """features' tf.data pipeline: the DICOM copy of an image gives the JPEG's pixels; a
    DICOM without pixels is skipped like a corrupt JPEG, and the others go on."""
    full = grey.astype(np.float64)
    stretched = ((full - full.min()) / (full.max() - full.min()) * 255).round().astype(np.uint8)
    Image.fromarray(stretched).save(tmp_path / "a.png")
    (tmp_path / "a.dcm").write_bytes(encode_dicom(stretched, bits=8, syntax=RLE))
    (tmp_path / "mono1.dcm").write_bytes(
        encode_dicom(255 - stretched, bits=8, photometric="MONOCHROME1"))
    (tmp_path / "empty.dcm").write_bytes(encode_dicom(stretched, with_pixels=False))
    (tmp_path / "bad.jpg").write_bytes(b"not a jpeg")
    paths = [tmp_path / n for n in ("a.png", "empty.dcm", "a.dcm", "bad.jpg", "mono1.dcm")]
    got = {int(i): image.numpy() for i, image in image_dataset(paths, 64, channels=3)}
    assert sorted(got) == [0, 2, 4]
    assert got[2].shape == (64, 64, 3)
    np.testing.assert_allclose(got[2], got[0], atol=0.5)
    np.testing.assert_allclose(got[4], got[0], atol=0.5)
    one = load_image(tmp_path / "a.dcm", 64, channels=1).numpy()
    np.testing.assert_allclose(one[..., 0], got[0][..., 0], atol=0.5)


def test_thumbnail_of_dicom_matches_the_jpeg(tmp_path: Path, grey: np.ndarray) -> None:
    full = grey.astype(np.float64)
    stretched = ((full - full.min()) / (full.max() - full.min()) * 255).round().astype(np.uint8)
    Image.fromarray(stretched).save(tmp_path / "a.png")
    (tmp_path / "a.dcm").write_bytes(encode_dicom(stretched.astype(np.uint16) * 16, bits=12))
    from_png = thumbnail(tmp_path / "a.png", 48).astype(int)
    from_dcm = thumbnail(tmp_path / "a.dcm", 48).astype(int)
    assert from_png.shape == from_dcm.shape == (48, 48)
    assert np.abs(from_png - from_dcm).max() <= 2
    with pytest.raises(InputError, match="not a PNG, JPEG or DICOM"):
        (tmp_path / "bad.jpg").write_bytes(b"nope")
        thumbnail(tmp_path / "bad.jpg", 48)
