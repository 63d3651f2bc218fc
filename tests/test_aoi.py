"""AOI helpers (reading AOI files is fuzzed in test_fuzz_aoi.py)."""

from __future__ import annotations

import numpy as np

from changedet.aoi import keep_labels_in_aoi


def test_keep_labels_in_aoi() -> None:
    labels = np.zeros((10, 10), dtype=np.int32)
    labels[0:4, 0:4] = 1  # fully inside
    labels[0:4, 5:9] = 2  # 3/4 inside: kept whole
    labels[6:10, 0:4] = 3  # 1/4 inside: dropped
    aoi = np.zeros((10, 10), dtype=bool)
    aoi[0:4, 0:8] = True
    aoi[6:7, 0:4] = True
    out = keep_labels_in_aoi(labels, aoi)
    assert set(np.unique(out)) == {0, 1, 2}
    assert (out == 2).sum() == 16
