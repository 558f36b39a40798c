"""The Hugging Face Hub as checkpoint transport: offline rules, pulling a checkpoint repo into the cache,
publishing one. huggingface_hub is imported only when it is used.
"""

from __future__ import annotations

import os
from pathlib import Path

from .checkpoint import CHECKPOINT_FILES, WEIGHTS_NAME, load_checkpoint_dir

__all__ = ["OfflineError", "is_offline", "pull_hf_hub", "push_to_hf_hub"]


class OfflineError(FileNotFoundError):
    """Offline mode is on and the file is not where the cache would hold it."""


def is_offline() -> bool:
    """Offline mode, read at call time: HF_HUB_OFFLINE=1 or BLOCKSWAP_ZOO_OFFLINE=1."""
    return any(
        os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on")
        for v in ("HF_HUB_OFFLINE", "BLOCKSWAP_ZOO_OFFLINE")
    )


def pull_hf_hub(repo_id: str, revision: str | None = None, cache_dir: str | Path | None = None) -> Path:
    """Download (or, offline, find in the cache) a checkpoint repo from the Hugging Face Hub."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.constants import HF_HUB_CACHE
    from huggingface_hub.errors import LocalEntryNotFoundError

    offline = is_offline()
    try:
        path = snapshot_download(
            repo_id,
            revision=revision,
            cache_dir=cache_dir,
            allow_patterns=list(CHECKPOINT_FILES),
            local_files_only=offline,
        )
    except LocalEntryNotFoundError:
        root = Path(cache_dir or HF_HUB_CACHE) / f"models--{repo_id.replace('/', '--')}"
        if not offline:  # online, but the Hub did not answer
            raise OfflineError(
                f"cannot reach the Hugging Face Hub for {repo_id}@{revision or 'main'}, and it is not in the cache "
                f"under {root}; check the network, or set HF_HUB_OFFLINE=1 once the cache holds it"
            ) from None
        raise OfflineError(
            f"offline mode: {repo_id}@{revision or 'main'} is not in the Hugging Face cache; expected it under "
            f"{root} (snapshots/<commit>/{WEIGHTS_NAME}, with refs/{revision or 'main'} holding <commit>, as "
            f"huggingface_hub lays it out). Download it once online (`blockswap-zoo download "
            f"hf-hub:{repo_id}`) or unset HF_HUB_OFFLINE / BLOCKSWAP_ZOO_OFFLINE"
        ) from None
    return Path(path)


def push_to_hf_hub(directory: str | Path, repo_id: str, private: bool = False, token: str | None = None) -> str:
    """Create the Hub repo (if needed) and upload a checkpoint directory; returns the commit id."""
    from huggingface_hub import HfApi

    directory = Path(directory)
    load_checkpoint_dir(directory)  # only a checkpoint that loads, sha256-verified, is published
    if is_offline():
        raise OfflineError("offline mode is on (HF_HUB_OFFLINE / BLOCKSWAP_ZOO_OFFLINE): cannot publish")
    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    info = api.upload_folder(
        repo_id=repo_id,
        folder_path=str(directory),
        allow_patterns=list(CHECKPOINT_FILES),  # the checkpoint's own files, nothing else in the folder
        commit_message="Upload blockswap-zoo checkpoint",
    )
    return info.oid
