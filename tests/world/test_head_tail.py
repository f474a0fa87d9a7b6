"""The one head/tail rule, shared by the simulator (``items.is_head``) and S3's anchors."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from visctr.world.head_tail import head_mask


def test_top_share_ties_by_row_never_shown_is_tail():
    counts = np.array([5, 0, 9, 5, 1, 0, 0, 0, 0, 0])
    assert np.flatnonzero(head_mask(counts, 0.3)).tolist() == [0, 2, 3]
    assert np.flatnonzero(head_mask(np.zeros(10, np.int64), 0.3)).tolist() == []


def test_head_count_rounds():
    # round, as the simulator always did: 0.25 * 10 = 2.5 -> 2 (half to even), 0.35 -> 4
    counts = np.arange(10, 0, -1)
    assert head_mask(counts, 0.25).sum() == 2
    assert head_mask(counts, 0.35).sum() == 4


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(0, 5), min_size=1, max_size=40), st.floats(0.01, 0.99))
def test_head_mask_matches_a_sort(counts, share):
    counts = np.array(counts)
    ranked = sorted(range(len(counts)), key=lambda i: (-counts[i], i))
    want = {i for i in ranked[: int(round(share * len(counts)))] if counts[i] > 0}
    assert set(np.flatnonzero(head_mask(counts, share)).tolist()) == want
