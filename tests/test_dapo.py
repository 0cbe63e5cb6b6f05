"""Tests for dapo.py. Every expected number is worked out by hand in the comment beside it."""

import doctest
import logging
import math

import pytest
import torch

import dapo


def close(actual, expected, tol=1e-6):
    return torch.allclose(torch.as_tensor(actual, dtype=torch.float64),
                          torch.as_tensor(expected, dtype=torch.float64), atol=tol, rtol=0)


# ------------------------------------------------------------------------------------------
# Group advantages
# ------------------------------------------------------------------------------------------

# Groups, interleaved on purpose:
#   "a": [1, 0, 0]  mean 1/3; sample var ((2/3)^2 + 2*(1/3)^2) / 2 = 1/3, std 0.577350
#                   -> (2/3)/0.577350 = 1.154701, (-1/3)/0.577350 = -0.577350
#   "b": [3, 1]     mean 2; sample std sqrt((1 + 1) / 1) = 1.414214 -> +-0.707107
#                   (population std would be 1 and give +-1: this pins the sample std)
#   "c": [1, 1, 1]  all equal -> 0
#   "d": [0.7]      a group of one -> 0
REWARDS = torch.tensor([1.0, 3.0, 0.0, 1.0, 1.0, 0.7, 1.0, 0.0, 1.0])
GROUPS = ["a", "b", "a", "c", "c", "d", "b", "a", "c"]


def test_group_advantages_with_std():
    adv = dapo.group_advantages(REWARDS, GROUPS, norm_by_std=True)
    expected = [1.154701, 0.707107, -0.577350, 0.0, 0.0, 0.0, -0.707107, -0.577350, 0.0]
    assert close(adv, expected, tol=1e-5)   # the +1e-6 in the denominator moves the 6th digit


def test_group_advantages_without_std_dr_grpo():
    adv = dapo.group_advantages(REWARDS, GROUPS, norm_by_std=False)
    # "a": 1 - 1/3 = 2/3, 0 - 1/3 = -1/3; "b": 3 - 2 = 1, 1 - 2 = -1; "c", "d": 0
    expected = [2 / 3, 1.0, -1 / 3, 0.0, 0.0, 0.0, -1.0, -1 / 3, 0.0]
    assert close(adv, expected)


def test_group_advantages_accepts_tensor_ids_and_rejects_mismatch():
    adv = dapo.group_advantages(torch.tensor([0.0, 2.0]), torch.tensor([7, 7]), norm_by_std=False)
    assert close(adv, [-1.0, 1.0])
    with pytest.raises(ValueError, match="group_ids"):
        dapo.group_advantages(torch.tensor([0.0, 1.0, 2.0]), [0, 0])


# ------------------------------------------------------------------------------------------
# Multi-conversation broadcast
# ------------------------------------------------------------------------------------------

def test_broadcast_reaches_exactly_the_response_tokens():
    rollout_adv = torch.tensor([0.5, -1.0, 2.0])
    # rollout 0 has 2 conversations, rollout 1 has 1, rollout 2 has 3 (rows of the batch)
    conv_rollout_index = [0, 0, 1, 2, 2, 2]
    mask = torch.tensor([
        [0, 0, 1, 1, 0],    # prompt 2, response 2, padding 1
        [0, 1, 1, 1, 1],
        [0, 0, 0, 1, 0],
        [0, 1, 0, 0, 0],
        [0, 0, 1, 1, 1],
        [0, 0, 0, 0, 0],    # a row with no response token gets nothing
    ])
    expected = torch.tensor([
        [0, 0, 0.5, 0.5, 0],
        [0, 0.5, 0.5, 0.5, 0.5],
        [0, 0, 0, -1.0, 0],
        [0, 2.0, 0, 0, 0],
        [0, 0, 2.0, 2.0, 2.0],
        [0, 0, 0, 0, 0],
    ])
    assert torch.equal(dapo.broadcast_advantages(conv_rollout_index, rollout_adv, mask), expected)


