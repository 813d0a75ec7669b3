"""The asv suite imports and every benchmark runs once, so it cannot rot.

Runs against the current environment (``--python=same``) and the numadam
this test imports, with sizes capped at 1e5 by ``NUMADAM_BENCH_MAX``. No
timing is checked: only that every benchmark reports, and that what the
tracked benchmarks return are finite positive numbers.
"""

import math
import os
import re
import shutil
import subprocess
import sys

import pytest

ASV_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "asv_bench")

pytest.importorskip("asv", reason="asv is not installed (pip install -e '.[test]')")


def _asv(*args, env=None):
    import numadam
    bindir = os.path.dirname(sys.executable)
    env = dict(os.environ, PATH=bindir + os.pathsep + os.environ.get("PATH", ""),
               # asv drops PYTHONPATH; this makes it run the numadam under test.
               ASV_PYTHONPATH=os.path.dirname(os.path.dirname(numadam.__file__)),
               **(env or {}))
    asv = shutil.which("asv", path=env["PATH"]) or "asv"
    return subprocess.run([asv, *args], cwd=ASV_DIR, env=env, capture_output=True,
                          text=True, timeout=900)


def test_asv_suite_imports_and_runs_once():
    machine = _asv("machine", "--yes")
    assert machine.returncode == 0, machine.stderr
    check = _asv("check", "--python=same")
    assert check.returncode == 0, check.stdout + check.stderr
    run = _asv("run", "--python=same", "--quick", "--dry-run", "--show-stderr",
               env={"NUMADAM_BENCH_MAX": "1e5"})
    output = run.stdout + run.stderr
    assert run.returncode == 0, output
    failed = [line for line in output.splitlines() if line.rstrip().endswith(" failed")]
    assert not failed, "\n".join(failed)
    status = {}
    for name, result in re.findall(r"\]\s+·+\s+([\w.]+\.\w+)\s+(\S+)\s*$", output, re.M):
        # asv shortens long names to "..." and their tail, and shows the
        # figure of an unparameterised benchmark where others show "ok".
        ok = result == "ok" or re.fullmatch(r"[0-9.]+(±[0-9.]+)?[a-zμ]+", result)
        status[name.removeprefix("...")] = "ok" if ok else result
    expected = {"bench_step.TimeFlat.time_step", "bench_step.TimeMixed.time_step",
                "bench_step.MemStep.peakmem_five_steps",
                "bench_track.TrackBandwidth.track_stream_fraction",
                "bench_track.TrackAccuracy.track_max_difference",
                "bench_fit.TimeFitLoop.time_iteration",
                "bench_fit.TrackFitLoop.track_vs_numpy_loop",
                "bench_fit.TrackFitLoop.track_vs_parts",
                "bench_fit.TrackFitLoop.track_numpy_vs_parts",
                "bench_compile.timeraw_import_numadam",
                "bench_rules.TimeRuleStep.time_step",
                "bench_rules.TrackRuleBandwidth.track_stream_fraction",
                # Each format is n/a where this numadam does not offer it.
                "bench_formats.TimeFormatStep.time_step",
                "bench_formats.TrackFormatBandwidth.track_vs_own_stream",
                "bench_formats.TrackFormatSpeedup.track_vs_full",
                "bench_formats.TrackStateBytes.track_state_bytes"}
    got = {name: next((result for shown, result in status.items() if name.endswith(shown)),
                      None) for name in expected}
    assert got == dict.fromkeys(expected, "ok"), output[-3000:]
    for name in ("track_vs_numpy_loop", "track_vs_parts", "track_numpy_vs_parts",
                 "track_stream_fraction", "TrackRuleBandwidth.track_stream_fraction",
                 "track_max_difference", "track_vs_own_stream"):
        values = _table_values(output, name)
        assert values, f"no figures for {name}"
        assert all(math.isfinite(v) and v >= 0 for v in values), (name, values)
        if name != "track_max_difference":
            assert all(v > 0 for v in values), (name, values)


def _table_values(output, name):
    """The last column of the table asv prints under benchmark ``name``."""
    lines = output.splitlines()
    start = next(i for i, line in enumerate(lines) if name in line)
    values = []
    for line in lines[start + 1:]:
        if re.search(r"···\s+[\w.]+\.\w+\s+\S+\s*$", line):
            break           # the next benchmark
        cells = line.split()
        if cells and re.fullmatch(r"[-+0-9.e]+|nan|inf", cells[-1]) and "=" not in line:
            try:
                values.append(float(cells[-1]))
            except ValueError:
                pass
    return values
