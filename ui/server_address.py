"""Where the app listens: space.yaml locally, the Spaces convention on a Space, env overrides always."""

from __future__ import annotations

import os
from collections.abc import Mapping

SPACES_HOST, SPACES_PORT = "0.0.0.0", 7860


def on_space(env: Mapping[str, str] = os.environ) -> bool:
    return bool(env.get("SPACE_ID"))


def server_address(default_host: str, default_port: int, env: Mapping[str, str] = os.environ) -> tuple[str, int]:
    """(host, port). GRADIO_SERVER_NAME / GRADIO_SERVER_PORT win; a Space binds 0.0.0.0:7860.

    Raises:
        ValueError: GRADIO_SERVER_PORT is not a port number.
    """
    host, port = (SPACES_HOST, SPACES_PORT) if on_space(env) else (default_host, default_port)
    host = env.get("GRADIO_SERVER_NAME") or host
    raw_port = env.get("GRADIO_SERVER_PORT")
    if raw_port:
        try:
            port = int(raw_port)
        except ValueError:
            raise ValueError(f"GRADIO_SERVER_PORT must be a port number, got {raw_port!r}") from None
        if not 0 < port < 65536:
            raise ValueError(f"GRADIO_SERVER_PORT must be between 1 and 65535, got {port}")
    return host, port
