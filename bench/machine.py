"""A description of the machine and software a benchmark ran on, for the report."""

from __future__ import annotations

import os
import platform
from typing import Any

import torch


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def describe_machine(device: str) -> dict[str, Any]:
    import diffusers

    info: dict[str, Any] = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "device": device,
    }
    try:
        info["load_average_at_start"] = [round(v, 2) for v in os.getloadavg()]
    except OSError:
        pass
    if str(device).startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return info


def machine_line(info: dict[str, Any]) -> str:
    gpu = f", GPU {info['gpu']}" if "gpu" in info else ""
    load = f", load average at start {info['load_average_at_start']}" if "load_average_at_start" in info else ""
    return (f"{info['cpu']} ({info['cpu_count']} logical CPUs, torch threads {info['torch_threads']}, "
            f"OMP_NUM_THREADS={info['OMP_NUM_THREADS']}){gpu}; device {info['device']}; {info['platform']}; "
            f"Python {info['python']}, torch {info['torch']}, diffusers {info['diffusers']}{load}")
