"""The README's two commands are the ones CI and the examples test run."""

import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _two_commands():
    with open(os.path.join(ROOT, "README.md")) as f:
        text = f.read()
    block = re.search(r"## Two commands.*?```bash\n(.*?)```", text, re.S).group(1)
    return [line for line in block.splitlines() if line and not line.startswith("#")]


def test_ci_runs_exactly_the_readme_test_command():
    main_job, tests = _two_commands()
    with open(os.path.join(ROOT, ".ci", "run")) as f:
        ci = [line for line in f.read().splitlines() if line and not line.startswith("#")]
    assert tests in ci, (tests, ci)
    assert "pytest" in tests


def test_the_main_job_command_runs_an_existing_example():
    main_job, _ = _two_commands()
    script = re.search(r"python (examples/\S+\.py)", main_job).group(1)
    assert os.path.exists(os.path.join(ROOT, script)), script
    assert script == "examples/fit_simulation.py"   # what test_examples runs as a user would
