"""
A Qwen2-style decoder-only transformer, written out in one file.

What this file teaches:
  - the Qwen2 block: RMSNorm (in fp32) -> attention with grouped-query heads (GQA), bias on the
    q/k/v projections only, rotary position embeddings in the "rotate-half" layout -> residual ->
    RMSNorm -> SiLU-gated MLP -> residual; a final RMSNorm and a language-model head tied to the
    token embedding (untied for the 7B geometry);
  - a static KV cache: one tensor per layer allocated once for (batch, max length) and written in
    place. Every row of the batch keeps its own length: a token's position is also the slot it
    occupies in the cache, so rows holding prompts of different lengths never share positions and
    padding never enters attention;
  - loading weights: the module tree uses Hugging Face's Qwen2 parameter names, so a HF checkpoint
    (`config.json` + `*.safetensors`, one file or sharded) loads with `load_state_dict(strict=True)`,
    without the `transformers` package. Our own checkpoints are written in the same format.

Shapes: B batch, T tokens in this call, C hidden size, H query heads, Hkv key/value heads,
D head dim, L cache length, V vocabulary.
"""

import math
import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn as nn
import torch.nn.functional as F

# -----------------------------------------------------------------------------
# Configuration


@dataclass
class ModelConfig:
    # field names follow HF's Qwen2Config so a config.json maps onto this one to one
    vocab_size: int = 2048
    hidden_size: int = 128
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    intermediate_size: int = 384
    max_position_embeddings: int = 2048
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-6
    tie_word_embeddings: bool = True
    initializer_range: float = 0.02  # std of the random init, Qwen2's (0.05: EXPERIMENTS.md)

    @property
    def head_dim(self):
        return self.hidden_size // self.num_attention_heads

    def validate(self):
        if self.hidden_size % self.num_attention_heads != 0:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by "
                             f"num_attention_heads {self.num_attention_heads}")
        if self.num_attention_heads % self.num_key_value_heads != 0:
            raise ValueError(f"num_attention_heads {self.num_attention_heads} is not a multiple of "
                             f"num_key_value_heads {self.num_key_value_heads}")
        if self.head_dim % 2 != 0:
            raise ValueError(f"head_dim {self.head_dim} must be even for rotary embeddings")
        return self


# Named geometries. `vocab_size` here is a placeholder: it comes from the tokenizer (or from the
# checkpoint's config.json when weights are loaded). The qwen-ish-* entries are the exact Qwen2.5
# geometries (their config.json files on the Hugging Face hub).
PRESETS = {
    # ~1M parameters with a 2K vocabulary: unit tests and the fastest CPU runs
    "tiny": dict(hidden_size=128, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                 intermediate_size=384, max_position_embeddings=2048, rope_theta=10000.0),
    # ~13M parameters: a larger CPU model (the cpu-demo recipe trains `tiny`)
    "small": dict(hidden_size=384, num_hidden_layers=8, num_attention_heads=6, num_key_value_heads=2,
                  intermediate_size=1024, max_position_embeddings=2048, rope_theta=10000.0),
    "qwen-ish-0.5b": dict(hidden_size=896, num_hidden_layers=24, num_attention_heads=14,
                          num_key_value_heads=2, intermediate_size=4864, vocab_size=151936,
                          max_position_embeddings=32768, rope_theta=1000000.0),
    "qwen-ish-1.5b": dict(hidden_size=1536, num_hidden_layers=28, num_attention_heads=12,
                          num_key_value_heads=2, intermediate_size=8960, vocab_size=151936,
                          max_position_embeddings=32768, rope_theta=1000000.0),
    "qwen-ish-7b": dict(hidden_size=3584, num_hidden_layers=28, num_attention_heads=28,
                        num_key_value_heads=4, intermediate_size=18944, vocab_size=152064,
                        max_position_embeddings=32768, rope_theta=1000000.0,
                        tie_word_embeddings=False),
}


def config_from_preset(name, vocab_size=None, **overrides):
    """ModelConfig for a named preset; vocab_size (from the tokenizer) replaces the placeholder."""
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; choose one of {', '.join(PRESETS)}")
    kwargs = dict(PRESETS[name])
    if vocab_size is not None:
        kwargs["vocab_size"] = vocab_size
    kwargs.update(overrides)
    return ModelConfig(**kwargs).validate()


