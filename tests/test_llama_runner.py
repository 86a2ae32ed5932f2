"""LlamaRunner: slot KV cache + Llama forward equal to transformers, alone and batched."""

from __future__ import annotations

import pytest
import torch

import pipecat_localtts.engine.llama as llama
from pipecat_localtts.engine.kv_cache import SlotKVCache
from pipecat_localtts.engine.llama import LlamaRunner
from pipecat_localtts.testing import LLAMA3_ROPE, tiny_llama

# GQA (4 query heads on 2 kv heads) and Llama-3.2 rope scaling, like SHAPES["small"] but tiny
# (and a small vocabulary: the runner does not care, and full logits stay cheap).
SMALL = dict(
    vocab_size=512,
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    **LLAMA3_ROPE,
)
MAX_LEN = 48
TOL = dict(atol=1e-4, rtol=1e-4)


def small_llama(seed: int = 0, **overrides):
    return tiny_llama(seed, **{**SMALL, **overrides})


def sequence(seed: int, n: int) -> list[int]:
    return torch.randint(0, SMALL["vocab_size"], (n,), generator=torch.Generator().manual_seed(seed)).tolist()


@torch.inference_mode()
def reference_logits(model, ids: list[int]) -> torch.Tensor:
    """transformers' own forward of the whole sequence: [n, V]."""
    return model(input_ids=torch.tensor([ids])).logits[0]


def run_alone(runner: LlamaRunner, slot: int, ids: list[int], n_prompt: int) -> torch.Tensor:
    """Prefill ``ids[:n_prompt]`` then decode the rest one by one: logits [len - n_prompt + 1, V]."""
    out = [runner.logits(runner.prefill(slot, ids[:n_prompt]))]
    for token in ids[n_prompt:]:
        out.append(runner.logits(runner.decode([slot], torch.tensor([token])))[0])
    return torch.stack(out)


@pytest.fixture(scope="module")
def model():
    return small_llama()


# ---------------------------------------------------------------------------- one slot


@pytest.mark.parametrize("attend_block", [8, MAX_LEN])
def test_prefill_then_decode_equals_the_transformers_forward(model, attend_block):
    ids = sequence(0, 30)
    runner = LlamaRunner(model, n_slots=2, max_len=MAX_LEN, attend_block=attend_block)
    torch.testing.assert_close(run_alone(runner, 1, ids, 9), reference_logits(model, ids)[8:], **TOL)
    assert runner.length(1) == 30 and runner.length(0) == 0


def test_chunked_prefill_equals_one_prefill(model):
    ids = sequence(1, 20)
    runner = LlamaRunner(model, n_slots=1, max_len=MAX_LEN)
    runner.prefill(0, ids[:7])
    runner.prefill(0, ids[7:15], start=7)
    hidden = runner.prefill(0, ids[15:], start=15)
    torch.testing.assert_close(runner.logits(hidden), reference_logits(model, ids)[-1], **TOL)


