"""The probe group's schema and its checks (no model, no torch, no scikit-learn needed).

``probe=none`` probes nothing. ``toy`` probes the shipped toy tasks (``data_dir: null``);
``holmes`` and ``flash`` the Holmes and FlashHolmes datasets in their published layout
(``app.probe.data``), unpacked at ``data_dir``. ``validate`` reads the data folder's listing and
every chosen file whole (``check_files``), never a model; given the model's layer count it also
checks ``layers``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, List, Optional

from app.errors import ConfigError, suggest

NAMES = ("none", "toy", "holmes", "flash")
REPRESENTATIONS = ("mean", "last")  # mean-pooled over the attention mask | the last token


@dataclass
class ProbeConfig:
    """Linear probes on the working model's hidden states, one per probing task."""

    name: str = "none"  # none | toy | holmes | flash
    # <data_dir>/<phenomenon>/<task>.jsonl, or Holmes' <data_dir>/<dataset>/samples.csv;
    # null: the toy tasks
    data_dir: Optional[str] = None
    # Holmes only: the CSV mapping each dataset to its subfield (null: the leaderboard table
    # beside the data, <data_dir>/../leaderboards/<data_dir name>.csv)
    phenomena: Optional[str] = None
    tasks: List[str] = field(default_factory=list)  # task or phenomenon names; empty: all
    # "last" | "all" | [ints]: hidden-state indices, 0 the embeddings, -1 the last layer; the
    # metrics are read at the deepest one, every one's accuracy goes to per_layer
    layers: Any = "last"
    representation: str = "mean"  # mean: tokens mean-pooled | last: the last token
    # the logistic regression's inverse L2 strengths tried, chosen by cross-validation
    C_grid: List[float] = field(default_factory=lambda: [0.01, 0.1, 1.0, 10.0])
    seed: int = 0  # the split, the control labels and the classifier
    test_share: float = 0.2  # of each task's distinct inputs
    validation_share: float = 0.2  # of the rest, to choose C
    batch_size: int = 32  # inputs per forward pass
    max_examples: Optional[int] = None  # per task: a seeded N of its rows (quick runs)


def resolve_layers(layers: Any, n_layers: int | None = None) -> list[int]:
    """``layers`` as sorted hidden-state indices (0 = embeddings, ``n_layers`` = the last
    layer's output); without ``n_layers`` negative indices stay as written."""
    if layers == "last":
        return [n_layers] if n_layers is not None else [-1]
    if layers == "all":
        if n_layers is None:
            raise ValueError("layers='all' needs the model's layer count")
        return list(range(n_layers + 1))
    items = [layers] if _is_int(layers) else list(layers)
    if n_layers is None:
        return sorted(set(items))
    return sorted({i + n_layers + 1 if i < 0 else i for i in items})


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_layers(layers: Any, n_layers: int | None) -> None:
    usage = "use last, all, or a list of layer indices such as [0, -1]"
    if isinstance(layers, str):
        if layers not in ("last", "all"):
            raise ConfigError(f"probe.layers={layers!r} is not valid"
                              f"{suggest(layers, ['last', 'all'])}; {usage}")
        return
    try:
        items = [layers] if _is_int(layers) else list(layers)
    except TypeError:
        raise ConfigError(f"probe.layers={layers!r} is not valid; {usage}") from None
    if not items or not all(_is_int(i) for i in items):
        raise ConfigError(f"probe.layers={list(items)!r} is not valid; {usage}")
    if n_layers is not None:
        for i in items:
            if not -(n_layers + 1) <= i <= n_layers:
                raise ConfigError(
                    f"probe.layers: {i} is outside the model, which has hidden states 0 "
                    f"(embeddings) to {n_layers} (last layer); valid: {-(n_layers + 1)} to "
                    f"{n_layers}")


def validate(probe, n_layers: int | None = None) -> None:
    """Checks of the probe settings and its data, every row; ``n_layers``: the model's
    ``num_hidden_layers``, where known, to check ``layers``."""
    from app.probe.data import check_files

    if probe.name not in NAMES:
        raise ConfigError(f"probe.name={probe.name!r} is not a probe set"
                          f"{suggest(str(probe.name), list(NAMES))}; valid: {', '.join(NAMES)}")
    if probe.name == "none":
        return
    if probe.representation not in REPRESENTATIONS:
        raise ConfigError(f"probe.representation={probe.representation!r} is not valid"
                          f"{suggest(str(probe.representation), list(REPRESENTATIONS))}; use "
                          f"mean (tokens mean-pooled) or last (the last token)")
    _check_layers(probe.layers, n_layers)
    for key in ("test_share", "validation_share"):
        share = getattr(probe, key)
        if not isinstance(share, (int, float)) or not 0 < share < 1:
            raise ConfigError(f"probe.{key}={share!r} must be a share in (0, 1), e.g. 0.2")
    grid = list(probe.C_grid)
    if not grid or not all(isinstance(c, (int, float)) and c > 0 for c in grid):
        raise ConfigError(f"probe.C_grid={grid!r} must be a non-empty list of positive numbers "
                          f"(inverse regularisation strengths), e.g. [0.01, 0.1, 1, 10]")
    for key, value, low in (("seed", probe.seed, 0), ("batch_size", probe.batch_size, 1),
                            ("max_examples", probe.max_examples, 10)):
        if value is not None and (not _is_int(value) or value < low):
            raise ConfigError(f"probe.{key}={value!r} must be an integer ≥ {low}")
    check_files(probe)


def fingerprint_part(probe) -> dict | None:
    """What about the probes determines a job's results: their settings and each data file's
    content (None with ``probe=none``: fingerprints as they were before probes existed)."""
    if probe.name == "none":
        return None
    from omegaconf import OmegaConf

    from app.probe.data import file_digest, select

    return {**OmegaConf.to_container(probe, resolve=True),
            "data": {t: file_digest(path) for t, _, path in select(probe)}}
