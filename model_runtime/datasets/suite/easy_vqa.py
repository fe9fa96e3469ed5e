"""easy-VQA: the one real (not procedural) task of the suite.

easy-VQA (Victor Zhou, MIT license, PyPI ``easy-vqa``) ships 64×64 PNGs of one colored shape
with templated questions ("what color is the shape?", "is there a triangle?") and 13 one-word
answers. It stands in for VQAv2-style short answers. Training examples come from its train
split; suite val/test come from its test split, divided by *image* (a seed-dependent half of
the test images each) so val and test share neither questions nor images, and neither shares
anything with train.

Train indices form an unbounded stream: epoch ``index // N`` visits all N train questions in
an order shuffled by (seed, epoch). Val/test are finite; an index past their end raises.
"""

from __future__ import annotations

import functools

import numpy as np
from PIL import Image

from .example import Example


@functools.lru_cache(maxsize=1)
def _train() -> tuple[list[str], list[str], list[int], dict[int, str]]:
    from easy_vqa import get_train_image_paths, get_train_questions

    q, a, ids = get_train_questions()
    return q, a, ids, get_train_image_paths()


@functools.lru_cache(maxsize=1)
def _test() -> tuple[list[str], list[str], list[int], dict[int, str]]:
    from easy_vqa import get_test_image_paths, get_test_questions

    q, a, ids = get_test_questions()
    return q, a, ids, get_test_image_paths()


@functools.lru_cache(maxsize=8)
def _eval_rows(split: str, seed: int) -> np.ndarray:
    """Question rows of easy-VQA's test split that form suite ``split`` (val or test)."""
    _, _, ids, _ = _test()
    ids_arr = np.asarray(ids)
    images = np.unique(ids_arr)
    perm = np.random.default_rng([seed, 0, 99]).permutation(images)
    half = set(perm[: len(perm) // 2].tolist()) if split == "val" else set(perm[len(perm) // 2:].tolist())
    rows = np.flatnonzero(np.isin(ids_arr, list(half)))
    return np.random.default_rng([seed, 0, 98, 1 if split == "val" else 2]).permutation(rows)


def split_size(split: str, seed: int = 0) -> int | None:
    """Number of distinct examples of a split (None for the unbounded train stream)."""
    return None if split == "train" else len(_eval_rows(split, seed))


def render(rng: np.random.Generator, *, split: str, index: int, seed: int) -> Example:
    """The ``index``-th easy-VQA example of ``split`` (``rng`` is unused: the data are real)."""
    if split == "train":
        q, a, ids, paths = _train()
        n = len(q)
        order = np.random.default_rng([seed, 0, 97, index // n]).permutation(n)
        row = int(order[index % n])
    else:
        q, a, ids, paths = _test()
        rows = _eval_rows(split, seed)
        if index >= len(rows):
            raise ValueError(f"easy_vqa split {split!r} has {len(rows)} examples; index {index} is past its end")
        row = int(rows[index])
    with Image.open(paths[ids[row]]) as im:
        image = np.asarray(im.convert("RGB"), dtype=np.uint8).copy()
    answer = a[row]
    kind = "yes/no" if answer in ("yes", "no") else ("shape" if answer in ("circle", "rectangle", "triangle") else "color")
    return Example(
        task="easy_vqa", image=image, question=q[row], answers=[answer], options=None,
        answer_idx=None,
        meta={"image_w": image.shape[1], "image_h": image.shape[0], "answer_kind": kind,
              "source_split": "train" if split == "train" else "test", "source_row": row,
              "source_image_id": int(ids[row])},
    )
