"""Stand-in for the interrupt of ComfyUI's ``comfy/model_management.py``.

Mirrors ComfyUI 0.29.0 (Comfy-Org/ComfyUI, ``comfy/model_management.py``, the end of the
file): ``InterruptProcessingException`` derives from ``BaseException`` (so ``except
Exception`` does not swallow it); ``interrupt_current_processing(value=True)`` sets a flag
under a lock (the server's ``/interrupt`` route calls it); ``processing_interrupted()``
reads it; ``throw_exception_if_processing_interrupted()`` clears the flag and raises when
it was set. ComfyUI's executor (execution.py) catches the exception and reports the prompt
as interrupted. The device and memory management of the real module is left out.

Written for these tests, not copied: ComfyUI is GPL-3.0.
"""

import threading


class InterruptProcessingException(BaseException):
    pass


interrupt_processing_mutex = threading.RLock()
interrupt_processing = False


def interrupt_current_processing(value: bool = True) -> None:
    global interrupt_processing
    with interrupt_processing_mutex:
        interrupt_processing = value


def processing_interrupted() -> bool:
    with interrupt_processing_mutex:
        return interrupt_processing


def throw_exception_if_processing_interrupted() -> None:
    global interrupt_processing
    with interrupt_processing_mutex:
        if interrupt_processing:
            interrupt_processing = False
            raise InterruptProcessingException()
