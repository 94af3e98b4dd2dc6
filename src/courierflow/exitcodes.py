"""The exit codes of every `courierflow` command, and which error means which.

One table for scripts to test against (README: "Exit codes"); the root command turns
courierflow's errors into these codes with :func:`exit_code_for`, a finished run with
:func:`exit_code_for_run`.
"""

from __future__ import annotations

from enum import IntEnum
from typing import TYPE_CHECKING

from courierflow.errors import (
    ConfigError,
    InvokeError,
    LedgerError,
    StackError,
    TransportError,
    UnreadableFileError,
)

if TYPE_CHECKING:
    from courierflow.report.summary import RunSummary


class ExitCode(IntEnum):
    """What a `courierflow` command's exit status means."""

    #: the command did what it was asked (a run: every order delivered)
    OK = 0
    #: the run completed but not every order was delivered: some failed or were lost
    #: (also `aws smoke` and `rehearse` when an order was not delivered)
    NOT_DELIVERED = 1
    #: bad input or usage: an unknown option, a bad value (from an option or its
    #: environment variable), a missing file, a CSV the publisher refused
    USAGE = 2
    #: a service could not be reached: the broker, the local stack or its ledger, an
    #: AWS endpoint
    UNREACHABLE = 3
    #: anything else that stopped the command: AWS refused a call, a deploy rolled back,
    #: an unexpected error (with its traceback)
    FAILED = 4
    #: stopped with Ctrl-C (128 + SIGINT, as shells report it)
    INTERRUPTED = 130


#: courierflow's errors that mean "bad input": the user can fix the command or the file
USAGE_ERRORS = (ConfigError, UnreadableFileError)
#: courierflow's errors that mean "a service did not answer"
UNREACHABLE_ERRORS = (TransportError, StackError, LedgerError, InvokeError)


def exit_code_for(exc: BaseException) -> ExitCode:
    """The exit code for an error that stopped a command.

    An error converted at a module's edge (``raise DeployError(...) from None``) keeps
    the library's exception as its context: a botocore or socket connection failure
    there means an AWS endpoint did not answer.
    """
    if isinstance(exc, KeyboardInterrupt):
        return ExitCode.INTERRUPTED
    if isinstance(exc, USAGE_ERRORS):
        return ExitCode.USAGE
    if isinstance(exc, UNREACHABLE_ERRORS) or _connection_failed(exc):
        return ExitCode.UNREACHABLE
    return ExitCode.FAILED


def _connection_failed(exc: BaseException) -> bool:
    """Whether ``exc`` or an exception it was raised from is a failure to connect."""
    from botocore.exceptions import ConnectionError as EndpointUnreachable
    from botocore.exceptions import HTTPClientError

    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(
            current, (EndpointUnreachable, HTTPClientError, ConnectionError, TimeoutError)
        ):
            return True
        current = current.__cause__ or current.__context__
    return False


def exit_code_for_run(summary: RunSummary) -> ExitCode:
    """A finished run's exit code: the file refused is bad input; a failed or lost
    order means not every order was delivered."""
    if summary.refused:
        return ExitCode.USAGE
    if summary.failed or summary.lost:
        return ExitCode.NOT_DELIVERED
    return ExitCode.OK
