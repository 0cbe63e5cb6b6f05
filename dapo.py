"""dapo.py: multi-conversation DAPO, one formula at a time.

MemAgent trains its memory policy with DAPO (arXiv 2503.14476) extended to rollouts that are made
of several independent conversations. This file holds only the math; `train.py` wires it up.
It depends on nothing but torch.

Vocabulary
    rollout       one attempt at one sample: K memory conversations (one per chunk) + 1 final one.
    group         the G rollouts drawn for the same sample (same prompt, same document).
    conversation  one prompt -> response exchange; the unit the loss calls a "sequence".
    R_i           the final reward of rollout i (answer correct or not, plus any overlong penalty).

1. Group advantage (GRPO / DAPO), one number per rollout
        A_i = (R_i - mean_j R_j) / (std_j R_j + 1e-6)          norm_by_std=True  (DAPO, GRPO)
        A_i =  R_i - mean_j R_j                                 norm_by_std=False (Dr. GRPO,
                                                                  MemAgent's shipped scripts)
    The std is the sample std (divide by G - 1), which is what torch.std computes by default and
    what verl's GRPO advantage (the code DAPO and MemAgent build on) uses. A group of one has no
    baseline, so it gets A = 0 (verl instead leaves a singleton's raw reward; we follow the design).

2. Multi-conversation broadcast
    Every conversation of rollout i (each memory turn and the final answer) gets A_i on every one
    of its response tokens. Prompt and padding tokens get no loss.

3. Clipped surrogate, per response token t
        r_t    = exp(clamp(logp_new_t - logp_old_t, -20, 20))    importance ratio
        loss_t = -min(r_t * A,  clip(r_t, 1 - eps_low, 1 + eps_high) * A)
    clip-higher: eps_low = 0.2, eps_high = 0.28, so an unlikely token with A > 0 can grow further
    before its gradient is cut. Where the clip is active the gradient is zero:
        A > 0 and r_t > 1 + eps_high   ("clipped high")
        A < 0 and r_t < 1 - eps_low    ("clipped low")
    Dual clip (optional, c = 3): for A < 0 the loss above grows without bound in r_t; cap it:
        loss_t = min(loss_t, -c * A)          (gradient zero where the cap is active)

4. Aggregation over a mini-batch of conversations s with response tokens t in s
        token-mean               sum_s sum_t loss_st / sum_s |s|                    (DAPO, default)
        seq-mean-token-mean      (1/S) sum_s [ (1/|s|) sum_t loss_st ]             (GRPO)
        seq-mean-token-sum-norm  sum_s sum_t loss_st / (S * L_budget)              (Dr. GRPO)
    L_budget is a constant (the response budget), not the longest response in the batch: Dr. GRPO
    divides by a fixed generation budget so the scale never depends on what was sampled.

5. Gradient accumulation that stays exact
    Every mode above is "a sum over tokens, divided by something that belongs to the whole
    mini-batch". So each micro-batch sums its own tokens and divides by the *mini-batch's*
    normalizer (`loss_normalizers`); the micro-batch losses then add up to the mini-batch loss, and
    so do their gradients. Worked example, token-mean: a mini-batch of 10 response tokens split into
    micro-batches of 4 and 6 tokens with token-mean losses 0.5 and 2.0. The correct mini-batch loss
    is (4 * 0.5 + 6 * 2.0) / 10 = 1.4; averaging the two means would give 1.25, which is wrong.
    Micro-batch losses computed as sum/10 are 0.2 and 1.2: they sum to 1.4, i.e. each micro-batch
    mean is weighted by its share of the tokens (4/10 and 6/10).

6. Optional KL to a frozen reference policy (k3 estimator; off by default)
        kl_t = min(exp(d_t) - d_t - 1, 10)  >= 0,   d_t = logp_ref_t - logp_new_t   (verl's low_var_kl)
        loss = policy loss + kl_coef * aggregate(kl_t)        (MemAgent's scripts: kl_coef 0.001)
   Optional entropy bonus (verl's entropy_coeff; off by default: DAPO's answer to a collapsing
   entropy is clip-higher), H_t the current policy's entropy at response token t:
        loss = ... - entropy_coef * aggregate(H_t)

7. Dynamic sampling
    A group whose rewards are all equal has A = 0 everywhere: no signal. Drop it, draw more prompt
    batches until `batch_size` groups are kept, at most `max_gen_batches` draws (`fill_batch`).

8. Soft overlong punishment, added to the reward, for a response of length L
        0                                  if L <= L_max - L_cache
        ((L_max - L_cache) - L) / L_cache  if L_max - L_cache < L <= L_max
        -1                                 if L > L_max
    In a multi-conversation rollout: see `rollout_overlong_penalty`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Hashable, Sequence, TypeVar

import torch
from torch import Tensor

log = logging.getLogger(__name__)

AGG_MODES = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm")


# ---------------------------------------------------------------------------------------------
# 1-2. Advantages
# ---------------------------------------------------------------------------------------------

def group_advantages(rewards: Tensor, group_ids: Tensor | Sequence[Hashable],
                     norm_by_std: bool = True, eps: float = 1e-6) -> Tensor:
    """One advantage per rollout, centred within its group (section 1 of the module docstring).

    rewards: (N,) final reward per rollout; group_ids: (N,) any hashable id per rollout (the prompt
    it came from). Returns (N,) float advantages. Sample std (unbiased, like torch.std / verl).
    A group of one gets 0; a group whose rewards are all equal gets 0 (its std is 0).
    """
    rewards = torch.as_tensor(rewards, dtype=torch.float64)
    ids = group_ids.tolist() if isinstance(group_ids, Tensor) else list(group_ids)
    if rewards.dim() != 1 or len(ids) != rewards.shape[0]:
        raise ValueError(f"rewards must be 1-D and match group_ids: got rewards of shape "
                         f"{tuple(rewards.shape)} and {len(ids)} group ids")
    advantages = torch.zeros_like(rewards)                                   # (N,)
    members: dict[Hashable, list[int]] = {}
    for i, gid in enumerate(ids):
        members.setdefault(gid, []).append(i)
    for rows in members.values():
        if len(rows) == 1:
            continue                                  # no baseline for a group of one: A = 0
        group_rewards = rewards[rows]                                        # (G,)
        centred = group_rewards - group_rewards.mean()
        if norm_by_std:
            centred = centred / (group_rewards.std() + eps)                  # std: divides by G-1
        advantages[rows] = centred
    return advantages.float()


def broadcast_advantages(conv_rollout_index: Tensor | Sequence[int], rollout_advantages: Tensor,
                         response_mask: Tensor) -> Tensor:
    """Give each conversation its rollout's advantage on every response token (section 2).

    conv_rollout_index: (C,) for each conversation (row of the padded batch), the index of its
    rollout in `rollout_advantages` (N,). response_mask: (C, T), 1 on response tokens.
    Returns (C, T) token advantages, exactly 0 on prompt and padding tokens.
    """
    index = torch.as_tensor(conv_rollout_index, dtype=torch.long)           # (C,)
    if response_mask.dim() != 2 or index.shape != (response_mask.shape[0],):
        raise ValueError(f"need one rollout index per row of response_mask (C, T): got "
                         f"{tuple(index.shape)} indices for a mask of shape "
                         f"{tuple(response_mask.shape)}")
    n = rollout_advantages.shape[0]
    if index.numel() and (index.min() < 0 or index.max() >= n):
        raise ValueError(f"conv_rollout_index must lie in [0, {n}), got {index.tolist()}")
    per_conversation = rollout_advantages[index].float()                     # (C,)
    return per_conversation[:, None] * response_mask.float()                # (C, T)


# ---------------------------------------------------------------------------------------------
# 7. Dynamic sampling
# ---------------------------------------------------------------------------------------------

def keep_groups_with_signal(rewards: Tensor, group_ids: Tensor | Sequence[Hashable]) -> Tensor:
    """(N,) bool: True for rollouts whose group has at least two different rewards.

    All-equal groups (including groups of one) have zero advantage everywhere, so they would only
    dilute the token-mean. Rewards are compared exactly (max == min), as DAPO's std == 0 test does.
    """
    rewards = torch.as_tensor(rewards, dtype=torch.float64)
    ids = group_ids.tolist() if isinstance(group_ids, Tensor) else list(group_ids)
    if rewards.dim() != 1 or len(ids) != rewards.shape[0]:
        raise ValueError(f"rewards must be 1-D and match group_ids: got rewards of shape "
                         f"{tuple(rewards.shape)} and {len(ids)} group ids")
    spread: dict[Hashable, tuple[float, float]] = {}
    for r, gid in zip(rewards.tolist(), ids):
        lo, hi = spread.get(gid, (r, r))
        spread[gid] = (min(lo, r), max(hi, r))
    return torch.tensor([spread[gid][1] > spread[gid][0] for gid in ids], dtype=torch.bool)


@dataclass
class FillStats:
    draws: int              # prompt batches generated
    groups_seen: int        # groups generated over all draws
    groups_kept: int        # groups with reward variance (before cutting to batch_size)
    kept_fraction: float    # groups_kept / groups_seen: the metric to log
    hit_bound: bool         # stopped at max_gen_batches with fewer than batch_size groups


G = TypeVar("G")


class NoSignalError(RuntimeError):
    """fill_batch found too few groups with reward variance (none at all, or too few with strict)."""


def fill_batch(draw_fn: Callable[[], list[G]], rewards_of: Callable[[G], Sequence[float]],
               batch_size: int, max_gen_batches: int | None, strict: bool = False
               ) -> tuple[list[G], FillStats]:
    """Draw prompt batches until `batch_size` groups with signal are kept (DAPO dynamic sampling).

    draw_fn() generates one prompt batch and returns its groups; rewards_of(group) gives that
    group's rollout rewards. Groups whose rewards are all equal are dropped. Once `batch_size`
    groups are kept, the surplus of the last draw is discarded (as DAPO's reference does), so the
    batch is exactly `batch_size` groups. `max_gen_batches=None` means no bound.

    At the bound: DAPO's reference code raises. Here (strict=False, the default) we train on the
    groups we have, log a warning and set `stats.hit_bound`: a small run whose policy is already
    at 0% or 100% on most prompts should not crash. strict=True raises like the reference.
    If not a single group was kept, there is nothing to train on: NoSignalError either way (a
    RuntimeError of its own, so a caller can tell it from an error inside draw_fn, an OOM say).
    """
    if batch_size < 1 or (max_gen_batches is not None and max_gen_batches < 1):
        raise ValueError(f"batch_size and max_gen_batches must be >= 1 (max_gen_batches may be "
                         f"None for no bound), got {batch_size} and {max_gen_batches}")
    kept: list[G] = []
    draws = seen = 0
    while len(kept) < batch_size and (max_gen_batches is None or draws < max_gen_batches):
        groups = draw_fn()
        draws += 1
        seen += len(groups)
        for group in groups:
            rewards = list(rewards_of(group))
            if len(rewards) > 1 and max(rewards) > min(rewards):
                kept.append(group)
    stats = FillStats(draws=draws, groups_seen=seen, groups_kept=len(kept),
                      kept_fraction=len(kept) / seen if seen else 0.0,
                      hit_bound=len(kept) < batch_size)
    if stats.hit_bound:
        message = (f"dynamic sampling: only {len(kept)} of {batch_size} groups had reward "
                   f"variance after {draws} draws (max_gen_batches={max_gen_batches}; "
                   f"kept fraction {stats.kept_fraction:.3f})")
        if strict or not kept:
            raise NoSignalError(message)
        log.warning(message + "; training on the groups kept")
    return kept[:batch_size], stats


# ---------------------------------------------------------------------------------------------
# 3-6. The policy loss
# ---------------------------------------------------------------------------------------------

def clipped_surrogate(ratio: Tensor, advantages: Tensor, eps_low: float = 0.2,
                      eps_high: float = 0.28, dual_clip_c: float | None = None) -> Tensor:
    """Per-token loss -min(r*A, clip(r, 1-eps_low, 1+eps_high)*A), then min(., -c*A) where A < 0."""
    unclipped = -advantages * ratio                                          # (B, T)
    clipped = -advantages * ratio.clamp(1.0 - eps_low, 1.0 + eps_high)       # (B, T)
    loss = torch.maximum(unclipped, clipped)          # max of negatives == -min(rA, clip(r)A)
    if dual_clip_c is not None:
        capped = torch.minimum(loss, -dual_clip_c * advantages)
        loss = torch.where(advantages < 0, capped, loss)
    return loss


def kl_k3(logp_new: Tensor, logp_ref: Tensor, clamp: float = 20.0, max_kl: float = 10.0) -> Tensor:
    """(B, T) k3 estimator of KL(new || ref): exp(d) - d - 1 with d = logp_ref - logp_new (>= 0).

    d is clamped to [-clamp, clamp] so one wild token cannot overflow exp, and the result to
    [0, max_kl] (as verl's low_var_kl): exp(d) grows so fast that without the cap one token the
    policy moved far from the reference (d = 15 gives 3.3e6) would outweigh every other token's
    loss and gradient. Where the cap is active the token has no KL gradient.

    >>> [round(x, 4) for x in kl_k3(torch.zeros(3), torch.tensor([0.0, 1.0, 15.0])).tolist()]  # e - 2
    [0.0, 0.7183, 10.0]
    """
    d = (logp_ref - logp_new).clamp(-clamp, clamp)
    return (torch.exp(d) - d - 1.0).clamp(max=max_kl)


def logprobs_from_logits(logits: Tensor, token_ids: Tensor) -> Tensor:
    """(B, T) log-probability of token_ids (B, T) under logits (B, T, V) (temperature 1)."""
    return torch.log_softmax(logits.float(), dim=-1).gather(-1, token_ids[..., None]).squeeze(-1)


def entropy_from_logits(logits: Tensor) -> Tensor:
    """(B, T) entropy of softmax(logits (B, T, V)): H = logsumexp(z) - sum_v p_v z_v (stable)."""
    logits = logits.float()
    logits = logits - logits.amax(dim=-1, keepdim=True)   # same H; keeps both terms small
    probs = torch.softmax(logits, dim=-1)
    return torch.logsumexp(logits, dim=-1) - (probs * logits).sum(dim=-1)


def loss_normalizers(response_mask: Tensor) -> dict[str, float]:
    """The normalizers of a whole mini-batch, to pass to every micro-batch's `policy_loss`.

    token_normalizer: number of response tokens in the mini-batch (token-mean).
    seq_normalizer:   number of conversations with at least one response token (seq-mean modes).
    Usage:  norms = loss_normalizers(minibatch_mask)
            for micro in split(minibatch): policy_loss(..., **norms)[0].backward()
    See section 5 of the module docstring for why this is exact.
    """
    mask = response_mask.bool()
    return {"token_normalizer": float(mask.sum()),
            "seq_normalizer": float(mask.any(dim=-1).sum())}


def aggregate(loss_per_token: Tensor, response_mask: Tensor, agg: str = "token-mean",
              token_normalizer: float | None = None, seq_normalizer: float | None = None,
              max_len: int | None = None) -> Tensor:
    """Reduce (B, T) per-token losses to a scalar with one of AGG_MODES (section 4).

    Normalizers default to this call's own counts (exact when there is no micro-batching); pass
    the mini-batch's (`loss_normalizers`) when accumulating. max_len is the constant response
    budget and is required for seq-mean-token-sum-norm.
    """
    if agg not in AGG_MODES:
        raise ValueError(f"unknown agg mode {agg!r}; valid choices: {', '.join(AGG_MODES)}")
    mask = response_mask.to(loss_per_token.dtype)                           # (B, T)
    token_losses = loss_per_token * mask                                     # (B, T)
    n_tokens_per_seq = mask.sum(dim=-1)                                      # (B,)
    if seq_normalizer is None:
        seq_normalizer = float((n_tokens_per_seq > 0).sum())
    if agg == "token-mean":
        if token_normalizer is None:
            token_normalizer = float(mask.sum())
        return token_losses.sum() / max(token_normalizer, 1.0)
    if agg == "seq-mean-token-mean":
        seq_means = token_losses.sum(dim=-1) / n_tokens_per_seq.clamp(min=1.0)   # (B,)
        return seq_means.sum() / max(seq_normalizer, 1.0)
    if max_len is None:
        raise ValueError("agg='seq-mean-token-sum-norm' needs max_len: the constant response "
                         "budget (e.g. max(memory_tokens, answer_tokens))")
    return token_losses.sum() / (max(seq_normalizer, 1.0) * max_len)


def policy_loss(logp_new: Tensor, logp_old: Tensor, advantages: Tensor, response_mask: Tensor,
                eps_low: float = 0.2, eps_high: float = 0.28, dual_clip_c: float | None = None,
                agg: str = "token-mean", token_normalizer: float | None = None,
                seq_normalizer: float | None = None, max_len: int | None = None,
                logp_ref: Tensor | None = None, kl_coef: float = 0.0,
                log_ratio_clamp: float = 20.0, entropy: Tensor | None = None,
                entropy_coef: float = 0.0) -> tuple[Tensor, dict[str, float]]:
    """DAPO loss of one (micro-)batch of conversations, plus diagnostics.

    All tensors (B, T), aligned on the token being predicted: logp_new (with grad), logp_old
    (the policy that sampled the rollouts, before this step's updates), advantages (from
    `broadcast_advantages`), response_mask (1 on response tokens), optional logp_ref (frozen
    reference: in the loss when kl_coef > 0, else only logged) and entropy (per-token entropy of
    the current policy: logged, and with entropy_coef > 0 an entropy bonus, verl's entropy_coeff:
    loss = pg_loss - entropy_coef * agg(entropy), which needs entropy's gradient; DAPO uses none).
    Returns (loss, metrics). Metrics are plain floats, means over this call's
    response tokens; `response_tokens` lets a trainer average them across micro-batches:
        clip_frac_low   share of tokens with A < 0 and r < 1 - eps_low  (zero gradient)
        clip_frac_high  share of tokens with A > 0 and r > 1 + eps_high (zero gradient)
        dual_clip_frac  share of tokens with A < 0 and r > c (capped; 0 without dual clip)
        ratio_mean      mean r;  approx_kl  mean(logp_old - logp_new), the k1 estimate of
                        KL(old || new) under tokens sampled from the old policy (as verl's ppo_kl)
        pg_loss, kl_ref (when used), entropy (when given), response_tokens
    """
    shape = logp_new.shape
    named = {"logp_old": logp_old, "advantages": advantages, "response_mask": response_mask,
             "logp_ref": logp_ref, "entropy": entropy}
    for name, tensor in named.items():
        if tensor is not None and tensor.shape != shape:
            raise ValueError(f"{name} has shape {tuple(tensor.shape)}, expected "
                             f"{tuple(shape)} like logp_new (B, T)")
    if len(shape) != 2:
        raise ValueError(f"logp_new must be (B, T), got shape {tuple(shape)}")
    if not (0.0 <= eps_low < 1.0 and eps_high >= 0.0):
        raise ValueError(f"need 0 <= eps_low < 1 and eps_high >= 0, got {eps_low}, {eps_high}")
    if dual_clip_c is not None and dual_clip_c <= 1.0:
        raise ValueError(f"dual_clip_c must be > 1 (DAPO/verl use 3), got {dual_clip_c}")
    if kl_coef > 0.0 and logp_ref is None:
        raise ValueError("kl_coef > 0 needs logp_ref (log-probs under the reference policy)")
    if entropy_coef and entropy is None:
        raise ValueError("entropy_coef != 0 needs entropy (the current policy's per-token entropy)")

    dtype = torch.promote_types(logp_new.dtype, torch.float32)   # bf16 -> fp32, fp64 stays
    mask = response_mask.bool()                                              # (B, T)
    zero = torch.zeros((), dtype=dtype, device=logp_new.device)
    # Padding may hold garbage (even inf/nan) log-probs: replace it by 0 before exp and grad.
    log_ratio = torch.where(mask, logp_new.to(dtype) - logp_old.to(dtype), zero)
    log_ratio = log_ratio.clamp(-log_ratio_clamp, log_ratio_clamp)          # (B, T)
    ratio = torch.exp(log_ratio)                                             # (B, T)
    adv = torch.where(mask, advantages.to(dtype), zero)                      # (B, T)

    per_token = clipped_surrogate(ratio, adv, eps_low, eps_high, dual_clip_c)  # (B, T)
    norms = dict(token_normalizer=token_normalizer, seq_normalizer=seq_normalizer,
                 max_len=max_len)
    pg_loss = aggregate(per_token, mask, agg, **norms)
    loss = pg_loss
    kl_per_token = None
    if logp_ref is not None:            # with kl_coef == 0 the KL is only logged
        new_on_response = torch.where(mask, logp_new.to(dtype), zero)          # (B, T)
        ref_on_response = torch.where(mask, logp_ref.to(dtype), zero)          # (B, T)
        kl_per_token = kl_k3(new_on_response, ref_on_response, clamp=log_ratio_clamp)
        if kl_coef > 0.0:
            loss = loss + kl_coef * aggregate(kl_per_token, mask, agg, **norms)
    if entropy_coef:                    # padding may hold garbage entropies too: zeroed first
        loss = loss - entropy_coef * aggregate(torch.where(mask, entropy.to(dtype), zero), mask, agg, **norms)

    with torch.no_grad():
        n = max(int(mask.sum()), 1)

        def share(condition: Tensor) -> float:
            return float((condition & mask).sum()) / n

        metrics = {
            "pg_loss": float(pg_loss),
            "clip_frac_low": share((adv < 0) & (ratio < 1.0 - eps_low)),
            "clip_frac_high": share((adv > 0) & (ratio > 1.0 + eps_high)),
            "dual_clip_frac": share((adv < 0) & (ratio > dual_clip_c)) if dual_clip_c else 0.0,
            "ratio_mean": float((ratio * mask).sum()) / n,
            "approx_kl": float((-log_ratio * mask).sum()) / n,
            "response_tokens": float(mask.sum()),
        }
        if kl_per_token is not None:
            metrics["kl_ref"] = float((kl_per_token * mask).sum()) / n
        if entropy is not None:
            metrics["entropy"] = float(torch.where(mask, entropy.to(dtype), zero).sum()) / n
    return loss, metrics


# ---------------------------------------------------------------------------------------------
# 8. Soft overlong punishment
# ---------------------------------------------------------------------------------------------

def overlong_penalty(length: int, max_len: int, cache_len: int) -> float:
    """DAPO's soft overlong punishment: 0, then a linear ramp to -1 over the last cache_len tokens.

    0 if L <= max_len - cache_len; ((max_len - cache_len) - L) / cache_len up to L = max_len;
    -1 beyond. Both boundaries belong to the lower region: L = max_len - cache_len gives 0 and
    L = max_len gives -1 (a response cut at its budget gets the full penalty).
    """
    if not 0 < cache_len <= max_len:
        raise ValueError(f"need 0 < cache_len <= max_len, got cache_len={cache_len}, "
                         f"max_len={max_len}")
    free = max_len - cache_len
    if length <= free:
        return 0.0
    if length <= max_len:
        return (free - length) / cache_len
    return -1.0


def rollout_overlong_penalty(response_lengths: Sequence[int], budgets: Sequence[int] | int,
                             cache_lens: Sequence[int] | int) -> float:
    """Overlong penalty of a multi-conversation rollout: the worst (minimum) over its conversations.

    response_lengths: one length per conversation (memory turns, then the answer); budgets: the
    response budget of each (memory_tokens for memory turns, answer_tokens for the answer) or one
    int for all; cache_lens likewise. The result, in [-1, 0], is added to the rollout's reward and
    so reaches every conversation through the broadcast advantage.

    Why the minimum: a memory turn that runs into memory_tokens is cut there, and the cut memory
    can lose the very fact the answer needs; an answer cut at answer_tokens loses its \\boxed{}.
    Either way the rollout was hurt, so any turn near its budget should cost. The minimum keeps the
    penalty in [-1, 0] whatever the number of chunks K: a sum would punish long documents for
    having more turns, and a mean would dilute one runaway turn by 1/(K+1). For an answer-only
    penalty, pass only the final conversation's length and budget.
    """
    lengths = list(response_lengths)
    n = len(lengths)
    budget_list = [budgets] * n if isinstance(budgets, int) else list(budgets)
    cache_list = [cache_lens] * n if isinstance(cache_lens, int) else list(cache_lens)
    if n == 0 or len(budget_list) != n or len(cache_list) != n:
        raise ValueError(f"need one budget and cache length per conversation: got {n} lengths, "
                         f"{len(budget_list)} budgets, {len(cache_list)} cache lengths")
    return min(overlong_penalty(length, budget, cache)
               for length, budget, cache in zip(lengths, budget_list, cache_list))


__all__ = [
    "AGG_MODES", "FillStats", "NoSignalError", "aggregate", "broadcast_advantages", "clipped_surrogate",
    "entropy_from_logits", "fill_batch", "group_advantages", "keep_groups_with_signal",
    "kl_k3", "logprobs_from_logits", "loss_normalizers", "overlong_penalty", "policy_loss",
    "rollout_overlong_penalty",
]
