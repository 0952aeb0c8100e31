"""`pip install .`: the wheel holds the library and its data, not the app or the tests, and the app's
dependencies are extras."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_wheel_is_the_library_with_its_data_and_core_dependencies(tmp_path):
    source = tmp_path / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(ROOT / "h2cache", source / "h2cache", ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path / "dist"), str(source)], check=True, capture_output=True, timeout=300)
    wheel = next((tmp_path / "dist").glob("h2cache-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    for needed in ("h2cache/__init__.py", "h2cache/hooks.py", "h2cache/methods/calibration.json",
                   "h2cache/calibrate.py", "h2cache/training/__init__.py"):
        assert needed in names, needed
    # The app, the benchmark harness and the dev tools run from a checkout; the wheel is the library.
    assert not any(n.startswith(("ui/", "tests/", "app.py", "assets/", "bench/", "devtools/"))
                   for n in names)
    metadata = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("METADATA"))).decode()
    requires = [line for line in metadata.splitlines() if line.startswith("Requires-Dist:")]
    core = [r for r in requires if "extra ==" not in r]
    assert any(r.startswith("Requires-Dist: diffusers") for r in core)
    assert not any("gradio" in r or "lpips" in r for r in core), core
    assert any("gradio" in r and 'extra == "app"' in r for r in requires)
