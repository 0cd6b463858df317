"""cxr-impressions: write the impression of a chest X-ray report from the study's images."""
