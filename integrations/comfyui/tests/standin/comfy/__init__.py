"""Stand-in for ComfyUI's ``comfy`` package: only ``model_management`` (the interrupt) and
``utils`` (the progress bar), the parts the ckpt-diff nodes use."""
