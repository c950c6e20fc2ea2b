"""Kubernetes resource quantities ("24Gi", "500m", "2"): parse them and say what is wrong.

The grammar is Kubernetes' own (k8s.io/apimachinery resource.Quantity): a decimal number
followed by a binary suffix (Ki Mi Gi Ti Pi Ei), a decimal suffix (n u m k M G T P E) or an
exponent (e3). `parse` returns the exact value as a Decimal; the helpers turn a value.py
field into bytes or cores and raise QuantityError with the fix a person needs.
"""

from __future__ import annotations

import re
from decimal import Decimal

_NUMBER = r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)"
_SUFFIX = r"Ki|Mi|Gi|Ti|Pi|Ei|[numkMGTPE]|[eE][+-]?\d+"
_QUANTITY = re.compile(rf"({_NUMBER})({_SUFFIX})?")

_BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_DECIMAL = {"n": Decimal("1e-9"), "u": Decimal("1e-6"), "m": Decimal("1e-3"), "": Decimal(1),
            "k": Decimal("1e3"), "M": Decimal("1e6"), "G": Decimal("1e9"), "T": Decimal("1e12"),
            "P": Decimal("1e15"), "E": Decimal("1e18")}
#: Units people write that Kubernetes does not accept, and what they meant.
_LOOKALIKES = {"gb": "Gi", "g": "Gi", "gib": "Gi", "mb": "Mi", "mib": "Mi", "kb": "Ki", "tb": "Ti", "b": ""}

GI = 2**30
#: The largest magnitude a Kubernetes quantity may have (resource.Quantity's documented 2^63-1).
LARGEST = Decimal(2**63 - 1)
#: Kubernetes' finest step, 1m.
MILLI = Decimal("0.001")


class QuantityError(ValueError):
    """A value is not a usable Kubernetes quantity; the message says why and what to write."""


def parse(text: str) -> Decimal:
    """Return the exact value of a Kubernetes quantity string, or raise QuantityError."""
    match = _QUANTITY.fullmatch(text)
    if not match:
        raise QuantityError(f"{text!r} is not a Kubernetes quantity{_suggest(text)}")
    number, suffix = Decimal(match.group(1)), match.group(2) or ""
    try:
        amount = (number * _BINARY[suffix] if suffix in _BINARY else number * _DECIMAL[suffix] if suffix in _DECIMAL
                  else number.scaleb(int(suffix[1:])))
    except (ArithmeticError, ValueError):  # an exponent too long for int(), or beyond what a Decimal holds
        raise QuantityError(_out_of_range(text)) from None
    return in_range(text, amount)


def in_range(value: object, amount: Decimal) -> Decimal:
    """Return `amount` (what `value` asks for) when Kubernetes can hold it: finite, at most 2^63-1 in magnitude."""
    if not amount.is_finite() or abs(amount) > LARGEST:
        raise QuantityError(_out_of_range(value))
    return amount


def whole_millis(value: object, amount: Decimal, unit: str = "") -> Decimal:
    """Return `amount` (what `value` asks for) when it is a whole number of 1m (0.001), Kubernetes' finest step."""
    if amount * 1000 != (amount * 1000).to_integral_value():
        rounded = max(amount.quantize(MILLI), MILLI)
        raise QuantityError(f"{value!r} is finer than Kubernetes' 1m (0.001{unit}); round it, e.g. to {rounded}")
    return amount


def memory_bytes(value: object) -> int:
    """Return the bytes a memory quantity such as "24Gi" asks for."""
    if not isinstance(value, str) or isinstance(value, bool):
        hint = f'; write "{value}Gi" for {value} GiB' if isinstance(value, (int, float)) else ""
        raise QuantityError(f"{value!r} must be a quantity string such as \"8Gi\"{hint}")
    amount = parse(value)
    if value.endswith("m"):
        raise QuantityError(f"{value!r} means {amount} bytes (m is milli); write \"{value[:-1]}Mi\" for MiB")
    if amount != amount.to_integral_value() or amount <= 0:
        raise QuantityError(f"{value!r} must be a whole, positive number of bytes, e.g. \"8Gi\"")
    return int(amount)


def cpu_cores(value: object) -> Decimal:
    """Return the cores a CPU value asks for: a number (2, 0.5) or a quantity ("500m")."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise QuantityError(f"{value!r} must be a number of cores (4, 0.5) or a quantity (\"500m\")")
    try:
        cores = parse(value) if isinstance(value, str) else in_range(value, Decimal(str(value)))
    except QuantityError as exc:
        raise QuantityError(f"{exc}; write cores as a number (4, 0.5) or a quantity (\"500m\")") from None
    if cores <= 0:
        raise QuantityError(f"{value!r} must be above 0 cores, e.g. 0.5 or 4")
    return whole_millis(value, cores, " core")


def format_millis(amount: Decimal) -> str:
    """Return the canonical quantity for an amount such as cores: "4", "500m"; raise QuantityError if finer than 1m."""
    millis = int(whole_millis(amount, amount) * 1000)
    return str(millis // 1000) if millis % 1000 == 0 else f"{millis}m"


def format_gib(nbytes: int | Decimal) -> str:
    """Return bytes as GiB for messages: "120Gi", "0.5Gi"."""
    gib = Decimal(nbytes) / GI
    return f"{gib.normalize():f}Gi"


def _out_of_range(value: object) -> str:
    return f"{value!r} is out of range: a Kubernetes quantity must be finite and at most 2^63-1 (about {LARGEST:.1e})"


def _suggest(text: str) -> str:
    match = re.match(rf"^\s*({_NUMBER})\s*([A-Za-z]+)\s*$", str(text))
    if not match:
        return " (a number with an optional unit, e.g. \"24Gi\" or \"500m\")"
    number, unit = match.groups()
    if unit in _BINARY or unit in _DECIMAL:
        return f"; write \"{number}{unit}\" (no spaces)"
    meant = _LOOKALIKES.get(unit.lower())
    if meant is None:
        return f" ({unit!r} is not a unit Kubernetes knows: use Ki, Mi, Gi, Ti or k, M, G, T)"
    return f" ({unit!r} is not a Kubernetes unit); write \"{number}{meant}\""
