"""Money rules: ISO 4217 minor units, round half away from zero once per invoice line, decimal strings."""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal
from functools import cache

from billing.errors import InputError

#: ISO 4217 minor-unit digits of the currencies whose exponent is not 2 (every other code has 2).
#: Source: the ISO 4217 list (SIX), "Minor unit" column; X-codes without a minor unit are left out.
_MINOR_UNITS_NOT_2: dict[str, int] = {
    # no minor unit in use
    "BIF": 0,
    "CLP": 0,
    "DJF": 0,
    "GNF": 0,
    "ISK": 0,
    "JPY": 0,
    "KMF": 0,
    "KRW": 0,
    "PYG": 0,
    "RWF": 0,
    "UGX": 0,
    "UYI": 0,
    "VND": 0,
    "VUV": 0,
    "XAF": 0,
    "XOF": 0,
    "XPF": 0,
    # three digits
    "BHD": 3,
    "IQD": 3,
    "JOD": 3,
    "KWD": 3,
    "LYD": 3,
    "OMR": 3,
    "TND": 3,
    # four digits
    "CLF": 4,
    "UYW": 4,
}


@cache
def minor_units(currency: str) -> int:
    """Digits after the decimal point of a currency's minor unit (USD 2, JPY 0, KWD 3)."""
    code = currency.strip().upper()
    if len(code) != 3 or not code.isalpha():
        raise InputError(f"invalid currency code {currency!r}")
    return _MINOR_UNITS_NOT_2.get(code, 2)


def round_amount(amount: Decimal, currency: str) -> Decimal:
    """Round an exact amount to the currency's minor unit, half away from zero (also for negatives).

    `Decimal.quantize` rounds half-even by default; billing rounds half up (away from zero), once.
    A result of zero is returned without its sign, so "-0.00" never reaches an invoice.
    """
    rounded = amount.quantize(Decimal(1).scaleb(-minor_units(currency)), rounding=ROUND_HALF_UP)
    return rounded.copy_abs() if rounded.is_zero() else rounded


def format_amount(amount: Decimal, currency: str) -> str:
    """A money amount as a decimal string with exactly the currency's minor-unit digits."""
    return f"{round_amount(amount, currency):f}"


def format_unit_price(price: Decimal) -> str:
    """An exact unit price (per million tokens) as a plain decimal string, without trailing zeros.

    Exact: nothing is rounded; only the representation is normalized (2.50 and 2.5 are one price).
    """
    if price.is_zero():
        return "0"
    text = f"{price.normalize():f}"
    return text


def format_quantity(quantity: Decimal | int) -> str:
    """A token count as an integer string (quantities are sums of integer counts)."""
    value = Decimal(quantity)
    if value != value.to_integral_value():
        raise InputError(f"quantity {quantity} is not an integer")
    return str(int(value))
