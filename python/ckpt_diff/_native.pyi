"""The extension module: the command line run in this process."""

from typing import Any, Callable, Optional, Sequence, Tuple, Union
import os

__version__: str

def call(
    args: Sequence[Union[str, os.PathLike[str]]],
    progress: Optional[Callable[[str, int, int], Any]] = None,
) -> Tuple[list[Any], int]:
    """Runs a command line (without the program name) and returns ``(documents,
    exit_code)``: the documents ``--json`` prints, as Python objects. The GIL is released
    while it runs; ``progress(what, done, total)`` is called on this thread when the
    progress moved (at most every 50 ms); Ctrl-C stops the pass and raises
    ``KeyboardInterrupt``. Failures raise ``ckpt_diff.errors`` exceptions."""

def main(argv: Sequence[Union[str, os.PathLike[str]]]) -> int:
    """The command line as the binary runs it (``argv[0]`` is the program name): prints,
    returns the exit code (130 after Ctrl-C)."""
