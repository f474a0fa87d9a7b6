"""The one id → row index: against a dict, and its strict mode's error."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from visctr.errors import InputError
from visctr.ids import IdIndex


@pytest.mark.parametrize("ids", [np.array([5, 3, 9, 0]), np.array([10**12, -7, 42])])
def test_id_index_matches_dict(ids):
    idx = IdIndex(ids)
    ref = {int(v): i for i, v in enumerate(ids)}
    query = np.concatenate([ids, [1, 2, 10**13, -1]])
    assert idx.rows(query).tolist() == [ref.get(int(q), -1) for q in query]


@settings(max_examples=50, deadline=None)
@given(
    st.lists(st.integers(-(10**15), 10**15), unique=True, max_size=30),
    st.lists(st.integers(-50, 200), max_size=30),
    st.booleans(),
)
def test_id_index_dense_and_sparse_agree_with_a_dict(ids, extra, compact):
    uniq = np.unique(np.array([abs(i) % 150 for i in ids] if compact else ids, dtype=np.int64))
    ids = uniq[np.random.default_rng(uniq.size).permutation(uniq.size)]  # any order
    ref = {int(v): i for i, v in enumerate(ids)}
    query = np.array(list(ids[:5]) + extra, dtype=np.int64)
    assert IdIndex(ids).rows(query).tolist() == [ref.get(int(q), -1) for q in query]


def test_strict_rows_name_the_missing_id_the_field_and_the_file():
    idx = IdIndex(np.array([1, 2, 3]))
    assert idx.rows(np.array([3, 1]), strict=True).tolist() == [2, 0]
    with pytest.raises(InputError, match=r"^logs\.parquet: item_id 7 not found \(2 unknown ids\)"):
        idx.rows(np.array([2, 7, 8]), strict=True, what="item_id", path="logs.parquet")
    with pytest.raises(InputError, match="query_id 5 not found"):
        IdIndex(np.zeros(0, np.int64)).rows(np.array([5]), strict=True, what="query_id")
    sparse = IdIndex(np.array([10**12, -4]))
    with pytest.raises(InputError, match=r"id 9 not found.*; hint"):
        sparse.rows(np.array([-4, 9]), strict=True, hint="; hint")
