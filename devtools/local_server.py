"""Start `python app.py` in a subprocess on a free local port, for tests and the screenshot script."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalApp:
    """``with LocalApp() as app: app.url`` — the app's process lives for the block."""

    def __init__(self, env: dict[str, str] | None = None, startup_timeout: float = 240.0, log_path: Path | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.env = {**os.environ, **(env or {}), "GRADIO_SERVER_NAME": "127.0.0.1",
                    "GRADIO_SERVER_PORT": str(self.port), "GRADIO_ANALYTICS_ENABLED": "False"}
        self.startup_timeout = startup_timeout
        self.log_path = log_path or Path(os.environ.get("TMPDIR", "/tmp")) / f"h2cache-app-{self.port}.log"
        self.process: subprocess.Popen | None = None

    def start(self) -> "LocalApp":
        self._log = open(self.log_path, "wb")
        self.process = subprocess.Popen([sys.executable, str(ROOT / "app.py")], cwd=ROOT, env=self.env,
                                        stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"app.py exited with {self.process.returncode} during startup:\n{self.log_tail()}")
            if self.is_up():
                return self
            time.sleep(0.5)
        self.stop()
        raise TimeoutError(f"app.py did not answer at {self.url} within {self.startup_timeout:.0f} s:\n{self.log_tail()}")

    def is_up(self) -> bool:
        try:
            with urllib.request.urlopen(self.url + "gradio_api/info", timeout=2) as response:
                return response.status == 200
        except OSError:
            return False

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if getattr(self, "_log", None):
            self._log.close()

    def __enter__(self) -> "LocalApp":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
