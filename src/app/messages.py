"""User errors as one line: what a configuration mistake says, whoever meets it first."""

from __future__ import annotations

import re
import sys

from app.config import group_options, schema_keys
from app.errors import ConfigError, cut_long, suggest


def user_error(e: BaseException) -> str | None:
    """One line for a configuration mistake (an over-long value cut), or None if ``e`` is a
    bug."""
    line = _user_error(e)
    return None if line is None else cut_long(line)


def _user_error(e: BaseException) -> str | None:
    from hydra.errors import (
        ConfigCompositionException,
        MissingConfigException,
        OverrideParseException,
    )
    from omegaconf.errors import OmegaConfBaseException

    from hydra_plugins.chunked_submitit.chunked_submitit import LauncherConfigError
    from hydra_plugins.lambda_star_sweeper.lambda_star_sweeper import SweeperConfigError

    mine = (ConfigError, SweeperConfigError, LauncherConfigError)
    while e.__cause__ is not None and not isinstance(e, mine):
        if isinstance(e, OmegaConfBaseException):
            break
        e = e.__cause__
    text = str(e)
    if isinstance(e, mine):
        return text
    if m := re.search(r"Could not find '([\w/]+)/([^'/]*)'", text):
        group, option = m.groups()
        valid = group_options(group)
        return (f"{group}={option} is not a known option{suggest(option, valid)}; "
                f"valid: {', '.join(valid)}")
    if m := re.search(r"Key '([^']+)' (?:is )?not in (?:struct|'(\w+)').*?full_key: (\S+)",
                      text, re.S):
        key, schema, full_key = m.groups()
        valid = schema_keys(schema or full_key.rsplit(".", 1)[0])
        hint = f"{suggest(key, valid)}; valid: {', '.join(valid)}" if valid else ""
        return f"{full_key} is not a config key{hint}"

    if m := re.search(r"Value '(.*?)' of type .* could not be converted to (\w+).*?full_key: (\S+)",
                      text, re.S):
        value, kind, key = m.groups()
        return f"{key}={value!r} is not a valid {kind.lower()}"
    if m := re.search(r"Value '(.*?)' is not a valid bool.*?full_key: (\S+)", text, re.S):
        return f"{m.group(2)}={m.group(1)!r} is not a valid bool; use true or false"
    if m := re.search(r"field '\S+' is not Optional.*?full_key: (\S+)", text, re.S):
        return f"{m.group(1)}=null is not valid: {m.group(1)} needs a value"
    if m := re.search(r"Missing mandatory value: (\S+)", text):
        return f"{m.group(1)} must be set"
    if isinstance(e, (TypeError, ValueError)) and _raised_in(e, "hydra/_internal/defaults_list"):
        return ("a config group (model, method, task, judge, tracking, search) takes option "
                "names, not numbers or mappings; e.g. method=slerp or method=[slerp]")
    if isinstance(e, OverrideParseException) or "LexerNoViableAlt" in text:
        bad = _unparsable_override()
        what = (f"the override {bad!r} ({bad.split('=', 1)[0].lstrip('+~')})" if bad else
                f"the override {text.split(': ', 1)[-1].strip().splitlines()[0]!r}")
        return (f"cannot parse {what}; quote values with spaces or symbols, e.g. "
                f"'hydra.sweeper.constraints=[\"toy_mc/ece <= 0.1\"]'")
    if isinstance(e, (OverrideParseException, ConfigCompositionException, MissingConfigException,
                      OmegaConfBaseException)):
        return text.strip().splitlines()[0]
    return None


def _unparsable_override() -> str | None:
    """The command line's first override Hydra's grammar does not take, if any."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    for arg in sys.argv[1:]:
        if "=" in arg and not arg.startswith("-"):
            try:
                parser.parse_overrides([arg])
            except Exception:  # noqa: BLE001 - this is the one
                return arg
    return None


def _raised_in(e: BaseException, module_path: str) -> bool:
    tb = e.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb is not None and module_path in tb.tb_frame.f_code.co_filename
