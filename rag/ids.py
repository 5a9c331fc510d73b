"""Document and job ids as users type them: the one check every entry point applies.

A document id is the SHA-256 of the file: 64 lowercase hex digits. Users may type a prefix,
like a git hash. Anything that is not hex is refused here, before any lookup, so a typed id
can never act as a pattern (`%`, `_`, `*`, `?`, `[`), a path or a quote anywhere below.
"""

from __future__ import annotations

import re

from rag.errors import UserError

DOC_ID_LENGTH = 64
MIN_PREFIX = 4  # shorter prefixes match too many documents to be a useful choice
JOB_ID_LENGTH = 32  # uuid4().hex

_HEX = re.compile(r"[0-9a-f]+")
# For API schemas (documentation; the checks below are what is enforced): uppercase is lowered.
DOC_PREFIX_PATTERN = f"^[0-9a-fA-F]{{{MIN_PREFIX},{DOC_ID_LENGTH}}}$"
JOB_ID_PATTERN = f"^[0-9a-fA-F]{{{JOB_ID_LENGTH}}}$"


class IdError(UserError, ValueError):
    """A typed id that cannot be one; the message says what an id looks like. A ValueError
    too, so pydantic validators turn it into a 422."""

    http_status = 422
    exit_code = 2  # bad command-line usage


def _shown(text: str) -> str:
    """`text` for a message, cut so a huge input does not make a huge message."""
    return repr(text if len(text) <= 70 else text[:70] + "...")


def is_hex(text: str, length: int | None = None) -> bool:
    """ASCII lowercase hex digits only (of exactly `length`, when given)."""
    return (
        text.isascii()
        and _HEX.fullmatch(text) is not None
        and (length is None or len(text) == length)
    )


def doc_prefix(text: str, *, min_length: int = MIN_PREFIX) -> str:
    """`text` as a document id or id prefix: lowercased, `min_length` to 64 hex digits;
    else `IdError`."""
    value = text.strip().lower()
    if not is_hex(value) or len(value) > DOC_ID_LENGTH:
        raise IdError(
            f"{_shown(text)} is not a document id: ids are hex digits (0-9, a-f), "
            f"{min_length} to {DOC_ID_LENGTH} of them; `pagerag docs list` shows them"
        )
    if len(value) < min_length:
        raise IdError(
            f"{_shown(text)} is too short: give at least {min_length} characters of the "
            "document id; `pagerag docs list` shows them"
        )
    return value


def job_id(text: str) -> str:
    """`text` as a job id (32 hex digits, lowercased); else `IdError`."""
    value = text.strip().lower()
    if not is_hex(value, JOB_ID_LENGTH):
        raise IdError(
            f"{_shown(text)} is not a job id: job ids are {JOB_ID_LENGTH} hex digits, as "
            "`POST /api/v1/documents` answered (`GET /api/v1/jobs` lists them)"
        )
    return value
