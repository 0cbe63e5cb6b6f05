"""Model tests: HF transformers is the oracle for the architecture and weight loading; a full
uncached forward is the oracle for the KV cache; generating one prompt alone is the oracle for
batched generation."""

import json
import os

import pytest
import torch

from model import (PRESETS, KVCache, ModelConfig, Qwen2, config_from_hf, config_from_preset, load_checkpoint,
                   load_hf, save_checkpoint)
from rollout import filter_logits, generate
from conftest import DEVICES

try:
    import transformers  # a dev requirement (.ci/run installs it): the oracle of the HF tests only
except ImportError:
    transformers = None


def hf_oracle():
    """Skip a test whose oracle is HF transformers when it is not installed (the engine tests,
    whose oracles are our own slow paths, run without it)."""
    if transformers is None:
        pytest.skip("needs transformers, the HF oracle (pip install -r requirements-dev.txt)")


def tiny_hf_model(tmp_path, tie=True, shard=False, seed=0):
    """A random HF Qwen2ForCausalLM saved with save_pretrained; returns (hf_model, directory)."""
    hf_oracle()
    torch.manual_seed(seed)
    cfg = transformers.Qwen2Config(
        vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        rope_theta=10000.0, rms_norm_eps=1e-6, tie_word_embeddings=tie)
    hf = transformers.Qwen2ForCausalLM(cfg).eval()
    with torch.no_grad():  # HF zero-inits biases and keeps RMSNorm gains at 1: perturb them so they count
        for name, p in hf.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.add_(torch.randn_like(p) * 0.1)
    directory = tmp_path / ("hf-tied" if tie else "hf-untied")
    hf.save_pretrained(directory, safe_serialization=True, max_shard_size="50KB" if shard else "5GB")
    return hf, str(directory)