def test_broadcast_rejects_bad_indices():
    mask = torch.ones(2, 3)
    with pytest.raises(ValueError, match="one rollout index per row"):
        dapo.broadcast_advantages([0], torch.tensor([1.0]), mask)
    with pytest.raises(ValueError, match="must lie in"):
        dapo.broadcast_advantages([0, 3], torch.tensor([1.0, 2.0]), mask)


# ------------------------------------------------------------------------------------------
# Dynamic sampling
# ------------------------------------------------------------------------------------------

def test_keep_groups_with_signal():
    rewards = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.5, 0.0, 1.0])
    groups = ["x", "x", "y", "y", "z", "z", "w", "w", "solo"]
    # x varies, y all 1, z all 0, w varies, solo is alone
    expected = [True, True, False, False, False, False, True, True, False]
    assert dapo.keep_groups_with_signal(rewards, groups).tolist() == expected


def scripted_draws(batches):
    calls = {"n": 0}

    def draw():
        if calls["n"] >= len(batches):
            raise AssertionError("draw_fn called more often than needed")
        calls["n"] += 1
        return batches[calls["n"] - 1]
    return draw, calls


BATCHES = [
    [{"id": 1, "rewards": [1, 1]}, {"id": 2, "rewards": [0, 1]}, {"id": 3, "rewards": [0, 0]}],
    [{"id": 4, "rewards": [0.5, 0.5]}, {"id": 5, "rewards": [1, 0]}],
    [{"id": 6, "rewards": [1, 0, 1]}, {"id": 7, "rewards": [0, 0]}, {"id": 8, "rewards": [0.2, 0]}],
]


def rewards_of(group):
    return group["rewards"]


def test_fill_batch_stops_once_full_and_cuts_the_surplus():
    draw, calls = scripted_draws(BATCHES)
    kept, stats = dapo.fill_batch(draw, rewards_of, batch_size=3, max_gen_batches=5)
    # kept with signal: 2 (draw 1), 5 (draw 2), 6 and 8 (draw 3) -> 4 >= 3, stop; cut to 3
    assert [g["id"] for g in kept] == [2, 5, 6]
    assert calls["n"] == 3 and stats.draws == 3
    assert stats.groups_seen == 8 and stats.groups_kept == 4
    assert stats.kept_fraction == 0.5           # 4 / 8
    assert not stats.hit_bound


def test_fill_batch_at_the_bound_trains_on_what_it_has_and_logs(caplog):
    draw, calls = scripted_draws(BATCHES)
    with caplog.at_level(logging.WARNING, logger="dapo"):
        kept, stats = dapo.fill_batch(draw, rewards_of, batch_size=3, max_gen_batches=2)
    assert [g["id"] for g in kept] == [2, 5]
    assert calls["n"] == 2 and stats.hit_bound
    assert stats.kept_fraction == 0.4           # 2 kept of 3 + 2 seen
    assert "only 2 of 3 groups" in caplog.text


def test_fill_batch_raises_when_strict_or_when_nothing_was_kept():
    draw, _ = scripted_draws(BATCHES)
    with pytest.raises(dapo.NoSignalError, match="only 2 of 3"):
        dapo.fill_batch(draw, rewards_of, batch_size=3, max_gen_batches=2, strict=True)
    flat = [[{"rewards": [1, 1]}], [{"rewards": [0, 0]}]]
    draw, _ = scripted_draws(flat)
    with pytest.raises(dapo.NoSignalError, match="only 0 of 1"):
        dapo.fill_batch(draw, rewards_of, batch_size=1, max_gen_batches=2)
    with pytest.raises(ValueError, match="max_gen_batches"):
        dapo.fill_batch(draw, rewards_of, batch_size=1, max_gen_batches=0)


