from __future__ import annotations

from pathlib import Path

from workers.cli import build_parser
from workers.reference import END, START, configuration_reference

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_holds_the_current_configuration_reference() -> None:
    text = README.read_text()
    current = text[text.index(START) : text.index(END) + len(END)]
    assert current == configuration_reference(), "run `make docs` and commit README.md"


def test_the_reference_names_every_flag_and_variable_of_the_workers() -> None:
    reference = configuration_reference()
    parser = build_parser({})
    for command in ("infer", "monitor", "produce", "report", "demo", "train"):
        help_text = parser.parse_known_args([command])[0]  # parses: the command exists
        assert help_text.command == command
        assert f"`scorestream {command}`" in reference
    for flag, variable in (
        ("--processing-guarantee", "SCORESTREAM_PROCESSING_GUARANTEE"),
        ("--label-ttl-s", "SCORESTREAM_LABEL_TTL_S"),
        ("--metrics-port", "SCORESTREAM_METRICS_PORT"),
        ("--drift-at-ms", "SCORESTREAM_DRIFT_AT_MS"),
    ):
        assert f"| `{flag}` | `{variable}` |" in reference
