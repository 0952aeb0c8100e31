"""The shipped weights' 28-step verdicts in docs/benchmarks/v2b-28/union-*.md are what bench.union makes from
the stored runs beside them (rebuild with the command on each file's first line)."""

import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("basis", ["mean", "median", "worst"])
def test_the_stored_verdicts_are_those_of_the_stored_runs(basis):
    stored = (ROOT / "docs" / "benchmarks" / "v2b-28" / f"union-{basis}.md").read_text()
    command = shlex.split(stored.splitlines()[0].strip("# `"))
    assert command[:3] == ["python", "-m", "bench.union"] and f"--basis={basis}" not in command
    made = subprocess.run([sys.executable, *command[1:]], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert made.returncode == 0, made.stderr[-2000:]
    assert stored.split("\n", 2)[2] == made.stdout
