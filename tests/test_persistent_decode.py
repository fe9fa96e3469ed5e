"""The persistent decode step (one kernel per batch-1 token) equals the fused step's torch ops, and
through a GraphDecoder the eager greedy tokens (tiny model, float32, run *stepped* by Triton's CPU
interpreter: one launch per phase, the same code the persistent launch runs between barriers; on
a GPU the same tests run the persistent launch with its grid barriers)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from envs.knob_space import KnobSpace
from model_runtime.molmoe.fused_lm import FusedLM
from model_runtime.molmoe.generation import greedy_generate
from model_runtime.molmoe.kernels.persistent_decode import (
    BLOCK_PHASES,
    FIELDS,
    PersistentDecodeStep,
    n_phases,
    resident_programs_per_sm,
)
from model_runtime.molmoe.language_model import MolmoeLanguageModel
from model_runtime.molmoe.static_decode import DECODE_IMPLS, GraphDecoder, StaticKVCache
from tests.kernel_testing import DEV, triton_ok
from tests.tiny_molmoe import left_padded_ids, prefilled_static_cache, tiny_config, tiny_olmoe_hf
from tests.tiny_molmoe import torch_single_thread  # noqa: F401  (autouse fixture)

CFG = tiny_config()
PAD = CFG.tokens.pad


@pytest.fixture(scope="module")
def lm() -> MolmoeLanguageModel:
    return MolmoeLanguageModel.from_hf(tiny_olmoe_hf(CFG, seed=2)).to(DEV)


def _plan(config: tuple) -> tuple[int, ...]:
    return KnobSpace().plan(config).top_k_per_block


def test_phase_count() -> None:
    assert BLOCK_PHASES == 6 and n_phases(16) == 98 and n_phases(12) == 74


def test_resident_programs_follow_registers_warps_and_shared_memory() -> None:
    """How many programs of a compiled kernel one SM holds at once (an H200's limits)."""
    h200 = SimpleNamespace(regs_per_multiprocessor=65536, max_threads_per_multi_processor=2048,
                           shared_memory_per_multiprocessor=233472)
    assert resident_programs_per_sm(128, 256, 4, h200) == 4  # 128 regs x 128 threads = 16K of 64K
    assert resident_programs_per_sm(170, 256, 4, h200) == 2  # 170 x 32 -> 5,632 per warp (units of 256), x 4 warps
    assert resident_programs_per_sm(255, 256, 8, h200) == 1
    assert resident_programs_per_sm(32, 0, 4, h200) == 16  # warps bound: 64 warps per SM / 4
    assert resident_programs_per_sm(32, 100_000, 4, h200) == 2  # shared memory bound


@triton_ok
@torch.no_grad()
def test_persistent_step_equals_the_fused_steps_torch_ops(lm):
    """Two decode tokens after a left-padded prompt (the position counts real tokens only), a
    plan with skipped blocks and top-5: logits, the written keys/values, the slot and the
    validity mask all equal the fused step's."""
    plan = _plan(("low", 2, 5, 13))
    ids, mask = left_padded_ids((10, 7), 4, PAD)
    ids, mask = ids[1:].to(DEV), mask[1:].to(DEV)  # the row with padding
    out = {}
    for kind in ("fused", "persistent"):
        fused = FusedLM(lm, backend="torch")
        cache, tok = prefilled_static_cache(lm, fused, plan, ids, mask)
        one = (PersistentDecodeStep(fused, cache, plan, num_programs=4, block_r=32, block_ri=16)  # 2 splits per head
               if kind == "persistent" else None)
        steps = []
        for _ in range(2):
            logits = one(tok) if one is not None else fused.decode_step(cache, tok, plan)
            steps.append(logits.clone())
            cache.position += 1
            tok = logits.argmax(-1)
        out[kind] = (torch.stack(steps), cache)
    (a, ca), (b, cb) = out["fused"], out["persistent"]
    assert a.shape == b.shape == (2, 1, lm.n_logits)
    assert (a - b).abs().max().item() <= 1e-5
    assert int(ca.slot) == int(cb.slot) == ids.shape[1] + 2 and torch.equal(ca.valid, cb.valid)
    for blk in ca.blocks:
        assert (ca.keys[blk] - cb.keys[blk]).abs().max().item() <= 1e-5
        assert (ca.values[blk] - cb.values[blk]).abs().max().item() <= 1e-5


@triton_ok
@torch.no_grad()
def test_greedy_generate_through_the_persistent_decoder_equals_eager(lm):
    plan = _plan(("low", 1, 4, 12))
    ids, mask = left_padded_ids((9,), 6, PAD)
    ids, mask = ids.to(DEV), mask.to(DEV)
    emb = lm.embed(ids)
    kw = dict(top_k_per_block=plan, p=1, eos_token_id=-1, pad_token_id=PAD, max_new_tokens=2)
    ref = greedy_generate(lm, emb, mask, **kw)
    lm.use_fast_path(backend="torch")  # the prefill's ops; the decode steps are the persistent kernel's
    try:
        opts = {"num_programs": 4, "block_r": 16, "block_ri": 16, "stages": 2}  # weight tiles staged (GPU)
        dec = GraphDecoder(lm, len_bucket=8, impl="persistent", persistent=opts)
        ours = greedy_generate(lm, emb, mask, **kw, decoder=dec)
    finally:
        lm.use_fast_path(False)
    assert ours.tokens == ref.tokens and ours.decode_steps == 1
    assert (ours.first_logits - ref.first_logits).abs().max().item() <= 1e-5


@triton_ok
def test_persistent_step_rejects_what_it_cannot_serve(lm):
    fused = FusedLM(lm, backend="torch")
    plan = _plan(("low", 1, 4, 12))
    two = StaticKVCache.for_plan(lm, plan, batch=2, max_len=8)
    with pytest.raises(ValueError, match="serves batch 1"):
        PersistentDecodeStep(fused, two, plan)
    one = StaticKVCache.for_plan(lm, plan, batch=1, max_len=8)
    step = PersistentDecodeStep(fused, one, plan, num_programs=2)
    first = one.blocks[0]  # the pointer table's row of the first active block, in FIELDS order
    assert step.table.shape == (len(one.blocks), len(FIELDS))
    assert int(step.table[0, FIELDS.index("k_cache")]) == one.keys[first].data_ptr()
    assert int(step.table[0, FIELDS.index("gate_up")]) == fused.blocks[first].gate_up.data_ptr()
    assert step.phases == n_phases(len(one.blocks)) and step.nbytes > 0
    with pytest.raises(ValueError, match="active blocks"):
        PersistentDecodeStep(fused, one, _plan(("low", 1, 4, 16)))
    if DEV == "cpu":
        with pytest.raises(ValueError, match="stepped=True"):
            PersistentDecodeStep(fused, one, plan, stepped=False)
    with pytest.raises(ValueError, match="tokens must be"):
        PersistentDecodeStep(fused, one, plan, tokens=torch.zeros(2, dtype=torch.long, device=DEV))
    with pytest.raises(ValueError, match="stages must be >= 1"):
        PersistentDecodeStep(fused, one, plan, stages=0)


def test_graph_decoder_names_its_impls(lm):
    assert DECODE_IMPLS == ("fused", "persistent", "static")
    with pytest.raises(ValueError, match="unknown decode impl 'megakernel'"):
        GraphDecoder(lm, impl="megakernel")
    with pytest.raises(ValueError, match="need impl='persistent'"):
        GraphDecoder(lm, persistent={"num_programs": 4, "block_r": 16, "block_ri": 16})
