"""Check every input of a comparison request against space.yaml, naming the field and the allowed range.

The same checks serve the page (through Gradio's ``validator=``, before any queueing or model
work) and direct API calls (inside the handler), so neither path can reach the model with bad input.
"""

from __future__ import annotations

import html
import math
from dataclasses import asdict, dataclass
from typing import Any

import gradio as gr

from h2cache import ConfigField, H2CacheConfig, config_fields
from h2cache.lab import MAX_SWEEP_POINTS, PEERS

from .settings import AppSettings, Limits

# The H2CacheConfig fields the page offers, as the library declares them: the paper's knobs, then the options.
CONFIG_INPUTS: tuple[ConfigField, ...] = config_fields("published") + config_fields("option")
OPTION_INPUTS: tuple[ConfigField, ...] = config_fields("option")
RUN_FIELDS = ("prompt", "model", "seed", "steps", "width", "height")
# Choices of the app itself (not of the cache), with their defaults: they come after the config's options.
# peer: a method run beside H2-Cache at its share of compute (h2cache.lab), "none" for no peer column.
APP_OPTIONS: dict[str, Any] = {"reuse_baseline": True, "peer": "none"}
PEER_CHOICES: tuple[str, ...] = ("none", *PEERS)
SWEEP_POINTS = (2, MAX_SWEEP_POINTS)  # allowed range of the sweep's points per method
SWEEP_DEFAULT = 3
# Order of the generate endpoint's inputs; the validator returns one gr.validate per entry.
# The options come last, so API callers that send only the first ten (or fourteen) still work.
INPUT_FIELDS = (*RUN_FIELDS, *(f.name for f in CONFIG_INPUTS), *APP_OPTIONS)


@dataclass(frozen=True)
class ComparisonRequest:
    """A request whose every field has passed the checks; ``settings`` holds the H2CacheConfig inputs."""

    prompt: str
    model: str
    seed: int
    steps: int
    width: int
    height: int
    settings: tuple[tuple[str, Any], ...]  # (name, value) in CONFIG_INPUTS order
    reuse_baseline: bool = APP_OPTIONS["reuse_baseline"]  # take the uncached run from the store when it holds it
    peer: str = APP_OPTIONS["peer"]  # a peer method at H2-Cache's compute, or "none"

    def config(self) -> H2CacheConfig:
        # num_inference_steps is what final_full_steps counts back from; it changes nothing else.
        return H2CacheConfig(**dict(self.settings), num_inference_steps=self.steps)

    def as_dict(self) -> dict[str, Any]:
        values = asdict(self)
        return {**values, **dict(values.pop("settings"))}


def _shown(value: Any) -> str:
    """A short, HTML-safe echo of a rejected value (Gradio renders error messages as HTML)."""
    try:
        text = repr(value)
    except ValueError:  # an int past Python's digit limit for str()
        text = "a number with too many digits"
    if len(text) > 40:
        text = text[:37] + "..."
    return html.escape(text, quote=False)


def _number(value: Any) -> int | float | None:
    """A finite real number, or None. Strings are accepted because raw API payloads may carry them.

    Whole numbers stay Python ints, however large: a JSON integer such as 10**400 has no float,
    and must be reported as out of range rather than fail inside a conversion.
    """
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        text = value.strip()
        try:
            return int(text)
        except ValueError:
            pass
        try:
            value = float(text)
        except (ValueError, OverflowError):
            return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and math.isfinite(value):
        return value
    return None


def _whole(value: Any, field: str, low: int, high: int, problems: dict[str, str], multiple: int = 1) -> int | None:
    allowed = f"a whole number from {low} to {high}" + (f" in multiples of {multiple}" if multiple > 1 else "")
    number = _number(value)
    if number is None or (isinstance(number, float) and not number.is_integer()):
        problems[field] = f"{field} must be {allowed}, got {_shown(value)}"
        return None
    whole = int(number)
    if not low <= whole <= high or whole % multiple:
        problems[field] = f"{field} must be {allowed}, got {_shown(whole)}"
        return None
    return whole


def _real(value: Any, field: str, low: float, high: float, problems: dict[str, str]) -> float | None:
    number = _number(value)
    if number is None or not low <= number <= high:
        problems[field] = f"{field} must be a number from {low:g} to {high:g}, got {_shown(value)}"
        return None
    return float(number)


def _flag(value: Any, field: str, problems: dict[str, str]) -> bool | None:
    # Only real booleans: a raw API payload of "false" must not quietly read as True.
    if not isinstance(value, bool):
        problems[field] = f"{field} must be true or false, got {_shown(value)}"
        return None
    return value


