"""The one image loader: a tf.data pipeline that decodes PNG or JPEG, grey or RGB, at any size.

Every element carries its position in the input list, so a missing or corrupt file is dropped
(and can be counted by the caller) instead of ending a long run.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Literal

import tensorflow as tf

log = logging.getLogger(__name__)

ResizePolicy = Literal["squash", "pad"]


def decode_and_resize(
    data: tf.Tensor, size: int, channels: int = 3, policy: ResizePolicy = "squash"
) -> tf.Tensor:
    """Decode encoded PNG/JPEG bytes to a float32 [size, size, channels] image in [0, 255]."""
    image = tf.io.decode_image(data, channels=channels, expand_animations=False, dtype=tf.uint8)
    image = tf.cast(image, tf.float32)
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
    from ..errors import InputError

    try:
        data = tf.io.read_file(os.fspath(path))
        return decode_and_resize(data, size, channels, policy)
    except (tf.errors.NotFoundError, tf.errors.InvalidArgumentError) as exc:
        missing = isinstance(exc, tf.errors.NotFoundError)
        reason = "file not found" if missing else "not a PNG or JPEG image, or corrupt"
        raise InputError(f"{path}: {reason}") from None


# What uploads may be, by the format name PIL reads from the header. DICOM joins here.
UPLOAD_FORMATS = {"PNG": "PNG", "JPEG": "JPEG", "MPO": "JPEG"}  # MPO: a JPEG with extra frames


def image_bytes_size(data: bytes, name: str) -> tuple[str, int, int]:
    """(format, width, height) from an encoded image's header, without decoding its pixels;
    a one-line `InputError` naming `name` if it is not a PNG or JPEG."""
    import io

    from PIL import Image, UnidentifiedImageError

    from ..errors import InputError

    try:
        with Image.open(io.BytesIO(data)) as image:
            kind, (width, height) = image.format, image.size
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        raise InputError(f"{name}: not a PNG or JPEG image, or corrupt") from None
    if kind not in UPLOAD_FORMATS:
        raise InputError(f"{name}: {kind} images are not supported (PNG or JPEG)")
    return UPLOAD_FORMATS[kind], width, height


def load_image_bytes(
    data: bytes, name: str, size: int, channels: int = 3, policy: ResizePolicy = "squash",
    max_side: int | None = None,
) -> tf.Tensor:
    """Decode one uploaded image as `load_image` decodes a file.

    Raises a one-line `InputError` naming `name` for a corrupt or unsupported image, and
    `TooLargeError` when a side exceeds `max_side` (checked from the header, before decoding).
    """
    from ..errors import InputError, TooLargeError

    _, width, height = image_bytes_size(data, name)
    if max_side is not None and max(width, height) > max_side:
        raise TooLargeError(f"{name}: {width}x{height} pixels; at most {max_side} per side")
    try:
        return decode_and_resize(tf.constant(data), size, channels, policy)
    except tf.errors.InvalidArgumentError:
        raise InputError(f"{name}: not a PNG or JPEG image, or corrupt") from None
