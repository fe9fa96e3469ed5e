"""``experiments.evaluate --policies``: checkpoint names, so that two checkpoints of one agent are
two rows of results.csv, not one silently merged."""

from __future__ import annotations

import pytest

from experiments.evaluate import check_policy_names, split_label


def test_checkpoint_labels() -> None:
    assert split_label("grpo:runs/a/policy") == ("grpo", "grpo:runs/a/policy")
    assert split_label("annealed=grpo:runs/a_s{seed}/policy") == ("annealed", "grpo:runs/a_s{seed}/policy")
    # '=' inside the folder is part of the folder
    assert split_label("grpo:runs/lr=1e-3/policy") == ("grpo", "grpo:runs/lr=1e-3/policy")
    check_policy_names(["static", "oracle", "a=grpo:x", "b=grpo:y", "grpo:z"])


@pytest.mark.parametrize("policies, match", [
    (["grpo:x", "grpo:y"], "would both be reported as 'grpo'"),
    (["static", "static=grpo:x"], "is a baseline's name"),
    (["a=grpo:x", "a=linucb:y"], "would both be reported as 'a'"),
    (["=grpo:x"], "bad checkpoint spec"),
    (["a=nope:x"], "bad checkpoint spec"),
    (["nope"], "unknown policy"),
])
def test_bad_policy_lists_are_refused(policies, match) -> None:
    with pytest.raises(ValueError, match=match):
        check_policy_names(policies)
