"""The params sections' dataclasses, one module per section of params.yaml (`config` loads them)."""
