"""Command-line helpers shared by every ``andes`` subcommand (stdlib only).

One flag name per setting across ``andes serve``, ``gateway``, ``engine``, ``chat``, ``bench`` and
``sim``; a name that was renamed keeps working as a hidden, deprecated alias that says what to use
instead (once, on stderr), so scripts written against an older spelling do not break::

    parser.add_argument("--tds", dest="tds_tok_s", type=float)
    add_deprecated_alias(parser, "--tds-tok-s", "--tds", dest="tds_tok_s", type=float)
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

__all__ = ["add_deprecated_alias"]


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
