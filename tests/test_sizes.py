"""RemoteSizes: the sizes of remote-only witnesses, in little memory at any scale."""

from __future__ import annotations

from fusefs.sizes import RemoteSizes


def test_sparse_then_dense_then_freed() -> None:
    sizes = RemoteSizes(100_000)
    assert sizes.get(5) is None
    sizes.set(5, 123)
    sizes.set(6, 0)  # unknown stays unknown
    assert sizes.get(5) == 123 and sizes.get(6) is None and len(sizes) == 1
    for t in range(5000):  # more than 1/32 of the space: the dense array
        sizes.set(t, t + 1)
    assert sizes._dense is not None and not sizes._sparse
    assert len(sizes) == 5000 and sizes.get(4999) == 5000 and sizes.get(5000) is None
    sizes.set(7, 2**40)  # too big for 32 bits: kept aside
    assert sizes.get(7) == 2**40 and len(sizes) == 5000
    for t in range(5000):
        sizes.drop(t)
    assert len(sizes) == 0 and sizes._dense is None and sizes.get(7) is None
    sizes.set(9, 10)
    assert sizes.get(9) == 10 and sizes._dense is None
    sizes.set(11, 10**30)  # from a hostile manifest: ignored, never an st_size overflow
    assert sizes.get(11) is None