@pytest.mark.parametrize(
    "rope",
    [
        dict(rope_theta=10000.0),
        dict(rope_scaling={"rope_type": "linear", "factor": 2.0}),
        dict(rope_scaling={"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16}),
    ],
    ids=["default", "linear", "yarn"],
)
def test_other_rope_types_match_transformers(rope):
    base = {k: v for k, v in SMALL.items() if k not in LLAMA3_ROPE}
    model = tiny_llama(2, **base, **rope)
    ids = sequence(2, 24)
    runner = LlamaRunner(model, n_slots=1, max_len=MAX_LEN)
    torch.testing.assert_close(run_alone(runner, 0, ids, 5), reference_logits(model, ids)[4:], **TOL)


def test_untied_head_with_attention_and_mlp_biases_matches_transformers():
    model = small_llama(3, tie_word_embeddings=False, attention_bias=True, mlp_bias=True)
    with torch.no_grad():  # random init leaves biases at zero: make them count
        for name, param in model.named_parameters():
            if name.endswith("bias"):
                param.normal_(0.0, 0.5)
    assert model.lm_head.weight.data_ptr() != model.model.embed_tokens.weight.data_ptr()
    ids = sequence(3, 16)
    runner = LlamaRunner(model, n_slots=1, max_len=MAX_LEN)
    assert runner.head_weight.data_ptr() == model.lm_head.weight.data_ptr()  # a view, not a copy
    torch.testing.assert_close(run_alone(runner, 0, ids, 6), reference_logits(model, ids)[5:], **TOL)


@pytest.mark.parametrize(
    "overrides, feature",
    [
        (dict(hidden_act="gelu"), "hidden_act"),
        (dict(rope_scaling={"rope_type": "dynamic", "factor": 2.0}), "rope_type 'dynamic'"),
    ],
)
def test_unimplemented_config_is_refused_by_name(overrides, feature):
    base = {k: v for k, v in SMALL.items() if k not in LLAMA3_ROPE}
    with pytest.raises(ValueError, match=feature):
        LlamaRunner(tiny_llama(0, **base, **overrides), n_slots=1, max_len=MAX_LEN)


def test_non_llama_model_and_sliding_window_are_refused(model):
    from transformers import MistralConfig, MistralForCausalLM

    mistral = MistralForCausalLM(MistralConfig(**SMALL, sliding_window=None))
    with pytest.raises(ValueError, match="model_type 'llama' or 'qwen2' only, not 'mistral'"):
        LlamaRunner(mistral, n_slots=1, max_len=MAX_LEN)
    model.config.sliding_window = 16
    try:
        with pytest.raises(ValueError, match="sliding-window"):
            LlamaRunner(model, n_slots=1, max_len=MAX_LEN)
    finally:
        del model.config.sliding_window


def qwen2(seed: int = 4, **overrides):
    """A small random ``Qwen2ForCausalLM`` (NeuTTS's backbone) with its q/k/v biases nonzero."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    base = {k: v for k, v in SMALL.items() if k not in LLAMA3_ROPE}
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(Qwen2Config(**{**base, "rope_theta": 1_000_000.0, **overrides})).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("bias"):
                param.normal_(0.0, 0.5)
    return model


def test_qwen2_matches_transformers_alone_and_batched():
    model = qwen2()
    assert model.model.layers[0].self_attn.q_proj.bias is not None
    ids = {0: sequence(40, 20), 1: sequence(41, 13)}
    runner = LlamaRunner(model, n_slots=2, max_len=MAX_LEN)
    torch.testing.assert_close(run_alone(runner, 0, ids[0], 7), reference_logits(model, ids[0])[6:], **TOL)
    # Two rows at different positions in one batched step.
    runner.prefill(1, ids[1][:12])
    both = runner.logits(runner.decode([0, 1], torch.tensor([5, ids[1][12]])))
    torch.testing.assert_close(both[0], reference_logits(model, ids[0] + [5])[-1], **TOL)
    torch.testing.assert_close(both[1], reference_logits(model, ids[1])[-1], **TOL)


def test_qwen2_with_sliding_window_is_refused():
    with pytest.raises(ValueError, match="sliding-window"):
        LlamaRunner(qwen2(use_sliding_window=True, sliding_window=16, max_window_layers=0), n_slots=1, max_len=MAX_LEN)


# ---------------------------------------------------------------------------- batched


def test_batched_rows_at_different_positions_equal_each_row_alone(model):
    # Slot 2 stays free inside the range (scatter path); slots 0, 1, 3 have prompts of
    # different lengths and join the batch at different steps.
    prompts = {0: sequence(10, 5), 1: sequence(11, 12), 3: sequence(13, 8)}
    extra = {0: sequence(20, 14), 1: sequence(21, 6), 3: sequence(23, 10)}
    starts = {0: 0, 1: 4, 3: 2}  # the step at which each slot joins the batch
    runner = LlamaRunner(model, n_slots=4, max_len=MAX_LEN, attend_block=8)
    got = {s: [runner.logits(runner.prefill(s, p))] for s, p in prompts.items()}
    for step in range(max(starts[s] + len(extra[s]) for s in prompts)):
        rows = [s for s in prompts if starts[s] <= step < starts[s] + len(extra[s])]
        tokens = torch.tensor([extra[s][step - starts[s]] for s in rows])
        logits = runner.logits(runner.decode(rows, tokens))
        for row, s in enumerate(rows):
            got[s].append(logits[row])
    for s in prompts:
        full = prompts[s] + extra[s]
        alone = run_alone(LlamaRunner(model, n_slots=1, max_len=MAX_LEN), 0, full, len(prompts[s]))
        torch.testing.assert_close(torch.stack(got[s]), alone, **TOL)
        torch.testing.assert_close(alone, reference_logits(model, full)[len(prompts[s]) - 1 :], **TOL)
        assert runner.length(s) == len(full)


def test_batch_order_does_not_matter(model):
    runner = LlamaRunner(model, n_slots=3, max_len=MAX_LEN)
    for s in range(3):
        runner.prefill(s, sequence(30 + s, 4 + 3 * s))
    tokens = torch.tensor([7, 8, 9])
    hidden = runner.decode(torch.tensor([2, 0, 1]), tokens)  # a tensor of slots works too
    again = LlamaRunner(model, n_slots=3, max_len=MAX_LEN)
    for s in range(3):
        again.prefill(s, sequence(30 + s, 4 + 3 * s))
    torch.testing.assert_close(hidden, again.decode([0, 1, 2], torch.tensor([8, 9, 7]))[[2, 0, 1]], **TOL)


def test_decode_refuses_repeated_slots_and_a_full_cache(model):
    runner = LlamaRunner(model, n_slots=2, max_len=8)
    runner.prefill(0, sequence(4, 8))
    runner.prefill(1, sequence(5, 2))
    with pytest.raises(ValueError, match="full"):
        runner.decode([0, 1], torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="repeated"):
        runner.decode([1, 1], torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="cannot prefill"):
        runner.prefill(1, sequence(6, 7), start=2)
    assert (runner.length(0), runner.length(1)) == (8, 2)


# ---------------------------------------------------------------------------- slot reuse and failure


def test_a_reused_slot_ignores_its_stale_cache(model):
    runner = LlamaRunner(model, n_slots=2, max_len=MAX_LEN, attend_block=MAX_LEN)
    run_alone(runner, 1, sequence(40, 40), 20)  # fills slot 1 far past the next prompt
    k_before = runner.cache.k.clone()
    runner.free(1)
    assert runner.length(1) == 0 and torch.equal(runner.cache.k, k_before)  # bookkeeping only
    ids = sequence(41, 15)
    fresh = run_alone(LlamaRunner(model, n_slots=2, max_len=MAX_LEN), 1, ids, 6)
    torch.testing.assert_close(run_alone(runner, 1, ids, 6), fresh, **TOL)


def test_a_prefill_that_fails_part_way_leaves_the_slot_empty_and_others_intact(model, monkeypatch):
    ids_other, ids_next = sequence(50, 10), sequence(51, 9)
    runner = LlamaRunner(model, n_slots=2, max_len=MAX_LEN)
    runner.prefill(0, ids_other)
    runner.prefill(1, sequence(52, 20))  # slot 1 had a longer sequence before
    calls = {"n": 0}
    real_mlp = llama._mlp

    def mlp_failing_once_in_layer_1(x, p):
        if p is runner.layers[1]:
            calls["n"] += 1
            if calls["n"] == 1:
                raise RuntimeError("boom")
        return real_mlp(x, p)

    monkeypatch.setattr(llama, "_mlp", mlp_failing_once_in_layer_1)
    with pytest.raises(RuntimeError, match="boom"):
        runner.prefill(1, sequence(53, 30))  # layer 0 already wrote its keys when layer 1 fails
    assert runner.length(1) == 0 and runner.length(0) == len(ids_other)

    fresh = LlamaRunner(model, n_slots=2, max_len=MAX_LEN)
    fresh.prefill(0, ids_other)
    torch.testing.assert_close(runner.prefill(1, ids_next), fresh.prefill(1, ids_next), **TOL)
    tokens = torch.tensor([3, 4])
    torch.testing.assert_close(runner.decode([0, 1], tokens), fresh.decode([0, 1], tokens), **TOL)


# ---------------------------------------------------------------------------- the cache itself


def test_cache_writes_land_at_each_rows_own_position():
    cache = SlotKVCache(1, 3, 2, 6, 4)
    cache.write(0, 1, 0, torch.ones(2, 3, 4), 2 * torch.ones(2, 3, 4))
    slots, positions = torch.tensor([2, 1]), torch.tensor([4, 3])
    k = torch.arange(2 * 2 * 4, dtype=torch.float32).view(2, 2, 4)
    cache.write_rows(0, cache.row_index(slots, positions), k, -k)
    assert torch.equal(cache.k[0, 2, :, 4], k[0]) and torch.equal(cache.v[0, 1, :, 3], -k[1])
    assert torch.equal(cache.k[0, 1, :, :3], torch.ones(2, 3, 4))
    assert cache.k[0, 0].abs().sum() == 0 and cache.k[0, 2, :, :4].abs().sum() == 0
    cache.lengths[:] = [0, 3, 4]
    cache.advance([2, 1])
    assert cache.lengths_tensor(1).tolist() == [4, 5]
    k_view, _ = cache.view(0, 1, 3, 5)
    assert k_view.shape == (2, 2, 5, 4) and k_view.data_ptr() == cache.k[0, 1].data_ptr()


def test_bf16_runner_stays_close_to_the_transformers_bf16_forward():
    model = small_llama(4).to(torch.bfloat16)
    ids = sequence(4, 20)
    runner = LlamaRunner(model, n_slots=2, max_len=MAX_LEN)
    assert runner.cache.k.dtype == torch.bfloat16
    ours, ref = run_alone(runner, 1, ids, 8).float(), reference_logits(model, ids)[7:].float()
    torch.testing.assert_close(ours, ref, atol=5e-2, rtol=5e-2)


# ---------------------------------------------------------------------------- the output layer


class ScaledHead(torch.nn.Linear):
    """An output layer that is a Linear by ``isinstance`` but scales its logits."""

    def forward(self, x):
        return super().forward(x) * 0.5


def test_an_output_layer_that_is_a_linear_subclass_is_refused_by_name():
    model = small_llama(5, tie_word_embeddings=False)
    head = ScaledHead(SMALL["hidden_size"], SMALL["vocab_size"], bias=False)
    head.weight = model.lm_head.weight
    model.lm_head = head
    assert isinstance(model.get_output_embeddings(), torch.nn.Linear)
    with pytest.raises(ValueError, match="exactly torch.nn.Linear, not .*ScaledHead"):
        LlamaRunner(model, n_slots=1, max_len=MAX_LEN)
    with pytest.raises(ValueError, match="ScaledHead"):
        llama.check_head(model)


@pytest.mark.parametrize(
    "name, value",
    [("final_logit_softcapping", 30.0), ("logit_scale", 0.0625), ("logits_scaling", 8.0),
     ("output_multiplier_scale", 0.5)],
)
def test_logit_softcapping_or_scaling_in_the_config_is_refused_by_name(name, value):
    model = small_llama(6, **{name: value})
    assert getattr(model.config, name) == value
    with pytest.raises(ValueError, match=f"logit scaling or softcapping.*{name}={value}"):
        LlamaRunner(model, n_slots=1, max_len=MAX_LEN)


def test_neutral_logit_settings_and_the_tiny_orpheus_model_pass_both_checks():
    from pipecat_localtts.testing import tiny_orpheus

    model = small_llama(7, final_logit_softcapping=None, logit_scale=1.0, logits_scaling=1)
    assert llama.check_head(model) is model.lm_head
    runner = LlamaRunner(model, n_slots=2, max_len=MAX_LEN)
    assert runner.check_logits(model, sequence(7, 10), slot=1) < 1e-4
    assert runner.length(0) == runner.length(1) == 0  # the checks leave every slot empty
    lm = tiny_orpheus(seed=0).lm
    assert LlamaRunner(lm, n_slots=1, max_len=64).check_logits(lm, [128259, 65, 128257]) < 1e-4


def test_logits_the_model_computes_otherwise_fail_the_numeric_check_loudly(model):
    # A plain nn.Linear (the structural check passes) whose output a hook changes, as a
    # model with extra logit processing would: the runner must refuse, not fall back.
    runner = LlamaRunner(model, n_slots=2, max_len=MAX_LEN)
    handle = model.lm_head.register_forward_hook(lambda module, inputs, output: output * 2.0 + 0.5)
    try:
        with pytest.raises(ValueError, match="differ from the model's own forward"):
            runner.check_logits(model, sequence(8, 6))
        with pytest.raises(ValueError, match="differ from the model's own forward"):
            LlamaRunner(model, n_slots=1, max_len=MAX_LEN)
    finally:
        handle.remove()
    assert runner.length(0) == 0
    runner.prefill(0, sequence(9, 3))
    with pytest.raises(ValueError, match="empty slot"):
        runner.check_logits(model, sequence(8, 6), slot=0)


def test_the_numeric_check_is_loose_enough_for_bf16():
    model = small_llama(4).to(torch.bfloat16)
    ids = sequence(10, 12)
    runner = LlamaRunner(model, n_slots=1, max_len=MAX_LEN)  # checked at construction
    diff = runner.check_logits(model, ids)
    reference = reference_logits(model, ids)[-1].float()
    assert 0 < diff <= llama.logits_tolerance(reference) / 4  # bf16 rounding, far inside


# ---------------------------------------------------------------------------- static (CUDA graph) steps


def test_padded_bucket_steps_equal_the_dynamic_step(model):
    """The fixed-shape steps a CUDA graph replays (run eagerly here) pad each step up to its
    bucket; rows with holes between them, joins and a reused slot all give the same logits."""
    dynamic = LlamaRunner(model, n_slots=5, max_len=MAX_LEN, attend_block=8)
    static = LlamaRunner(model, n_slots=5, max_len=MAX_LEN, attend_block=8)
    assert static.capture(buckets=(1, 2, 4), cuda_graphs=False)
    assert static.static_buckets == (1, 2, 4, 5) and not static.cuda_graphs
    for runner in (dynamic, static):
        for s in (0, 2, 3):
            runner.prefill(s, sequence(40 + s, 3 + s))
    schedule = [[0], [2], [0, 2], [3], [0, 2, 3], [2, 3], "free 0", "prefill 0", [0, 3], [0, 2, 3]]
    for i, rows in enumerate(schedule):
        if rows == "free 0":
            dynamic.free(0)
            static.free(0)
            continue
        if rows == "prefill 0":  # a slot that served as padding takes a new sequence
            ids = sequence(50, 6)
            torch.testing.assert_close(static.prefill(0, ids), dynamic.prefill(0, ids), **TOL)
            continue
        tokens = torch.tensor([(7 * i + r) % SMALL["vocab_size"] for r in rows])
        torch.testing.assert_close(static.decode(rows, tokens), dynamic.decode(rows, tokens), **TOL)
        assert static.cache.lengths == dynamic.cache.lengths  # padding rows were not advanced


def test_a_failed_graph_capture_logs_a_warning_and_decodes_eagerly(model):
    from loguru import logger

    messages: list[str] = []
    sink = logger.add(lambda m: messages.append(str(m)), level="WARNING")
    try:
        runner = LlamaRunner(model, n_slots=2, max_len=MAX_LEN)
        assert not runner.capture(cuda_graphs=True)  # no CUDA here: the capture fails
    finally:
        logger.remove(sink)
    assert any("CUDA graph capture failed" in m for m in messages)
    assert runner.static_buckets == () and runner.cache.lengths == [0, 0]
    ids = sequence(60, 5)
    alone = run_alone(runner, 1, ids, 3)
    torch.testing.assert_close(alone, reference_logits(model, ids)[2:], **TOL)
    runner.prefill(0, ids)
    with pytest.raises(RuntimeError, match="empty cache"):
        runner.capture(cuda_graphs=False)


def test_prompts_prefilled_together_equal_each_prefilled_alone(model):
    prompts = {0: sequence(70, 5), 2: sequence(71, 11), 3: sequence(72, 1)}
    together = LlamaRunner(model, n_slots=4, max_len=MAX_LEN)
    hidden = together.prefill_many(list(prompts), list(prompts.values()))
    alone = LlamaRunner(model, n_slots=4, max_len=MAX_LEN)
    for row, (slot, ids) in enumerate(prompts.items()):
        torch.testing.assert_close(hidden[row], alone.prefill(slot, ids), **TOL)
        assert together.length(slot) == len(ids)
    # Their caches hold the same sequences: the next batched step agrees too.
    tokens = torch.tensor([3, 4, 5])
    torch.testing.assert_close(
        together.decode(list(prompts), tokens), alone.decode(list(prompts), tokens), **TOL
    )
    with pytest.raises(ValueError, match="distinct slots"):
        together.prefill_many([1, 1], [[1], [2]])
