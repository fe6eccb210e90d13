"""What every component shares: one-line user errors, name suggestions, λ's canonical form."""

from __future__ import annotations

import difflib
import re
from typing import Any

LAMBDA_DECIMALS = 6  # Hydra's range() yields 0.7000000000000001; λ is rounded to this


class ConfigError(ValueError):
    """A user-facing configuration error: one line naming the key and what is valid."""


class Abort(BaseException):
    """A one-line user error raised where Hydra would only warn about an Exception (its
    callbacks); ``app.cli`` prints it and exits 2."""


LONG = re.compile(r"[^\s'\"]{121,}")  # a value too long to show whole in one line


def cut_long(line: str) -> str:
    """``line`` with every value over 120 characters cut to its start and end."""
    return LONG.sub(lambda m: f"{m.group()[:60]}…{m.group()[-40:]}", line)


def scrubber(secrets: list[str]):
    """A function that replaces every one of ``secrets`` in a text by ``***``."""
    def hide(text: str) -> str:
        for secret in secrets:
            text = text.replace(secret, "***")
        return text
    return hide


def suggest(word: str, valid: list[str]) -> str:
    """' (did you mean X?)' when a close match exists, else ''."""
    close = difflib.get_close_matches(word, valid, n=1, cutoff=0.5)
    return f" (did you mean {close[0]!r}?)" if close else ""


def clean_lambda(value: Any) -> float:
    """λ as a finite float rounded to LAMBDA_DECIMALS, or a ConfigError."""
    try:
        lam = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"lambda={value!r} is not a number; use e.g. lambda=0.5") from None
    if lam != lam or lam in (float("inf"), float("-inf")):
        raise ConfigError(f"lambda={value!r} is not finite; use a number such as 0.5")
    return round(lam, LAMBDA_DECIMALS) + 0.0  # +0.0 turns -0.0 into 0.0