# -----------------------------------------------------------------------------
# The static KV cache


class KVCache:
    """Keys and values for every layer, preallocated once: k, v are (layers, B, Hkv, L, D).

    Slot j of row b holds the token at position j of that row. Writing is an in-place indexed
    assignment (never `torch.cat`), so the storage never moves; the engine decides which slots
    are valid through the attention mask built from positions.
    """

    def __init__(self, config, batch_size, max_len, dtype=torch.float32, device="cpu"):
        if max_len > config.max_position_embeddings:
            raise ValueError(f"KV cache length {max_len} exceeds the model's maximum positions "
                             f"{config.max_position_embeddings}")
        shape = (config.num_hidden_layers, batch_size, config.num_key_value_heads, max_len,
                 config.head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.batch_size, self.max_len = batch_size, max_len

    def write(self, layer, positions, k, v):
        """Store k, v (B, Hkv, T, D) of tokens at `positions` (B, T) into their own slots."""
        if k.size(2) > self.max_len:  # a shape check, so no GPU sync (on CUDA the index error is fatal)
            raise ValueError(f"KVCache.write: {k.size(2)} tokens do not fit a cache of {self.max_len} slots")
        rows = torch.arange(k.size(0), device=k.device)[:, None]  # (B, 1)
        # advanced indices (rows, positions) around a full slice put their dims first: (B, T, Hkv, D).
        # (Under autocast k arrives in float32 from the rotary step, the cache is bf16: cast.)
        self.k[layer][rows, :, positions] = k.transpose(1, 2).to(self.k.dtype)
        self.v[layer][rows, :, positions] = v.transpose(1, 2).to(self.v.dtype)

    def copy_rows(self, source, upto):
        """Row b := row source[b] in slots 0..upto-1, for every b (source: one row index per row).

        The engine prefills each distinct prompt once into rows 0..U-1, then fans the rows out with
        this. One layer at a time, so the temporary the gather makes is one layer's slots, not the
        whole cache.
        """
        index = torch.as_tensor(source, device=self.k.device)  # (B,)
        for layer in range(self.k.size(0)):
            self.k[layer, :len(index), :, :upto] = self.k[layer, index, :, :upto]
            self.v[layer, :len(index), :, :upto] = self.v[layer, index, :, :upto]

    def nbytes(self):
        return self.k.numel() * self.k.element_size() * 2


# -----------------------------------------------------------------------------
# Building blocks


class RMSNorm(nn.Module):
    def __init__(self, dim, eps):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        # normalize in fp32 whatever the activation dtype, then cast back before the gain
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


def rotary_cos_sin(positions, head_dim, theta, dtype):
    """cos and sin tables (B, T, D) for integer positions (B, T), in the rotate-half layout.

    Frequencies f_i = 1 / theta^(2i/D) for i < D/2; the angle of position p is p * f_i, and the table
    repeats the D/2 angles twice ([a_0..a_{D/2-1}, a_0..a_{D/2-1}]), which is how HF Qwen2 lays out
    its weights (not the interleaved pairs of the original RoPE paper). f_i is computed as HF
    computes it, to the last float32 bit: theta^(-2i/D) differs in the last place for a third of
    the frequencies, which moved a model's logits by 7.5e-3 against transformers' at ~12K positions.
    """
    exponents = torch.arange(0, head_dim, 2, dtype=torch.int64, device=positions.device).float() / head_dim
    inv_freq = 1.0 / (theta ** exponents)  # (D/2,)
    angles = positions.float()[..., None] * inv_freq  # (B, T, D/2)
    angles = torch.cat((angles, angles), dim=-1)  # (B, T, D)
    return angles.cos().to(dtype), angles.sin().to(dtype)


def rotate_half(x):
    """[x1, x2] -> [-x2, x1] on the last dim: multiplying by sin after this rotates each pair (x1_i, x2_i)."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary(x, cos, sin):
    # x (B, H, T, D); cos, sin (B, T, D) broadcast over heads
    cos, sin = cos[:, None], sin[:, None]
    return x * cos + rotate_half(x) * sin


class Qwen2Attention(nn.Module):
    def __init__(self, config):
        super().__init__()
        C, D = config.hidden_size, config.head_dim
        self.n_head, self.n_kv_head, self.head_dim = config.num_attention_heads, config.num_key_value_heads, D
        self.q_proj = nn.Linear(C, self.n_head * D, bias=True)
        self.k_proj = nn.Linear(C, self.n_kv_head * D, bias=True)
        self.v_proj = nn.Linear(C, self.n_kv_head * D, bias=True)
        self.o_proj = nn.Linear(self.n_head * D, C, bias=False)

    def forward(self, x, cos, sin, layer, cache, positions, kv_len):
        B, T, C = x.shape
        q = self.q_proj(x).view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # (B, H, T, D)
        k = self.k_proj(x).view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)  # (B, Hkv, T, D)
        v = self.v_proj(x).view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)  # (B, Hkv, T, D)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)

        if cache is not None:
            cache.write(layer, positions, k, v)
        if cache is None or kv_len is None:
            # a fresh sequence starting at position 0 (training, scoring, or a prefill into an empty
            # cache): plain causal attention over the tokens of this call. Right padding is harmless
            # here: a real token never attends to a pad that comes after it.
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        else:
            # continuing rows: attend to cache slots 0..kv_len-1, but a query at position p only to
            # slots <= p of its own row. Slots past a row's length hold stale values and are masked.
            keys, values = cache.k[layer, :, :, :kv_len], cache.v[layer, :, :, :kv_len]  # (B, Hkv, L, D)
            slots = torch.arange(kv_len, device=x.device)
            mask = slots[None, None, None, :] <= positions[:, None, :, None]  # (B, 1, T, L)
            # GQA without copying the cache: query heads h = j*G .. j*G+G-1 share KV head j, so
            # stack each group's G x T queries as one head's rows. (enable_gqa with a mask can
            # fall back to a kernel that repeats K and V G times: G x the cache read a step.)
            G = self.n_head // self.n_kv_head
            q = q.reshape(B, self.n_kv_head, G * T, self.head_dim)  # (B, Hkv, G*T, D), row g*T + t
            y = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask.repeat(1, 1, G, 1))
            y = y.reshape(B, self.n_head, T, self.head_dim)  # (B, H, T, D)
        y = y.transpose(1, 2).reshape(B, T, self.n_head * self.head_dim)  # (B, T, H*D)
        return self.o_proj(y)


class Qwen2MLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        C, I = config.hidden_size, config.intermediate_size
        self.gate_proj = nn.Linear(C, I, bias=False)
        self.up_proj = nn.Linear(C, I, bias=False)
        self.down_proj = nn.Linear(I, C, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Qwen2DecoderLayer(nn.Module):
    def __init__(self, config, layer):
        super().__init__()
        self.layer = layer
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = Qwen2Attention(config)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = Qwen2MLP(config)

    def forward(self, x, cos, sin, cache, positions, kv_len):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, self.layer, cache, positions, kv_len)
        x = x + self.mlp(self.post_attention_layernorm(x))
        return x


class Qwen2Model(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(Qwen2DecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)


class Qwen2(nn.Module):
    """The causal LM: `model.*` is the decoder stack, `lm_head` maps hidden states to logits."""

    def __init__(self, config):
        super().__init__()
        self.config = config.validate()
        self.model = Qwen2Model(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.gradient_checkpointing = False
        self.apply(self._init_weights)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    def _init_weights(self, module):
        # the initialisation Qwen2 uses: normal(0, initializer_range) weights, zero biases
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=self.config.initializer_range)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)

    def forward(self, idx, cache=None, positions=None, kv_len=None, logits_index=None):
        """Logits for token ids idx (B, T).

        Three ways to call it:
          model(idx)                                 training / scoring: causal, positions 0..T-1
          model(idx, cache=c, logits_index=n - 1)    prefill: same, and K/V land in slots 0..T-1
          model(tok, cache=c, positions=p, kv_len=L) decode: tok (B, 1) at positions p (B, 1), each
                                                     row attending to its own slots <= p among the
                                                     first L slots of the cache
        logits_index (B,): return logits (B, V) only at these indices of T (e.g. each row's last real
        prompt token), so a long prefill never materialises (B, T, V).
        """
        x = self.hidden_states(idx, cache, positions, kv_len)  # (B, T, C)
        if logits_index is not None:
            x = x[torch.arange(idx.size(0), device=idx.device), logits_index]  # (B, C)
        return self.logits(x)  # (B, T, V) or (B, V)

    def hidden_states(self, idx, cache=None, positions=None, kv_len=None):
        """The decoder stack without the final norm and lm_head: (B, T, C). Same arguments as
        forward; the trainer uses it to put only response positions through the lm_head."""
        B, T = idx.shape
        if (positions is None) != (kv_len is None):
            raise ValueError("positions and kv_len go together: both for decode, neither for a fresh sequence")
        if positions is None:
            positions = torch.arange(T, device=idx.device).expand(B, T)  # (B, T)
        x = self.model.embed_tokens(idx)  # (B, T, C)
        cos, sin = rotary_cos_sin(positions, self.config.head_dim, self.config.rope_theta, x.dtype)
        for block in self.model.layers:
            if self.gradient_checkpointing and self.training and cache is None:
                x = torch.utils.checkpoint.checkpoint(block, x, cos, sin, None, positions, None,
                                                      use_reentrant=False)
            else:
                x = block(x, cos, sin, cache, positions, kv_len)
        return x

    def logits(self, hidden):
        """Final RMSNorm, then the (tied) lm_head: (..., C) -> (..., V)."""
        return self.lm_head(self.model.norm(hidden))

    def num_parameters(self):
        return sum(p.numel() for p in self.parameters())  # tied weights are counted once

    def new_cache(self, batch_size, max_len):
        """A KVCache in the dtype the attention computes in: the weights' dtype, or under
        torch.autocast (fp32 weights, bf16 matmuls: train.py's mixed precision) the autocast dtype."""
        p = self.lm_head.weight
        dtype = p.dtype
        if torch.is_autocast_enabled(p.device.type):
            dtype = torch.get_autocast_dtype(p.device.type)
        return KVCache(self.config, batch_size, max_len, dtype=dtype, device=p.device)


# -----------------------------------------------------------------------------
# Loading HF Qwen2 checkpoints and writing our own


def config_from_hf(hf):
    """ModelConfig from a HF Qwen2 config.json dict (errors name what is unsupported or malformed)."""
    if not isinstance(hf, dict):
        raise ValueError(f"config.json holds {json.dumps(hf)[:60]}, not an object of settings")
    if hf.get("model_type", "qwen2") != "qwen2":
        raise ValueError(f"config.json has model_type {hf.get('model_type')!r}; only 'qwen2' is supported")
    if hf.get("hidden_act", "silu") != "silu":
        raise ValueError(f"config.json has hidden_act {hf.get('hidden_act')!r}; Qwen2 uses 'silu'")
    for key in ("rope_scaling", "rope_parameters"):  # (transformers >= 5 writes rope_parameters)
        rope = hf.get(key) or {}
        if not isinstance(rope, dict):
            raise ValueError(f"config.json has {key} {rope!r}; expected an object (or null)")
        if rope.get("rope_type", rope.get("type")) not in (None, "default"):
            raise ValueError(f"config.json asks for {key} {rope}; only plain RoPE is implemented")
    sliding = hf.get("use_sliding_window") or "sliding_attention" in (hf.get("layer_types") or [])
    window = hf.get("sliding_window")
    positions = hf.get("max_position_embeddings", window)
    if sliding and window is not None and not isinstance(window, int):
        raise ValueError(f"config.json has sliding_window {window!r}; expected an integer (or null)")
    if sliding and window is not None and isinstance(positions, int) and window < positions:
        raise ValueError(f"config.json asks for sliding-window attention (window {window}); "
                         f"only full attention is implemented")
    geometry = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")
    missing = [key for key in geometry if not isinstance(hf.get(key), int)]
    if missing:
        raise ValueError(f"config.json lacks {', '.join(missing)} (integers that fix the model's shape)")
    kwargs = {"tie_word_embeddings": False}  # HF Qwen2Config's default, for a file that omits it
    for f in fields(ModelConfig):
        if f.name in hf:
            kwargs[f.name] = hf[f.name]
        elif f.name == "rope_theta" and "rope_parameters" in hf:  # newer transformers nest it
            kwargs[f.name] = (hf["rope_parameters"] or {}).get("rope_theta", ModelConfig.rope_theta)
    if kwargs.get("num_key_value_heads") is None:  # (absent or null: one KV head per query head, as in HF)
        kwargs["num_key_value_heads"] = kwargs.get("num_attention_heads")
    for f in fields(ModelConfig):  # a hand-edited file: "64" for 64, null, a negative size
        value = kwargs.get(f.name, f.default)
        if f.type in (bool, "bool"):
            ok, want = isinstance(value, bool), "true or false"
        elif f.type in (int, "int"):
            ok, want = isinstance(value, int) and not isinstance(value, bool) and value > 0, "an integer > 0"
        else:  # rope_theta, rms_norm_eps, initializer_range
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value < math.inf
            ok, want = ok and (value > 0 or f.name == "initializer_range"), "a finite number > 0"
        if not ok:
            raise ValueError(f"config.json has {f.name} {value!r}; expected {want}")
    cfg = ModelConfig(**kwargs)
    if hf.get("head_dim") not in (None, cfg.head_dim):
        raise ValueError(f"config.json has head_dim {hf['head_dim']}, but hidden_size / heads is {cfg.head_dim}")
    return cfg.validate()


def read_safetensors_dir(directory):
    """{HF key: tensor} from model.safetensors or the shards listed in model.safetensors.index.json."""
    from safetensors.torch import load_file

    index = os.path.join(directory, "model.safetensors.index.json")
    if os.path.exists(index):
        with open(index) as f:
            try:
                weight_map = json.load(f)["weight_map"]
                shard_names = sorted(set(weight_map.values()))
                if not all(isinstance(n, str) for n in shard_names):
                    raise TypeError("a shard name that is not a string")
            except (json.JSONDecodeError, UnicodeDecodeError, TypeError, KeyError, AttributeError):
                raise ValueError(f"{index} is not a safetensors index: expected JSON with a \"weight_map\" "
                                 f"object from each key to its shard's file name") from None
    else:
        shard_names = sorted(n for n in os.listdir(directory) if n.endswith(".safetensors"))
    if not shard_names:
        raise FileNotFoundError(f"no *.safetensors weights in {directory}")
    state = {}
    for name in shard_names:
        path = os.path.join(directory, name)
        if not os.path.exists(path):
            raise FileNotFoundError(f"shard {name} listed in the index is missing from {directory}")
        try:
            state.update(load_file(path))
        except Exception as e:  # safetensors' own error type: a truncated or foreign file
            raise ValueError(f"cannot read the weights {path}: {e}") from None
    return state


def load_hf(directory, dtype=torch.float32, device="cpu"):
    """Build a Qwen2 from a HF directory (config.json + safetensors), without `transformers`.

    A missing `lm_head.weight` ties to `model.embed_tokens.weight` (as in Qwen2.5-0.5B/1.5B).
    Every missing or unexpected key and every shape mismatch raises, naming the HF key.
    """
    config_path = os.path.join(directory, "config.json")
    if not os.path.exists(config_path):
        raise FileNotFoundError(f"no config.json in {directory}")
    with open(config_path) as f:
        try:
            hf_config = json.load(f)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{config_path} is not valid JSON ({e})") from None
    config = config_from_hf(hf_config)
    state = read_safetensors_dir(directory)
    state = {k: v for k, v in state.items() if not k.endswith("rotary_emb.inv_freq")}  # old HF files
    if config.tie_word_embeddings:
        state.pop("lm_head.weight", None)  # some tied files store a copy; the tie decides
    with torch.device("meta"):
        model = Qwen2(config)
    expected = {k: v.shape for k, v in model.state_dict().items()}
    if config.tie_word_embeddings:
        expected.pop("lm_head.weight")
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ValueError(f"checkpoint {directory} does not match config.json: "
                         f"missing keys {missing[:8]}, unexpected keys {unexpected[:8]}")
    for key, shape in expected.items():
        if state[key].shape != shape:
            raise ValueError(f"shape mismatch for {key}: checkpoint has {tuple(state[key].shape)}, "
                             f"config.json implies {tuple(shape)}")
    for key, tensor in state.items():  # a run that diverged saves NaNs; they would only answer garbage
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise ValueError(f"checkpoint {directory}: {key} holds NaN or infinite values")
    state = {k: v.to(dtype=dtype, device=device) for k, v in state.items()}
    if config.tie_word_embeddings:
        state["lm_head.weight"] = state["model.embed_tokens.weight"]
    model.load_state_dict(state, strict=True, assign=True)
    if config.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight  # assign=True broke the tie; restore it
    return model


def save_checkpoint(model, directory, tokenizer_file=None, meta=None):
    """Write a checkpoint directory atomically: HF-style config.json + model.safetensors, a copy of
    the tokenizer file(s) (a path or a list of paths), and meta.json (anything the caller wants to keep, e.g. the training args).

    The result loads with `load_hf` (and with transformers' Qwen2ForCausalLM). The directory is
    written beside its final place and renamed, so a crash never leaves a half-written checkpoint.
    """
    from safetensors.torch import save_file

    directory = os.path.abspath(directory)
    tmp = staging_dir(directory)
    try:
        config = asdict(model.config)
        config.update(model_type="qwen2", architectures=["Qwen2ForCausalLM"], hidden_act="silu",
                      torch_dtype=str(model.lm_head.weight.dtype).replace("torch.", ""))
        with open(os.path.join(tmp, "config.json"), "w") as f:
            json.dump(config, f, indent=2)
        state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
        if model.config.tie_word_embeddings:
            state.pop("lm_head.weight")  # stored once, as HF does
        save_file(state, os.path.join(tmp, "model.safetensors"))
        for path in [tokenizer_file] if isinstance(tokenizer_file, str) else (tokenizer_file or []):
            shutil.copyfile(path, os.path.join(tmp, os.path.basename(path)))
        with open(os.path.join(tmp, "meta.json"), "w") as f:
            json.dump(meta or {}, f, indent=2)
    except BaseException:  # a failed save leaves no stray folder (and the previous checkpoint as it was)
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    swap_in(tmp, directory)
    return directory


def staging_dir(directory):
    """A new empty folder beside `directory` to write its next version into before swap_in.
    (mkdtemp makes it private, mode 0700; it gets the mode any new folder gets, so a checkpoint is
    as readable as the rest of the run's output.)"""
    parent = os.path.dirname(os.path.abspath(directory))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".tmp-" + os.path.basename(directory) + "-", dir=parent)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)
    return tmp


