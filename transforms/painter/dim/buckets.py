"""Output sizes that keep a source's aspect ratio: a fixed list of buckets per (resolution, grid).

DIM paints ``resolution x resolution`` by default. With ``aspect: preserve`` an edit row is painted at the
bucket nearest to its source's aspect ratio instead, so rows of similar aspect share one shape (and one
DiT batch). Buckets are built once per (resolution, grid, max_aspect), in integers only:

- for every short side ``s`` that is a multiple of ``grid`` and at most ``resolution``, the long side is
  ``resolution**2 / s`` rounded (half up) to a multiple of ``grid``; both orientations are kept, and
  pairs whose aspect ratio exceeds ``max_aspect`` are dropped. ``s == resolution`` gives the square.
- so every side is a multiple of ``grid`` (the VAE latent grid), and the area is within
  ``s * grid / 2 <= resolution * grid / 2`` pixels of ``resolution**2`` (1.6 % at 1024 px with grid 32).

The nearest bucket minimises ``|log(bucket aspect) - log(source aspect)|``, compared exactly with
fractions (no floating point), ties going to the bucket listed first (the lower aspect ratio). A source
more extreme than ``max_aspect`` gets the extreme bucket and is center-cropped to it, as the square mode
crops every non-square source.
"""

from __future__ import annotations

from fractions import Fraction
from functools import lru_cache

# Sana's own multi-aspect bins span 1:4 to 4:1; further out the DiT (no positional embedding, trained on
# square DIM edits) has little to go on, and one side would drop below resolution / 2.
MAX_ASPECT = 4


def bucket_sizes(resolution: int, grid: int, max_aspect: int = MAX_ASPECT) -> tuple[tuple[int, int], ...]:
    """All ``(width, height)`` buckets for ``resolution``, sorted by aspect ratio (width / height)."""
    _check(resolution, grid, max_aspect)
    return _bucket_sizes(resolution, grid, max_aspect)


@lru_cache(maxsize=64)
def _bucket_sizes(resolution: int, grid: int, max_aspect: int) -> tuple[tuple[int, int], ...]:
    area = resolution * resolution
    found: set[tuple[int, int]] = set()
    for short in range(grid, resolution + 1, grid):
        cells, rest = divmod(area, short * grid)
        long = (cells + (2 * rest >= short * grid)) * grid  # round half up to a multiple of grid
        if long > max_aspect * short:
            continue
        found.add((long, short))
        found.add((short, long))
    return tuple(sorted(found, key=lambda size: (Fraction(size[0], size[1]), size)))


def nearest_bucket(
    width: int, height: int, resolution: int, grid: int, max_aspect: int = MAX_ASPECT
) -> tuple[int, int]:
    """The ``(width, height)`` bucket whose aspect ratio is closest (in log scale) to ``width / height``."""
    if width < 1 or height < 1:
        raise ValueError(f"a source size must be positive, got {width}x{height}")
    aspect = Fraction(width, height)
    best: tuple[int, int] | None = None
    best_distance: Fraction | None = None
    for size in bucket_sizes(resolution, grid, max_aspect):
        ratio = Fraction(size[0], size[1]) / aspect
        distance = ratio if ratio >= 1 else 1 / ratio  # exp(|log ratio|)
        if best_distance is None or distance < best_distance:
            best, best_distance = size, distance
    assert best is not None  # the square is always a bucket
    return best


def output_size(
    source_size: tuple[int, int] | None, resolution: int, grid: int, aspect: str, max_aspect: int = MAX_ASPECT
) -> tuple[int, int]:
    """``(width, height)`` of a painted row: square unless ``aspect == "preserve"`` and there is a source."""
    if aspect == "square" or source_size is None:
        return resolution, resolution
    if aspect != "preserve":
        raise ValueError(f"aspect must be 'square' or 'preserve', got {aspect!r}")
    return nearest_bucket(source_size[0], source_size[1], resolution, grid, max_aspect)


def _check(resolution: int, grid: int, max_aspect: int) -> None:
    if not isinstance(grid, int) or grid < 1:
        raise ValueError(f"grid must be a positive integer, got {grid!r}")
    if not isinstance(resolution, int) or resolution < grid or resolution % grid:
        raise ValueError(
            f"resolution {resolution!r} is not a positive multiple of the latent grid ({grid} px)"
        )
    if not isinstance(max_aspect, int) or max_aspect < 1:
        raise ValueError(f"max_aspect must be an integer >= 1, got {max_aspect!r}")
