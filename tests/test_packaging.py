"""`pip install .`: the wheel holds the library and its data, not the app or the tests, and the app's
dependencies are extras."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from embedded_facts import EMBEDDED, find_embedded_model

ROOT = Path(__file__).resolve().parent.parent


def build_wheel(tmp_path: Path) -> Path:
    """The wheel of a copy of the library's sources (so that no build files land in the checkout)."""
    source = tmp_path / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(ROOT / "h2cache", source / "h2cache", ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path / "dist"), str(source)], check=True, capture_output=True, timeout=300)
    return next((tmp_path / "dist").glob("h2cache-*.whl"))


def venv_on_this_environment(venv: Path) -> Path:
    """A new virtual environment that sees the packages of the one running the tests, which may itself be a
    venv (``--system-site-packages`` would reach the base interpreter's packages instead). Returns its python."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    own = subprocess.run([str(python), "-c", "import site; print(site.getsitepackages()[0])"], check=True,
                         capture_output=True, text=True, timeout=60).stdout.strip()
    # Only the running environment's package directories: never the checkout, which pytest puts on sys.path.
    theirs = [p for p in sys.path if Path(p).name in ("site-packages", "dist-packages") and Path(p).is_dir()]
    (Path(own) / "running_environment.pth").write_text("\n".join(theirs) + "\n")
    return python


def test_the_wheel_is_the_library_with_its_data_and_core_dependencies(tmp_path):
    wheel = build_wheel(tmp_path)
    names = zipfile.ZipFile(wheel).namelist()
    for needed in ("h2cache/__init__.py", "h2cache/hooks.py", "h2cache/methods/calibration.json",
                   "h2cache/calibrate.py"):
        assert needed in names, needed
    # The app, the benchmark harness and the dev tools run from a checkout; the wheel is the library.
    assert not any(n.startswith(("ui/", "tests/", "app.py", "assets/", "bench/", "devtools/", "embedded_model/"))
                   for n in names)
    metadata = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("METADATA"))).decode()
    requires = [line for line in metadata.splitlines() if line.startswith("Requires-Dist:")]
    core = [r for r in requires if "extra ==" not in r]
    assert any(r.startswith("Requires-Dist: diffusers") for r in core)
    assert not any("gradio" in r or "lpips" in r for r in core), core
    assert any("gradio" in r and 'extra == "app"' in r for r in requires)


def test_the_installed_library_generates_offline_from_another_directory(tmp_path):
    """`pip install .` into a fresh virtual environment (its dependencies taken from this one), then
    `h2cache.load_pipeline()` from a directory outside the checkout: the embedded model ships with the
    checkout, found through H2CACHE_EMBEDDED_MODEL, and loads without a network."""
    import os

    wheel = build_wheel(tmp_path)  # here: a venv's own setuptools may be too old to build wheels
    venv = tmp_path / "venv"
    python = venv_on_this_environment(venv)
    # The running environment's pip installs into the new venv (which has none of its own).
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps", str(wheel)],
                   check=True, capture_output=True, timeout=300)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(H2CACHE_EMBEDDED_MODEL=str(find_embedded_model()), HF_HUB_OFFLINE="1",
               OMP_NUM_THREADS="1")
    script = ("import torch, h2cache\n"
              "pipe = h2cache.load_pipeline()\n"
              "pipe.set_progress_bar_config(disable=True)\n"
              "args = {**h2cache.generation_defaults(pipe), 'num_inference_steps': 2}\n"
              "image = pipe('a large red circle at the center on a plain blue background', **args,\n"
              "             generator=torch.Generator().manual_seed(0)).images[0]\n"
              "print(h2cache.__file__)\n"
              "print(image.size)\n")
    done = subprocess.run([str(python), "-c", script], cwd=elsewhere, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    where, size = done.stdout.strip().splitlines()[-2:]
    assert where.startswith(str(venv)), where  # the installed copy, not the checkout
    assert size == f"({EMBEDDED.size}, {EMBEDDED.size})"