def fsync_dir(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(path):
    """Flush every file under `path`, and the folders themselves, to disk (so that after a power
    cut a renamed checkpoint never holds empty files)."""
    for root, _, files in os.walk(path):
        for name in files:
            with open(os.path.join(root, name), "rb") as f:
                os.fsync(f.fileno())
        fsync_dir(root)


def swap_in(tmp, directory):
    """Move the finished directory `tmp` to `directory`. An existing `directory` is renamed to
    `directory.old` first and removed only after the new one is in place, so some whole checkpoint
    is on disk at every moment (also after a power cut: the files are flushed before the renames,
    and the renames before the old copy is deleted)."""
    fsync_tree(tmp)
    parent = os.path.dirname(os.path.abspath(directory))
    if os.path.exists(directory):
        old = directory + ".old"
        shutil.rmtree(old, ignore_errors=True)
        os.replace(directory, old)
        os.replace(tmp, directory)
        fsync_dir(parent)
        shutil.rmtree(old)
    else:
        os.replace(tmp, directory)
        fsync_dir(parent)


def remove_stale_staging(directory):
    """Delete the staging folders (staging_dir's `.tmp-NAME-*`) a killed save left beside
    `directory`: SIGKILL or the out-of-memory killer skips save_checkpoint's own clean-up, and each
    is a whole checkpoint's size. Only for when no save is running. Returns the paths removed."""
    parent, prefix = os.path.dirname(os.path.abspath(directory)), ".tmp-" + os.path.basename(directory) + "-"
    if not os.path.isdir(parent):
        return []
    stale = sorted(os.path.join(parent, n) for n in os.listdir(parent)
                   if n.startswith(prefix) and os.path.isdir(os.path.join(parent, n)))
    for path in stale:
        shutil.rmtree(path)
    return stale


def recover_swap(directory):
    """Undo a swap_in cut short between its two renames (a crash there leaves no `directory`, only
    the whole previous one at `directory.old`): move it back. True if it did."""
    old = directory + ".old"
    if os.path.exists(directory) or not os.path.isdir(old):
        return False
    os.replace(old, directory)
    return True


def check_device(name):
    """torch.device(name), or a ValueError that says why this machine cannot use it."""
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"unknown device {name!r}; use cpu, cuda or cuda:N") from None
    if device.type not in ("cpu", "cuda"):  # mps, xpu, meta, ...: this code runs on neither
        raise ValueError(f"{name}: device type {device.type!r} is not supported; use cpu, cuda or cuda:N")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"{name}: this torch has no CUDA device (torch.cuda.is_available() is False)")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise ValueError(f"{name}: there are only {torch.cuda.device_count()} CUDA device(s)")
    return device


