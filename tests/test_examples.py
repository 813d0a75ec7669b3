"""The examples run and get the right answers (README: examples/)."""

import importlib.util
import os
import subprocess
import sys

import numpy as np
import pytest

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                        "examples")


def load(name):
    spec = importlib.util.spec_from_file_location(f"example_{name}",
                                                  os.path.join(EXAMPLES, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_curve_fit_recovers_the_oscillation_and_agrees_with_scipy(capsys):
    example = load("curve_fit")
    res, reference = example.main(n=500)
    assert res.success
    np.testing.assert_allclose(res.x, example.TRUE, rtol=0.05)
    if reference is not None:
        np.testing.assert_allclose(res.x, reference, rtol=1e-5)
    assert "omega" in capsys.readouterr().out


def test_logistic_regression_on_iris_learns_the_species(capsys):
    pytest.importorskip("scipy")           # the data set ships inside scipy
    example = load("logistic_regression")
    out = example.main(epochs=30)
    assert out["accuracy"] >= 0.9
    assert out["history"][-1] < 0.5 * out["history"][0]
    assert "test accuracy" in capsys.readouterr().out


def test_compiled_fit_finds_the_rates_and_matches_the_python_loop(capsys):
    example = load("fit_simulation")
    out = example.main(iterations=4000, repeats=1)
    assert out["identical"]
    np.testing.assert_allclose(out["rates"], example.TRUE, rtol=0.05)
    assert out["loss"] < 1.5 * 2 * 0.3 ** 2
    assert "speed-up" in capsys.readouterr().out


def test_the_readme_main_job_runs_as_a_user_would():
    done = subprocess.run([sys.executable, "examples/fit_simulation.py"],
                          cwd=os.path.dirname(EXAMPLES), capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert "same result bit for bit: True" in done.stdout


def test_gpu_least_squares_runs_the_same_code_on_the_cpu(capsys):
    example = load("gpu_least_squares")
    out = example.main(np, n=2048, d=64, steps=300)
    assert out["last"] < 1e-3 * out["first"]
    assert out["error"] < 1e-2
    assert "numpy: loss" in capsys.readouterr().out


def test_gpu_least_squares_without_cupy_says_what_it_needs(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", None)          # import fails
    example = load("gpu_least_squares")
    with pytest.raises(SystemExit, match="needs CuPy and an NVIDIA GPU.*--cpu"):
        example.cli([])
