"""The shipped weights' verdicts (docs/benchmarks/v2b-28, v2b-50 and v2b-100-b, union-*.md) are what
bench.union makes from the stored runs beside them (rebuild with the command on each file's first line),
BENCHMARKS.md's first screen is what bench.first_screen makes from them, and its hard-samples table is what
devtools.hard_samples makes from its raw files."""

import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("run", ["v2b-28", "v2b-50", "v2b-100-b"])
@pytest.mark.parametrize("basis", ["mean", "median", "worst"])
def test_the_stored_verdicts_are_those_of_the_stored_runs(run, basis):
    stored = (ROOT / "docs" / "benchmarks" / run / f"union-{basis}.md").read_text()
    command = shlex.split(stored.splitlines()[0].strip("# `"))
    assert command[:3] == ["python", "-m", "bench.union"] and f"--basis={basis}" not in command
    made = subprocess.run([sys.executable, *command[1:]], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert made.returncode == 0, made.stderr[-2000:]
    assert stored.split("\n", 2)[2] == made.stdout


def test_the_first_screen_is_what_its_stored_runs_give():
    spec = ROOT / "docs" / "benchmarks" / "first_screen.json"
    made = subprocess.run([sys.executable, "-m", "bench.first_screen", str(spec.relative_to(ROOT)), "--check"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert made.returncode == 0, made.stdout + made.stderr[-2000:]
    benchmarks = (ROOT / "docs" / "BENCHMARKS.md").read_text()
    stored = (ROOT / "docs" / "benchmarks" / "first-screen.md").read_text()
    # BENCHMARKS.md shows the generated tables as they are
    assert stored.split("\n", 2)[2].strip() in benchmarks


def test_the_hard_samples_table_is_what_its_raw_files_give():
    folder = ROOT / "docs" / "benchmarks" / "hard-samples"
    files = [str(p.relative_to(ROOT)) for p in (*sorted(folder.glob("*.jsonl")), *sorted(folder.glob("*.json")))]
    assert len(files) >= 6
    made = subprocess.run([sys.executable, "-m", "devtools.hard_samples", "summary", *files], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert made.returncode == 0, made.stderr[-2000:]
    assert made.stdout.strip() in (ROOT / "docs" / "BENCHMARKS.md").read_text()
    assert all(f"`{Path(f).name}`" in made.stdout for f in files)  # no raw file left out of the table