def test_fill_batch_without_bound():
    draw, calls = scripted_draws(BATCHES)
    kept, stats = dapo.fill_batch(draw, rewards_of, batch_size=2, max_gen_batches=None)
    assert [g["id"] for g in kept] == [2, 5] and calls["n"] == 2 and not stats.hit_bound


# ------------------------------------------------------------------------------------------
# Clipped surrogate
# ------------------------------------------------------------------------------------------
# One row: a prompt token, 7 response tokens, one padding token holding garbage.
#   token  r     A    -min(rA, clip(r, 0.8, 1.28) A)       gradient d/d logp_new = -A r / 7
#   t1     1.1   +2   -min(2.2, 2.2)   = -2.2               -2.2 / 7
#   t2     1.5   +2   -min(3.0, 2.56)  = -2.56  clipped high 0
#   t3     0.5   +2   -min(1.0, 1.6)   = -1.0               -1.0 / 7
#   t4     0.5   -1   -min(-0.5, -0.8) =  0.8   clipped low  0
#   t5     0.9   -1   -min(-0.9, -0.9) =  0.9                0.9 / 7
#   t6     1.5   -1   -min(-1.5, -1.28)=  1.5                1.5 / 7
#   t7     4.0   -1   -min(-4.0, -1.28)=  4.0                4.0 / 7
#          dual clip c = 3 caps t7 at -c*A = 3.0, gradient 0
# sum = -2.2 - 2.56 - 1.0 + 0.8 + 0.9 + 1.5 + 4.0 = 1.44 -> token-mean 1.44 / 7 = 0.205714
# with dual clip: 1.44 - 1.0 = 0.44 -> 0.44 / 7 = 0.062857
RATIOS = [1.0, 1.1, 1.5, 0.5, 0.5, 0.9, 1.5, 4.0, 1.0]
ADVS = [0.0, 2.0, 2.0, 2.0, -1.0, -1.0, -1.0, -1.0, 5.0]
MASK = [0, 1, 1, 1, 1, 1, 1, 1, 0]


def surrogate_inputs():
    logp_old = torch.full((1, 9), -1.0)
    logp_old[0, 8] = float("-inf")                      # garbage on the padding token
    logp_new = (logp_old + torch.log(torch.tensor([RATIOS]))).clone()
    logp_new[0, 8] = float("nan")
    logp_new.requires_grad_(True)
    return logp_new, logp_old, torch.tensor([ADVS]), torch.tensor([MASK])


def test_clipped_surrogate_values_and_gradients():
    logp_new, logp_old, adv, mask = surrogate_inputs()
    loss, metrics = dapo.policy_loss(logp_new, logp_old, adv, mask)
    assert close(loss, 1.44 / 7)
    loss.backward()
    expected_grad = [0, -2.2 / 7, 0, -1.0 / 7, 0, 0.9 / 7, 1.5 / 7, 4.0 / 7, 0]
    assert close(logp_new.grad[0], expected_grad)
    assert metrics["clip_frac_high"] == pytest.approx(1 / 7)     # t2
    assert metrics["clip_frac_low"] == pytest.approx(1 / 7)      # t4
    assert metrics["dual_clip_frac"] == 0.0
    assert metrics["ratio_mean"] == pytest.approx(10 / 7)        # (1.1+1.5+.5+.5+.9+1.5+4) / 7
    # approx_kl = mean(old - new) = -ln(1.1*1.5*.5*.5*.9*1.5*4)/7 = -ln(2.2275)/7 = -0.800880/7 = -0.114411
    assert metrics["approx_kl"] == pytest.approx(-0.114411, abs=1e-6)
    assert metrics["response_tokens"] == 7


def test_dual_clip_caps_negative_advantage_loss():
    logp_new, logp_old, adv, mask = surrogate_inputs()
    loss, metrics = dapo.policy_loss(logp_new, logp_old, adv, mask, dual_clip_c=3.0)
    assert close(loss, 0.44 / 7)
    loss.backward()
    expected_grad = [0, -2.2 / 7, 0, -1.0 / 7, 0, 0.9 / 7, 1.5 / 7, 0, 0]   # t7 now capped
    assert close(logp_new.grad[0], expected_grad)
    assert metrics["dual_clip_frac"] == pytest.approx(1 / 7)


