"""Flags with SCORESTREAM_ environment twins, and librdkafka pass-through settings."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

ENV_PREFIX = "SCORESTREAM_"
KAFKA_ENV_PREFIX = ENV_PREFIX + "KAFKA_"
# Env twins of our own flags that share the SCORESTREAM_KAFKA_ prefix; never librdkafka keys.
_NOT_LIBRDKAFKA = frozenset({"SCORESTREAM_KAFKA_CONFIG", "SCORESTREAM_KAFKA_CONFIG_FILE"})
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off", ""})


class SettingsError(ValueError):
    """A flag, variable or config file holds a value we cannot use; the message says which."""


def env_var_for(flag: str) -> str:
    """`--bootstrap-servers` -> `SCORESTREAM_BOOTSTRAP_SERVERS`."""
    return ENV_PREFIX + flag.lstrip("-").upper().replace("-", "_")


def parse_bool(text: str, name: str) -> bool:
    lowered = text.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise SettingsError(f"{name}={text!r} is not a boolean: use true or false")


def add_option(  # noqa: PLR0913 - mirrors argparse.add_argument
    parser: argparse.ArgumentParser,
    flag: str,
    *,
    environ: Mapping[str, str],
    help: str,  # noqa: A002 - the argparse name
    type: Callable[[str], Any] = str,  # noqa: A002
    default: Any = None,  # noqa: ANN401 - whatever `type` returns
    choices: Sequence[str] | None = None,
    metavar: str | None = None,
    switch: bool = False,
) -> None:
    """Add `flag` whose default comes from its SCORESTREAM_ variable; a flag wins over it."""
    var = env_var_for(flag)
    raw = environ.get(var)
    if switch:
        value = parse_bool(raw, var) if raw is not None else bool(default)
        parser.add_argument(
            flag,
            action=argparse.BooleanOptionalAction,
            default=value,
            help=f"{help} [env: {var}]",
        )
        return
    if raw is not None:
        if choices is not None and raw not in choices:
            raise SettingsError(f"{var}={raw!r}: choose one of {', '.join(choices)}")
        try:
            default = type(raw)
        except (TypeError, ValueError) as exc:
            raise SettingsError(f"{var}={raw!r}: {exc}") from exc
    shown = "" if default is None else f" (default: {default})"
    parser.add_argument(
        flag,
        type=type,
        default=default,
        choices=choices,
        metavar=metavar,
        help=f"{help}{shown} [env: {var}]",
    )


def parse_key_value(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise SettingsError(f"{text!r} is not KEY=VALUE")
    return key.strip(), value.strip()


def kafka_config(
    cli_pairs: Sequence[str],
    config_file: Path | None,
    environ: Mapping[str, str],
) -> dict[str, str]:
    """Merge librdkafka settings: SCORESTREAM_KAFKA_* < --kafka-config-file < --kafka-config."""
    merged: dict[str, str] = {}
    for var, value in environ.items():
        if var.startswith(KAFKA_ENV_PREFIX) and var not in _NOT_LIBRDKAFKA:
            merged[var[len(KAFKA_ENV_PREFIX) :].lower().replace("_", ".")] = value
    if config_file is not None:
        try:
            text = config_file.read_text()
        except OSError as exc:
            raise SettingsError(f"--kafka-config-file {config_file}: {exc.strerror}") from exc
        for number, line in enumerate(text.splitlines(), start=1):
            stripped = line.strip()
            if not stripped or stripped.startswith("#"):
                continue
            try:
                key, value = parse_key_value(stripped)
            except SettingsError as exc:
                raise SettingsError(f"{config_file}:{number}: {exc}") from exc
            merged[key] = value
    for pair in cli_pairs:
        key, value = parse_key_value(pair)
        merged[key] = value
    return merged


def default_state_dir(environ: Mapping[str, str] = os.environ) -> Path:
    base = environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "scorestream"
