"""A second thumbnail of a level read in one stripe is resized from the first read (the
tiling's segmentation thumbnail, then its QC image: issue 14, item 4), with the same pixels."""

from __future__ import annotations

from typing import Any

import numpy as np

from tests.conftest import real_slide
from wsipipe.slide import open_slide


def _counting(slide: Any) -> list[tuple[int, ...]]:
    calls: list[tuple[int, ...]] = []
    read = slide._backend.read_rgb

    def counted(x: int, y: int, level: int, w: int, h: int) -> np.ndarray:
        calls.append((x, y, level, w, h))
        return read(x, y, level, w, h)

    slide._backend.read_rgb = counted
    return calls


def test_second_thumbnail_reuses_the_level_read_with_identical_pixels() -> None:
    path = real_slide("CMU-1-Small-Region.svs")  # 2220 x 2967, one level: one stripe
    with open_slide(path) as fresh:
        want, want_ds = fresh.thumbnail(fresh.mpp * 1.45)
    with open_slide(path) as slide:
        calls = _counting(slide)
        seg, seg_ds = slide.thumbnail(8.0)
        qc, qc_ds = slide.thumbnail(slide.mpp * 1.45)
        assert len(calls) == 1  # one decode of the level for both
        assert qc_ds == want_ds and seg_ds > qc_ds
        assert np.array_equal(qc, want)
        again, _ = slide.thumbnail(8.0)
        assert np.array_equal(again, seg) and len(calls) == 1
    assert slide._level_read is None  # dropped on close


def test_striped_reads_are_not_kept() -> None:
    path = real_slide("CMU-1-Small-Region.svs")
    with open_slide(path) as slide:
        calls = _counting(slide)
        a, _ = slide.thumbnail(8.0, stripe_pixels=500_000)
        b, _ = slide.thumbnail(8.0, stripe_pixels=500_000)
        assert len(calls) >= 4 and len(calls) % 2 == 0  # each thumbnail read its stripes
        assert np.array_equal(a, b) and slide._level_read is None