def test_log_ratio_clamp():
    # log-ratios +3 (A=-1) and -3 (A=+1), clamped to +-1: r = e and 1/e, both unclipped branches
    # loss = (e*1 + (-1/e)*1) / 2 = (2.718282 - 0.367879) / 2 = 1.175201; gradient 0 (clamped)
    logp_old = torch.zeros(1, 2)
    logp_new = torch.tensor([[3.0, -3.0]], requires_grad=True)
    loss, _ = dapo.policy_loss(logp_new, logp_old, torch.tensor([[-1.0, 1.0]]), torch.ones(1, 2),
                               log_ratio_clamp=1.0)
    assert close(loss, 1.175201)
    loss.backward()
    assert close(logp_new.grad, [[0.0, 0.0]])


# ------------------------------------------------------------------------------------------
# Aggregation modes on two conversations
# ------------------------------------------------------------------------------------------
# conv 1: prompt 3, response r = [1.1, 1.0] with A = +1 -> losses -1.1, -1.0   (sum -2.1, mean -1.05)
# conv 2: prompt 2, response r = [1.0, 1.2, 0.85, 1.0] with A = -1, all inside [0.8, 1.28]
#         -> losses 1.0, 1.2, 0.85, 1.0                                    (sum 4.05, mean 1.0125)
# token-mean               (-2.1 + 4.05) / 6          = 0.325
# seq-mean-token-mean      (-1.05 + 1.0125) / 2       = -0.01875
# seq-mean-token-sum-norm  (-2.1 + 4.05) / (2 * 4)    = 0.24375   (response budget max_len 4)

def two_conversations():
    mask = torch.tensor([[0, 0, 0, 1, 1, 0, 0],
                         [0, 0, 1, 1, 1, 1, 0]])
    ratios = torch.tensor([[1, 1, 1, 1.1, 1.0, 1, 1],
                           [1, 1, 1.0, 1.2, 0.85, 1.0, 1]])
    adv = dapo.broadcast_advantages([0, 1], torch.tensor([1.0, -1.0]), mask)
    logp_old = torch.full((2, 7), -2.0)
    return logp_old + torch.log(ratios), logp_old, adv, mask


@pytest.mark.parametrize("agg, expected", [
    ("token-mean", 0.325),
    ("seq-mean-token-mean", -0.01875),
    ("seq-mean-token-sum-norm", 0.24375),
])
def test_aggregation_modes_by_hand(agg, expected):
    loss, _ = dapo.policy_loss(*two_conversations(), agg=agg, max_len=4)
    assert close(loss, expected)


def test_bad_inputs_raise_clear_errors():
    logp_new, logp_old, adv, mask = two_conversations()
    with pytest.raises(ValueError, match="unknown agg mode 'mean'.*token-mean"):
        dapo.policy_loss(logp_new, logp_old, adv, mask, agg="mean")
    with pytest.raises(ValueError, match="advantages has shape"):
        dapo.policy_loss(logp_new, logp_old, adv[:, :3], mask)
    with pytest.raises(ValueError, match="needs max_len"):
        dapo.policy_loss(logp_new, logp_old, adv, mask, agg="seq-mean-token-sum-norm")
    with pytest.raises(ValueError, match="needs logp_ref"):
        dapo.policy_loss(logp_new, logp_old, adv, mask, kl_coef=0.001)


# ------------------------------------------------------------------------------------------
# Gradient accumulation: micro-batches add up to the mini-batch exactly
# ------------------------------------------------------------------------------------------

