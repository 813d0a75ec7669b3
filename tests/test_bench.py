"""``python -m numadam bench`` runs end to end and prints a well-formed table.

No timing is asserted: only that every scenario and contender shows up, with
numbers or a reason for skipping.
"""

import json
import os
import subprocess
import sys

import pytest

ARGS = ["--quick", "--sizes", "1e3,4e4", "--big", "4e4", "--rounds", "2"]


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "rows.json"
    proc = subprocess.run([sys.executable, "-m", "numadam", "bench", *ARGS, "--json", str(out)],
                          capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, PYTHONWARNINGS="ignore"))
    assert proc.returncode == 0, proc.stderr
    with open(out) as f:
        return proc, json.load(f)


def test_table_is_well_formed(bench):
    proc, data = bench
    table = [line for line in proc.stdout.splitlines() if line.startswith("|")]
    head = [c.strip() for c in table[0].strip("|").split("|")]
    assert head == ["scenario", "elements", "arrays", "contender", "time/step", "GB/s",
                    "% stream", "x numadam"]
    assert set(table[1]) <= set("|-")
    assert len(table) - 2 == len(data["rows"])
    for line in table[2:]:
        assert len(line.strip("|").split("|")) == len(head), line


def test_every_scenario_and_contender_is_reported(bench):
    _, data = bench
    rows = data["rows"]
    assert {r["section"] for r in rows} == {"sweep", "big", "tiny", "mixed"}
    sweep = {(r["elements"], r["contender"]) for r in rows if r["section"] == "sweep"}
    for n in (1000, 40000):
        for name in ("numadam", "stream 4r/3w kernel", "NumPy naive", "NumPy in-place",
                     "torch fused", "optax adam jit"):
            assert (n, name) in sweep
    tiny = {r["contender"] for r in rows if r["section"] == "tiny"}
    assert {"numadam", "numadam step() owned grads", "bare njit call (no-op)"} <= tiny
    mixed = [r for r in rows if r["section"] == "mixed"]
    assert {r["arrays"] for r in mixed} == {200, 1}
    assert any("vs_flat_numadam" in r for r in mixed)


def test_rows_hold_numbers_or_a_reason(bench):
    _, data = bench
    for r in data["rows"]:
        if r["skipped"]:
            assert r["seconds"] is None and r["contender"].startswith(("torch", "optax"))
        else:
            assert r["seconds"] > 0
            assert r["vs_numadam"] > 0
            if r["contender"] == "numadam":
                assert r["vs_numadam"] == 1.0
            if r["section"] != "tiny":
                assert r["gbps"] > 0
    assert data["environment"]["versions"]["numadam"]


def test_unknown_section_is_refused():
    proc = subprocess.run([sys.executable, "-m", "numadam", "bench", "--sections", "nope"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "unknown section" in proc.stderr
