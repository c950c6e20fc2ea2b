"""Kubernetes quantities as Kubernetes reads them."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from podserve.tooling import quantity


@pytest.mark.parametrize("text, value", [("24Gi", 24 * 2**30), ("500m", Decimal("0.5")), ("1e3", 1000), ("1.5G", 1.5e9),
                                         ("2", 2), (".5Ki", 512), ("+1Mi", 2**20)])
def test_parse(text, value):
    assert quantity.parse(text) == Decimal(str(value))


@pytest.mark.parametrize("text, fix", [("24GB", 'write "24Gi"'), ("24 Gi", 'write "24Gi" (no spaces)'),
                                       ("8gib", 'write "8Gi"'), ("lots", "a number with an optional unit")])
def test_lookalikes_get_their_fix(text, fix):
    with pytest.raises(quantity.QuantityError, match=fix.replace("(", r"\(").replace(")", r"\)")):
        quantity.parse(text)


@given(st.integers(1, 10**7))
def test_cpu_millicores_round_trip(millis):
    cores = quantity.cpu_cores(f"{millis}m")
    assert quantity.cpu_cores(quantity.format_millis(cores)) == cores


@pytest.mark.parametrize("text", ["1e99999999999", "1e99999999", "1e-99999999", "9Ei", "1e" + "9" * 5000])
def test_a_quantity_beyond_what_kubernetes_holds_is_out_of_range(text):
    with pytest.raises(quantity.QuantityError, match="out of range"):
        quantity.parse(text)


@pytest.mark.parametrize("cores", [1e999, -1e999, 10**19])
def test_cores_that_are_not_finite_or_too_many_are_out_of_range(cores):
    with pytest.raises(quantity.QuantityError, match="out of range"):
        quantity.cpu_cores(cores)


def test_an_amount_finer_than_a_milli_is_refused_not_truncated():
    assert quantity.format_millis(Decimal("2.5")) == "2500m" and quantity.format_millis(Decimal(3)) == "3"
    with pytest.raises(quantity.QuantityError, match="round it, e.g. to 0.002"):
        quantity.format_millis(Decimal("0.0019"))
