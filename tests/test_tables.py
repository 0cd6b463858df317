"""evaluate's tables: the attention file round-trips and is the same bytes on every run."""

import time

import numpy as np

from cxr_impressions.evaluation.tables import load_attention, save_attention


def test_attention_file_round_trips_and_is_reproducible(tmp_path) -> None:
    maps = [np.full((2, 18), 1 / 18, dtype=np.float32), np.eye(3, 18, dtype=np.float32)]
    save_attention(tmp_path / "a.npz", [7, 12], maps)
    time.sleep(2.1)  # zip timestamps have a 2-second resolution
    save_attention(tmp_path / "b.npz", [7, 12], maps)
    # Same arrays, same bytes: dvc.lock keeps its hash and a rerun leaves git clean.
    assert (tmp_path / "a.npz").read_bytes() == (tmp_path / "b.npz").read_bytes()
    loaded = load_attention(tmp_path / "a.npz")
    assert set(loaded) == {"7", "12"} and loaded["7"].shape == (2, 18)
    np.testing.assert_allclose(loaded["12"], maps[1], atol=1e-3)
    save_attention(tmp_path / "none.npz", [], [])
    assert load_attention(tmp_path / "none.npz") == {}
