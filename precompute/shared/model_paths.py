"""Tell a model path that does not exist from a Hugging Face hub name, before loading."""

from __future__ import annotations

from pathlib import Path

__all__ = ["require_folder_or_hub_name"]


def require_folder_or_hub_name(label: str, name: str) -> None:
    """Refuse ``name`` when it can only be a local path (``./x``, ``/x``, ``~/x``, ``a/b/c``)
    and is not a folder: FileNotFoundError ``LABEL NAME: no such folder``.

    Anything else may be a hub name (``roberta-large``, ``FacebookAI/roberta-large``) and is
    left to ``from_pretrained``, whose own error for a missing path is about repo ids.
    """
    path = Path(name).expanduser()
    looks_like_path = name.startswith((".", "/", "~")) or len(path.parts) > 2
    if looks_like_path and not path.is_dir():
        raise FileNotFoundError(f"{label} {name}: no such folder")
