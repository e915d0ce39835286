"""Stand-in for ComfyUI's ``server`` module: ``PromptServer.instance`` and the one method
the ckpt-diff nodes call on it.

Mirrors ComfyUI 0.29.0 (Comfy-Org/ComfyUI, ``server.py``): ``PromptServer.__init__`` sets
the class attribute ``instance``; ``send_progress_text(text, node_id, sid=None)`` sends the
text to the browser, which shows it on the node ``node_id``. This one records
``(node_id, text)`` in ``messages`` instead.

Written for these tests, not copied: ComfyUI is GPL-3.0.
"""

from typing import List, Optional, Tuple, Union


class PromptServer:
    instance: Optional["PromptServer"] = None

    def __init__(self) -> None:
        PromptServer.instance = self
        self.messages: List[Tuple[str, str]] = []

    def send_progress_text(
        self, text: Union[bytes, bytearray, str], node_id: str, sid: Optional[str] = None
    ) -> None:
        if isinstance(text, (bytes, bytearray)):
            text = bytes(text).decode("utf-8")
        self.messages.append((str(node_id), text))
