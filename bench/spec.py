"""What a benchmark run measures: prompts, steps, seeds, and the method variants swept over their grids.

Example:
    >>> grid = parse_grid("h2cache:tau1=0.1,0.2:tau2=0.22")
    >>> grid
    ('h2cache', {'tau1': (0.1, 0.2), 'tau2': (0.22,)})
    >>> [v.label for v in expand_variants(["none", "h2cache"], dict([grid]))]
    ['none', 'h2cache(tau1=0.1,tau2=0.22)', 'h2cache(tau1=0.2,tau2=0.22)']
    >>> points = [{"tau1": 0.1, "tau2": 0.147}, {"tau1": 0.15, "tau2": 0.22}]   # a grid as a list of points
    >>> [v.label for v in expand_variants(["h2cache"], {"h2cache": points})]
    ['h2cache(tau1=0.1,tau2=0.147)', 'h2cache(tau1=0.15,tau2=0.22)']
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from h2cache.methods import get_method
from h2cache.prompt_split import read_prompts  # noqa: F401  (re-exported: the harness reads prompt files with it)
from .verdicts import PEERS, SUBJECTS

PROMPTS_DIR = Path(__file__).resolve().parent / "prompts"
DEFAULT_PROMPTS = PROMPTS_DIR / "embedded.txt"
TEXT_PROMPTS = PROMPTS_DIR / "cute_text.txt"
DEFAULT_METHODS = ("none", "h2cache", "fbcache", "teacache", "magcache", "taylorseer",
                   "h2cache-no-pfs", "h2cache-independent-stage2")


@dataclass(frozen=True)
class Variant:
    """One method at one point of its grid. ``label`` names it in tables and plots."""

    method: str
    settings: tuple[tuple[str, Any], ...] = ()

    @property
    def label(self) -> str:
        if not self.settings:
            return self.method
        return f"{self.method}(" + ",".join(f"{k}={_fmt(v)}" for k, v in self.settings) + ")"

    @property
    def kwargs(self) -> dict[str, Any]:
        return dict(self.settings)


def _fmt(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


@dataclass
class BenchConfig:
    """Everything ``python -m bench`` was asked to do (also written into results.json)."""

    model: str = "embedded"
    prompts_file: str = str(DEFAULT_PROMPTS)
    num_prompts: int | None = 8
    steps: tuple[int, ...] = (28,)
    seeds: tuple[int, ...] = (0,)
    methods: tuple[str, ...] = DEFAULT_METHODS
    grids: dict[str, Grid] = field(default_factory=dict)  # per method: a product or a list of points
    fixed: dict[str, Any] = field(default_factory=dict)  # --fix: held for every method that declares the key
    warmup: int = 1
    repeats: int = 3
    out: str = "runs/bench"
    device: str | None = None
    call_overrides: dict[str, Any] = field(default_factory=dict)
    calibration_file: str | None = None
    calibrate: str = "auto"  # auto | force | never
    calibration_prompts: int = 8
    calibration_prompts_file: str | None = None  # else a held-out split (see prompt_split.py)
    auto_grid: tuple[float, ...] | None = None  # target shares of blocks run; see autogrid.py
    auto_grid_prompts: int = 2
    lpips: bool = True
    plots: bool = True
    progress: bool = True
    decision_cost: bool = True
    subjects: tuple[str, ...] = SUBJECTS  # methods under test in the verdicts
    match_peers: tuple[str, ...] = PEERS  # peers whose fronts they are compared with (those that ran)
    verdict_quality: str = "mean"  # mean | median | worst (quality.BASES)
    resume: bool = False  # keep <out>/shards/*.partial.jsonl and the auto grid; run only what they lack
    command: str = "python -m bench"  # as typed, for the report


def parse_grid(text: str) -> tuple[str, dict[str, tuple[Any, ...]]]:
    """``'method:key=v1,v2:key2=v3'`` -> (method, {key: values}), values parsed and range-checked."""
    parts = [p for p in text.strip().split(":") if p.strip()]
    if not parts:
        raise ValueError("empty --grid; expected METHOD:KEY=V1,V2[:KEY=...]")
    method = get_method(parts[0].strip())
    grid: dict[str, tuple[Any, ...]] = {}
    for part in parts[1:]:
        if "=" not in part:
            raise ValueError(f"--grid {text!r}: {part!r} is not KEY=V1,V2")
        key, values = (s.strip() for s in part.split("=", 1))
        setting = method.setting(key)
        parsed = tuple(setting.parse(method.name, v) for v in values.split(",") if v.strip())
        if not parsed:
            raise ValueError(f"--grid {text!r}: no values for {key}")
        grid[key] = parsed
    return method.name, grid


def parse_fixed(texts: list[str], methods: tuple[str, ...]) -> dict[str, Any]:
    """``['key=value', ...]`` -> {key: value}, each value range-checked by every method in `methods` that
    declares the key; a key that none of them declares is an error (it would silently change nothing)."""
    fixed: dict[str, Any] = {}
    for text in texts:
        if "=" not in text:
            raise ValueError(f"--fix {text!r} is not KEY=VALUE")
        key, value = (part.strip() for part in text.split("=", 1))
        declaring = [get_method(m) for m in methods if any(s.name == key for s in get_method(m).settings)]
        if not declaring:
            raise ValueError(f"--fix {key}: no method in --methods has a setting {key!r}")
        parsed = {m.setting(key).parse(m.name, value) for m in declaring}
        fixed[key] = parsed.pop()
    return fixed


def with_fixed(method: str, settings: dict[str, Any], fixed: dict[str, Any]) -> dict[str, Any]:
    """`settings` plus the `fixed` settings that `method` declares and `settings` does not set itself."""
    declared = {s.name for s in get_method(method).settings}
    return {**{k: v for k, v in fixed.items() if k in declared}, **settings}


Grid = dict[str, tuple[Any, ...]] | list[dict[str, Any]]  # a cartesian product, or a list of points


def grid_points(grid: Grid) -> list[dict[str, Any]]:
    """A grid's points: a dict of value lists as its cartesian product, a list of points as it is.

    Example:
        >>> grid_points({"tau1": (0.1, 0.2), "tau2": (0.3,)})
        [{'tau1': 0.1, 'tau2': 0.3}, {'tau1': 0.2, 'tau2': 0.3}]
    """
    if isinstance(grid, dict):
        keys = list(grid)
        return [dict(zip(keys, values)) for values in itertools.product(*(grid[k] for k in keys))] if keys else [{}]
    return [dict(point) for point in grid]


def expand_variants(methods: list[str] | tuple[str, ...], grids: dict[str, Grid],
                    fixed: dict[str, Any] | None = None) -> list[Variant]:
    """Each method's grid (given, else its default grid) as variants: a dict of value lists is a cartesian
    product, a list of settings dicts is taken point by point; `fixed` settings (``--fix``) are added where the
    method declares them and the point leaves them open. A variant that repeats an earlier one is dropped (it
    would give the same images)."""
    variants: list[Variant] = []
    for name in methods:
        method = get_method(name)
        for point in grid_points(grids.get(name, method.default_grid)):
            point = with_fixed(name, point, fixed or {})
            method.validate(**point)
            variant = Variant(name, tuple(point.items()))
            if variant not in variants:
                variants.append(variant)
    return variants

