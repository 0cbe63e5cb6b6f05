"""
Rollouts: the batched sampling engine, and (on top of it) the overwrite-memory agent.

The engine, `generate`, is what every rollout turn calls:
  1. one batched prefill: the prompts of all rows, right-padded to the longest, go through the model
     in a single forward that writes their keys/values into a preallocated KV cache;
  2. one forward per decode step for the whole batch: every row feeds its last sampled token at its
     own next position (= its own next cache slot), so rows with different prompt lengths never
     read each other's positions and padding never enters attention;
  3. each row samples independently from its own distribution (temperature, top-k, top-p) with a
     seeded generator; a row that emits a stop id is finished and stops producing tokens.

For RL, every sampled token also gets its log-probability under the model, computed from the raw
(temperature 1) logits: log softmax(logits)[token]. With temperature 1 and no top-k/top-p that is the
probability the token was sampled with, i.e. the "old policy" log-prob that the DAPO importance
ratio divides by. With other sampling settings it is still the policy's log-prob, not the sampler's.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F

# -----------------------------------------------------------------------------
# The sampling engine


@dataclass
class Generation:
    """What `generate` returns for one row."""
    tokens: list  # sampled ids, the stop id included when the row stopped on one
    logprobs: list  # log p(token) under the model's temperature-1 distribution, one per token
    stop_reason: str  # "stop" (emitted a stop id) or "length" (ran out of max_new_tokens)


def filter_logits(logits, top_k=0, top_p=1.0):
    """Mask (to -inf) the logits (B, V) that top-k / top-p sampling may not pick.

    top_k=0 and top_p=1.0 keep everything. Top-p keeps the smallest set of most likely tokens whose
    probability mass reaches top_p (the most likely token is always kept). Example: probs
    [0.5, 0.3, 0.15, 0.05] with top_p=0.8 keep the first two (0.5 + 0.3 reaches 0.8).
    """
    if top_k and top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        mass_before = probs.cumsum(dim=-1) - probs  # mass of the strictly more likely tokens
        drop_sorted = mass_before >= top_p  # (B, V), never drops the first token
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def sample_next(logits, temperature, top_k, top_p, generator):
    """One token per row (B,) from logits (B, V); temperature 0 means greedy (argmax)."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = filter_logits(logits / temperature, top_k, top_p)
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


@torch.no_grad()
def generate(model, prompts, max_new_tokens, temperature=1.0, top_k=0, top_p=1.0, stop_ids=(),
             seed=None, generator=None, pad_id=0):
    """Sample continuations for a batch of prompts of different lengths.

    prompts: list of B lists of token ids (each non-empty). Returns a list of B `Generation`s.
    max_new_tokens: one budget for all rows, or a list with one per row (the agent mixes memory
    turns and final-answer turns in one batch). Each row stops at its first stop id (kept as its
    last token) or when it has used its budget.
    Randomness comes from `generator` (a torch.Generator on the model's device) or, if None, from a
    new one seeded with `seed`; rows draw independently, so duplicated prompts (a GRPO group)
    get different samples.
    """
    device = model.lm_head.weight.device
    B = len(prompts)
    if B == 0:
        return []
    if any(len(p) == 0 for p in prompts):
        raise ValueError("generate: every prompt needs at least one token")
    budgets = [max_new_tokens] * B if isinstance(max_new_tokens, int) else list(max_new_tokens)
    if len(budgets) != B or min(budgets) < 1:
        raise ValueError(f"generate: need one budget >= 1 per prompt, got {max_new_tokens}")
    for p, n in zip(prompts, budgets):
        if len(p) + n > model.config.max_position_embeddings:
            raise ValueError(f"generate: a prompt of {len(p)} tokens + {n} new tokens exceeds the "
                             f"model's {model.config.max_position_embeddings} positions")
    max_new_tokens = max(budgets)
    lengths = torch.tensor([len(p) for p in prompts], device=device)  # (B,)
    budget = torch.tensor(budgets, device=device)  # (B,)
    T = max(len(p) for p in prompts)
    if generator is None:
        generator = torch.Generator(device=device)
        generator.manual_seed(seed if seed is not None else torch.seed())
    stop = torch.tensor(sorted(set(stop_ids)) or [-1], device=device)

    # right-pad the prompts into one (B, T) tensor; padding sits after each row's real tokens
    idx = torch.full((B, T), pad_id, dtype=torch.long, device=device)
    for b, p in enumerate(prompts):
        idx[b, :len(p)] = torch.tensor(p, dtype=torch.long)

    cache_len = max(len(p) + n for p, n in zip(prompts, budgets))
    cache = model.new_cache(B, cache_len)  # allocated once for the whole call
    logits = model(idx, cache=cache, logits_index=lengths - 1).float()  # (B, V), each row's last token

    out_tokens = torch.full((B, max_new_tokens), pad_id, dtype=torch.long, device=device)
    out_logprobs = torch.zeros((B, max_new_tokens), device=device)
    n_generated = torch.zeros(B, dtype=torch.long, device=device)  # tokens each row produced
    finished = torch.zeros(B, dtype=torch.bool, device=device)
    stopped = torch.zeros(B, dtype=torch.bool, device=device)
    check_every = 1 if device.type == "cpu" else 16  # polling `finished` syncs with the GPU
    for step in range(max_new_tokens):
        token = sample_next(logits, temperature, top_k, top_p, generator)  # (B,)
        logprob = F.log_softmax(logits, dim=-1).gather(-1, token[:, None]).squeeze(-1)  # (B,)
        active = ~finished
        out_tokens[:, step] = torch.where(active, token, pad_id)
        out_logprobs[:, step] = torch.where(active, logprob, 0.0)
        n_generated += active.long()
        hit_stop = active & torch.isin(token, stop)
        stopped |= hit_stop
        finished |= hit_stop | (n_generated >= budget)
        if step + 1 == max_new_tokens or (step % check_every == 0 and bool(finished.all())):
            break
        # every row feeds its new token at its own next position: prompt length + step. (A finished
        # row's slots are never read again; its position is clamped only to stay inside the cache.)
        positions = (lengths + step).clamp(max=cache_len - 1)[:, None]  # (B, 1)
        kv_len = min(T + step + 1, cache_len)
        logits = model(token[:, None], cache=cache, positions=positions, kv_len=kv_len)
        logits = logits[:, -1].float()  # (B, V)

    n_generated, stopped = n_generated.tolist(), stopped.tolist()
    out_tokens, out_logprobs = out_tokens.tolist(), out_logprobs.tolist()
    return [Generation(tokens=out_tokens[b][:n_generated[b]], logprobs=out_logprobs[b][:n_generated[b]],
                       stop_reason="stop" if stopped[b] else "length") for b in range(B)]
