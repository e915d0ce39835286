"""The two sides of the `convert` benchmark that PyTorch does.

    python ckpt_torch.py make IN.safetensors OUT.ckpt   # a Lightning-style SD .ckpt
    python ckpt_torch.py convert IN.ckpt OUT.safetensors

`make` saves the state dict as SD's training code did: nested under `state_dict`, with
`epoch`, `global_step` and an optimizer-state entry, in torch's zip container. `convert` is
what users run today: `torch.load` (which unpickles, executing whatever the file names),
then `safetensors.torch.save_file` of the state dict.
"""

import sys

import torch
from safetensors.torch import load_file, save_file


def make(src, dst):
    sd = load_file(src)
    torch.save({"state_dict": sd, "epoch": 6, "global_step": 470000,
                "optimizer_states": [], "lr_schedulers": []}, dst)


def convert(src, dst):
    obj = torch.load(src, map_location="cpu", weights_only=False)
    sd = obj.get("state_dict", obj)
    sd = {k: v.contiguous() for k, v in sd.items() if isinstance(v, torch.Tensor)}
    save_file(sd, dst, metadata={"format": "pt"})


if __name__ == "__main__":
    {"make": make, "convert": convert}[sys.argv[1]](sys.argv[2], sys.argv[3])
