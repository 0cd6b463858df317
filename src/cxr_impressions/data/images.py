"""The one image loader: PNG, JPEG or DICOM, grey or RGB, at any size and bit depth.

- `image_dataset`: a tf.data pipeline for the features stage and parse. PNG and JPEG are decoded by
  TensorFlow; DICOM (recognised by its `DICM` magic, whatever the file is called) by pydicom
  inside the same pipeline (`tf.numpy_function`). Every element carries its position in the input
  list, so a missing or corrupt file is dropped (and counted by the caller) instead of ending a
  long run.
- `load_image`: one image for `cxr predict`, with a one-line `InputError` naming a bad file.
- `thumbnail`: a small greyscale picture for the HTML report.

DICOM pixels go through the modality LUT (rescale slope and intercept), then the VOI LUT or the
window centre/width if the file has one (else its own min..max), so 8-, 12- and 16-bit data all
land in [0, 255] as float32 without being rounded to 8 bits first; MONOCHROME1 (white is low) is
inverted. Compressed transfer syntaxes are decoded by pydicom's plugins (GDCM for JPEG,
JPEG-LS and JPEG 2000; pydicom itself for RLE).
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np

from ..errors import InputError

if TYPE_CHECKING:
    import tensorflow as tf

log = logging.getLogger(__name__)

ResizePolicy = Literal["squash", "pad"]
DICOM_MAGIC = b"DICM"  # at byte 128, after the preamble


def is_dicom(data: bytes) -> bool:
    return data[128:132] == DICOM_MAGIC


def decode_dicom(data: bytes, name: str = "DICOM") -> np.ndarray:
    """DICOM bytes -> float32 [H, W, 1] (or [H, W, 3] for colour) in [0, 255].

    Raises `InputError` with one line for a file with no pixel data, an unsupported transfer
    syntax, or a corrupt file.
    """
    import pydicom
    from pydicom.errors import InvalidDicomError
    from pydicom.pixels import apply_modality_lut

    try:
        ds = pydicom.dcmread(io.BytesIO(data))
    except (InvalidDicomError, EOFError, ValueError, OSError) as exc:
        raise InputError(f"{name}: not a readable DICOM file ({_first_line(exc)})") from None
    if "PixelData" not in ds and "FloatPixelData" not in ds:
        raise InputError(f"{name}: DICOM file has no pixel data")
    syntax = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    try:
        pixels = ds.pixel_array
    except NotImplementedError as exc:
        described = getattr(syntax, "name", syntax) or "unknown"
        raise InputError(f"{name}: DICOM transfer syntax {described} is not supported "
                         f"({_first_line(exc)})") from None
    except (ValueError, RuntimeError, AttributeError, KeyError, OSError) as exc:
        raise InputError(f"{name}: DICOM pixel data can't be decoded ({_first_line(exc)})") \
            from None
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        pixels = pixels[0]  # a radiograph is one frame; keep the first of a series
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if pixels.ndim == 3:  # colour: pydicom has already converted YBR to RGB
        image = pixels.astype(np.float32)
        top = float(np.iinfo(pixels.dtype).max) if pixels.dtype.kind in "ui" else 255.0
        return np.clip(image * (255.0 / top), 0.0, 255.0)
    values = apply_modality_lut(pixels, ds).astype(np.float64)
    scaled = _voi(values, ds)
    if photometric == "MONOCHROME1":
        scaled = 1.0 - scaled
    return (scaled * 255.0).astype(np.float32)[..., None]


def _voi(values: np.ndarray, ds: object) -> np.ndarray:
    """Modality values -> [0, 1] black..white: the VOI LUT, else the first window, else the
    image's own min..max (DICOM PS3.3 C.11.2)."""
    from pydicom.pixels import apply_voi

    if "VOILUTSequence" in ds:
        bits = int(ds.VOILUTSequence[0].LUTDescriptor[2])
        return np.clip(apply_voi(values, ds, index=0).astype(np.float64) / (2**bits - 1), 0, 1)
    if "WindowCenter" in ds and "WindowWidth" in ds:
        center = float(_first(ds.WindowCenter))
        width = float(_first(ds.WindowWidth))
        function = str(ds.get("VOILUTFunction", "LINEAR")).upper()
        if function == "SIGMOID" and width > 0:
            return 1.0 / (1.0 + np.exp(-4.0 * (values - center) / width))
        if function == "LINEAR_EXACT" and width > 0:
            return np.clip((values - center) / width + 0.5, 0.0, 1.0)
        if width > 1:
            return np.clip((values - (center - 0.5)) / (width - 1) + 0.5, 0.0, 1.0)
    low, high = float(values.min()), float(values.max())
    return (values - low) / (high - low) if high > low else np.zeros_like(values)


