import torch

from gan_suite.callbacks import HistoryBuffer, ImagePool


def _img(v):
    return torch.full((1, 3, 2, 2), float(v))


def test_pool_stores_and_returns_until_full():
    pool = ImagePool(3, torch.Generator().manual_seed(0))
    for v in range(3):
        assert torch.equal(pool.query(_img(v)), _img(v))
    assert [float(i[0, 0, 0]) for i in pool.images] == [0.0, 1.0, 2.0]


def test_full_pool_swaps_half_the_time():
    pool = ImagePool(50, torch.Generator().manual_seed(0))
    pool.query(torch.stack([torch.full((3, 2, 2), -1.0)] * 50))  # fill with -1
    swapped = 0
    for v in range(1, 1001):
        out = pool.query(_img(v))
        if float(out[0, 0, 0, 0]) != v:
            swapped += 1
            # the returned image is an older one and the new one now sits in the pool
            assert float(out[0, 0, 0, 0]) < v
            assert any(float(i[0, 0, 0]) == v for i in pool.images)
    assert len(pool.images) == 50
    assert 420 < swapped < 580  # p = 0.5


def test_zero_pool_is_passthrough():
    x = torch.randn(4, 3, 2, 2)
    assert torch.equal(ImagePool(0).query(x), x)


def test_callback_state_round_trip():
    cb = HistoryBuffer(pool_size=5, seed=1)
    for v in range(8):
        cb.query("A", _img(v))
        cb.query("B", _img(-v))
    state = cb.state_dict()
    restored = HistoryBuffer(pool_size=5, seed=99)
    restored.load_state_dict(state)
    for d in ("A", "B"):
        assert len(restored.pools[d].images) == 5
        for a, b in zip(cb.pools[d].images, restored.pools[d].images):
            assert torch.equal(a, b)
    # the random stream continues identically after the restore
    for v in range(20):
        assert torch.equal(cb.query("A", _img(100 + v)), restored.query("A", _img(100 + v)))
