"""One base for every error a user or operator can fix: its message says how, and it carries
the HTTP status and the CLI exit status, so each surface maps it in one place (the API's
exception handler, the CLI's `_die_known`, the UI's `problem`). Anything else is a bug."""

from __future__ import annotations

import logging
from typing import ClassVar

EXIT_CONFIG = 3  # a problem with the settings, the model, the index or the input


class UserError(Exception):
    """A problem the user can fix; the message says how."""

    http_status: ClassVar[int] = 400
    exit_code: ClassVar[int] = EXIT_CONFIG

    def headers(self) -> dict[str, str]:
        """Extra HTTP response headers (a 429's `Retry-After`)."""
        return {}


def user_error_status(exc: BaseException) -> int | None:
    """The HTTP status for an error a user or operator can fix; None for a bug."""
    return exc.http_status if isinstance(exc, UserError) else None


DEBUG_HINT = "PAGERAG_DEBUG=1 logs the traceback"


def log_failure(
    logger: logging.Logger, what: str, exc: BaseException, *, debug: bool = False
) -> None:
    """Log a failure: a `UserError` as one line (its message says the fix), a bug, or
    anything with `debug` (PAGERAG_DEBUG=1), with its traceback."""
    if isinstance(exc, UserError) and not debug:
        message = " ".join(str(exc).split())
        logger.error("%s: %s (%s)", what, message, DEBUG_HINT)
    else:
        logger.error("%s", what, exc_info=exc)
