"""Benchmark prompts and calibration prompts, always disjoint.

Every number a benchmark derives from prompts before scoring (TeaCache's polynomial, MagCache's ratios, the
auto grid's thresholds) comes from the *calibration* prompts; verdicts come from the *benchmark* prompts.
Calibrating on the prompts that are then scored would tune the peers (and the grid) to the test set. The
rule, first match wins:

1. ``calibration_file`` given: its first ``calibration_count`` prompts.
2. The embedded model: scenes drawn from the *training* split of the scene grammar (``seed=2024``), minus
   any benchmark prompt (the shipped benchmark prompts are from the held-out split anyway). The model
   directory carries that draw (``calibration_prompts.txt``, written by the model's export), so the
   installed library needs nothing from the checkout's model tooling.
3. Any other model with a prompt file (e.g. FLUX.1-dev with ``cute_text.txt``): the file's *last*
   ``calibration_count`` prompts are held out for calibration, and the benchmark draws its prompts from the
   lines before them, never from those.

Whatever the rule, a benchmark prompt among the calibration prompts raises ``ValueError``.

Example:
    >>> split = split_prompts("org/model", prompts=["p1", "p2", "p3", "p4", "p5"], num_prompts=2, calibration_count=2)
    >>> split.benchmark, split.calibration
    (['p1', 'p2'], ['p4', 'p5'])
    >>> split_prompts("org/model", prompts=["p1", "p2"], calibration=["P1 "], calibration_count=1)
    Traceback (most recent call last):
    ...
    ValueError: 1 calibration prompt(s) are also benchmark prompts (e.g. 'P1 '); calibration must never see test prompts
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .methods.calibration import calibrated_on, prompt_hashes

EMBEDDED_SEED = 2024  # the draw the shipped embedded-model calibrations used


@dataclass(frozen=True)
class PromptSplit:
    """The prompts a run scores, the prompts it calibrates on, and which rule chose the latter."""

    benchmark: list[str]
    calibration: list[str]
    rule: str = ""


def is_embedded(model: str | None) -> bool:
    """The project's embedded model, by name or by its directory."""
    from .pipelines import EMBEDDED, EMBEDDED_MODEL_DIR

    if model in (None, EMBEDDED):
        return True
    path = Path(model)
    return path.is_dir() and path.resolve() == EMBEDDED_MODEL_DIR.resolve()


CALIBRATION_PROMPTS_FILE = "calibration_prompts.txt"


def embedded_calibration_prompts() -> list[str]:
    """The embedded model's calibration draw, in draw order, as its directory ships it."""
    from .pipelines import EMBEDDED_MODEL_DIR

    path = EMBEDDED_MODEL_DIR / CALIBRATION_PROMPTS_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: the embedded model's export writes it "
                                "(embedded_model.training.export); pass calibration prompts of your own")
    return read_prompts(path)


def _scene_prompts(count: int, avoid: set[str]) -> list[str]:
    # The draw is a prefix of a longer draw from the same generator, so with nothing to avoid these are
    # exactly the prompts the shipped calibrations were made on.
    drawn = [p for p in embedded_calibration_prompts() if prompt_hashes([p])[0] not in avoid]
    if len(drawn) < count:
        raise ValueError(f"calibration_count = {count} needs more than the {len(drawn)} usable prompts of the "
                         f"embedded model's {CALIBRATION_PROMPTS_FILE}; ask for fewer")
    return drawn[:count]


def split_prompts(model: str | None, prompts: list[str], num_prompts: int | None = None,
                  calibration_count: int = 8, calibration: list[str] | None = None) -> PromptSplit:
    """Apply the rule of the module docstring to the prompts of a prompt file (comments already removed).

    Args:
        model: ``'embedded'``, a hub id or a directory.
        prompts: the prompt file's prompts, in file order.
        num_prompts: benchmark prompts to use (``None``: every one the rule leaves).
        calibration_count: calibration prompts wanted.
        calibration: prompts of an explicit calibration file, if one was given.

    Raises:
        ValueError: calibration and benchmark prompts overlap, or a prompt file is too short to hold out
            ``calibration_count`` prompts and still leave one to score.
    """
    if calibration_count < 1:
        raise ValueError(f"calibration_count must be >= 1, got {calibration_count}")
    if calibration is not None:
        benchmark = prompts[:num_prompts] if num_prompts else list(prompts)
        chosen, rule = list(calibration[:calibration_count]), "from the calibration file"
    elif is_embedded(model):
        benchmark = prompts[:num_prompts] if num_prompts else list(prompts)
        chosen = _scene_prompts(calibration_count, set(prompt_hashes(benchmark)))
        rule = f"training split of the scene grammar (seed {EMBEDDED_SEED})"
    else:
        if len(prompts) <= calibration_count:
            raise ValueError(
                f"the prompt file has {len(prompts)} prompts: holding out its last {calibration_count} for "
                "calibration leaves none to score; pass --calibration-prompts-file, or fewer --calibration-prompts")
        head = prompts[:-calibration_count]
        benchmark = head[:num_prompts] if num_prompts else head
        chosen = list(prompts[-calibration_count:])
        rule = f"the prompt file's last {calibration_count} prompts, held out from the benchmark"
    check_disjoint(benchmark, chosen)
    return PromptSplit(benchmark, chosen, rule)


def check_disjoint(benchmark: list[str], calibration: list[str] | set[str]) -> None:
    """``ValueError`` when a calibration prompt (or, given a set, a prompt hash) is also a benchmark prompt."""
    scored = set(prompt_hashes(benchmark))
    if isinstance(calibration, set):
        shared = sorted(calibration & scored)
    else:
        shared = [p for p, h in zip(calibration, prompt_hashes(calibration)) if h in scored]
    if shared:
        raise ValueError(f"{len(shared)} calibration prompt(s) are also benchmark prompts (e.g. {shared[0]!r}); "
                         "calibration must never see test prompts")


def calibration_leaks(entry: dict | None, benchmark: list[str]) -> bool | None:
    """Whether a stored calibration was made on any benchmark prompt: ``True``/``False``, or ``None`` when it
    does not record its prompts (written before they were recorded)."""
    hashes = calibrated_on(entry)
    if hashes is None:
        return None
    return bool(hashes & set(prompt_hashes(benchmark)))


def read_prompts(path: str | Path, limit: int | None = None) -> list[str]:
    """Non-empty lines not starting with '#'; the first `limit` of them."""
    lines = Path(path).read_text().splitlines()
    prompts = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    if not prompts:
        raise ValueError(f"no prompts in {path}")
    return prompts[:limit] if limit else prompts
