"""Stand-in for the progress bar of ComfyUI's ``comfy/utils.py``.

Mirrors ComfyUI 0.29.0 (Comfy-Org/ComfyUI, ``comfy/utils.py``, ``ProgressBar``):
``ProgressBar(total, node_id=None)`` takes the global hook set by
``set_progress_bar_global_hook`` when it is made; ``update_absolute(value, total=None,
preview=None)`` sets the total when given, clamps the value to it and calls
``hook(value, total, preview, node_id=...)``; ``update(n)`` adds. The real bar throttles
the hook (0.1 s and 0.5 % between calls, first and last always sent); this one calls it
every time, so a test sees every update. In ComfyUI the hook is main.py's
``hijack_progress``, which sends the progress to the browser and itself calls
``comfy.model_management.throw_exception_if_processing_interrupted()``.

Written for these tests, not copied: ComfyUI is GPL-3.0.
"""

from typing import Any, Callable, Optional

PROGRESS_BAR_HOOK: Optional[Callable[..., Any]] = None


def set_progress_bar_global_hook(function: Optional[Callable[..., Any]]) -> None:
    global PROGRESS_BAR_HOOK
    PROGRESS_BAR_HOOK = function


class ProgressBar:
    def __init__(self, total: int, node_id: Optional[str] = None) -> None:
        self.total = total
        self.current = 0
        self.hook = PROGRESS_BAR_HOOK
        self.node_id = node_id

    def update_absolute(self, value: int, total: Optional[int] = None, preview: Any = None) -> None:
        if total is not None:
            self.total = total
        if value > self.total:
            value = self.total
        self.current = value
        if self.hook is not None:
            self.hook(self.current, self.total, preview, node_id=self.node_id)

    def update(self, value: int) -> None:
        self.update_absolute(self.current + value)
