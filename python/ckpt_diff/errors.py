"""The exceptions ckpt-diff raises: one class per kind of failure, each carrying the
command line's message (``str(e)``) and, where it knows one, what to do about it
(``e.hint``, else ``None``).

Ctrl-C during a pass raises ``KeyboardInterrupt`` after the pass has stopped and its
temporary output is removed.
"""

from __future__ import annotations

from typing import Optional

__all__ = ["CkptDiffError", "BadInputError", "CkptIOError", "RefusedFormatError"]


class CkptDiffError(Exception):
    """Base class of ckpt-diff's errors."""

    hint: Optional[str] = None


class BadInputError(CkptDiffError, ValueError):
    """An argument, a recipe, or an input file's content is wrong (the command line's
    exit code 2 for usage and input errors): a damaged file, an unknown option value, a
    recipe that does not parse, an output that exists without ``force=True``."""


class CkptIOError(CkptDiffError, OSError):
    """Reading or writing a file failed: missing, unreadable, no space left."""


class RefusedFormatError(CkptDiffError):
    """The input is in a format ckpt-diff recognises and refuses to read rather than read
    wrongly (bitsandbytes 4-bit, nunchaku, quantization state no rule decodes)."""