def random_minibatch(seed=0, rows=6, width=10):
    g = torch.Generator().manual_seed(seed)
    lengths_prompt = torch.randint(1, 4, (rows,), generator=g)
    lengths_response = torch.tensor([5, 1, 6, 0, 3, 2])    # very different, one row empty
    positions = torch.arange(width)[None, :]
    mask = ((positions >= lengths_prompt[:, None])
            & (positions < (lengths_prompt + lengths_response)[:, None])).float()
    logp_old = -torch.rand(rows, width, generator=g) * 3
    logp_new = logp_old + 0.7 * torch.randn(rows, width, generator=g)   # ratios well spread
    logp_ref = logp_old + 0.2 * torch.randn(rows, width, generator=g)
    rollout_adv = torch.tensor([0.8, -0.5, -1.5, 0.3, 1.2, -0.9])      # both signs, many sizes
    adv = dapo.broadcast_advantages(list(range(rows)), rollout_adv, mask)
    first_response = int(mask[2].argmax())
    logp_new[2, first_response] = logp_old[2, first_response] + 1.5    # r = 4.5 > c with A < 0
    return logp_new, logp_old, logp_ref, adv, mask


@pytest.mark.parametrize("agg", dapo.AGG_MODES)
@pytest.mark.parametrize("extras", [{}, {"dual_clip_c": 3.0, "kl_coef": 0.001}])
def test_micro_batches_sum_to_the_mini_batch(agg, extras):
    logp_new, logp_old, logp_ref, adv, mask = random_minibatch()
    options = dict(agg=agg, max_len=10, **extras)
    if "kl_coef" in extras:
        options["logp_ref"] = logp_ref

    whole = logp_new.clone().requires_grad_(True)
    full_loss, metrics = dapo.policy_loss(whole, logp_old, adv, mask, **options)
    full_loss.backward()
    if "dual_clip_c" in extras:
        assert metrics["dual_clip_frac"] > 0     # every branch of the loss is exercised
    assert metrics["clip_frac_low"] > 0 and metrics["clip_frac_high"] > 0

    norms = dapo.loss_normalizers(mask)
    assert norms == {"token_normalizer": 17.0, "seq_normalizer": 5.0}   # 5+1+6+0+3+2; 5 non-empty
    for sizes in ([6], [1, 5], [2, 3, 1], [4, 2], [1] * 6):
        leaf = logp_new.clone().requires_grad_(True)
        total = torch.zeros(())
        start = 0
        for size in sizes:
            rows = slice(start, start + size)
            opts = dict(options)
            if "logp_ref" in opts:
                opts["logp_ref"] = logp_ref[rows]
            micro_loss, _ = dapo.policy_loss(leaf[rows], logp_old[rows], adv[rows], mask[rows],
                                             **norms, **opts)
            micro_loss.backward()             # accumulate, as a trainer does
            total = total + micro_loss.detach()
            start += size
        assert abs(float(total) - float(full_loss.detach())) < 1e-6, sizes
        assert torch.allclose(leaf.grad, whole.grad, atol=1e-6, rtol=0), sizes


def test_naive_average_of_micro_means_is_not_token_mean():
    # The worked example of the module docstring: 4 tokens of loss 0.5 and 6 of loss 2.0.
    # Token-mean is (4*0.5 + 6*2.0)/10 = 1.4; averaging the two micro means gives 1.25.
    adv = torch.tensor([[-0.5] * 4 + [0.0] * 2, [-2.0] * 6])     # r = 1 -> loss_t = -A
    mask = torch.tensor([[1] * 4 + [0] * 2, [1] * 6])
    zeros = torch.zeros(2, 6)
    full, _ = dapo.policy_loss(zeros, zeros, adv, mask)
    assert close(full, 1.4)
    norms = dapo.loss_normalizers(mask)
    parts = [dapo.policy_loss(zeros[i:i + 1], zeros[i:i + 1], adv[i:i + 1], mask[i:i + 1],
                              **norms)[0] for i in range(2)]
    assert close(parts[0], 0.2) and close(parts[1], 1.2)            # 2/10 and 12/10
    naive = sum(dapo.policy_loss(zeros[i:i + 1], zeros[i:i + 1], adv[i:i + 1],
                                 mask[i:i + 1])[0] for i in range(2)) / 2
    assert close(naive, 1.25)