def _is_unicode_text(text: str) -> bool:
    # JSON may carry a lone surrogate (\ud800): a Python str, but no character, and tokenizers reject it.
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def find_problems(settings: AppSettings, allowed_models: list[str], values: dict[str, Any]) -> tuple[dict[str, str], dict[str, Any]]:
    """(problems by field, cleaned values). A field is in exactly one of the two."""
    problems: dict[str, str] = {}
    clean: dict[str, Any] = {}
    limits = settings.limits

    prompt = values.get("prompt")
    if not isinstance(prompt, str):
        problems["prompt"] = f"prompt must be text, got {_shown(prompt)}"
    elif not _is_unicode_text(prompt):
        problems["prompt"] = "prompt must be valid Unicode text (it holds an unpaired surrogate code point)"
    elif not prompt.strip():
        problems["prompt"] = "prompt must not be empty"
    elif len(prompt.strip()) > limits.prompt_max_chars:
        problems["prompt"] = f"prompt must be at most {limits.prompt_max_chars} characters, got {len(prompt.strip())}"
    else:
        clean["prompt"] = prompt.strip()

    model = values.get("model")
    spec = None
    if model not in allowed_models:
        problems["model"] = f"model must be one of {allowed_models}, got {_shown(model)}"
    else:
        clean["model"] = model
        spec = settings.model(model)

    clean["seed"] = _whole(values.get("seed"), "seed", 0, limits.seed_max, problems)
    if spec is not None:  # steps and sizes depend on the model; with an unknown model only that is reported
        clean["steps"] = _whole(values.get("steps"), "steps", spec.min_steps, spec.max_steps, problems)
        for side in ("width", "height"):
            clean[side] = _whole(values.get(side), side, spec.min_size, spec.max_size, problems, spec.size_multiple)
    for f in CONFIG_INPUTS:
        value = values.get(f.name)
        if f.kind is bool:
            clean[f.name] = _flag(value, f.name, problems)
            continue
        bounds = app_bounds(f, limits, clean.get("steps"))
        if bounds is None:  # bounded by the step count; with bad steps only that is reported
            continue
        check = _real if f.kind is float else _whole
        clean[f.name] = check(value, f.name, *bounds, problems)
    clean["reuse_baseline"] = _flag(values.get("reuse_baseline", APP_OPTIONS["reuse_baseline"]), "reuse_baseline",
                                    problems)
    peer = values.get("peer", APP_OPTIONS["peer"])
    if peer in PEER_CHOICES:
        clean["peer"] = peer
    else:
        problems["peer"] = f"peer must be one of {list(PEER_CHOICES)}, got {_shown(peer)}"
    return problems, {k: v for k, v in clean.items() if k not in problems}


def app_bounds(f: ConfigField, limits: Limits, steps: int | None) -> tuple[float, float] | None:
    """The range the app allows for a numeric H2CacheConfig field: the library's lower bound, and the app's
    limit for what the field counts (``space.yaml``); None for a step count when the steps are unknown."""
    if f.unit == "threshold":
        return f.low, limits.tau_max
    if f.unit == "pool":
        return max(f.low, limits.pool_size_min), limits.pool_size_max
    if f.unit == "calls":
        return f.low, limits.max_consecutive_hits_max
    if f.unit == "steps":
        return None if steps is None else (f.low, steps)
    raise ValueError(f"H2CacheConfig.{f.name} has unit {f.unit!r}, which the app cannot bound")


def validate_request(settings: AppSettings, allowed_models: list[str], values: dict[str, Any]) -> ComparisonRequest:
    """The checked request, or a ``gr.Error`` listing every bad field and its allowed range."""
    problems, clean = find_problems(settings, allowed_models, values)
    if problems:
        raise gr.Error("Invalid input: " + "; ".join(problems.values()), title="Invalid input")
    run = {name: clean[name] for name in RUN_FIELDS}
    return ComparisonRequest(**run, settings=tuple((f.name, clean[f.name]) for f in CONFIG_INPUTS),
                             **{name: clean[name] for name in APP_OPTIONS})


def make_validator(settings: AppSettings, allowed_models: list[str]):
    """A ``validator=`` function for the generate event: one ``gr.validate`` per input, in INPUT_FIELDS order."""

    def validate_inputs(*args: Any) -> list[dict[str, Any]]:
        problems, _ = find_problems(settings, allowed_models, dict(zip(INPUT_FIELDS, args)))
        return [gr.validate(field not in problems, problems.get(field, "")) for field in INPUT_FIELDS]

    return validate_inputs


def validate_sweep_points(value: Any) -> int:
    """The sweep's points per method, or a ``gr.Error`` naming the field and its range."""
    problems: dict[str, str] = {}
    points = _whole(value, "sweep_points", *SWEEP_POINTS, problems)
    if problems:
        raise gr.Error("Invalid input: " + problems["sweep_points"], title="Invalid input")
    return points
