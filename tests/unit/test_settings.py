from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from workers.settings import (
    SettingsError,
    add_option,
    env_var_for,
    kafka_config,
    parse_bool,
)


def _parser(environ: dict[str, str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    add_option(parser, "--batch-size", environ=environ, type=int, default=1000, help="rows")
    add_option(parser, "--guarantee", environ=environ, choices=("a", "b"), default="a", help="g")
    add_option(parser, "--verbose", environ=environ, switch=True, default=False, help="v")
    return parser


def test_env_var_names_follow_the_contract() -> None:
    assert env_var_for("--bootstrap-servers") == "SCORESTREAM_BOOTSTRAP_SERVERS"
    assert env_var_for("--batch-timeout-ms") == "SCORESTREAM_BATCH_TIMEOUT_MS"


def test_variable_sets_the_default_and_a_flag_wins() -> None:
    env = {"SCORESTREAM_BATCH_SIZE": "250", "SCORESTREAM_VERBOSE": "true"}
    assert _parser(env).parse_args([]).batch_size == 250
    assert _parser(env).parse_args([]).verbose is True
    assert _parser(env).parse_args(["--batch-size", "7"]).batch_size == 7
    assert _parser(env).parse_args(["--no-verbose"]).verbose is False
    assert _parser({}).parse_args([]).batch_size == 1000


def test_help_names_the_variable() -> None:
    assert "[env: SCORESTREAM_BATCH_SIZE]" in _parser({}).format_help()


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"SCORESTREAM_BATCH_SIZE": "many"}, "SCORESTREAM_BATCH_SIZE='many'"),
        ({"SCORESTREAM_GUARANTEE": "c"}, "choose one of a, b"),
        ({"SCORESTREAM_VERBOSE": "maybe"}, "not a boolean"),
    ],
)
def test_bad_variables_say_which_and_why(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        _parser(env)


def test_parse_bool() -> None:
    assert parse_bool("Yes", "X") is True
    assert parse_bool("0", "X") is False


def test_kafka_config_precedence_env_then_file_then_flags(tmp_path: Path) -> None:
    config_file = tmp_path / "client.conf"
    config_file.write_text(
        "# TLS to the cluster\nsecurity.protocol=SSL\nssl.ca.location = /ca.pem\n\n"
    )
    env = {
        "SCORESTREAM_KAFKA_SECURITY_PROTOCOL": "PLAINTEXT",
        "SCORESTREAM_KAFKA_LINGER_MS": "5",
        "SCORESTREAM_KAFKA_CONFIG_FILE": "/ignored-here",
        "OTHER": "x",
    }
    merged = kafka_config(["linger.ms=20", "client.id=a=b"], config_file, env)
    assert merged == {
        "security.protocol": "SSL",
        "ssl.ca.location": "/ca.pem",
        "linger.ms": "20",
        "client.id": "a=b",
    }


def test_kafka_config_errors_point_at_the_line(tmp_path: Path) -> None:
    config_file = tmp_path / "client.conf"
    config_file.write_text("a=1\nnot a pair\n")
    with pytest.raises(SettingsError, match=r"client.conf:2: 'not a pair' is not KEY=VALUE"):
        kafka_config([], config_file, {})
    with pytest.raises(SettingsError, match=r"missing.conf"):
        kafka_config([], tmp_path / "missing.conf", {})
    with pytest.raises(SettingsError, match=r"KEY=VALUE"):
        kafka_config(["=x"], None, {})