# ------------------------------------------------------------------------------------------
# KL to the reference, entropy, log-probs
# ------------------------------------------------------------------------------------------

def test_kl_k3_values():
    # d = ref - new: d=0 -> 0; d=1 -> e - 1 - 1 = 0.718282; d=-1 -> 1/e + 1 - 1 = 0.367879
    new = torch.zeros(3)
    ref = torch.tensor([0.0, 1.0, -1.0])
    assert close(dapo.kl_k3(new, ref), [0.0, 0.718282, 0.367879])


def test_kl_k3_is_capped_at_10_like_verl():
    # d = 3: e^3 - 3 - 1 = 16.0855 -> 10, d = 15: 3.27e6 -> 10; d = 2: e^2 - 3 = 4.389056 stays.
    # Gradient in logp_new is 1 - e^d where uncapped (d=2: -6.389056), 0 where capped.
    logp_new = torch.zeros(3, requires_grad=True)
    kl = dapo.kl_k3(logp_new, torch.tensor([2.0, 3.0, 15.0]))
    assert close(kl, [4.389056, 10.0, 10.0])
    kl.sum().backward()
    assert close(logp_new.grad, [-6.389056, 0.0, 0.0])
    result = doctest.testmod(dapo)  # kl_k3's worked example, among others
    assert result.failed == 0 and result.attempted > 0


def test_entropy_metric_ignores_garbage_on_padding():
    # the padded token's entropy is nan: masked out, the metric is the response token's 0.5
    _, metrics = dapo.policy_loss(torch.zeros(1, 2), torch.zeros(1, 2), torch.ones(1, 2),
                                  torch.tensor([[1, 0]]), entropy=torch.tensor([[0.5, float("nan")]]))
    assert metrics["entropy"] == 0.5


def test_kl_term_in_the_loss():
    # A = 0 and r = 1, so only the KL term is left: 0.001 * (0.718282 + 0.367879) / 2
    # = 0.001 * 0.543081. Gradient of k3 in logp_new: 1 - exp(d), times 0.001 / 2:
    # d=1: 0.001 * (1 - 2.718282) / 2 = -0.000859141; d=-1: 0.001 * (1 - 0.367879) / 2 = 0.000316060
    logp_new = torch.zeros(1, 3, requires_grad=True)
    logp_ref = torch.tensor([[1.0, -1.0, float("nan")]])  # last token is padding, garbage there: ignored
    mask = torch.tensor([[1, 1, 0]])
    loss, metrics = dapo.policy_loss(logp_new, torch.zeros(1, 3), torch.zeros(1, 3), mask,
                                     logp_ref=logp_ref, kl_coef=0.001)
    assert close(loss, 0.001 * 0.543081, tol=1e-9)
    assert metrics["kl_ref"] == pytest.approx(0.543081, abs=1e-6)
    loss.backward()
    assert close(logp_new.grad, [[-0.000859141, 0.000316060, 0.0]], tol=1e-9)


