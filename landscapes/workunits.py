"""How the CPU engine's threads share the points of one call."""
from __future__ import annotations

__all__ = ["work_units"]


def work_units(n_points: int, workers: int, n_batches: int, split_tail: bool = True
                ) -> list[tuple[int, int, int]]:
    """(point, first batch, stop batch) units for ``workers`` threads: whole points, except that the
    points of an incomplete last round are cut into ``workers`` runs of batches each, so no thread
    idles while another finishes them (5 points on 2 threads would otherwise run at 5/6 speed).
    ``split_tail=False`` keeps points whole (when per-point preparation is costly)."""
    whole = n_points - (n_points % workers if split_tail else 0)
    units = [(i, 0, n_batches) for i in range(whole)]
    parts = min(workers, n_batches)
    for i in range(whole, n_points):
        units += [(i, k * n_batches // parts, (k + 1) * n_batches // parts) for k in range(parts)]
    return units