@pytest.mark.parametrize("tie,shard", [(True, False), (False, False), (True, True)])
def test_load_hf_matches_transformers_logits(tmp_path, tie, shard):
    hf, directory = tiny_hf_model(tmp_path, tie=tie, shard=shard)
    if shard:
        assert os.path.exists(os.path.join(directory, "model.safetensors.index.json"))
    model = load_hf(directory).eval()
    assert (model.lm_head.weight is model.model.embed_tokens.weight) == tie
    idx = torch.randint(0, 97, (3, 40), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = model(idx)
        theirs = hf(idx).logits
    assert (ours - theirs).abs().max().item() < 1e-4


def test_hf_state_dict_loads_strict_with_hf_names(tmp_path):
    hf, _ = tiny_hf_model(tmp_path, tie=False)
    model = Qwen2(ModelConfig(vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                              tie_word_embeddings=False))
    model.load_state_dict(hf.state_dict(), strict=True)  # same names, same shapes


def test_load_hf_shape_mismatch_names_the_key(tmp_path):
    _, directory = tiny_hf_model(tmp_path)
    with open(os.path.join(directory, "config.json")) as f:
        cfg = json.load(f)
    cfg["intermediate_size"] = 128  # the file's MLP weights are 96 wide
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump(cfg, f)
    with pytest.raises(ValueError, match=r"model\.layers\.0\.mlp\.gate_proj\.weight.*\(96, 64\).*\(128, 64\)"):
        load_hf(directory)


def test_load_hf_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_hf(str(tmp_path))


def edit_config(directory, **changes):
    """Rewrite directory/config.json with `changes` (a value of None deletes the key)."""
    path = os.path.join(directory, "config.json")
    with open(path) as f:
        cfg = json.load(f)
    for key, value in changes.items():
        if value is None:
            cfg.pop(key, None)
        else:
            cfg[key] = value
    with open(path, "w") as f:
        json.dump(cfg, f)


def test_config_without_a_tie_field_is_untied_as_in_hf(tmp_path):
    _, directory = tiny_hf_model(tmp_path, tie=False)
    edit_config(directory, tie_word_embeddings=None)  # an older or hand-written config.json
    hf = transformers.Qwen2ForCausalLM.from_pretrained(directory).eval()  # the oracle reads it back
    model = load_hf(directory).eval()
    assert model.config.tie_word_embeddings is hf.config.tie_word_embeddings is False
    idx = torch.randint(0, 97, (2, 20), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert (model(idx) - hf(idx).logits).abs().max().item() < 1e-4


@pytest.mark.parametrize("changes,named", [
    (dict(rope_parameters={"rope_type": "yarn", "factor": 4.0, "rope_theta": 10000.0}), "rope_parameters"),
    (dict(rope_scaling={"type": "linear", "factor": 2.0}), "rope_scaling"),
    (dict(use_sliding_window=True, sliding_window=64, max_window_layers=1), "sliding-window"),
    (dict(layer_types=["full_attention", "sliding_attention"], sliding_window=64), "sliding-window"),
])
def test_attention_variants_we_do_not_implement_are_refused(tmp_path, changes, named):
    _, directory = tiny_hf_model(tmp_path)
    edit_config(directory, **changes)
    with pytest.raises(ValueError, match=named):
        load_hf(directory)


def test_a_sliding_window_as_long_as_the_positions_is_full_attention(tmp_path):
    _, directory = tiny_hf_model(tmp_path)
    edit_config(directory, use_sliding_window=True, sliding_window=256)  # = max_position_embeddings
    load_hf(directory)


def test_rotary_tables_equal_hf_bit_for_bit_at_long_positions():
    # at position 12K one float32 ulp in a frequency moves the logits by ~1e-2: the tables must be equal
    hf_oracle()
    from transformers.models.qwen2.modeling_qwen2 import Qwen2RotaryEmbedding
    from model import rotary_cos_sin
    cfg = transformers.Qwen2Config(hidden_size=1792, num_attention_heads=14, rope_theta=1e6,
                                   max_position_embeddings=32768)  # head_dim 128, Qwen2.5's theta
    positions = torch.arange(0, 32768, 7)[None]  # (1, T)
    cos, sin = Qwen2RotaryEmbedding(cfg)(torch.zeros(1), positions)
    ours_cos, ours_sin = rotary_cos_sin(positions, 128, 1e6, torch.float32)
    assert torch.equal(ours_cos, cos) and torch.equal(ours_sin, sin)


def test_qwen_05b_geometry_parameter_count():
    with torch.device("meta"):
        model = Qwen2(config_from_preset("qwen-ish-0.5b"))
    # Qwen2.5-0.5B: 494.0M parameters, 136.1M of them the (tied) embedding
    assert round(model.num_parameters() / 1e6, 1) == 494.0
    assert round(model.model.embed_tokens.weight.numel() / 1e6, 1) == 136.1
    assert "lm_head.weight" in model.state_dict()  # tied: same tensor under both HF names


def test_unknown_preset_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown model preset 'huge'.*tiny"):
        config_from_preset("huge")


def test_tiny_preset_size():
    with torch.device("meta"):
        model = Qwen2(config_from_preset("tiny", vocab_size=2048))
    assert 0.7e6 < model.num_parameters() < 1.5e6
    assert set(PRESETS) >= {"tiny", "small", "qwen-ish-0.5b", "qwen-ish-1.5b", "qwen-ish-7b"}


def test_init_std_is_the_configs_initializer_range():
    """Weights are drawn from normal(0, initializer_range) (HF Qwen2Config's field, 0.02 by default);
    biases start at zero. 2048 x 128 and 128 x 384 weights estimate the std to well within 2%."""
    for config, std in ((ModelConfig(), 0.02), (config_from_preset("tiny", initializer_range=0.05), 0.05)):
        torch.manual_seed(0)
        model = Qwen2(config)
        for weight in (model.model.embed_tokens.weight, model.model.layers[0].mlp.down_proj.weight):
            assert abs(weight.std().item() / std - 1) < 0.02 and abs(weight.mean().item()) < std / 50
        assert torch.count_nonzero(model.model.layers[0].self_attn.q_proj.bias) == 0


def tiny_model(seed=0, vocab=101):
    torch.manual_seed(seed)
    return Qwen2(ModelConfig(vocab_size=vocab, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                             num_key_value_heads=2, intermediate_size=128, max_position_embeddings=128)).eval()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("whole_cache", [False, True])
def test_cached_decoding_matches_full_forward_ragged_batch(device, whole_cache):
    """whole_cache: every decode step attends over all 40 slots (the CUDA-graph decoder's static
    shape), the slots no row has written yet holding garbage: the mask must hide them exactly."""
    model = tiny_model().to(device)
    atol = 1e-5 if device == "cpu" else 1e-4  # GPU kernels differ between cached and uncached shapes
    g = torch.Generator().manual_seed(0)
    seqs = [torch.randint(0, 101, (n,), generator=g).to(device) for n in (30, 17, 24)]  # full sequences
    prompt_lens = [9, 3, 14]  # each row is prefilled with its own prompt length, then decoded
    B, T = len(seqs), max(prompt_lens)
    idx = torch.zeros(B, T, dtype=torch.long, device=device)
    for b, n in enumerate(prompt_lens):
        idx[b, :n] = seqs[b][:n]
    cache = model.new_cache(B, 40)
    if whole_cache:
        cache.k.normal_(), cache.v.normal_()
    with torch.no_grad():
        lengths = torch.tensor(prompt_lens, device=device)
        prefill = model(idx, cache=cache, logits_index=lengths - 1)  # (B, V)
        ref = [model(s[None])[0] for s in seqs]  # each row alone, uncached: (n, V)
        for b in range(B):
            assert torch.allclose(prefill[b], ref[b][prompt_lens[b] - 1], atol=atol)
        steps = min(len(s) - n for s, n in zip(seqs, prompt_lens))
        for step in range(steps):
            tok = torch.stack([seqs[b][prompt_lens[b] + step] for b in range(B)])[:, None]  # (B, 1)
            pos = (lengths + step)[:, None]
            out = model(tok, cache=cache, positions=pos, kv_len=40 if whole_cache else T + step + 1)[:, -1]
            for b in range(B):
                assert torch.allclose(out[b], ref[b][prompt_lens[b] + step], atol=atol), (b, step)


def test_kv_cache_is_written_in_place():
    model = tiny_model()
    cache = model.new_cache(2, 16)
    ptr = cache.k.data_ptr()
    k = torch.randn(2, 2, 3, 16)  # (B, Hkv, T, D)
    cache.write(1, torch.tensor([[0, 1, 2], [5, 6, 7]]), k, k * 2)
    assert cache.k.data_ptr() == ptr
    assert torch.equal(cache.k[1, 1, :, 5:8], k[1])  # row 1's tokens sit in its own slots 5..7
    assert torch.equal(cache.v[1, 0, :, 0:3], 2 * k[0])
    assert cache.k[1, 1, :, :5].abs().sum() == 0  # nothing else was touched
    with pytest.raises(ValueError, match="maximum positions"):
        KVCache(model.config, 1, 1000)
    with pytest.raises(ValueError, match="17 tokens do not fit a cache of 16 slots"):  # a prefill too long
        model(torch.zeros(2, 17, dtype=torch.long), cache=cache)


def test_copy_rows_fans_out_a_prefill():
    model = tiny_model()
    cache = KVCache(model.config, 4, 6)
    cache.k[:, 0, :, :3], cache.k[:, 1, :, :3] = 1.0, 2.0  # two prefilled rows, slots 0..2
    cache.v[:, 0, :, :3], cache.v[:, 1, :, :3] = -1.0, -2.0
    cache.k[:, :, :, 3:] = 9.0  # beyond `upto`: must stay as it was
    cache.copy_rows([1, 0, 1, 1], upto=3)
    for row, want in enumerate([2.0, 1.0, 2.0, 2.0]):
        assert (cache.k[:, row, :, :3] == want).all() and (cache.v[:, row, :, :3] == -want).all()
    assert (cache.k[:, :, :, 3:] == 9.0).all()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_shared_prefill_equals_a_prefill_per_row(device, temperature):
    """A GRPO batch repeats prompts: the engine prefills each distinct one once and copies it to its
    rows. Oracle: the same call prefilling every row; same seed, so the same draws and tokens."""
    model = tiny_model(seed=2).to(device)
    g = torch.Generator().manual_seed(0)
    a, b, c = (torch.randint(1, 101, (n,), generator=g).tolist() for n in (7, 3, 12))
    prompts = [a, b, a, a, c, b, a, c]  # ragged, interleaved repeats
    kwargs = dict(max_new_tokens=[9, 4, 9, 9, 2, 6, 9, 9], temperature=temperature, seed=3)
    shared = generate(model, prompts, share_prefill=True, **kwargs)
    each = generate(model, prompts, share_prefill=False, **kwargs)
    for s, e in zip(shared, each):
        assert s.tokens == e.tokens and s.stop_reason == e.stop_reason
        assert s.logprobs == pytest.approx(e.logprobs, abs=1e-5 if device == "cpu" else 1e-4)
    if temperature > 0:  # rows sharing a prefill still draw their own tokens
        assert len({tuple(shared[i].tokens) for i in (0, 2, 3, 6)}) > 1


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_cuda_graph_decoding_equals_eager(temperature):
    """The graph replays the eager step over the whole cache: same seed, same tokens, same log-probs."""
    model = tiny_model(seed=4).to("cuda")
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(1, 101, (n,), generator=g).tolist() for n in (6, 15, 2, 6)]
    kwargs = dict(max_new_tokens=[20, 7, 20, 13], temperature=temperature, seed=5, stop_ids=[3])
    eager = generate(model, prompts, **kwargs)
    graph = generate(model, prompts, cuda_graph=True, **kwargs)
    for e, c in zip(eager, graph):
        assert c.tokens == e.tokens and c.stop_reason == e.stop_reason
        assert c.logprobs == pytest.approx(e.logprobs, abs=1e-4)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_cuda_graph_decoding_on_a_second_gpu_equals_eager():
    """A model on cuda:1 while cuda:0 is current: the graph must be captured on the model's device
    (captured on the current one it records none of the model's kernels and replays stale logits)."""
    assert torch.cuda.current_device() == 0
    model = tiny_model(seed=4).to("cuda:1")
    prompts = [[5, 9, 2, 7], [11, 3]]
    kwargs = dict(max_new_tokens=12, temperature=1.0, seed=5)
    eager = generate(model, prompts, **kwargs)
    graph = generate(model, prompts, cuda_graph=True, **kwargs)
    for e, c in zip(eager, graph):
        assert c.tokens == e.tokens and c.logprobs == pytest.approx(e.logprobs, abs=1e-4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_graph_decoding_under_autocast_scores_like_a_fresh_forward():
    """train.py's mixed precision: fp32 weights, bf16 autocast, captured with the cast cache off.
    Oracle: each row's prompt + reply scored in one uncached forward under the same autocast."""
    model = tiny_model(seed=6).to("cuda")
    prompts = [[3, 4, 5, 6, 7], [9, 8], [1, 2, 3, 4, 5, 6, 7, 8]]
    with torch.autocast("cuda", dtype=torch.bfloat16):
        gens = generate(model, prompts, max_new_tokens=12, temperature=1.0, seed=0, cuda_graph=True)
        for p, gen in zip(prompts, gens):
            with torch.no_grad():
                logp = torch.log_softmax(model(torch.tensor([p + gen.tokens], device="cuda"))[0].float(), dim=-1)
            expected = [logp[len(p) - 1 + i, t].item() for i, t in enumerate(gen.tokens)]
            assert gen.logprobs == pytest.approx(expected, abs=3e-2)


@pytest.mark.parametrize("device", DEVICES)
def test_training_and_prefill_attention_run_on_the_flash_kernel(device):
    """The paper recipe's flash attention: under bf16 autocast (train.py's mixed precision) the causal
    attention of training (with activation checkpointing), scoring and prefill must be eligible for
    SDPA's FlashAttention kernel; with only that backend allowed, SDPA raises instead of falling back
    to another (on CUDA; the CPU's flash kernel takes masks too, so there this only runs the path).

    Oracle: the same computations in float32 on the math kernel. The flash run must be as close to
    it as the bf16 math kernel is (twice its relative error, plus 0.01). The init std of 0.1 (not
    0.02) makes the outputs depend on attention. Measured on CPU, the relative errors of both bf16
    kernels are 0.0001-0.0002 (loss), 0.014 (gradients), 0.009-0.010 (last logits) and 0.006
    (cache keys); a flash path that attended non-causally or scaled by 1/D instead of 1/sqrt(D)
    was off by 0.014-1.1."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    torch.manual_seed(2)
    model = Qwen2(ModelConfig(vocab_size=101, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                              num_key_value_heads=2, intermediate_size=128, max_position_embeddings=128,
                              initializer_range=0.1)).to(device).train()
    model.gradient_checkpointing = True
    idx = torch.randint(1, 101, (3, 40), generator=torch.Generator().manual_seed(0)).to(device)

    def run(backend, bf16=True):
        model.zero_grad()
        with sdpa_kernel([backend]), torch.autocast(device, dtype=torch.bfloat16, enabled=bf16):
            logits = model(idx[:, :-1])  # (B, T, V)
            loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), idx[:, 1:].flatten())
            loss.backward()  # (inside: the checkpointed blocks recompute on the same kernel)
            with torch.no_grad():
                cache = model.new_cache(3, 48)
                last = model(idx, cache=cache, logits_index=torch.full((3,), 39, device=device))  # (B, V)
        grads = torch.cat([p.grad.flatten() for p in model.parameters()])
        return loss.detach().reshape(1), grads, last.float(), cache.k.float()

    reference = run(SDPBackend.MATH, bf16=False)
    flash, math = run(SDPBackend.FLASH_ATTENTION), run(SDPBackend.MATH)
    for name, f, m, r in zip(("loss", "gradients", "last logits", "cache keys"), flash, math, reference):
        error_flash, error_math = ((f - r).norm() / r.norm()).item(), ((m - r).norm() / r.norm()).item()
        assert error_flash <= 2 * error_math + 0.01, (name, error_flash, error_math)


def test_cuda_graph_needs_a_cuda_model():
    with pytest.raises(ValueError, match="cuda_graph=True needs a model on a CUDA device"):
        generate(tiny_model(), [[1, 2]], max_new_tokens=3, cuda_graph=True)


def test_batched_greedy_equals_one_at_a_time():
    model = tiny_model(seed=3)
    g = torch.Generator().manual_seed(5)
    prompts = [torch.randint(1, 101, (n,), generator=g).tolist() for n in (5, 19, 1, 11)]
    batched = generate(model, prompts, max_new_tokens=12, temperature=0)
    for p, gen in zip(prompts, batched):
        alone = generate(model, [p], max_new_tokens=12, temperature=0)[0]
        assert gen.tokens == alone.tokens
        assert gen.logprobs == pytest.approx(alone.logprobs, abs=1e-5)


@pytest.mark.parametrize("device", DEVICES)
def test_generate_logprobs_match_a_fresh_forward(device):
    model = tiny_model(seed=1).to(device)
    prompts = [[3, 4, 5, 6, 7], [9, 8], [1, 2, 3, 4, 5, 6, 7, 8]]
    gens = generate(model, prompts, max_new_tokens=10, temperature=1.0, seed=0)
    for p, gen in zip(prompts, gens):
        full = torch.tensor([p + gen.tokens], device=device)
        with torch.no_grad():
            logp = torch.log_softmax(model(full)[0], dim=-1)  # (T, V)
        expected = [logp[len(p) - 1 + i, t].item() for i, t in enumerate(gen.tokens)]
        assert gen.logprobs == pytest.approx(expected, abs=1e-5 if device == "cpu" else 1e-4)


def test_logprobs_are_under_the_tempered_distribution_the_tokens_came_from():
    model = tiny_model(seed=1)
    prompts = [[3, 4, 5], [9, 8, 7, 6]]
    for temperature in (0.5, 1.7):
        gens = generate(model, prompts, max_new_tokens=8, temperature=temperature, seed=0)
        for p, gen in zip(prompts, gens):
            with torch.no_grad():
                logits = model(torch.tensor([p + gen.tokens]))[0]  # (T, V)
            logp = torch.log_softmax(logits / temperature, dim=-1)
            expected = [logp[len(p) - 1 + i, t].item() for i, t in enumerate(gen.tokens)]
            assert gen.logprobs == pytest.approx(expected, abs=1e-5)
    greedy = generate(model, prompts[:1], max_new_tokens=4, temperature=0)[0]  # greedy: temperature 1
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([prompts[0] + greedy.tokens]))[0], dim=-1)
    assert greedy.logprobs == pytest.approx([logp[2 + i, t].item() for i, t in enumerate(greedy.tokens)], abs=1e-5)


def test_generate_without_a_seed_leaves_the_global_rng_alone():
    model = tiny_model(seed=1)
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    generate(model, [[1, 2]], max_new_tokens=3, temperature=1.0)
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.parametrize("prompts, kwargs, message", [
    ([[1, 2, 101]], {}, r"integers in \[0, 101\).*from 1 to 101"),
    ([[-1, 2]], {}, r"integers in \[0, 101\)"),
    ([[1.5, 2]], {}, r"integers in \[0, 101\)"),
    ([[1, 2]], {"temperature": -1.0}, r"temperature must be 0 \(greedy\) or a finite number >= 1e-06"),
    ([[1, 2]], {"temperature": 1e-45}, r"temperature must be 0 \(greedy\) or a finite number >= 1e-06.*greedy in all but name"),
    ([[1, 2]], {"temperature": float("inf")}, r"temperature must be 0 \(greedy\) or a finite.*infinity is uniform noise"),
    ([[1, 2]], {"top_k": -2}, "top_k must be an integer >= 0"),
    ([[1, 2]], {"top_k": 2.5}, "top_k must be an integer >= 0"),
    ([[1, 2]], {"top_p": 0.0}, r"top_p must be in \(0, 1\]"),
    ([[1, 2]], {"max_new_tokens": 3.0}, "need one budget >= 1 per prompt"),
    ([[1, 2]], {"max_new_tokens": [2, 2]}, "need one budget >= 1 per prompt"),
])
def test_generate_rejects_bad_input_by_name(prompts, kwargs, message):
    with pytest.raises(ValueError, match=message):
        generate(tiny_model(), prompts, **{"max_new_tokens": 2, **kwargs})


def test_stop_ids_and_budget():
    model = tiny_model(seed=2)
    prompt = [[5, 6, 7]]
    free = generate(model, prompt, max_new_tokens=8, temperature=0)[0]
    assert free.stop_reason == "length" and len(free.tokens) == 8
    stop_tok = free.tokens[3]  # make the 4th greedy token a stop id: generation ends right there
    first = free.tokens.index(stop_tok)
    stopped = generate(model, prompt * 2, max_new_tokens=8, temperature=0, stop_ids=[stop_tok])
    for gen in stopped:
        assert gen.stop_reason == "stop" and gen.tokens == free.tokens[:first + 1]


def test_sampling_is_seeded_and_rows_are_independent():
    model = tiny_model(seed=4)
    prompts = [[1, 2, 3]] * 4  # a group: one prompt, four rollouts
    a = generate(model, prompts, max_new_tokens=16, temperature=1.0, seed=7)
    b = generate(model, prompts, max_new_tokens=16, temperature=1.0, seed=7)
    assert [g.tokens for g in a] == [g.tokens for g in b]
    assert len({tuple(g.tokens) for g in a}) == 4  # not one sample broadcast to the group
    assert len({g.tokens[0] for g in a}) > 1  # not even the first token is shared


def test_top_k_one_is_greedy_and_top_p_filter_by_hand():
    model = tiny_model(seed=6)
    greedy = generate(model, [[4, 5]], max_new_tokens=6, temperature=0)[0]
    topk1 = generate(model, [[4, 5]], max_new_tokens=6, temperature=1.0, top_k=1, seed=0)[0]
    assert greedy.tokens == topk1.tokens
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    kept = filter_logits(logits, top_p=0.8).isfinite()[0].tolist()
    assert kept == [True, True, False, False]  # 0.5 + 0.3 reaches 0.8
    kept = filter_logits(logits, top_p=0.81).isfinite()[0].tolist()
    assert kept == [True, True, True, False]
    kept = filter_logits(logits[:, [3, 1, 0, 2]], top_k=2).isfinite()[0].tolist()
    assert kept == [False, True, True, False]
    kept = filter_logits(logits, top_p=0.0).isfinite()[0].tolist()
    assert kept == [True, False, False, False]  # even top_p = 0 keeps the most likely token
    exact = torch.log(torch.tensor([[0.5, 0.25, 0.125, 0.125]]))  # sums exact in binary floats
    kept = filter_logits(exact, top_p=0.75).isfinite()[0].tolist()
    assert kept == [True, True, False, False]  # 0.5 + 0.25 is exactly 0.75: the mass is reached
    tied = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    assert filter_logits(tied, top_k=1).isfinite().sum() == 1  # exactly k tokens, even among ties
    assert filter_logits(tied, top_k=2).isfinite().sum() == 2


def test_checkpoint_round_trip(tmp_path):
    model = tiny_model(seed=8)
    tok_file = tmp_path / "tok.model"
    tok_file.write_bytes(b"not really a tokenizer")
    save_checkpoint(model, tmp_path / "ckpt", tokenizer_file=str(tok_file), meta={"step": 3})
    save_checkpoint(model, tmp_path / "ckpt", tokenizer_file=str(tok_file), meta={"step": 4})  # overwrite
    loaded, meta = load_checkpoint(str(tmp_path / "ckpt"))
    assert meta["step"] == 4 and meta["tokenizer_file"].endswith("tok.model")
    idx = torch.randint(0, 101, (2, 9))
    with torch.no_grad():
        assert torch.equal(model(idx), loaded(idx))
    assert sorted(os.listdir(tmp_path)) == ["ckpt", "tok.model"]  # no temp or .old leftovers
    hf_oracle()
    hf = transformers.Qwen2ForCausalLM.from_pretrained(tmp_path / "ckpt").eval()  # HF reads it too
    with torch.no_grad():
        assert (hf(idx).logits - model(idx)).abs().max() < 1e-4


def test_a_failed_save_leaves_the_previous_checkpoint_and_no_stray_folder(tmp_path):
    model = tiny_model(seed=8)
    save_checkpoint(model, tmp_path / "ckpt", meta={"step": 3})
    with pytest.raises(TypeError):  # meta that json cannot write: the save fails half-way
        save_checkpoint(model, tmp_path / "ckpt", meta={"step": object()})
    assert os.listdir(tmp_path) == ["ckpt"]
    assert load_checkpoint(str(tmp_path / "ckpt"))[1]["step"] == 3


@pytest.mark.parametrize("changes,message", [
    (dict(max_position_embeddings="128"), "max_position_embeddings '128'; expected an integer > 0"),
    (dict(hidden_size=-64), "hidden_size -64; expected an integer > 0"),
    (dict(num_attention_heads=0), "num_attention_heads 0; expected an integer > 0"),
    (dict(num_key_value_heads=True), "num_key_value_heads True; expected an integer > 0"),
    (dict(rope_theta="abc"), "rope_theta 'abc'; expected a finite number > 0"),
    (dict(rms_norm_eps=float("inf")), "rms_norm_eps inf; expected a finite number > 0"),
    (dict(tie_word_embeddings="yes"), "tie_word_embeddings 'yes'; expected true or false"),
    (dict(rope_scaling="linear"), "rope_scaling 'linear'; expected an object (or null)"),
    (dict(use_sliding_window=True, sliding_window="64"), "sliding_window '64'; expected an integer (or null)"),
])
def test_a_hand_edited_config_json_names_the_bad_field(tmp_path, changes, message):
    """Each of these once reached torch as a TypeError, a ZeroDivisionError or a negative shape."""
    save_checkpoint(tiny_model(seed=8), tmp_path / "ckpt")
    edit_config(str(tmp_path / "ckpt"), **changes)
    with pytest.raises(ValueError) as e:
        load_hf(str(tmp_path / "ckpt"))
    assert str(e.value) == f"config.json has {message}"


def test_null_rope_parameters_and_num_key_value_heads_mean_the_defaults(tmp_path):
    """HF reads these nulls as absent: rope_theta from its default, one KV head per query head."""
    save_checkpoint(tiny_model(seed=8), tmp_path / "ckpt")
    path = tmp_path / "ckpt" / "config.json"
    config = {k: v for k, v in json.loads(path.read_text()).items() if k != "rope_theta"}
    config = dict(config, rope_parameters=None, num_key_value_heads=None)
    cfg = config_from_hf(config)
    assert (cfg.rope_theta, cfg.num_key_value_heads) == (10000.0, 4)
    assert (ModelConfig.rope_theta, config["num_attention_heads"]) == (10000.0, 4)  # (the defaults meant)


def test_damaged_checkpoint_files_are_named(tmp_path):
    """config.json that is not an object, an index without its weight_map, NaN weights, a meta.json
    that is not an object, and two tokenizer models: a ValueError naming the file, not garbage."""
    ckpt = str(tmp_path / "ckpt")
    save_checkpoint(tiny_model(seed=8), ckpt, meta={"config": {"chunk_tokens": 64}})
    assert load_checkpoint(ckpt)[1]["config"] == {"chunk_tokens": 64}  # whole, it loads
    config = open(os.path.join(ckpt, "config.json")).read()
    with open(os.path.join(ckpt, "config.json"), "w") as f:
        f.write("[1, 2]")
    with pytest.raises(ValueError, match=r"config.json holds \[1, 2\], not an object"):
        load_hf(ckpt)
    with open(os.path.join(ckpt, "config.json"), "w") as f:
        f.write(config)
    with open(os.path.join(ckpt, "model.safetensors.index.json"), "w") as f:
        f.write("{}")
    with pytest.raises(ValueError, match="is not a safetensors index"):
        load_hf(ckpt)
    os.remove(os.path.join(ckpt, "model.safetensors.index.json"))
    with open(os.path.join(ckpt, "meta.json"), "w") as f:
        f.write('[{"config": {}}]')
    with pytest.raises(ValueError, match="meta.json is not a checkpoint's meta.json"):
        load_checkpoint(ckpt)
    with open(os.path.join(ckpt, "meta.json"), "w") as f:
        f.write('{"config": "chunk 64"}')
    with pytest.raises(ValueError, match="meta.json is not a checkpoint's meta.json"):
        load_checkpoint(ckpt)
    os.remove(os.path.join(ckpt, "meta.json"))
    for name in ("a.model", "b.model"):  # which one the weights were trained with cannot be told
        open(os.path.join(ckpt, name), "wb").close()
    with pytest.raises(ValueError, match=r"holds 2 tokenizer models \(a.model, b.model\)"):
        load_checkpoint(ckpt)
    nan = tiny_model(seed=8)
    with torch.no_grad():
        nan.model.layers[1].mlp.up_proj.weight[3, 5] = float("nan")  # a run that diverged
    save_checkpoint(nan, str(tmp_path / "nan"))
    with pytest.raises(ValueError, match=r"model\.layers\.1\.mlp\.up_proj\.weight holds NaN or infinite"):
        load_hf(str(tmp_path / "nan"))


def test_checkpoint_folder_has_the_mode_of_any_new_folder(tmp_path):
    old_umask = os.umask(0o022)
    try:
        save_checkpoint(tiny_model(seed=8), tmp_path / "ckpt")
        os.makedirs(tmp_path / "plain")
    finally:
        os.umask(old_umask)
    assert os.stat(tmp_path / "ckpt").st_mode & 0o777 == os.stat(tmp_path / "plain").st_mode & 0o777 == 0o755


def test_per_row_budgets_near_the_window():
    model = tiny_model(seed=9)  # 128 positions
    g = torch.Generator().manual_seed(2)
    prompts = [torch.randint(1, 101, (n,), generator=g).tolist() for n in (120, 4, 60)]
    budgets = [8, 100, 1]  # the long prompt may only add 8 tokens; the short one 100
    batched = generate(model, prompts, max_new_tokens=budgets, temperature=0)
    for p, n, gen in zip(prompts, budgets, batched):
        assert len(gen.tokens) == n and gen.stop_reason == "length"
        assert gen.tokens == generate(model, [p], max_new_tokens=n, temperature=0)[0].tokens
    with pytest.raises(ValueError, match="121 tokens \\+ 8 new tokens exceeds the model's 128"):
        generate(model, [prompts[0] + [1]], max_new_tokens=8)
