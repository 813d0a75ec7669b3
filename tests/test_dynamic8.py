"""The 8-bit dynamic maps against bitsandbytes, and the encoder against a
brute-force nearest-entry search."""

import importlib.util
import os
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numba import njit

from numadam.formats import dynamic8 as d8

GOLDEN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "golden", "dynamic8.npz")
MAPS = {"signed": (d8.SIGNED_MAP, d8.SIGNED_ZERO_CODE),
        "unsigned": (d8.UNSIGNED_MAP, d8.UNSIGNED_ZERO_CODE)}


@njit
def _encode_all(y, signed, out):
    for i in range(y.size):
        out[i] = d8.encode_signed(y[i]) if signed else d8.encode_unsigned(y[i])


@njit
def _decode_all(codes, signed, out):
    for i in range(codes.size):
        out[i] = d8.decode_signed(codes[i]) if signed else d8.decode_unsigned(codes[i])


@njit
def _brute_force(y, table, zero_code, out):
    """Nearest entry by a scan of all 256; ties to the smaller magnitude; NaN
    to the zero code. Beyond +-2 the order of the distances to entries in
    [-1, 1] is that at +-2, where float64 distances are exact for the entries
    near enough to tie."""
    for i in range(y.size):
        v = np.float64(y[i])
        if v != v:
            out[i] = zero_code
            continue
        v = min(max(v, -2.0), 2.0)
        best = 0
        for c in range(1, table.size):
            dc, db = abs(table[c] - v), abs(table[best] - v)
            if dc < db or (dc == db and abs(table[c]) < abs(table[best])):
                best = c
        out[i] = best


def encode(y, kind):
    y = np.ascontiguousarray(y, dtype=np.float32)
    out = np.empty(y.size, np.uint8)
    _encode_all(y, kind == "signed", out)
    return out


def reference(y, kind):
    table, zero_code = MAPS[kind]
    out = np.empty(np.size(y), np.int64)
    _brute_force(np.ascontiguousarray(y, dtype=np.float32), table.astype(np.float64), zero_code, out)
    return out.astype(np.uint8)


def assert_matches_reference(y, kind):
    got, want = encode(y, kind), reference(y, kind)
    bad = np.flatnonzero(got != want)
    assert bad.size == 0, (kind, y[bad[:5]], got[bad[:5]], want[bad[:5]])


def test_maps_match_bitsandbytes_bit_for_bit():
    with np.load(GOLDEN) as golden:
        for kind, (table, _) in MAPS.items():
            assert table.dtype == np.float32
            np.testing.assert_array_equal(table.view(np.uint32), golden[kind].view(np.uint32))
            rebuilt = d8.create_dynamic_map(kind == "signed")
            np.testing.assert_array_equal(rebuilt.view(np.uint32), golden[kind].view(np.uint32))


@pytest.mark.parametrize("kind", MAPS)
def test_map_shape(kind):
    table, zero_code = MAPS[kind]
    assert table.shape == (256,)
    assert np.all(np.diff(table) > 0)
    assert table[zero_code] == 0 and table[-1] == 1
    if kind == "signed":
        # negatives mirror the positives below 1.0: no -1.0 entry
        np.testing.assert_array_equal(-table[:127][::-1], table[128:255])
        assert table[0] == np.float32(-0.99296874)
    else:
        assert table[0] == 0


@pytest.mark.parametrize("kind", MAPS)
def test_each_bucket_holds_at_most_one_midpoint(kind):
    """The exactness argument of the one-read encoder: float32 midpoints of
    neighbouring magnitudes never share their upper 16 bits."""
    table, zero_code = MAPS[kind]
    mags = table[zero_code:].astype(np.float64)
    mids = ((mags[:-1] + mags[1:]) / 2).astype(np.float32).view(np.uint32) >> 16
    assert np.unique(mids).size == mids.size


def test_table_builder_refuses_two_midpoints_in_a_bucket():
    crowded = np.array([0.0, 0.5, 0.50001, 0.50002, 1.0], dtype=np.float32)
    with pytest.raises(AssertionError, match="two midpoints"):
        d8._bucket_table(crowded)


def _around(values):
    """Each float32 value with its two float32 neighbours."""
    v = np.asarray(values, dtype=np.float32)
    return np.concatenate([v, np.nextafter(v, np.float32(np.inf)), np.nextafter(v, np.float32(-np.inf))])


