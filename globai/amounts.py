"""GLB amounts as people type and read them: decimal GLB everywhere, wei (integers) only when asked for."""

from __future__ import annotations

from decimal import Decimal, InvalidOperation

from globai.errors import ConfigError

GLB = 10**18
MAX_WEI = 2**256 - 1


def parse_glb(text: str | float | int, *, what: str, wei: bool = False, allow_zero: bool = False) -> int:
    """`text` GLB (e.g. "0.001", "12.5") as wei; with `wei=True`, `text` is already a whole number of wei.

    One-line ConfigError for anything that is not a positive amount with at most 18 decimals.
    """
    raw = str(text).strip().replace("_", "")
    unit = "wei" if wei else "GLB"
    try:
        value = Decimal(raw)
    except InvalidOperation:
        raise ConfigError(f"{what}: {raw!r} is not a number of {unit} (e.g. {'1000' if wei else '0.5'})") from None
    if not value.is_finite():
        raise ConfigError(f"{what}: {raw!r} is not a number of {unit}")
    amount = value if wei else value * GLB
    if amount != amount.to_integral_value():
        raise ConfigError(f"{what}: {raw} {unit} is finer than 1 wei" + ("" if wei else " (at most 18 decimals)"))
    amount_int = int(amount)
    if amount_int < 0 or (amount_int == 0 and not allow_zero):
        raise ConfigError(f"{what}: must be {'zero or more' if allow_zero else 'more than zero'}, got {raw} {unit}")
    if amount_int > MAX_WEI:
        raise ConfigError(f"{what}: {raw} {unit} is too large")
    return amount_int


def fmt_glb(wei: int | str, *, places: int = 6) -> str:
    """wei as "1.25 GLB" (trailing zeros dropped, at most `places` decimals)."""
    value = Decimal(int(wei)) / GLB
    text = f"{value:,.{places}f}".rstrip("0").rstrip(".")
    return f"{text} GLB"
