"""The working model's merges: direct path where one applies, else mergekit's executor; saving."""


from __future__ import annotations

import json
import os
import shutil
import stat
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from app.errors import ConfigError
from app.merge.direct import DirectMerger
from app.merge.layout import checkpoint_names, layout_of, parameters
from app.merge.mergekit_adapter import merged_tensors
from app.merge.methods import METHODS
from app.merge.pool import PoolMerger


@dataclass
class MergeReport:
    tensors: int
    seconds: float
    engine: str = "mergekit"  # or "direct": computed from the parents themselves; "pool"
    stats_seconds: float = 0.0  # of which gathering an expert pool's data statistics


class Merger:
    """Writes merges into a working model; owns what its direct paths keep across λ."""

    def __init__(self, device: str = "cpu", seed: int | None = None,
                 trust_remote_code: bool = False, cache_dir: str | None = None,
                 towers_from: str | None = None, parents_on: str = "auto",
                 resident_share: float = 0.5):
        self.device, self.seed, self.trust_remote_code = device, seed, trust_remote_code
        self.cache_dir = cache_dir
        # model.vision=it: a multimodal pair's vision tower and projector are IT's, whatever λ
        self.towers_from = towers_from
        # where the parents are: merge.parents_on, merge.resident_share (MergeSettings)
        self.direct = DirectMerger(cache_dir, seed, parents_on, resident_share, device)
        self.pool = PoolMerger(self.direct, seed)  # the expert-pool methods mergekit lacks

    def merge_into(self, model: torch.nn.Module, mk: dict[str, Any]) -> MergeReport:
        """Overwrite every parameter of ``model`` with the merge described by ``mk``."""
        start = time.perf_counter()
        method = METHODS.get(str(mk.get("merge_method")))
        written = None
        if method is not None and method.pool:
            written, stats = self.pool.merge(model, mk, self.device)
            return MergeReport(written, time.perf_counter() - start, "pool", stats)
        if method is not None and method.direct is not None:
            written = self.direct.merge(model, mk, self.device, method.direct)
        engine = "mergekit" if written is None else "direct"
        if written is None:
            written = self._executor_merge(model, mk)
        if self.towers_from is not None:
            self._copy_towers(model)
        return MergeReport(written, time.perf_counter() - start, engine=engine)

    def _executor_merge(self, model: torch.nn.Module, mk: dict[str, Any]) -> int:
        """Every tensor from mergekit's executor, by its checkpoint name."""
        params = parameters(model)
        arch = type(model).__name__
        written_names: set[str] = set()
        with torch.no_grad():
            for name, tensor in merged_tensors(mk, self.device, self.seed,
                                               self.trust_remote_code, self.cache_dir):
                target = params.get(name)
                if target is None:
                    raise RuntimeError(f"merged tensor {name!r} has no parameter in the "
                                       f"working model ({arch}; its checkpoint names map to "
                                       f"parameters in app.merge.layout)")
                if target.shape != tensor.shape:
                    raise RuntimeError(f"merged tensor {name!r} has shape {tuple(tensor.shape)}"
                                       f", model expects {tuple(target.shape)}")
                target.copy_(tensor)
                written_names.add(name)
        missing = checkpoint_names(model) - written_names
        if missing:
            raise RuntimeError(f"merge left parameters unset: {sorted(missing)[:5]}")
        return len(written_names)

    def _copy_towers(self, model: torch.nn.Module) -> None:
        """IT's vision tower and projector into the working model (``model.vision=it``)."""
        from app.hub import local_folder

        layout = layout_of(model)
        source = self.direct.weights(local_folder(self.towers_from, self.cache_dir))
        params = parameters(model)
        with torch.no_grad():
            for name in source.where:
                if layout.is_tower(name):
                    params[name].copy_(source.tensor(name))
                    source.release(name)


def save_merged(model, tokenizer, mk: dict[str, Any], save_dir: str) -> Path:
    """Write the merged model so that a partial one never counts as complete: a new folder or a
    previous save (it holds ``SAVE_MARKER``; only such a folder is replaced) is written in a
    sibling folder and swapped in when complete; an empty folder or the working folder (never
    swapped away from under the user) in place, ``SAVE_MARKER`` last. Modes follow the umask."""
    from app.merge.methods import SAVE_MARKER, save_dir_problem

    final = Path(save_dir).expanduser().resolve()
    if problem := save_dir_problem(final):  # checked before the job; again in case it changed
        raise ConfigError(f"merge.save_dir={save_dir!r}: {problem}")
    if final.is_dir() and (final == Path.cwd() or not any(final.iterdir())):
        (final / SAVE_MARKER).unlink(missing_ok=True)  # first: from here it is no save
        _clear(final)  # a previous save: files only (save_dir_problem)
        try:
            _write_save(model, tokenizer, mk, final)
        except BaseException:
            _clear(final)
            raise
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.{uuid.uuid4().hex[:8]}")
    tmp.mkdir()  # not tempfile.mkdtemp: it makes 0700 whatever the umask
    try:
        _write_save(model, tokenizer, mk, tmp)
        if final.exists():  # replace a previous save only once the new one is complete
            old = final.with_name(f".{final.name}.old-{os.getpid()}")
            final.rename(old)
            tmp.rename(final)
            shutil.rmtree(old)
        else:
            tmp.rename(final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def _write_save(model, tokenizer, mk: dict[str, Any], folder: Path) -> None:
    """A save's files into ``folder``, ``SAVE_MARKER`` last, each with the mode the umask gives
    a new file (safetensors writes 0600 whatever it is)."""
    import yaml

    from app.merge.methods import SAVE_MARKER

    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    made = folder / "mergekit_config.yml"
    made.write_text(yaml.safe_dump(mk, sort_keys=False))
    mode = stat.S_IMODE(made.stat().st_mode)
    for p in folder.iterdir():
        p.chmod(mode)
    (folder / SAVE_MARKER).write_text(json.dumps({"merge": mk}, indent=1, default=str))


def _clear(folder: Path) -> None:
    """Remove what ``folder`` holds: a save's files, or a partial save's."""
    for p in folder.iterdir():
        p.unlink()


def merge_into(model: torch.nn.Module, mk: dict[str, Any], device: str = "cpu",
               seed: int | None = None, trust_remote_code: bool = False) -> MergeReport:
    """One merge with a fresh ``Merger`` (nothing kept for a next λ)."""
    return Merger(device, seed, trust_remote_code).merge_into(model, mk)


def merger_for(models, merge, seed: int, device: str) -> Merger:
    """The job's merger, with the model set's (an ``app.modelset.ModelSet``) and the merge's
    settings (the ``merge`` section)."""
    return Merger(device, seed, models.trust_remote_code, models.cache_dir,
                  towers_from=models.it if models.vision == "it" else None,
                  parents_on=merge.parents_on, resident_share=merge.resident_share)
