"""Stand-in for ComfyUI's ``folder_paths`` module: the functions the ckpt-diff nodes call,
with ComfyUI's signatures and behaviour, over folders a test chooses.

Mirrors ``folder_paths.py`` of ComfyUI 0.29.0 (Comfy-Org/ComfyUI, the release tree read at
``target/ComfyUI``; the same functions in comfyanonymous/ComfyUI@00db33f6): a registry
``folder_names_and_paths[name] = ([folders], {extensions})``; ``get_folder_paths`` returns a
copy of the folder list (the first is the default, where ComfyUI's savers write);
``get_filename_list`` lists files under every folder of the name recursively, as paths
relative to their folder, filtered by extension (lower-cased) and sorted;
``get_full_path`` normalises the name against ``/`` (so ``..`` cannot leave the folder) and
returns the first folder's file that exists, else ``None``; ``get_full_path_or_raise``
raises ``FileNotFoundError`` instead. Left out: the mtime cache of the list, the legacy
folder names beyond those below, annotated paths, the input/output/user folders beyond
their getters.

Written for these tests, not copied: ComfyUI is GPL-3.0, ckpt-diff is MIT OR Apache-2.0.
"""

from __future__ import annotations

import os
from typing import Dict, List, Optional, Set, Tuple

supported_pt_extensions: Set[str] = {
    ".ckpt",
    ".pt",
    ".pt2",
    ".bin",
    ".pth",
    ".safetensors",
    ".pkl",
    ".sft",
}

folder_names_and_paths: Dict[str, Tuple[List[str], Set[str]]] = {}

base_path = ""
models_dir = ""
temp_directory = ""
output_directory = ""


def set_base_path(path: str) -> None:
    """Stand-in only: roots the registry at ``path`` (what ComfyUI's ``--base-directory``
    does): ``models/checkpoints``, ``models/loras``, ``temp``, ``output``."""
    global base_path, models_dir, temp_directory, output_directory
    base_path = os.path.abspath(path)
    models_dir = os.path.join(base_path, "models")
    temp_directory = os.path.join(base_path, "temp")
    output_directory = os.path.join(base_path, "output")
    folder_names_and_paths.clear()
    for name in ("checkpoints", "loras", "vae"):
        folder_names_and_paths[name] = (
            [os.path.join(models_dir, name)],
            supported_pt_extensions,
        )
    folder_names_and_paths["diffusion_models"] = (
        [os.path.join(models_dir, "unet"), os.path.join(models_dir, "diffusion_models")],
        supported_pt_extensions,
    )


def map_legacy(folder_name: str) -> str:
    return {"unet": "diffusion_models", "clip": "text_encoders"}.get(folder_name, folder_name)


def add_model_folder_path(
    folder_name: str, full_folder_path: str, is_default: bool = False
) -> None:
    folder_name = map_legacy(folder_name)
    if folder_name not in folder_names_and_paths:
        folder_names_and_paths[folder_name] = ([full_folder_path], set())
        return
    paths = folder_names_and_paths[folder_name][0]
    if full_folder_path in paths:
        if is_default:
            paths.remove(full_folder_path)
            paths.insert(0, full_folder_path)
    elif is_default:
        paths.insert(0, full_folder_path)
    else:
        paths.append(full_folder_path)


def get_folder_paths(folder_name: str) -> List[str]:
    return list(folder_names_and_paths[map_legacy(folder_name)][0])


def get_temp_directory() -> str:
    return temp_directory


def get_output_directory() -> str:
    return output_directory


def get_filename_list(folder_name: str) -> List[str]:
    folders, extensions = folder_names_and_paths[map_legacy(folder_name)]
    names: Set[str] = set()
    for folder in folders:
        if not os.path.isdir(folder):
            continue
        for dirpath, subdirs, files in os.walk(folder, followlinks=True):
            subdirs[:] = [d for d in subdirs if d != ".git"]
            for f in files:
                rel = os.path.relpath(os.path.join(dirpath, f), folder)
                if not extensions or os.path.splitext(rel)[1].lower() in extensions:
                    names.add(rel)
    return sorted(names)


def get_full_path(folder_name: str, filename: str) -> Optional[str]:
    folder_name = map_legacy(folder_name)
    if folder_name not in folder_names_and_paths:
        return None
    filename = os.path.relpath(os.path.join("/", filename), "/")
    for folder in folder_names_and_paths[folder_name][0]:
        path = os.path.join(folder, filename)
        if os.path.isfile(path):
            return path
    return None


def get_full_path_or_raise(folder_name: str, filename: str) -> str:
    path = get_full_path(folder_name, filename)
    if path is None:
        raise FileNotFoundError(
            f"Model in folder '{folder_name}' with filename '{filename}' not found."
        )
    return path
