"""Phone parsing, normalization and masking, on phonenumbers."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import phonenumbers

from service.errors import InvalidPhone

# Numbers written without a country code are read as Russian, the service's home market.
DEFAULT_REGION = "RU"
_MAX_INPUT = 32
_E164_MAX_DIGITS = 15


# phonenumbers' number types by their lower-case names (mobile, fixed_line, voip, ...), as
# CALLAUTH_ALLOWED_NUMBER_TYPES names them.
NUMBER_TYPES = {
    name.lower(): value
    for name, value in vars(phonenumbers.PhoneNumberType).items()
    if name.isupper() and isinstance(value, int)
}
_TYPE_NAMES = {value: name for name, value in NUMBER_TYPES.items()}


@dataclass(frozen=True, slots=True)
class Phone:
    e164_digits: str
    region: str
    number: Any = field(default=None, compare=False, repr=False)  # phonenumbers' parse

    def number_type(self) -> str:
        """`mobile`, `fixed_line`, `premium_rate`, ... as phonenumbers classifies the number."""
        number = self.number or phonenumbers.parse("+" + self.e164_digits)
        return _TYPE_NAMES.get(phonenumbers.number_type(number), "unknown")


def normalize(raw: str) -> Phone:
    """Parse `raw` into E.164 digits without `+`; raise InvalidPhone if it is not a valid number."""
    if not raw or len(raw) > _MAX_INPUT:
        raise InvalidPhone("phone must be 1..32 characters")
    text = raw.strip()
    # "79035675124" is E.164 without the plus, as New-Tel writes it; "89035675124" is the
    # Russian domestic form. Try the international reading first.
    candidates = ["+" + text, text] if text.isdigit() and len(text) > 10 else [text]
    for candidate in candidates:
        try:
            number = phonenumbers.parse(candidate, DEFAULT_REGION)
        except phonenumbers.NumberParseException:
            continue
        # What is_valid_number does, keeping the region it works out (the costly part).
        region = phonenumbers.region_code_for_number(number)
        if region and phonenumbers.is_valid_number_for_region(number, region):
            digits = f"{number.country_code}{phonenumbers.national_significant_number(number)}"
            # phonenumbers takes some German numbers of 16 digits; E.164 (and New-Tel) stop at 15.
            if len(digits) <= _E164_MAX_DIGITS:
                return Phone(e164_digits=digits, region=region, number=number)
    raise InvalidPhone("phone is not a valid number")


def mask(digits: str) -> str:
    """`79035675124` -> `7903***5124`: enough to tell numbers apart in logs, not to call them."""
    if len(digits) < 8:
        return "***"
    return f"{digits[:4]}***{digits[-4:]}"
