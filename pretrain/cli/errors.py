"""Turn expected failures into one line on stderr and exit code 2 (usage) or 1 (runtime)."""

from __future__ import annotations

import sys
from typing import NoReturn

# typer ships its own copy of click; its exception classes are the ones raised here.
import typer
from typer._click import exceptions as click_errors

USAGE_EXIT = 2
STOPPED_EXIT = 143  # 128 + SIGTERM, what a shell reports for a process ended by SIGTERM


def fail(message: str, code: int = USAGE_EXIT) -> NoReturn:
    print(f"pretrain: error: {message}", file=sys.stderr)
    raise SystemExit(code)


def usage_error_types() -> tuple[type[BaseException], ...]:
    """Errors that mean the input was wrong (config, data path, model files)."""
    from pretrain.config.load import ConfigError
    from pretrain.data.errors import DataError
    from pretrain.models.folder import ExportError

    return (ConfigError, DataError, ExportError, FileNotFoundError)


def runtime_error_types() -> tuple[type[BaseException], ...]:
    """Errors whose message is already the one line a user needs (exit code 1)."""
    from pretrain.workflows.run import RunFailed
    from pretrain.tracking.reachable import TrackingUnreachable

    return (RunFailed, TrackingUnreachable)


def run_cli(command, args: list[str] | None = None) -> NoReturn:
    """Run the typer/click command; usage and input errors become one line and exit code 2."""
    try:
        code = command.main(args=args, prog_name="pretrain", standalone_mode=False)
    except click_errors.NoArgsIsHelpError as exc:  # bare group: help was printed
        print(exc.ctx.get_help() if exc.ctx else "", file=sys.stderr)
        raise SystemExit(USAGE_EXIT) from None
    except click_errors.UsageError as exc:
        hint = f" (see '{exc.ctx.command_path} --help')" if exc.ctx else ""
        fail(f"{exc.format_message()}{hint}")
    except typer.Abort:
        fail("aborted", 130)
    except typer.Exit as exc:
        raise SystemExit(exc.exit_code) from None
    except usage_error_types() as exc:
        fail(_one_line(exc))
    except Exception as exc:
        if isinstance(exc, runtime_error_types()):
            fail(_one_line(exc), 1)
        from mlflow.exceptions import MlflowException

        if not isinstance(exc, MlflowException):
            raise
        fail(f"MLflow: {_one_line(exc)}", 1)
    raise SystemExit(code if isinstance(code, int) else 0)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
