"""cxr-impressions: write the impression of a chest X-ray report from the study's images."""

import os

# TensorFlow's C++ start-up chatter buries the progress bars and the one-line errors.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

__version__ = "0.1.0"