def _first(value: object) -> object:
    """A multi-valued DICOM element's first value (windows can come in several presets)."""
    from pydicom.multival import MultiValue

    return value[0] if isinstance(value, MultiValue | list | tuple) else value


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _decode_dicom_for_tf(data: np.ndarray | bytes) -> np.ndarray:
    """tf.numpy_function's side of DICOM decoding. It never raises: TensorFlow would log a
    Python traceback for every bad file. A bad file gives an empty array (and one log line),
    which the graph turns into an error that `ignore_errors` drops."""
    raw = data.item() if isinstance(data, np.ndarray) else data
    try:
        return decode_dicom(raw)
    except InputError as exc:
        log.warning("skipped: %s", exc)
        return np.zeros((0, 0, 1), np.float32)


def decode_and_resize(
    data: tf.Tensor, size: int, channels: int = 3, policy: ResizePolicy = "squash"
) -> tf.Tensor:
    """Decode PNG/JPEG/DICOM bytes to a float32 [size, size, channels] image in [0, 255]."""
    import tensorflow as tf

    head = tf.strings.substr(data, 0, 132)
    magic = tf.strings.substr(tf.strings.join([head, "\0" * 132]), 128, 4)

    def dicom() -> tf.Tensor:
        image = tf.numpy_function(_decode_dicom_for_tf, [data], tf.float32, stateful=False)
        image.set_shape([None, None, None])
        with tf.control_dependencies([tf.debugging.assert_positive(
                tf.size(image), message="DICOM could not be decoded")]):
            image = tf.identity(image)
        if channels == 3:
            return tf.cond(tf.shape(image)[-1] == 1, lambda: tf.image.grayscale_to_rgb(image),
                           lambda: image)
        return tf.cond(tf.shape(image)[-1] == 3, lambda: tf.image.rgb_to_grayscale(image),
                       lambda: image)

    def encoded() -> tf.Tensor:
        image = tf.io.decode_image(data, channels=channels, expand_animations=False,
                                   dtype=tf.uint8)
        return tf.cast(image, tf.float32)

    image = tf.cond(tf.equal(magic, DICOM_MAGIC), dicom, encoded)
    image.set_shape([None, None, channels])
    if policy == "pad":
        image = tf.image.resize_with_pad(image, size, size, antialias=True)
    else:
        image = tf.image.resize(image, (size, size), antialias=True)
    return tf.clip_by_value(image, 0.0, 255.0)


