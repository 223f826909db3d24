"""The `pudrt` command: one small module per sub-command, composed here.

A `PudrtError` is printed as one line on stderr with exit code 2, never a traceback.
"""

from __future__ import annotations

import logging
import os
import sys

import typer

from pudrt.cli import demo, evaluate, export, pending, poison, purify, train
from pudrt.errors import PudrtError

app = typer.Typer(
    name="pudrt",
    help="Defend image classifiers against backdoor and adversarial attacks at once.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.command("purify")(purify.purify)
app.command("scan")(pending.scan)
app.command("evaluate")(evaluate.evaluate)
app.command("export")(export.export)
app.command("poison")(poison.poison)
app.command("train")(train.train)
app.command("demo")(demo.demo)


@app.callback()
def _root(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log progress details."),
) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose or os.environ.get("PUDRT_VERBOSE") else logging.WARNING,
        format="%(levelname)s: %(message)s",
    )


def main() -> None:
    try:
        app()
    except PudrtError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
