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

    if os.path.isdir(path):
        raise InputError(f"{path}: a directory, not an image file")
    try:
        data = tf.io.read_file(os.fspath(path))
        return decode_and_resize(data, size, channels, policy)
    except (tf.errors.NotFoundError, tf.errors.InvalidArgumentError) as exc:
        missing = isinstance(exc, tf.errors.NotFoundError)
        reason = "file not found" if missing else "not a PNG or JPEG image, or corrupt"
        raise InputError(f"{path}: {reason}") from None
    except tf.errors.OpError as exc:  # unreadable: permissions, a special file, ...
        raise InputError(f"{path}: cannot read ({exc.message.split(';')[-1].strip()})") from None