CHECKPOINT_ROOT = "checkpoints"


def resolve_checkpoint(name_or_path):
    """A checkpoint by path, or by name under ./checkpoints/ (e.g. 'rl-final')."""
    candidates = [name_or_path]
    if not os.path.isabs(name_or_path):
        candidates.append(os.path.join(CHECKPOINT_ROOT, name_or_path))
    for candidate in candidates:
        if os.path.isfile(os.path.join(candidate, "config.json")):
            return candidate
    raise FileNotFoundError(f"no checkpoint {name_or_path!r} (no config.json in {' or '.join(candidates)})"
                            + run_folder_hint(name_or_path))


def run_folder_hint(folder):
    """For an error message: when `folder` is a train.py out dir (or its ckpt/), the checkpoints inside it."""
    inside = [os.path.join(folder, d) for d in ("rl", "warmstart", "baseline", os.path.join("ckpt", "model"), "model")
              if os.path.isfile(os.path.join(folder, d, "config.json"))]
    return f"; it is a training run's folder: pass one of its checkpoints, {', '.join(inside)}" if inside else ""


def load_checkpoint(name_or_path, dtype=torch.float32, device="cpu"):
    """(model, meta) from one of our checkpoint directories; meta['tokenizer_file'] is the tokenizer
    model stored beside the weights (None if there is none)."""
    directory = resolve_checkpoint(name_or_path)
    model = load_hf(directory, dtype=dtype, device=device)
    meta = {}
    meta_path = os.path.join(directory, "meta.json")
    if os.path.exists(meta_path):
        with open(meta_path) as f:
            try:
                meta = json.load(f)
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise ValueError(f"{meta_path} is not valid JSON ({e})") from None
        if not isinstance(meta, dict) or not isinstance(meta.get("config", {}), dict):
            raise ValueError(f"{meta_path} is not a checkpoint's meta.json (an object whose \"config\" "
                             f"is the training settings)")
    tokenizers = sorted(n for n in os.listdir(directory) if n.endswith(".model"))
    if len(tokenizers) > 1:
        raise ValueError(f"{directory} holds {len(tokenizers)} tokenizer models ({', '.join(tokenizers)}); "
                         f"a checkpoint has one: remove the others")
    meta["tokenizer_file"] = os.path.join(directory, tokenizers[0]) if tokenizers else None
    meta["directory"] = directory
    return model, meta


if __name__ == "__main__":
    # print the geometry and parameter count of every preset (built on the meta device: no memory)
    for name in PRESETS:
        with torch.device("meta"):
            m = Qwen2(config_from_preset(name))
        c = m.config
        print(f"{name:14s} {m.num_parameters() / 1e6:8.1f}M params  C={c.hidden_size} layers={c.num_hidden_layers} "
              f"heads={c.num_attention_heads}/{c.num_key_value_heads} mlp={c.intermediate_size} vocab={c.vocab_size} "
              f"init std {c.initializer_range}")