@pytest.mark.parametrize("kind", MAPS)
def test_every_midpoint_and_its_neighbours(kind):
    table = MAPS[kind][0].astype(np.float64)
    exact = (table[:-1] + table[1:]) / 2
    down = exact.astype(np.float32)
    down = np.where(down > exact, np.nextafter(down, np.float32(-np.inf)), down)
    up = np.nextafter(down, np.float32(np.inf))
    # The representable midpoints are the exact ties.
    assert np.any(down.astype(np.float64) == exact)
    y = _around(np.concatenate([down, up, table.astype(np.float32)]))
    assert_matches_reference(np.concatenate([y, -y]), kind)


@pytest.mark.parametrize("kind", MAPS)
def test_special_values(kind):
    zero = MAPS[kind][1]
    tiny = np.float32(1e-45)
    y = np.array([0.0, -0.0, np.nan, -np.nan, np.inf, -np.inf, 1.0, -1.0, 1.5, -1.5, 3e38,
                  tiny, -tiny, 1e-9, 2.0 ** -24], dtype=np.float32)
    nan_payload = np.array([0x7FC12345, 0xFF800001], dtype=np.uint32).view(np.float32)
    got = encode(np.concatenate([y, nan_payload]), kind)
    assert got[0] == got[1] == got[2] == got[3] == got[-1] == got[-2] == zero
    assert got[4] == got[6] == got[8] == got[10] == 255
    # the most negative entry (signed), zero (unsigned: every entry is >= 0)
    assert got[5] == got[7] == got[9] == 0
    assert_matches_reference(y, kind)


@pytest.mark.parametrize("kind", MAPS)
def test_random_values_match_brute_force(kind):
    rng = np.random.default_rng(8)
    n = 1_000_000
    sign = rng.choice([-1.0, 1.0], n)
    y = np.concatenate([
        rng.uniform(-1.0, 1.0, n),
        sign * 10.0 ** rng.uniform(-9.0, 0.0, n),  # log-uniform magnitudes
        rng.uniform(-1.5, 1.5, n),
    ])
    if kind == "unsigned":
        y = np.abs(y)
    assert_matches_reference(y.astype(np.float32), kind)


@settings(max_examples=400, deadline=None)
@given(st.lists(st.floats(width=32, allow_nan=True, allow_infinity=True), min_size=1, max_size=64))
def test_hypothesis_matches_brute_force(values):
    y = np.array(values, dtype=np.float32)
    for kind in MAPS:
        assert_matches_reference(y, kind)


@pytest.mark.parametrize("kind", MAPS)
def test_decode_then_encode_is_identity(kind):
    codes = np.arange(256, dtype=np.uint8)
    values = np.empty(256, np.float32)
    _decode_all(codes, kind == "signed", values)
    np.testing.assert_array_equal(values.view(np.uint32), MAPS[kind][0].view(np.uint32))
    np.testing.assert_array_equal(encode(values, kind), codes)


@pytest.mark.parametrize("kind", MAPS)
def test_round_trip_error(kind):
    """The error is at most half the spacing of the top decade, whose
    ``2**6`` (signed) or ``2**7`` (unsigned) means split 0.9."""
    y = np.random.default_rng(3).uniform(-1.0, 1.0, 200_000).astype(np.float32)
    if kind == "unsigned":
        y = np.abs(y)
    back = np.empty(y.size, np.float32)
    _decode_all(encode(y, kind), kind == "signed", back)
    bound = 0.9 / (64 if kind == "signed" else 128) / 2
    err = np.abs(back.astype(np.float64) - y)
    assert err.max() <= bound * (1 + 1e-6)
    assert err.max() > bound / 2  # the bound is tight, not vacuous


@pytest.mark.skipif(importlib.util.find_spec("numba_cuda") is None, reason="numba-cuda not installed")
def test_encoder_compiles_for_cuda_without_calls():
    """The same functions compile for sm_90 with no function calls (no libm,
    no runtime): the tables become constant memory."""
    from numba import cuda, types

    def kernel(y, codes, back):
        i = cuda.grid(1)
        if i < y.size:
            codes[i] = d8.encode_signed(y[i])
            back[i] = d8.decode_signed(codes[i]) + d8.decode_unsigned(d8.encode_unsigned(y[i]))

    try:
        ptx, _ = cuda.compile_ptx(kernel, (types.float32[::1], types.uint8[::1], types.float32[::1]),
                                  cc=(9, 0))
    except Exception as exc:  # libNVVM missing: nothing to check here
        pytest.skip(f"cannot compile PTX: {exc}")
    assert re.search(r"^\s*call", ptx, re.MULTILINE) is None
    assert "ld.const" in ptx
