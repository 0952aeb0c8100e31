"""One colour and one marker per method, distinct across every registered method and variant.

The plots overlay up to a dozen fronts; a variant drawn in its base method's colour (as the one-probe
variants once were, in FirstBlockCache's blue) cannot be told apart. Variants get a colour of their own,
near their family's where possible (the guarded peers are darker shades of their base colour), and a marker
of their own, so that the plots stay readable in greyscale too.

Example:
    >>> method_style("fbcache")
    ('#1f77b4', 's')
    >>> method_style("fbcache-guarded") != method_style("fbcache")
    True
"""

from __future__ import annotations

STYLES: dict[str, tuple[str, str]] = {
    "none": ("#7f7f7f", "."),
    "h2cache": ("#d62728", "o"),
    "fbcache": ("#1f77b4", "s"),
    "teacache": ("#2ca02c", "^"),
    "magcache": ("#9467bd", "D"),
    "taylorseer": ("#ff7f0e", "v"),
    "h2cache-no-pfs": ("#e377c2", "<"),
    "h2cache-independent-stage2": ("#8c564b", ">"),
    "h2cache-guarded": ("#bcbd22", "P"),
    "h2cache-one-probe": ("#17becf", "X"),
    "h2cache-guarded-one-probe": ("#7f0000", "*"),
    "fbcache-guarded": ("#08306b", "h"),
    "teacache-guarded": ("#00441b", "p"),
    "magcache-per-context": ("#3f007d", "d"),
    # The colours these had as spares, kept so that earlier plots and new ones agree.
    "h2cache-forecast": ("#000000", "H"),
    "h2cache-guarded-forecast": ("#ff1493", "2"),
    "seacache": ("#006d77", "8"),
}
# For methods registered later without a style: colours and markers no entry above uses.
_SPARE_COLORS = ("#b15928", "#6a3d9a", "#ffb000", "#4d4d4d")
_SPARE_MARKERS = ("1", "3", "4", "+")


def method_style(method: str) -> tuple[str, str]:
    """(colour, marker) of a method; methods without an entry get spare ones, stable per name."""
    if method in STYLES:
        return STYLES[method]
    index = sum(method.encode()) % len(_SPARE_COLORS)
    return _SPARE_COLORS[index], _SPARE_MARKERS[index]
