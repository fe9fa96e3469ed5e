"""The vision tower + connector replayed from one CUDA graph per crop count.

At batch 1 the CLIP tower (23 layers) and the connector are launch-bound on a GPU: eagerly
their time follows the host and varies from run to run, captured it is linear in the crops
(figures: benchmarks/RESULTS.md, "The fast path"). A captured graph per crop count removes the
host from the timing (the fast path's vision stage).

:class:`VisionGraphs` wraps ``MolmoeModel.image_features``: a crop count seen for the first time
runs eagerly (``capture_after``), the next time it is captured and replayed from then on; at
most ``max_graphs`` graphs are kept (LRU). On CPU it runs eagerly.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import torch

from .static_decode import CaptureFn, cuda_graph_capture, eager_capture

if TYPE_CHECKING:  # pragma: no cover
    from .model import MolmoeModel


@dataclass
class _VisionGraph:
    patches: torch.Tensor  # (N, n_patches, patch²·3) input buffer
    masks: torch.Tensor  # (N, n_patches) input buffer
    replay: Callable[[], torch.Tensor]  # → (N, tokens_per_crop, D) output buffer
    graph_bytes: int


class VisionGraphs:
    """``image_features`` per crop count from captured graphs.

    Args:
        model: the MolmoE model (its ``image_features`` is what is captured).
        max_graphs: graphs kept (LRU by crop count).
        capture: capture function (default: CUDA graphs on CUDA, eager elsewhere).
        capture_after: eager calls of a crop count before it is captured.
    """

    def __init__(self, model: "MolmoeModel", *, max_graphs: int = 16, capture: CaptureFn | None = None,
                 capture_after: int = 1) -> None:
        if max_graphs < 1 or capture_after < 0:
            raise ValueError(f"max_graphs must be >= 1 and capture_after >= 0, got {max_graphs}, {capture_after}")
        self.model = model
        self.max_graphs, self.capture_after = int(max_graphs), int(capture_after)
        self.capture = capture if capture is not None else (
            cuda_graph_capture if model.device.type == "cuda" else eager_capture)
        self._graphs: OrderedDict[tuple[int, ...], _VisionGraph] = OrderedDict()
        self._seen: dict[tuple[int, ...], int] = {}
        self.captures = 0

    @torch.no_grad()
    def __call__(self, patches: torch.Tensor, image_masks: torch.Tensor) -> torch.Tensor:
        """(N, n_patches, patch²·3) crops, (N, n_patches) masks → (N, tokens_per_crop, d_model)
        (a view of the graph's output buffer when replayed: the next call of this crop count
        overwrites it)."""
        key = tuple(patches.shape)
        graph = self._graphs.get(key)
        if graph is None:
            seen = self._seen.get(key, 0)
            if seen < self.capture_after:
                self._seen[key] = seen + 1
                return self.model.image_features(patches, image_masks)
            graph = self._build(patches, image_masks)
        self._graphs.move_to_end(key)
        graph.patches.copy_(patches)
        graph.masks.copy_(image_masks)
        return graph.replay()

    def _build(self, patches: torch.Tensor, image_masks: torch.Tensor) -> _VisionGraph:
        while len(self._graphs) >= self.max_graphs:
            self._graphs.popitem(last=False)
        buf_p, buf_m = patches.clone(), image_masks.clone()
        model = self.model
        replay, held = self.capture(lambda: model.image_features(buf_p, buf_m))
        graph = _VisionGraph(buf_p, buf_m, replay, int(held))
        self._graphs[tuple(patches.shape)] = graph
        self.captures += 1
        return graph

    def memory_report(self) -> list[dict[str, object]]:
        """Per kept graph (least recently used first): crop count and bytes held."""
        return [{"crops": k[0], "graph_bytes": g.graph_bytes,
                 "buffer_bytes": g.patches.numel() * g.patches.element_size() + g.masks.numel() * g.masks.element_size()}
                for k, g in self._graphs.items()]
