"""Command-line helpers shared by every ``andes`` subcommand (stdlib only).

One flag name per setting across ``andes serve``, ``gateway``, ``engine``, ``chat``, ``bench`` and
``sim``; a name that was renamed keeps working as a hidden, deprecated alias that says what to use
instead (once, on stderr), so scripts written against an older spelling do not break::

    parser.add_argument("--tds", dest="tds_tok_s", type=float)
    add_deprecated_alias(parser, "--tds-tok-s", "--tds", dest="tds_tok_s", type=float)
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from typing import Any

__all__ = ["add_deprecated_alias", "non_negative_int", "positive_float", "positive_int", "share"]


class _DeprecatedAlias(argparse.Action):
    """Stores like the flag it stands for (``append`` too), after a one-line notice."""

    def __init__(self, option_strings: Sequence[str], dest: str, *, new: str,
                 append: bool = False, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, **kwargs)
        self.new = new
        self.append = append

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
        print(f"{parser.prog}: {option_string} is deprecated; use {self.new}", file=sys.stderr)
        if self.append:
            current = getattr(namespace, self.dest, None)
            values = [*(current or []), values]
        elif self.nargs == 0:
            values = self.const
        setattr(namespace, self.dest, values)


def add_deprecated_alias(parser: argparse.ArgumentParser | Any, old: str, new: str, *,
                         dest: str, append: bool = False, **kwargs: Any) -> None:
    """Accept ``old`` as a hidden alias of ``new`` that sets the same ``dest``.

    ``kwargs`` are the new flag's ``type``/``choices``/``metavar``; ``append=True`` for a
    repeatable flag, ``nargs=0, const=VALUE`` for a switch. The alias never sets a default (the
    new flag's own default stays), and ``--help`` does not list it.
    """
    parser.add_argument(old, dest=dest, action=_DeprecatedAlias, new=new, append=append,
                        default=argparse.SUPPRESS, help=argparse.SUPPRESS, **kwargs)


# -- argparse value types: a bad value is one line from argparse, before anything starts --------


def positive_float(text: str) -> float:
    """A finite number > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}")
    return value


def _integer(text: str, low: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {text!r}")
    return value


def positive_int(text: str) -> int:
    """An integer >= 1."""
    return _integer(text, 1)


def non_negative_int(text: str) -> int:
    """An integer >= 0."""
    return _integer(text, 0)


def share(text: str) -> float:
    """A number within [0, 1]."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"expected a share within [0, 1], got {text!r}")
    return value
