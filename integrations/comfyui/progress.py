"""ckpt-diff's progress callback bound to ComfyUI: the node's progress bar, and ComfyUI's
interrupt.

``ckpt_diff`` calls ``progress(what, done, total)`` on the calling thread (the thread
ComfyUI runs the node on) while a pass moves; an exception raised there stops the pass,
removes a merge's temporary file, and propagates out of the ``ckpt_diff`` call. So
interrupting is: ComfyUI's Cancel sets the flag of ``comfy.model_management``, the next
callback calls ``throw_exception_if_processing_interrupted()``, which clears the flag and
raises ``InterruptProcessingException``; ComfyUI's executor catches that and reports the
prompt as interrupted. (ComfyUI's own progress hook, main.py ``hijack_progress``, makes the
same check when a bar moves; the explicit call here does not depend on the bar's
throttling or on a hook being installed.)

A report can say ``done == total`` while a merge is still renaming its output into place,
so an interrupt landing then may find the output complete. :func:`removing_on_interrupt`
deletes an output the interrupted call created, so an interrupt always leaves no output.
"""

from __future__ import annotations

import contextlib
import os
from typing import Callable, Iterator, Optional

import comfy.model_management
import comfy.utils

__all__ = ["comfy_progress", "removing_on_interrupt"]


def comfy_progress(node_id: Optional[str] = None) -> Callable[[str, int, int], None]:
    """A ``progress=`` callback for :mod:`ckpt_diff` that moves a ``comfy.utils.ProgressBar``
    (one bar, restarted for each phase: hashing, reading, merging...) and raises ComfyUI's
    ``InterruptProcessingException`` when the user cancelled the prompt."""
    bar: Optional[comfy.utils.ProgressBar] = None
    phase: Optional[str] = None

    def progress(what: str, done: int, total: int) -> None:
        nonlocal bar, phase
        total = max(int(total), 1)
        if bar is None or what != phase:
            bar, phase = comfy.utils.ProgressBar(total, node_id=node_id), what
        bar.update_absolute(min(int(done), total), total)
        comfy.model_management.throw_exception_if_processing_interrupted()

    return progress


@contextlib.contextmanager
def removing_on_interrupt(path: str) -> Iterator[None]:
    """Runs the body; if ComfyUI's interrupt stops it, removes ``path`` when the body
    created or replaced it (its identity changed), then lets the exception go on."""
    before = _identity(path)
    try:
        yield
    except comfy.model_management.InterruptProcessingException:
        if _identity(path) not in (None, before):
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)
        raise


def _identity(path: str) -> Optional[tuple]:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size)
