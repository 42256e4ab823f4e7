"""The `usagebill` command line: migrate, worker, ingest, rates, quotas, invoices, reconcile, demo."""

from __future__ import annotations

import sys
from importlib import import_module

import typer

from billing.errors import BillingError
from billing.settings import redact

app = typer.Typer(
    name="usagebill",
    help="Usage billing for LLM products: events in, quotas and invoices out.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root() -> None:
    """usagebill: LLM usage events in, quotas and invoices out. Configure with DATABASE_URL, REDIS_URL."""


#: the modules under worker/commands that add commands to `app` (each has `register(app)`)
COMMAND_MODULES = ("core", "ingest", "rates", "run", "quota", "invoice", "ops")


def _register() -> None:
    for name in COMMAND_MODULES:
        module = import_module(f"worker.commands.{name}")
        module.register(app)


_register()


def main(argv: list[str] | None = None) -> int:
    """Entry point: expected failures exit 1 with a one-line reason, usage errors exit 2."""
    try:
        # standalone mode: the CLI library reports usage errors itself (exit 2) and raises SystemExit
        app(args=argv, prog_name="usagebill")
    except SystemExit as exc:
        code = exc.code
        return code if isinstance(code, int) else (0 if code is None else 1)
    except BillingError as exc:
        print(f"usagebill: error: {_one_line(str(exc))}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


def _one_line(text: str) -> str:
    line = " ".join(text.split())
    for word in line.split():
        if "://" in word:
            line = line.replace(word, redact(word))
    return line


def run() -> None:
    sys.exit(main())


if __name__ == "__main__":
    run()
