"""What every command shares: the parser, argument types that reject bad values up front, settings from the
command-line flags, today's date."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from datetime import UTC, date, datetime
from pathlib import Path
from typing import NoReturn, TypeVar

from ml.settings import Settings

T = TypeVar("T")


class Parser(argparse.ArgumentParser):
    """Answers a bad argument with one line on stderr (``rekindle run: error: ...``) and exit status 2.

    ``add_subparsers`` builds the sub-commands' parsers with this class too, and a sub-command's ``--help`` opens
    with the line its parent's list gives it."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")

    def add_subparsers(self, **kwargs):
        return super().add_subparsers(action=_SubCommands, **kwargs)


class _SubCommands(argparse._SubParsersAction):
    def add_parser(self, name: str, **kwargs):
        kwargs.setdefault("description", kwargs.get("help"))
        return super().add_parser(name, **kwargs)


class UsageError(Exception):
    """A bad value found after parsing (a missing segment, a date with nothing published): one line, exit 2."""


def iso_date(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date YYYY-MM-DD") from None


def _integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None


def positive_int(text: str) -> int:
    value = _integer(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not at least 1")
    return value


def non_negative_int(text: str) -> int:
    value = _integer(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is negative")
    return value


def ensure_free_port(host: str, listen_port: int, flag: str = "--port") -> None:
    """One clear line, before anything starts, when another process already listens on the port a server needs."""
    from ml.serving.workers import PortInUseError, listening_socket

    try:
        listening_socket(host, listen_port, reuse_port=False).close()
    except PortInUseError as exc:
        raise UsageError(f"{exc}; choose another with {flag}") from None


def port(text: str) -> int:
    value = _integer(text)
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a TCP port (1-65535)")
    return value


def unit_float(text: str) -> float:
    """A share or a normalised score: a number from 0 to 1."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text!r} is not between 0 and 1")
    return value


def comma_separated(parse: Callable[[str], T]) -> Callable[[str], list[T]]:
    """The argument type of a comma-separated list of values that the argument type ``parse`` reads."""

    def parse_list(text: str) -> list[T]:
        return [parse(part.strip()) for part in text.split(",")]

    return parse_list


def existing_path(text: str) -> Path:
    path = Path(text)
    if not path.exists():
        raise argparse.ArgumentTypeError(f"{text} does not exist")
    return path


def fail(prog: str, message: str) -> int:
    """Print one error line for a command and return its exit status."""
    print(f"{prog}: error: {message}", file=sys.stderr)
    return 2


def settings_from(args: argparse.Namespace) -> Settings:
    return Settings.from_env(
        seed=getattr(args, "seed", None), scale=getattr(args, "scale", None), days=getattr(args, "days", None)
    )


def today() -> date:
    return datetime.now(UTC).date()


def check_serving_strategies(settings) -> None:
    """``REKINDLE_SERVING_STRATEGIES`` as the API and the dashboard read it, or one line before either starts."""
    from ml.serving.variants import ServingExperiment

    try:
        ServingExperiment.from_settings(settings.serving_experiment, settings.serving_strategies)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
