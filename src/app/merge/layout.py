"""Checkpoint tensor names ↔ the working model's parameter names, the one place they differ.

mergekit reads and writes a checkpoint's own tensor names (those of its
``model.safetensors.index.json``); transformers 5 loads some published layouts under other
module names. Gemma-3 4B/12B/27B are published as the multimodal
``Gemma3ForConditionalGeneration``: ``language_model.model.*``, ``vision_tower.vision_model.*``
and ``multi_modal_projector.*`` on disk, ``model.language_model.*``, ``model.vision_tower.*``
and ``model.multi_modal_projector.*`` once loaded (its head is tied to the embeddings). Text-only
layouts (Llama, Mistral, Qwen2, Gemma-2, Gemma-3 1B) load under their checkpoint names.

A model loaded from a published layout saves its names back with ``save_pretrained`` (a test
checks a saved merge against ``mergekit-yaml``'s, name for name); a model built from a config
does not (its vision tower loses ``vision_model.``), so stand-ins are written tensor by tensor
(``scripts/build_layouts.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Layout:
    """How one architecture's checkpoint names become parameter names, and which of its
    checkpoint tensors belong to towers other than the language model."""

    renames: tuple[tuple[str, str], ...] = ()  # (checkpoint prefix, parameter prefix), in order
    towers: tuple[str, ...] = ()  # checkpoint prefixes of the non-language towers

    def to_model(self, name: str) -> str:
        for disk, loaded in self.renames:
            if name.startswith(disk):
                return loaded + name[len(disk):]
        return name

    def to_checkpoint(self, name: str) -> str:
        for disk, loaded in self.renames:
            if name.startswith(loaded):
                return disk + name[len(loaded):]
        return name

    def is_tower(self, checkpoint_name: str) -> bool:
        """A vision tower's or projector's tensor (not evaluated by the language tasks)."""
        return checkpoint_name.startswith(self.towers)


LAYOUTS: dict[str, Layout] = {
    "Gemma3ForConditionalGeneration": Layout(
        renames=(("language_model.model.", "model.language_model."),
                 ("language_model.lm_head.", "lm_head."),
                 ("vision_tower.vision_model.", "model.vision_tower."),
                 ("multi_modal_projector.", "model.multi_modal_projector.")),
        towers=("vision_tower.", "multi_modal_projector."),
    ),
}
SAME = Layout()
VISION = ("merge", "it")  # model.vision: a multimodal pair's towers merged, or copied from IT


def layout_of(model: torch.nn.Module) -> Layout:
    """The layout of the working model's architecture (names unchanged where none is listed)."""
    return LAYOUTS.get(type(model).__name__, SAME)


def multimodal(architectures: list[str] | None) -> bool:
    return any(LAYOUTS.get(a, SAME).towers for a in architectures or [])


def checkpoint_names(model: torch.nn.Module) -> set[str]:
    """The checkpoint names a merge must write: every parameter's but a head tied to the
    embeddings (the checkpoint does not hold it)."""
    layout = layout_of(model)
    names = {layout.to_checkpoint(n) for n, _ in model.named_parameters()}
    if getattr(model.config, "tie_word_embeddings", False):
        names.discard(layout.to_checkpoint("lm_head.weight"))
    return names


def parameters(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The working model's parameters and buffers by checkpoint name."""
    layout = layout_of(model)
    found = dict(model.named_buffers())
    found.update(model.named_parameters())
    return {layout.to_checkpoint(n): t for n, t in found.items()}
