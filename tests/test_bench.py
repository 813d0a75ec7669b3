"""``python -m numadam bench`` runs end to end and prints a well-formed table.

No timing is asserted: only that every scenario and contender shows up, with
finite positive numbers in the right places or a reason for skipping, and
that figures no machine can produce are flagged.
"""

import math

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
    proc, data = bench
    rows = data["rows"]
    assert {r["section"] for r in rows} == {"sweep", "big", "tiny", "mixed", "fit", "sgd",
                                            "adagrad", "rmsprop"}
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
    fit = {(r["elements"], r["contender"]): r for r in rows if r["section"] == "fit"}
    assert set(fit) == {(n, name) for n in (1000, 40000) for name in
                        ("numadam loop", "NumPy Adam loop", "gradient only", "numadam",
                                     "NumPy Adam step")}
    for n in (1000, 40000):
        loop = fit[n, "numadam loop"]
        assert loop["vs_numadam"] == 1.0
        for key in ("vs_numpy_loop", "vs_parts"):
            assert math.isfinite(loop[key]) and loop[key] > 0, (n, key, loop[key])
        parts = fit[n, "gradient only"]["seconds"] + fit[n, "numadam"]["seconds"]
        assert math.isclose(loop["seconds"] / loop["vs_parts"], parts)
        assert math.isclose(loop["seconds"] / loop["vs_numpy_loop"],
                            fit[n, "NumPy Adam loop"]["seconds"])
        control = fit[n, "NumPy Adam loop"]
        assert math.isclose(control["seconds"] / control["vs_parts"],
                            fit[n, "gradient only"]["seconds"]
                            + fit[n, "NumPy Adam step"]["seconds"])
        assert f"fit {n:.0e}: the numadam loop takes " in proc.stdout
    assert isinstance(data["warnings"], list)


RULE_CONTENDERS = {
    "sgd": ("numadam SGD", "stream 3r/2w kernel", "NumPy in-place SGD", "torch fused SGD"),
    "adagrad": ("numadam Adagrad", "stream 3r/2w kernel", "NumPy in-place Adagrad",
                "torch fused Adagrad"),
    "rmsprop": ("numadam RMSprop", "stream 3r/2w kernel", "NumPy in-place RMSprop",
                "torch for-loop RMSprop", "torch foreach RMSprop")}


@pytest.mark.parametrize("section", sorted(RULE_CONTENDERS))
def test_every_rule_is_timed_against_its_streaming_kernel(bench, section):
    _, data = bench
    rows = [r for r in data["rows"] if r["section"] == section]
    names = RULE_CONTENDERS[section]
    # The sweep's sizes and --big (the same here), then the 10-element step.
    assert [(r["elements"], r["contender"]) for r in rows] == (
        [(n, name) for n in (1000, 40000) for name in names]
        + [(10, name) for name in names if not name.startswith(("stream", "NumPy"))])
    stream = {r["elements"]: r["seconds"] for r in rows if r["contender"] == names[1]}
    for r in rows:
        if r["skipped"]:
            continue
        # 3 reads and 2 writes per float32 element: 20 bytes.
        assert math.isclose(r["gbps"], 20 * r["elements"] / r["seconds"] / 1e9)
        if r["elements"] == 10:
            assert r["per_call"] and r["stream_fraction"] is None
        else:
            assert "per_call" not in r
            assert math.isclose(r["stream_fraction"], stream[r["elements"]] / r["seconds"])
        numadam = next(x["seconds"] for x in rows if x["elements"] == r["elements"]
                       and x["contender"] == names[0])
        assert math.isclose(r["vs_numadam"], r["seconds"] / numadam)


def test_rows_hold_numbers_or_a_reason(bench):
    _, data = bench
    for r in data["rows"]:
        if r["skipped"]:
            assert r["seconds"] is None and r["contender"].startswith(("torch", "optax"))
        else:
            assert r["seconds"] > 0
            assert r["vs_numadam"] > 0
            if r["contender"] == {"fit": "numadam loop", "sgd": "numadam SGD",
                                  "adagrad": "numadam Adagrad",
                                  "rmsprop": "numadam RMSprop"}.get(r["section"], "numadam"):
                assert r["vs_numadam"] == 1.0
            assert math.isfinite(r["seconds"]) and math.isfinite(r["vs_numadam"])
            if r["section"] == "fit":     # loop iterations, not passes over memory
                assert r["gbps"] is None and r["stream_fraction"] is None
            else:
                assert math.isfinite(r["gbps"]) and r["gbps"] > 0
            if r["section"] in ("sweep", "big") or (r["section"] in RULE_CONTENDERS
                                                    and not r.get("per_call")):
                assert math.isfinite(r["stream_fraction"]) and r["stream_fraction"] > 0
    assert data["environment"]["versions"]["numadam"]


def test_unknown_section_is_refused():
    proc = subprocess.run([sys.executable, "-m", "numadam", "bench", "--sections", "nope"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "unknown section" in proc.stderr


def _row(contender, stream_fraction=None, spread=None):
    return dict(section="sweep", elements=100000, contender=contender,
                stream_fraction=stream_fraction, spread=spread)


def test_implausible_baselines_and_noisy_samples_are_flagged():
    from internals import warnings_for
    # A streaming-kernel sample slowed down by other processes once made
    # numadam look 519x faster than memory allows; that must not pass silently.
    flagged = warnings_for([_row("numadam", stream_fraction=518.76)])
    assert len(flagged) == 1
    assert "sweep 1e+05 numadam" in flagged[0] and "51876%" in flagged[0]
    assert "implausible" in flagged[0]
    assert warnings_for([_row("numadam", stream_fraction=0.97),
                         _row("NumPy naive", stream_fraction=0.2, spread=0.1)]) == []
    noisy = warnings_for([_row("torch fused", stream_fraction=0.9, spread=0.8)])
    assert len(noisy) == 1 and "80%" in noisy[0] and "torch fused" in noisy[0]
