"""The streaming kernels of the compressed formats move every element once,
and ``python -m numadam bench --sections compressed`` reports every format.

No timing is asserted: the kernels' results are checked element by element
(a task that skipped or repeated a slice shows), and the section's rows are
checked for structure, traffic and ratios computed from their own times.
"""

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

import numadam
from internals import bench_streams

# Serial, and parallel with a tail that is not a whole 8-bit block.
SIZES = (1000, numadam.config.serial_below + 1001)
A, B = np.float32(1e-7), np.float32(0.5)


def _widen(h):
    return (h.astype(np.uint32) << np.uint32(16)).view(np.float32)


def _narrow(x):
    return (x.astype(np.float32).view(np.uint32) >> np.uint32(16)).astype(np.uint16)


def _run(fmt, n):
    step = bench_streams.STREAMS[fmt].setup([n], "float32", False)
    before = [np.copy(a) for a in step.args if isinstance(a, np.ndarray)]
    step()
    after = [a for a in step.args if isinstance(a, np.ndarray)]
    return before, after


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("fmt", ["full", "bfloat16", "bf16 params"])
def test_float_kernels_update_every_element_once(fmt, n):
    (p, g, m, v), after = _run(fmt, n)
    if fmt == "full":
        expected = (p + A * g, m * B + g, v * B + g)
    else:
        gf = _widen(g) if fmt == "bf16 params" else g
        pf = _narrow(_widen(p) + A * gf) if fmt == "bf16 params" else p + A * gf
        expected = (pf, _narrow(_widen(m) * B + gf), _narrow(_widen(v) * B + gf))
    for got, want in zip((after[0], after[2], after[3]), expected):
        assert got.dtype == want.dtype
        np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(after[1], g)


@pytest.mark.parametrize("n", SIZES)
def test_8bit_kernel_updates_every_code_and_block_once(n):
    (p, g, cm, cv, am, av), (p1, g1, cm1, cv1, am1, av1) = _run("8bit", n)
    blocks = -(-n // bench_streams.BLOCK)
    assert cm.dtype == cv.dtype == np.uint8 and am.size == av.size == blocks
    np.testing.assert_array_equal(p1, p + A * g)
    np.testing.assert_array_equal(cm1, cm ^ 1)
    np.testing.assert_array_equal(cv1, cv ^ 3)
    np.testing.assert_array_equal(am1, am * B)
    np.testing.assert_array_equal(av1, av * B)


def test_traffic_is_the_bytes_each_format_moves():
    traffic = bench_streams.TRAFFIC
    assert traffic["full"] == 16 + 12
    assert traffic["bfloat16"] == (8 + 4) + (4 + 4)
    assert traffic["8bit"] == (8 + 2) + (4 + 2) + 2 * 2 * 4 / 256
    assert traffic["bf16 params"] == (2 + 2 + 4) + (2 + 4)


def _accepts_state_format():
    try:
        numadam.Adam([np.zeros(1, np.float32)], state_format="full")
    except TypeError as why:
        if "state_format" in str(why):
            return False
        raise
    return True


@pytest.fixture(scope="module")
def section(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "rows.json"
    proc = subprocess.run(
        [sys.executable, "-m", "numadam", "bench", "--quick", "--sections", "compressed",
         "--sizes", "1e3,4e4", "--rounds", "2", "--json", str(out)],
        capture_output=True, text=True, timeout=600,
        env=dict(os.environ, PYTHONWARNINGS="ignore"))
    assert proc.returncode == 0, proc.stderr
    with open(out) as f:
        return proc, json.load(f)["rows"]


STEPS = ("numadam full state", "numadam bfloat16 state", "numadam 8-bit state",
         "numadam bfloat16 state, sr", "numadam 8-bit state, sr", "numadam bf16 params + state")
STREAMS = ("stream full state (28 B)", "stream bfloat16 state (20 B)",
           "stream 8-bit state (16.06 B)", "stream bf16 params + state (14 B)")
BYTES = (28, 20, 16.0625, 14)
# Each contender's format: the index of its streaming kernel and traffic.
FORMAT_INDEX = dict(zip(STEPS + STREAMS, (0, 1, 2, 1, 2, 3, 0, 1, 2, 3)))


def test_section_reports_every_format_at_every_size(section):
    proc, rows = section
    assert {r["section"] for r in rows} == {"compressed"}
    assert [(r["elements"], r["contender"]) for r in rows] == [
        (n, name) for n in (1000, 40000) for name in STEPS + STREAMS]
    supported = _accepts_state_format()
    for r in rows:
        name, n = r["contender"], r["elements"]
        nbytes = BYTES[FORMAT_INDEX[name]]
        assert r["bytes_per_element"] == nbytes
        if r["skipped"]:
            assert r["seconds"] is None
            assert name in STEPS[1:]
            assert ("state_format" in r["skipped"]) != supported or "ml_dtypes" in r["skipped"]
            continue
        assert math.isfinite(r["seconds"]) and r["seconds"] > 0
        assert math.isclose(r["gbps"], nbytes * n / r["seconds"] / 1e9)
        stream = next(x for x in rows if x["elements"] == n
                      and x["contender"] == STREAMS[FORMAT_INDEX[name]])
        assert math.isclose(r["stream_fraction"], stream["seconds"] / r["seconds"])
        full = next(x for x in rows if x["elements"] == n and x["contender"] == STEPS[0])
        assert math.isclose(r["vs_numadam"], r["seconds"] / full["seconds"])
    assert not supported or any(not r["skipped"] for r in rows
                                if r["contender"] == "numadam 8-bit state")


def test_section_prints_the_contract_ratios(section):
    proc, rows = section
    lines = [line for line in proc.stdout.splitlines() if line.startswith(("compressed 1e+",
                                                                         "compressed 4e+"))]
    assert [line.split(":")[0] for line in lines] == ["compressed 1e+03", "compressed 4e+04"]
    for n, line in zip((1000, 40000), lines):
        t = {r["contender"]: r["seconds"] for r in rows if r["elements"] == n}
        streams = next(part for part in line.split("; ") if part.startswith("full stream /"))
        assert streams == "full stream / " + ", ".join(
            f"{fmt} {t[STREAMS[0]] / t[name]:.2f}x"
            for fmt, name in zip(("bfloat16", "8bit", "bf16 params"), STREAMS[1:]))
        if t[STEPS[1]]:
            assert f"bf16 step at {t[STREAMS[1]] / t[STEPS[1]]:.2f} of its stream" in line
        else:
            assert "bf16 step at - of its stream" in line
        assert "state B/param" in line