def image_dataset(
    paths: Sequence[str | os.PathLike[str]],
    size: int,
    channels: int = 3,
    policy: ResizePolicy = "squash",
    parallel: int | None = None,
) -> tf.data.Dataset:
    """Yield `(index, image)` for each readable image in `paths`, in order.

    Unreadable or undecodable files are skipped; the caller finds them as missing indices.
    """
    import tensorflow as tf

    parallel = parallel or tf.data.AUTOTUNE
    indices = tf.range(len(paths), dtype=tf.int64)
    files = tf.constant([os.fspath(p) for p in paths] or [""], dtype=tf.string)[: len(paths)]

    def load(index: tf.Tensor, path: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        return index, decode_and_resize(tf.io.read_file(path), size, channels, policy)

    dataset = tf.data.Dataset.from_tensor_slices((indices, files))
    dataset = dataset.map(load, num_parallel_calls=parallel, deterministic=True)
    return dataset.ignore_errors()


def load_image(
    path: str | os.PathLike[str], size: int, channels: int = 3, policy: ResizePolicy = "squash"
) -> tf.Tensor:
    """Load one image, raising a one-line `InputError` naming the file if it can't be read."""
    import tensorflow as tf

    if os.path.isdir(path):
        raise InputError(f"{path}: a directory, not an image file")
    try:
        data = tf.io.read_file(os.fspath(path))
    except tf.errors.NotFoundError:
        raise InputError(f"{path}: file not found") from None
    if is_dicom(data.numpy()[:132]):
        decode_dicom(data.numpy(), str(path))  # a bad DICOM: its own one-line reason
    try:
        return decode_and_resize(data, size, channels, policy)
    except (tf.errors.NotFoundError, tf.errors.InvalidArgumentError) as exc:
        missing = isinstance(exc, tf.errors.NotFoundError)
        reason = "file not found" if missing else "not a PNG, JPEG or DICOM image, or corrupt"
        raise InputError(f"{path}: {reason}") from None
    except tf.errors.OpError as exc:  # unreadable: permissions, a special file, ...
        raise InputError(f"{path}: cannot read ({exc.message.split(';')[-1].strip()})") from None


def thumbnail(path: str | os.PathLike[str], size: int) -> np.ndarray:
    """A greyscale uint8 picture at most `size` pixels on a side, aspect kept.

    JPEGs are decoded at a reduced scale (PIL's draft mode): much faster for the report's
    hundreds of thumbnails.
    """
    from PIL import Image

    path = Path(path)
    with path.open("rb") as fh:
        is_dcm = is_dicom(fh.read(132))
    if is_dcm:
        pixels = decode_dicom(path.read_bytes(), str(path))
        grey = pixels.mean(axis=-1) if pixels.shape[-1] == 3 else pixels[..., 0]
        image = Image.fromarray(np.clip(grey + 0.5, 0, 255).astype(np.uint8))
    else:
        try:
            with Image.open(path) as opened:
                opened.draft("L", (size, size))
                image = opened.convert("L")
        except (OSError, ValueError):
            raise InputError(f"{path}: not a PNG, JPEG or DICOM image, or corrupt") from None
    image.thumbnail((size, size))
    return np.asarray(image)


def encode_dicom(
    pixels: np.ndarray,
    bits: int = 8,
    photometric: Literal["MONOCHROME1", "MONOCHROME2"] = "MONOCHROME2",
    syntax: str = "1.2.840.10008.1.2.1",
    window: tuple[float, float] | None = None,
    rescale: tuple[float, float] | None = None,
    with_pixels: bool = True,
) -> bytes:
    """A minimal digital X-ray DICOM file of grey `pixels` (uint8 or uint16, stored as given).

    `syntax`: Explicit VR Little Endian (default), RLE Lossless, JPEG-LS or JPEG 2000 lossless
    (through pydicom's encoders), or JPEG Baseline (8-bit only, encoded by Pillow). `window`:
    (centre, width); `rescale`: (slope, intercept). For the test fixtures and benchmarks: MIMIC-CXR
    itself is credentialed and never downloaded here.
    """
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.encaps import encapsulate
    from pydicom.uid import UID, ExplicitVRLittleEndian, JPEGBaseline8Bit, generate_uid

    syntax = UID(syntax)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray
    # Deterministic UIDs: the same pixels and settings give the same bytes (DVC sees no change).
    content = hashlib.sha256(pixels.tobytes()).hexdigest()
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid(
        entropy_srcs=[content, photometric, str(bits), str(syntax), str(window), str(rescale)])
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.Rows, ds.Columns = pixels.shape[:2]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = 8 if bits <= 8 else 16
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 0
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    if rescale is not None:
        ds.RescaleSlope, ds.RescaleIntercept = rescale
    if with_pixels:
        stored = pixels.astype(np.uint8 if bits <= 8 else np.uint16)
        ds.PixelData = stored.tobytes()
        ds["PixelData"].VR = "OB" if bits <= 8 else "OW"
        if syntax == JPEGBaseline8Bit:
            from PIL import Image

            frame = io.BytesIO()
            Image.fromarray(stored).save(frame, format="JPEG", quality=95)
            ds.PixelData = encapsulate([frame.getvalue()])
            ds["PixelData"].VR = "OB"
            ds.file_meta.TransferSyntaxUID = syntax
        elif syntax != ExplicitVRLittleEndian:
            ds.compress(syntax)
    out = io.BytesIO()
    pydicom.dcmwrite(out, ds, enforce_file_format=True)
    return out.getvalue()


# What uploads may be, by the format name PIL reads from the header; DICOM by its marker.
UPLOAD_FORMATS = {"PNG": "PNG", "JPEG": "JPEG", "MPO": "JPEG"}  # MPO: a JPEG with extra frames


def image_bytes_size(data: bytes, name: str) -> tuple[str, int, int]:
    """(format, width, height) from an encoded image's header, without decoding its pixels;
    a one-line `InputError` naming `name` if it is not a PNG, JPEG or DICOM image."""
    from PIL import Image, UnidentifiedImageError

    if is_dicom(data[:132]):
        import pydicom

        try:
            ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
            return "DICOM", int(ds.Columns), int(ds.Rows)
        except Exception as exc:  # pydicom raises many kinds for a broken header
            raise InputError(f"{name}: not a readable DICOM file ({_first_line(exc)})") from None
    try:
        with Image.open(io.BytesIO(data)) as image:
            kind, (width, height) = image.format, image.size
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        raise InputError(f"{name}: not a PNG, JPEG or DICOM image, or corrupt") from None
    if kind not in UPLOAD_FORMATS:
        raise InputError(f"{name}: {kind} images are not supported (PNG, JPEG or DICOM)")
    return UPLOAD_FORMATS[kind], width, height


def load_image_bytes(
    data: bytes, name: str, size: int, channels: int = 3, policy: ResizePolicy = "squash",
    max_side: int | None = None,
) -> tf.Tensor:
    """Decode one uploaded image as `load_image` decodes a file.

    Raises a one-line `InputError` naming `name` for a corrupt or unsupported image, and
    `TooLargeError` when a side exceeds `max_side` (checked from the header, before decoding).
    """
    import tensorflow as tf

    from ..errors import TooLargeError

    _, width, height = image_bytes_size(data, name)
    if max_side is not None and max(width, height) > max_side:
        raise TooLargeError(f"{name}: {width}x{height} pixels; at most {max_side} per side")
    try:
        return decode_and_resize(tf.constant(data), size, channels, policy)
    except tf.errors.InvalidArgumentError:
        raise InputError(f"{name}: not a PNG, JPEG or DICOM image, or corrupt") from None