def test_entropy_bonus_in_the_loss():
    # A = 0 and r = 1, so only the bonus is left: -0.1 * (0.5 + 0.3) / 2 = -0.04 (the padded
    # token's nan is masked out); d loss / d entropy = -0.1 / 2 on each response token
    entropy = torch.tensor([[0.5, 0.3, float("nan")]], requires_grad=True)
    mask = torch.tensor([[1, 1, 0]])
    loss, metrics = dapo.policy_loss(torch.zeros(1, 3), torch.zeros(1, 3), torch.zeros(1, 3), mask,
                                     entropy=entropy, entropy_coef=0.1)
    assert close(loss, -0.04, tol=1e-7)
    assert metrics["entropy"] == pytest.approx(0.4)
    loss.backward()
    assert close(entropy.grad, [[-0.05, -0.05, 0.0]], tol=1e-7)
    with pytest.raises(ValueError, match="entropy_coef"):
        dapo.policy_loss(torch.zeros(1, 3), torch.zeros(1, 3), torch.zeros(1, 3), mask, entropy_coef=0.1)
    # through entropy_from_logits, a step down the loss flattens the distribution: p = [0.25, 0.75]
    logits = torch.tensor([[[0.0, math.log(3.0)]]], requires_grad=True)
    loss, _ = dapo.policy_loss(torch.zeros(1, 1), torch.zeros(1, 1), torch.zeros(1, 1), torch.ones(1, 1),
                               entropy=dapo.entropy_from_logits(logits), entropy_coef=1.0)
    loss.backward()
    assert logits.grad[0, 0, 0] < 0 < logits.grad[0, 0, 1]  # raises the rare token, lowers the common one


def test_entropy_and_logprobs_from_logits():
    # p = [0.25, 0.75]: H = 0.25*ln 4 + 0.75*ln(4/3) = 0.346574 + 0.215762 = 0.562335
    # uniform over 4: ln 4 = 1.386294; adding 1000 to every logit changes nothing
    logits = torch.tensor([[[0.0, math.log(3.0), -1e9, -1e9], [1000.0, 1000.0, 1000.0, 1000.0]]])
    assert close(dapo.entropy_from_logits(logits), [[0.562335, 1.386294]])
    # log p of token 1 in the first position: ln 0.75 = -0.287682; token 3 in the second: -ln 4
    logp = dapo.logprobs_from_logits(logits, torch.tensor([[1, 3]]))
    assert close(logp, [[-0.287682, -1.386294]])
    # entropy passes through policy_loss as a masked mean: only the first token is response
    _, metrics = dapo.policy_loss(torch.zeros(1, 2), torch.zeros(1, 2), torch.zeros(1, 2),
                                  torch.tensor([[1, 0]]), entropy=torch.tensor([[0.5, 9.0]]))
    assert metrics["entropy"] == pytest.approx(0.5)


# ------------------------------------------------------------------------------------------
# Soft overlong punishment
# ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("length, expected", [
    (5, 0.0),      # well inside: L <= 10 - 4 = 6
    (6, 0.0),      # lower boundary L = L_max - L_cache: still 0
    (7, -0.25),    # (6 - 7) / 4
    (8, -0.5),     # (6 - 8) / 4
    (10, -1.0),    # upper boundary L = L_max: (6 - 10) / 4 = -1
    (11, -1.0),    # beyond
])
def test_overlong_penalty_regions_and_boundaries(length, expected):
    assert dapo.overlong_penalty(length, max_len=10, cache_len=4) == pytest.approx(expected)


def test_overlong_penalty_rejects_bad_cache():
    with pytest.raises(ValueError, match="cache_len"):
        dapo.overlong_penalty(3, max_len=4, cache_len=5)


def test_rollout_overlong_penalty_takes_the_worst_turn():
    # two memory turns (budget 8, cache 2 -> free up to 6) and an answer (budget 6, cache 2 -> 4)
    budgets, caches = [8, 8, 6], 2
    assert dapo.rollout_overlong_penalty([6, 6, 4], budgets, caches) == 0.0      # all at boundary
    assert dapo.rollout_overlong_penalty([5, 7, 3], budgets, caches) == -0.5     # (6-7)/2
    assert dapo.rollout_overlong_penalty([3, 3, 5], budgets, caches) == -0.5     # answer (4-5)/2
    # memory turn cut at its budget (-1) and answer at -0.5: the worst, not the sum -1.5
    assert dapo.rollout_overlong_penalty([5, 8, 5], budgets, caches) == -1.0
    with pytest.raises(ValueError, match="one budget"):
        dapo.rollout_overlong_penalty([5, 8], budgets, caches)
