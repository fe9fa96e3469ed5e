"""Where the training-only heads read the tower, and the hooks that keep what they read.

Both auxiliary losses of the trainer (:mod:`.word_presence`, :mod:`.print_supervision`) read the
tokens of one or both sites: ``stem``, the patch stem's tokens (before any normalisation; a
conv, hybrid or fine stem, since CLIP's linear patch embedding has no module of its own), and
``tokens``, the image tokens the language model receives (the connector's output). A
:class:`SiteTap` validates the sites, knows each one's module and width, and keeps each
module's output of the last forward pass.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

from model_runtime.molmoe.model import MolmoeModel

SITES: tuple[str, ...] = ("stem", "tokens")


class SiteTap:
    """Forward hooks on ``model``'s modules of ``sites``; ``outputs[site]`` is the last output.

    Args:
        model: the model being trained.
        sites: a non-empty subset of :data:`SITES`.
        what: the loss's name, for the error messages.

    Raises:
        ValueError: an unknown or empty site list, or site ``stem`` on a linear patch stem.
    """

    def __init__(self, model: MolmoeModel, sites: Sequence[str], what: str) -> None:
        unknown = [s for s in sites if s not in SITES]
        if unknown or not sites:
            raise ValueError(f"{what} sites {list(sites)}: expected one or more of {', '.join(SITES)}")
        modules: dict[str, nn.Module] = {}
        self.widths: dict[str, int] = {}
        if "stem" in sites:
            if model.vision.patch_stem is None:
                raise ValueError(f"{what} site 'stem' needs vit_patch_stem 'conv', 'hybrid' or 'fine' (the linear "
                                 "patch embedding has no module of its own)")
            modules["stem"], self.widths["stem"] = model.vision.patch_stem, model.config.vit_hidden
        if "tokens" in sites:
            modules["tokens"], self.widths["tokens"] = model.connector, model.config.d_model
        self.sites = tuple(modules)
        self.outputs: dict[str, torch.Tensor] = {}
        self._handles = [m.register_forward_hook(self._hook(s)) for s, m in modules.items()]

    def _hook(self, site: str) -> Any:
        def hook(module: Any, inputs: Any, output: torch.Tensor) -> None:
            self.outputs[site] = output
        return hook

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
