"""What pooling every cell of the grid costs: `pool_grid` at `model.grid_pool: 3` on Xception's
10x10x2048 grids (overlapping 4x4 bins, every cell read) against the pooling before it (3x3
blocks of the first 9x9 cells, the last row and column dropped), timed alternating in one run.

    python benchmarks/pooling.py [--grids 1000] [--rounds 3] [--side 10] [--factor 3]

The grids are random float16, as the feature store holds them. The last column projects the
difference onto the full data: every one of its 6,966 images' grids pooled once per load of the
splits (the train, selection and evaluate stages each load theirs).
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from cxr_impressions.captioning.studies import pool_grid

FULL_DATA_IMAGES = 6966


def pool_first_cells(grid: np.ndarray, factor: int) -> np.ndarray:
    """The pooling before every cell was read: blocks of `factor` cells over the largest
    multiple of `factor` cells on each side; the rest dropped."""
    n, h, w, d = grid.shape
    h2, w2 = h // factor, w // factor
    blocks = grid[:, : h2 * factor, : w2 * factor].astype(np.float32)
    pooled = blocks.reshape(n, h2, factor, w2, factor, d).mean(axis=(2, 4))
    return pooled.astype(np.float16).reshape(n, h2 * w2, d)


def seconds(pool, grid: np.ndarray, factor: int) -> float:
    began = time.perf_counter()
    pool(grid, factor)
    return time.perf_counter() - began


def main() -> None:
    cli = argparse.ArgumentParser(description=__doc__,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
    cli.add_argument("--grids", type=int, default=1000)
    cli.add_argument("--rounds", type=int, default=3)
    cli.add_argument("--side", type=int, default=10)
    cli.add_argument("--factor", type=int, default=3)
    cli.add_argument("--dim", type=int, default=2048)
    args = cli.parse_args()
    if min(args.grids, args.rounds, args.side, args.factor, args.dim) < 1:
        cli.error("--grids, --rounds, --side, --factor and --dim must be at least 1")

    grid = np.random.default_rng(0).normal(
        size=(args.grids, args.side, args.side, args.dim)).astype(np.float16)
    every, first = pool_grid(grid, args.factor), pool_first_cells(grid, args.factor)
    if every.shape != first.shape:
        raise SystemExit(f"the two poolings give {every.shape} and {first.shape} regions")
    times: dict[str, list[float]] = {"before (first cells)": [], "pool_grid (every cell)": []}
    for _ in range(args.rounds):
        times["before (first cells)"].append(seconds(pool_first_cells, grid, args.factor))
        times["pool_grid (every cell)"].append(seconds(pool_grid, grid, args.factor))

    baseline = statistics.median(times["before (first cells)"])
    print(f"{args.grids} grids of {args.side}x{args.side}x{args.dim} (float16), factor "
          f"{args.factor}: {every.shape[1]} regions each; medians of {args.rounds} alternating "
          "rounds\n")
    print(f"{'pooling':24s} {'s per 1,000 grids':>18s} {'x before':>9s} "
          f"{'full data, s per load':>22s}")
    for name, values in times.items():
        median = statistics.median(values)
        per_grid = median / args.grids
        print(f"{name:24s} {1000 * per_grid:18.3f} {median / baseline:9.2f} "
              f"{FULL_DATA_IMAGES * per_grid:22.1f}")


if __name__ == "__main__":
    main()
