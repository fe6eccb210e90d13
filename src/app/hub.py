"""Hub ids on this machine: their snapshot in the Hugging Face cache, and why one that is not
there cannot be used (offline, gated, missing), asked before any run is made."""

from __future__ import annotations

import functools
from pathlib import Path


def looks_local(ref: str) -> bool:
    return ref.startswith(("/", ".", "~")) or Path(ref).expanduser().exists()


def local_snapshot(ref: str, cache_dir: str | None = None) -> Path | None:
    """A hub id's snapshot folder in the Hugging Face cache (``cache_dir`` or HF_HOME's), if
    its config.json is there; None otherwise (a local folder or an uncached id)."""
    if looks_local(ref) or ref.count("/") != 1:
        return None
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(ref, "config.json", cache_dir=cache_dir)
    return Path(found).parent if isinstance(found, str) else None


def local_folder(ref: str, cache_dir: str | None = None) -> Path:
    """Where a model ref's files are on this machine: the folder itself or its cached snapshot
    (the ref as a path where neither exists)."""
    return local_snapshot(ref, cache_dir) or Path(ref).expanduser()


@functools.lru_cache(maxsize=64)
def hub_problem(key: str, ref: str, cache_dir: str | None) -> str | None:
    """Why a hub id that is not in the local cache cannot be used from here: the hub cannot
    be reached (offline), it does not exist, or it is gated without a token; None if it can
    be downloaded. Asked once per process and id."""
    download = (f"download it where the hub is reachable (`hf download {ref} --local-dir DIR`) "
                f"and set {key}=DIR, or point model.cache_dir at a Hugging Face cache holding it")
    from huggingface_hub import HfApi, constants, errors, get_token

    if constants.HF_HUB_OFFLINE:
        return f"is not in the local Hugging Face cache and HF_HUB_OFFLINE is set; {download}"
    token_var = "HF_TOKEN (the token is never logged)"
    try:
        info = HfApi().model_info(ref, timeout=10)
        if info.gated and not get_token():
            return (f"is gated on the hub: accept its licence at https://huggingface.co/{ref} "
                    f"and set {token_var}")
        if info.gated:
            HfApi().auth_check(ref)
    except errors.GatedRepoError:
        return (f"is gated and this token has no access: accept its licence at "
                f"https://huggingface.co/{ref} with the token's account, or set another "
                f"{token_var}")
    except errors.RepositoryNotFoundError:
        return f"is not a model on the hub (or a private one: set {token_var})"
    except errors.HfHubHTTPError as e:
        return f"cannot be fetched from the hub ({str(e).splitlines()[0]}); {download}"
    except Exception as e:  # no route, DNS, timeouts: httpx's errors derive from Exception
        return (f"is not in the local Hugging Face cache and the hub cannot be reached "
                f"({type(e).__name__}); {download}")
    return None
