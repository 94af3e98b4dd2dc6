"""One error tree for the whole package.

Library exceptions (pika, botocore, sqlite3) are converted to these at the edge of
the module that talks to the library, so callers only ever see ``CourierflowError``.
"""

from __future__ import annotations


class CourierflowError(Exception):
    """Base of every error courierflow raises on purpose."""


class ConfigError(CourierflowError):
    """Raised when a setting is missing or malformed (an unknown URL scheme, say)."""


class UnreadableFileError(CourierflowError):
    """Raised when an uploaded file cannot be read as CSV at all; nothing is published.

    The message names the file and the reason, and says what to do next.
    """


class TransportError(CourierflowError):
    """Raised when the queue cannot be reached or refuses an operation."""


class ConnectionLost(TransportError):
    """Raised when the broker connection dropped; the caller may reconnect and retry."""


class AuthenticationError(TransportError):
    """Raised when the broker refused the credentials (or the virtual host) it was given:
    retrying with the same settings cannot succeed, so nothing retries it."""


class PublishError(TransportError):
    """Raised when the broker did not confirm (or negatively confirmed) a message."""


class PublishIncomplete(CourierflowError):
    """Raised when the publisher stopped before the end of a file because its invocation
    was running out of time. What it published is confirmed and checkpointed in the
    ledger; a retry of the same event resumes after the checkpoint.
    """


class LedgerError(CourierflowError):
    """Raised when the order ledger cannot be read or written."""


class InvokeError(CourierflowError):
    """Raised when Lambda did not accept an invocation after the bounded retries."""


class InvokeUnreachable(InvokeError):
    """Raised when Lambda's endpoint gave no answer (refused, reset or timed out): an
    outage, not a failure of the order, so the manager holds the order and tries again
    until the endpoint answers instead of spending the order's attempts."""


class InvokeThrottled(InvokeError):
    """Raised when Lambda refused an invocation for throttling (HTTP 429,
    ``TooManyRequestsException``): not a failure of the order, to be retried later.

    ``retry_after_s`` is Lambda's ``Retry-After`` hint in seconds, None when it gave none.
    """

    def __init__(self, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class StackError(CourierflowError):
    """Raised when the local stack cannot be started, found or stopped."""


class DeployError(CourierflowError):
    """Raised when AWS refuses a step of a deployment; the message says which and why."""
