"""
train.py: the MemAgent recipe end to end (arXiv 2507.02259; DAPO, arXiv 2503.14476).

    python train.py                       # cpu-demo: tiny model, 1 number among 3 prices, <= 15 min
    python train.py --recipe paper --model qwen-ish-0.5b --init-from DIR     # the paper's geometry
    torchrun --nproc_per_node=2 train.py --recipe smoke                       # DDP (gloo on CPU)
    python train.py --baseline            # the full-attention baseline (whole document in the window)

Three stages, each a function that reads top to bottom:

  1. warm_start(): supervised training on rendered agent conversations. The memory targets come from
     a QUESTION-AGNOSTIC policy: after each chunk the target memory is a random subset (of the
     memory's capacity) of the facts seen so far, whatever the question asks: the newest facts
     during a copy curriculum, then a sticky coin (a full memory takes each new fact with
     probability --sft-replace, 1/4) or reservoir sampling (a uniform subset; --sft-replace 0).
     The final target boxes the asked value if the memory holds it, else a wrong guess taken
     from the memory (or "unknown"). So the warm-started agent knows the format (copy facts into
     memory, carry it forward, answer in \\boxed{}) but keeps the asked fact only by luck:
     with 4 needles and room for 1 it answers right about 1/4 of the time. Choosing WHAT to keep is
     left to RL.
  2. rl_step(): multi-conversation DAPO. Roll out `group_size` agents per prompt (rollout.run_agent),
     reward the final answers, drop groups without reward variance (dynamic sampling), broadcast
     each rollout's group advantage to every conversation it holds, score the old log-probs with
     the training forward (as verl does), and take `mini_batches` AdamW steps on the clipped
     surrogate (dapo.policy_loss), micro-batched with exact token-mean.
  3. evaluate(): greedy agent on held-out seeds at 1x, 4x, 16x, 64x the training length, for the
     warm start and for the RL policy; a table on stdout and eval.json in --out-dir.

--baseline trains the comparison instead: the same model from the same warm start (run here, or
--init-from the agent's warmstart/), then supervised to answer with the WHOLE document in its
window (documents from 1x up to the longest that fits), evaluated at the same scales; lengths
beyond its window get no score. infer.py --eval --baseline puts the two side by side.

--max-chunks N (the paper recipes' 8) caps what training reads: a longer document keeps its first
and last N x chunk_tokens / 2 tokens in the warm start and in RL; evaluation reads every chunk.

Outputs in --out-dir: tokenizer/, warmstart/ (model checkpoint), ckpt/ (model + optimizer + step,
written atomically every --save-every steps, what --resume continues from), rl/ (final model),
metrics.jsonl (one line per RL step), eval.json, curves.png (if matplotlib is installed).

DDP: run under torchrun. Every rank rolls out its own share of the prompts (batch_size / world),
and every micro-batch loss is divided by the GLOBAL token count of its mini-batch (an all-reduced
sum). Gradients are then all-reduced with SUM, which makes the update exactly the single-process
token-mean over all ranks' conversations. (Averaging per-rank token means would weight a rank's
tokens by 1/its own count: wrong whenever ranks hold different numbers of tokens.)

Precision: --dtype bfloat16 is mixed precision (see autocast): float32 weights, gradients and AdamW
state, bf16 matmuls, attention and KV cache. --rollout-rows bounds one generate call's rows, and
the start-up "memory plan" line estimates what a run needs per rank (memory_plan).
"""

import argparse
from array import array
import dataclasses
import datetime
import json
import math
import os
import random
import re
import shutil
import sys
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist

import dapo
from memagent import tasks
from memagent.prompts import initial_memory
from memagent.reward import memory_holds
from memagent.tokenizer import HFTokenizer, get_tokenizer, load_tokenizer
from model import PRESETS as MODEL_PRESETS
from model import (Qwen2, check_device, config_from_preset, load_checkpoint, load_hf, recover_swap,
                   remove_stale_staging, run_folder_hint, save_checkpoint, staging_dir, swap_in)
from rollout import (MIN_TEMPERATURE, AgentConfig, check_window, direct_turn_ids, distinct, document_chunks,
                     final_turn_ids, memory_turn_ids, run_agent, run_full_attention)

# -----------------------------------------------------------------------------
# Configuration: one dataclass, named recipes that override it, argparse on top.


@dataclass
class TrainConfig:
    recipe: str = "cpu-demo"
    # model and data
    model: str = "tiny"  # model preset (model.PRESETS)
    init_from: str = ""  # HF Qwen2 directory (or one of our checkpoints): skip the warm start
    baseline: bool = False  # train the full-attention baseline instead of the agent (no RL)
    baseline_steps: int = 300  # --baseline: full-attention supervised steps after the warm start
    task: str = "niah_number_among_prices"  # memagent.tasks.TASKS
    data: str = ""  # a JSONL of samples (or HotpotQA .json) instead of generated tasks
    train_length: int = 384  # training document length in tokens
    n_docs: int = 0  # hotpot_synth or a HotpotQA .json: document count instead of a token length
    vocab_size: int = 2048  # our sentencepiece tokenizer (ignored with --init-from)
    # agent geometry
    chunk_tokens: int = 48  # 8 chunks of a 384-token document: half hold a needle, half none
    memory_tokens: int = 5  # room for one note, " 7." or " $3." (3 tokens each), and the stop id
    answer_tokens: int = 16
    window: int = 0  # positions the agent may use; 0 = the model's maximum
    max_chunks: int = 0  # agent training reads at most this many chunks (center truncation); 0 = all
    prompts: str = "auto"  # compact | full | auto (compact with our small tokenizer, full with HF's)
    # warm start (supervised)
    # warm-start notes (memory_note): value " $3." | digits " 3." | keyed " bold: 7." | restate " last: 7."
    notes: str = "value"
    sft_steps: int = 500
    sft_batch: int = 8  # samples per step (each gives K+1 conversations)
    sft_lr: float = 3e-3
    short_chunk_steps: int = 300  # the first warm-start steps read chunks of short_chunk tokens
    short_chunk: int = 16  # (a copy curriculum: see warm_start); 0 = off
    curriculum_keep: str = "latest"  # the curriculum's memory targets: latest | reservoir (see warm_start)
    curriculum_notes: str = ""  # the curriculum's notes: "" = --notes, or one of its choices (see warm_start)
    copy_gate: float = 0.75  # the curriculum goes on until the agent copies this fraction of documents (warm_start)
    copy_patience: int = 300  # at most this many added curriculum steps
    sft_replace: float = 0.25  # after the curriculum: a full memory takes a new fact w.p. this (0 = reservoir)
    # RL (DAPO)
    rl_steps: int = 80
    batch_size: int = 8  # prompts (groups) per RL step, over all ranks
    group_size: int = 8  # rollouts per prompt
    # one on-policy AdamW step per rollout batch at 5e-4: the tiny model's RL drifts at more
    # (EXPERIMENTS.md, session 12: 2 steps at 1e-3 found the rule in 1 run of 4; 1 step at 1e-3 grew
    # junk after the answer's box; 2 at 5e-4 broke the answer format once the reward neared 1;
    # session 32: 2 steps met both targets on 15 of seeds 0-19, 1 step on 16, different seeds). With
    # one step the clip never binds: ablate it with --mini-batches 2+
    mini_batches: int = 1  # optimizer steps per rollout batch
    micro_batch: int = 64  # distinct conversations per forward/backward (copies share one: response_logprobs)
    lr: float = 5e-4
    warmup_steps: int = 2  # RL steps of linear warm-up (rising every optimizer step), then constant
    weight_decay: float = 0.01
    adam_beta2: float = 0.99  # RL's AdamW betas are (0.9, adam_beta2); the paper recipes use verl's 0.999
    grad_clip: float = 1.0  # max gradient norm (warm start and RL); 0 = no clipping
    clip_low: float = 0.2
    clip_high: float = 0.28
    dual_clip: float = 0.0  # 0 = off; DAPO/verl use 3
    loss_agg: str = "token-mean"
    adv_std: bool = True  # divide advantages by the group std (False: Dr. GRPO)
    dynamic_sampling: bool = True
    max_gen_batches: int = 3
    filter_groups_by: str = "reward"  # what dynamic sampling needs to vary in a group: reward or accuracy
    kl_coef: float = 0.0  # k3 KL to the frozen start policy
    entropy_coef: float = 0.0  # entropy bonus (verl's entropy_coeff); 0 = off, as in DAPO
    # soft overlong punishment buffer in tokens (0 = off). 1: a reply that fills its budget (cut, or
    # its stop id in the last slot) costs its rollout -1. Without it the tiny model's RL can drift in
    # tokens the reward never reads (EXPERIMENTS.md, session 15: seed 9's `\boxed{2}2}2}...`). More
    # than 1 would punish every note: " 7." + the stop id is 4 of memory_tokens' 5
    overlong_buffer: int = 1
    # rollout temperature (the update scores softmax(logits / T) too). 0.7 on the tiny model: at 1.0
    # its warm start writes digits it never read and mixes two notes' tokens twice as often, and
    # whether 80 DAPO steps found the rule depended on the draw (seed 0's needed ~100 steps on
    # session 22's VM); at 0.7 all 6 draws tried in session 22 rose, and with session 27's warm
    # start 16 of seeds 0-19 met both targets within 80 steps (README, "Across seeds"). The paper: 1.0.
    temperature: float = 0.7
    top_p: float = 1.0
    # evaluation
    eval_scales: str = "1,4,16,64"
    eval_n: int = 64  # held-out documents per length (one is 1.6 points); 0 = no evaluation
    # system
    out_dir: str = "out/train"
    seed: int = 0
    device: str = "auto"
    dtype: str = "float32"  # compute dtype: bfloat16 = fp32 weights, bf16 matmuls (see autocast)
    rollout_rows: int = 0  # most rows in one generate call (bounds the KV cache); 0 = all at once
    grad_ckpt: bool = False  # activation checkpointing
    compile: bool = False
    cuda_graph: bool = False  # replay each decode step from a CUDA graph (rollout.CudaGraphDecoder)
    save_every: int = 20
    resume: bool = False


RECIPES = {
    # the default: tiny model, one magic number among 3 prices, memory room for one value
    "cpu-demo": {},
    # a few seconds: the tests' pipeline (sampling at the paper's 1.0, so that a barely trained
    # model's rollouts still differ within a group of 2)
    "smoke": dict(out_dir="out/smoke", train_length=256, chunk_tokens=64, memory_tokens=32, answer_tokens=16,
                  notes="keyed", sft_steps=4, sft_batch=2, rl_steps=2, batch_size=2, group_size=2, mini_batches=1,
                  dynamic_sampling=False, eval_scales="1,2", eval_n=2, save_every=1, baseline_steps=4,
                  temperature=1.0),
    # the paper's geometry and DAPO: window 8K = 1024 problem + 5000 chunk + 1024 memory + 1024 output;
    # 28K-token documents (the paper's 200 HotpotQA paragraphs; ~265 of our shorter synthetic ones)
    "paper": dict(model="qwen-ish-0.5b", task="hotpot_synth", n_docs=0, train_length=28000,
                  chunk_tokens=5000, memory_tokens=1024, answer_tokens=1024, window=8192, max_chunks=8,
                  group_size=16, batch_size=128, mini_batches=16, micro_batch=4, lr=1e-6,
                  warmup_steps=20, weight_decay=0.01, adam_beta2=0.999, clip_high=0.28, dynamic_sampling=True,
                  kl_coef=0.0, adv_std=True, overlong_buffer=0, rl_steps=400, sft_steps=0, short_chunk=0,
                  temperature=1.0,
                  dtype="bfloat16", grad_ckpt=True, rollout_rows=64, cuda_graph=True, eval_n=128, save_every=10),
}
# the shipped MemAgent scripts: eps_high 0.20, KL 0.001 (k3), no std division, no dynamic sampling
RECIPES["shipped"] = dict(RECIPES["paper"], clip_high=0.20, kl_coef=0.001, adv_std=False,
                          dynamic_sampling=False)

HELP = {
    "recipe": "named preset of every setting below: " + ", ".join(RECIPES),
    "init_from": "start from a HF Qwen2 checkpoint directory (weights via model.load_hf)",
    "data": "train/eval on this JSONL of {question, context, answers}, or on an official HotpotQA .json "
            "(RULER-HotpotQA: each question's paragraphs + distractors, --n-docs a question (RULER's 200 "
            "~ 28K tokens), or ~--train-length tokens; eval at --eval-scales x that); the last --eval-n are held out",
    "clip_high": "DAPO clip-higher eps_high (binds only with --mini-batches 2+)", "clip_low": "eps_low",
    "loss_agg": "one of " + ", ".join(dapo.AGG_MODES),
    "mini_batches": "optimizer steps per rollout batch (with 1 the update is on-policy and the clip never binds)",
    "warmup_steps": "RL steps of linear LR warm-up (verl's unit: its scheduler steps once per RL step), then constant",
    "compile": "torch.compile model.forward, the call the sampling engine makes (prefill and decode); the "
               "training forward (hidden_states + logits) stays eager",
    "cuda_graph": "rollouts and evaluation: capture a decode step once per generate call as a CUDA graph and "
                  "replay it (on by the paper recipes; ignored off CUDA, with a note): the eager step's thousand-odd "
                  "kernel launches are what limits decoding there, not the GPU",
    "eval_scales": "multiples of the training length to evaluate at",
    "max_chunks": "the agent's training (warm start and RL) reads at most this many chunks of a document: "
                  "a longer one keeps its first and last max_chunks x chunk_tokens / 2 tokens (center "
                  "truncation; the paper recipe's 8); evaluation reads every chunk. 0 = no cap",
    "curriculum_keep": "memory targets of the copy curriculum's steps: latest (the newest notes) or reservoir "
                       "(a random subset, as in the later warm-start steps); both ignore the question",
    "copy_gate": "warm start: where the copy curriculum ends, go on with it (25 steps at a time, at most "
                 "--copy-patience) until the greedy agent's final memory is exactly the curriculum's target "
                 "(the newest note) in at least this fraction of 64 held-out curriculum documents; 0 = off",
    "copy_patience": "most curriculum steps the copy gate may add (default 300)",
    "sft_replace": "warm start after the copy curriculum: a full memory takes a new fact (in place of one of "
                   "its notes) with this probability, a sticky coin, still question-agnostic; 0 = reservoir "
                   "sampling (probability capacity / facts seen: a uniform random subset), the default "
                   "before session 27 (EXPERIMENTS.md)",
    "curriculum_notes": "notes of the copy curriculum's memory targets (default: --notes). digits: on cpu-demo "
                        "the copy formed at the gate for seeds 0, 3, 6 and 9 (with value notes, for seed 0 "
                        "only; EXPERIMENTS.md, session 21)",
    "entropy_coef": "entropy bonus: loss - COEF * the --loss-agg mean of the policy's per-token entropy "
                    "(verl's entropy_coeff; off by default, as in DAPO; a negative COEF penalizes entropy)",
    "filter_groups_by": "dynamic sampling keeps a group whose rollouts differ in this: reward (the task reward "
                        "plus the overlong penalty, so a group is kept when only a reply's length differs) or "
                        "accuracy (the task reward alone: DAPO's reference, verl's filter_groups.metric=acc). "
                        "The same with --overlong-buffer 0",
    "overlong_buffer": "DAPO soft overlong punishment over the last N tokens of each reply's budget (0 = off; "
                       "cpu-demo 1: -1 for a rollout with a reply that fills its budget)",
    "resume": "continue from OUT_DIR/ckpt (model, optimizer, RNG, step, data position) with the same "
              "training flags (a changed one is refused by name; --rl-steps, evaluation flags and system flags "
              "may change, not --seed or --dtype; --rollout-rows and --micro-batch may change the draws or rounding)",
    "grad_clip": "max gradient norm, warm start and RL (0 = no clipping)",
    "adam_beta2": "RL's AdamW beta2 (beta1 is 0.9): the second-moment average's decay; 0.99 on cpu-demo, "
                  "0.999 (verl's default, which MemAgent's scripts keep) in the paper recipes",
    "baseline": "train the FULL-ATTENTION baseline instead: the agent's warm start (or --init-from), "
                "then --baseline-steps supervised steps answering with the whole document in the "
                "window; saved in OUT_DIR/baseline",
    "baseline_steps": "--baseline: full-attention supervised steps after the warm start, the first half "
                      "on copy-curriculum documents (this replaces --short-chunk-steps there)",
}


def eval_scales(cfg):
    """--eval-scales as numbers: "1,4,16,64" -> [1.0, 4.0, 16.0, 64.0]."""
    return [float(s) for s in cfg.eval_scales.split(",")]


def sized_in_docs(cfg):
    """Whether --n-docs sizes this run's documents: the paragraphs of hotpot_synth or a HotpotQA .json."""
    return bool(cfg.n_docs) and (cfg.data.endswith(".json") if cfg.data else cfg.task == "hotpot_synth")


def parse_args(argv=None):
    """TrainConfig from the command line: recipe defaults first, then the flags given."""
    parser = argparse.ArgumentParser(description="Train a MemAgent: warm start -> DAPO -> eval. The defaults "
                                     "shown are TrainConfig's (the cpu-demo recipe's); a --recipe replaces some "
                                     "of them, and the run prints every setting it uses at start.")
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        if f.type is bool or f.type == "bool":
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None,
                                help=HELP.get(f.name, f"default {f.default}"))
        else:
            parser.add_argument(flag, type=type(f.default), default=None, metavar=f.name.upper(),
                                help=HELP.get(f.name, f"default {f.default!r}"))
    args = parser.parse_args(argv)
    empty = [k for k, v in vars(args).items() if isinstance(v, str) and not v.strip() and k != "curriculum_notes"]
    if empty:  # ("" would quietly mean the default: no data file, no --init-from, the cpu-demo recipe)
        parser.error(f"--{empty[0].replace('_', '-')} is empty; leave the flag out to use its default")
    for name, value in vars(args).items():
        if not isinstance(value, str):
            continue
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:  # (bytes that are not UTF-8 reach Python as lone surrogates)
            parser.error(f"--{name.replace('_', '-')} {value.encode('utf-8', 'replace').decode()!r} is not "
                         f"UTF-8 text")
    recipe = args.recipe or TrainConfig.recipe
    if recipe not in RECIPES:
        parser.error(f"unknown recipe {recipe!r}; choose one of {', '.join(RECIPES)}")
    values = dict(RECIPES[recipe], recipe=recipe)
    values.update({k: v for k, v in vars(args).items() if v is not None})
    if values.get("baseline") and args.out_dir is None:  # never overwrite the agent's run
        values["out_dir"] = "out/baseline" if recipe == "cpu-demo" else f"out/{recipe}-baseline"
    if values.get("baseline") and values.get("resume"):
        parser.error("--resume continues an RL run; the --baseline run has no checkpoint to resume "
                     "(pass --init-from OUT_DIR/warmstart to skip its warm start)")
    cfg = TrainConfig(**values)
    if cfg.model not in MODEL_PRESETS:
        parser.error(f"unknown model preset {cfg.model!r}; choose one of {', '.join(MODEL_PRESETS)}")
    if not cfg.data and cfg.task not in tasks.TASKS:
        parser.error(f"unknown task {cfg.task!r}; choose one of {', '.join(tasks.TASKS)}")
    if cfg.prompts not in ("auto", "compact", "full"):
        parser.error(f"--prompts must be auto, compact or full, not {cfg.prompts!r}")
    if cfg.curriculum_keep not in ("latest", "reservoir"):
        parser.error(f"--curriculum-keep must be latest or reservoir, not {cfg.curriculum_keep!r}")
    if not 0 <= cfg.copy_gate <= 1:
        parser.error(f"--copy-gate {cfg.copy_gate} must be a fraction of documents in [0, 1] (0 = off)")
    if not 0 <= cfg.sft_replace <= 1:
        parser.error(f"--sft-replace {cfg.sft_replace} must be a probability in [0, 1] (0 = reservoir sampling)")
    if cfg.copy_patience < 0:
        parser.error(f"--copy-patience {cfg.copy_patience} must be >= 0 (0 = off)")
    for flag, notes in (("--notes", cfg.notes), ("--curriculum-notes", cfg.curriculum_notes or cfg.notes)):
        if notes not in ("value", "digits", "keyed", "restate"):
            parser.error(f"{flag} must be value, digits, keyed or restate, not {notes!r}")
    if "restate" in (cfg.notes, cfg.curriculum_notes) and (cfg.data or cfg.task not in tasks.SHORT_TASKS):
        parser.error(f"--notes restate needs one of the tasks {', '.join(tasks.SHORT_TASKS)} (their "
                     "questions name one word to restate); use --notes keyed or value")
    if cfg.dtype not in ("float32", "bfloat16"):
        parser.error(f"--dtype {cfg.dtype!r}: choose float32 or bfloat16 (float16 would need a "
                     "gradient scaler, which this trainer does not have)")
    if cfg.loss_agg not in dapo.AGG_MODES:
        parser.error(f"unknown --loss-agg {cfg.loss_agg!r}; choose one of {', '.join(dapo.AGG_MODES)}")
    if cfg.data and not os.path.exists(cfg.data):
        parser.error(f"data file {cfg.data} does not exist")
    if cfg.device != "auto":
        try:
            check_device(cfg.device)
        except ValueError as e:
            parser.error(f"--device: {e}")
    if cfg.init_from and not os.path.isdir(cfg.init_from):
        parser.error(f"--init-from {cfg.init_from}: no such directory")
    if cfg.init_from and args.vocab_size is not None:
        parser.error("--vocab-size sets the tokenizer a new model trains; --init-from DIR brings its own "
                     "tokenizer (drop one of the two)")
    if min(cfg.group_size, cfg.batch_size, cfg.mini_batches, cfg.micro_batch, cfg.sft_batch) < 1:
        parser.error("--group-size, --batch-size, --mini-batches, --micro-batch and --sft-batch must be >= 1")
    if cfg.group_size < 2 and cfg.rl_steps > 0 and not cfg.baseline:
        parser.error("--group-size must be >= 2 for RL: a rollout's advantage is its reward minus its "
                     "group's mean, so a group of one has none (dynamic sampling would drop every group)")
    if min(cfg.chunk_tokens, cfg.memory_tokens, cfg.answer_tokens) < 1:
        parser.error("--chunk-tokens, --memory-tokens and --answer-tokens must be >= 1")
    if not MIN_TEMPERATURE <= cfg.temperature < math.inf:
        parser.error(f"--temperature must be finite and >= {MIN_TEMPERATURE}: RL samples its rollouts (greedy "
                     f"rollouts of a group are identical and carry no signal); got {cfg.temperature}")
    if not 0 < cfg.top_p <= 1:
        parser.error(f"--top-p must be in (0, 1], got {cfg.top_p}")
    if not 0 <= cfg.seed <= MAX_SEED:  # (random.Random(-s) is random.Random(s))
        parser.error(f"--seed must be in [0, {MAX_SEED:,}]: sample seeds are seed x 10^7 + number and must "
                     f"fit 64 bits; got {cfg.seed}")
    if cfg.filter_groups_by not in ("reward", "accuracy"):
        parser.error(f"--filter-groups-by must be reward or accuracy, not {cfg.filter_groups_by!r}")
    if cfg.max_gen_batches < 1:
        parser.error(f"--max-gen-batches must be >= 1 (rollout batches drawn per step), got {cfg.max_gen_batches}")
    if cfg.save_every < 1:
        parser.error(f"--save-every must be >= 1 (RL steps between checkpoints), got {cfg.save_every}")
    if not (0 <= cfg.clip_low < 1 and 0 <= cfg.clip_high < math.inf):  # (written so that NaN fails too)
        parser.error(f"need 0 <= --clip-low < 1 and --clip-high >= 0, got {cfg.clip_low} and {cfg.clip_high}")
    if not (cfg.dual_clip == 0 or 1 < cfg.dual_clip < math.inf):
        parser.error(f"--dual-clip must be > 1 (or 0 = off), got {cfg.dual_clip}")
    for flag, value, meaning in (("--grad-clip", cfg.grad_clip, "0 = no clipping; a negative norm would "
                                  "flip the gradient"), ("--overlong-buffer", cfg.overlong_buffer, "0 = off"),
                                 ("--n-docs", cfg.n_docs, "0 = use --train-length"),
                                 ("--rl-steps", cfg.rl_steps, "0 = no RL"),
                                 ("--sft-steps", cfg.sft_steps, "0 = no warm start"),
                                 ("--eval-n", cfg.eval_n, "0 = no evaluation"),
                                 ("--short-chunk", cfg.short_chunk, "0 = no copy curriculum"),
                                 ("--short-chunk-steps", cfg.short_chunk_steps, "0 = no copy curriculum"),
                                 ("--baseline-steps", cfg.baseline_steps, "0 = the warm start alone"),
                                 ("--warmup-steps", cfg.warmup_steps, "0 = no warm-up")):
        if not value >= 0:
            parser.error(f"{flag} must be >= 0 ({meaning}), got {value}")
    for flag, value in (("--lr", cfg.lr), ("--sft-lr", cfg.sft_lr), ("--weight-decay", cfg.weight_decay),
                        ("--kl-coef", cfg.kl_coef)):  # (a negative KL coefficient would reward drifting away)
        if not 0 <= value < math.inf:
            parser.error(f"{flag} must be a finite number >= 0, got {value}")
    if not 0 <= cfg.adam_beta2 < 1:
        parser.error(f"--adam-beta2 must be in [0, 1) (AdamW's second-moment decay), got {cfg.adam_beta2}")
    if not math.isfinite(cfg.entropy_coef):
        parser.error(f"--entropy-coef must be finite, got {cfg.entropy_coef}")
    if os.path.exists(cfg.out_dir) and not os.path.isdir(cfg.out_dir):
        parser.error(f"--out-dir {cfg.out_dir} is a file, not a folder")
    ancestor = os.path.dirname(os.path.abspath(cfg.out_dir))
    while not os.path.exists(ancestor):  # the nearest folder that exists must be a folder, not a file
        ancestor = os.path.dirname(ancestor)
    if not os.path.isdir(ancestor):
        parser.error(f"--out-dir {cfg.out_dir}: {ancestor} is a file, so no folder can be made below it")
    if cfg.data and args.task is not None:  # (like --n-docs below: a flag that cannot apply is refused)
        parser.error(f"--task makes generated documents; --data {cfg.data} brings its own (each sample's "
                     f"\"task\" field, else hotpotqa, picks its reward): drop one of the two")
    if cfg.data and not cfg.data.endswith(".json") and args.train_length is not None:
        parser.error(f"--train-length sizes generated and HotpotQA documents; the samples of {cfg.data} keep "
                     f"their own lengths: drop it")
    if cfg.window < 0:
        parser.error(f"--window must be >= 0 (0 = the model's positions), got {cfg.window}")
    if cfg.eval_n > GATE_SEED - EVAL_SEED:  # (held-out samples are numbered EVAL_SEED + i)
        parser.error(f"--eval-n {cfg.eval_n} is more than the {GATE_SEED - EVAL_SEED:,} held-out samples there "
                     f"are numbers for")
    if args.n_docs and not sized_in_docs(cfg):  # (a recipe's n_docs is simply unused by other tasks)
        parser.error("--n-docs sizes documents in paragraphs, which only --task hotpot_synth and a HotpotQA "
                     ".json have; this run's documents are sized by --train-length")
    if cfg.max_chunks < 0:
        parser.error(f"--max-chunks must be >= 0 (0 = no cap), not {cfg.max_chunks}")
    if cfg.rollout_rows < 0:
        parser.error(f"--rollout-rows must be >= 0 (0 = all rows in one call), not {cfg.rollout_rows}")
    try:
        scales = eval_scales(cfg)
    except ValueError:
        parser.error(f"--eval-scales {cfg.eval_scales!r}: expected numbers like 1,4,16,64")
    if not all(0 < s < float("inf") for s in scales):  # (checked here, not after the training it follows)
        parser.error(f"--eval-scales {cfg.eval_scales!r}: each multiple of the training length must be > 0")
    longest = max(scales + [1.0])  # (a data file's samples keep their own lengths: nothing to generate)
    if not cfg.data and sized_in_docs(cfg) and cfg.n_docs * longest > tasks.MAX_DOCS:
        parser.error(f"--n-docs {cfg.n_docs} x --eval-scales up to {longest:g} is past the {tasks.MAX_DOCS:,} "
                     f"documents a sample may have (memagent/tasks.py MAX_DOCS)")
    if not cfg.data and not sized_in_docs(cfg) and cfg.train_length * longest > tasks.MAX_LENGTH:
        parser.error(f"--train-length {cfg.train_length} x --eval-scales up to {longest:g} is past the "
                     f"{tasks.MAX_LENGTH:,} tokens a document may have (memagent/tasks.py MAX_LENGTH)")
    # every sample comes from its number (get_sample); training numbers must stay below the held-out ones
    rl_numbers = 0 if cfg.baseline else cfg.rl_steps * cfg.max_gen_batches * cfg.batch_size
    sft_numbers = SFT_SEED + (max(cfg.sft_steps, cfg.baseline_steps) + cfg.copy_patience) * cfg.sft_batch
    if max(rl_numbers, sft_numbers) > EVAL_SEED:
        parser.error(f"this run would draw training samples numbered up to {max(rl_numbers, sft_numbers):,} "
                     f"(RL: --rl-steps x --max-gen-batches x --batch-size = {rl_numbers:,}; warm start: "
                     f"{SFT_SEED:,} + (steps + --copy-patience) x --sft-batch = {sft_numbers:,}), past "
                     f"{EVAL_SEED:,} where the held-out evaluation samples start: it would train on them; "
                     f"lower those flags (numbers follow the step, so --resume does not reset them)")
    return cfg


# -----------------------------------------------------------------------------
# Distributed helpers (no-ops in a single process)

RANK, WORLD = 0, 1
COMM_DEVICE = "cpu"  # where all_sum's tensors live: NCCL reduces only CUDA tensors, gloo CPU ones


def print0(*args):
    if RANK == 0:
        print(*args, flush=True)


def all_sum(values):
    """Sum a list of floats over ranks (returned as floats)."""
    if WORLD == 1:
        return [float(v) for v in values]
    t = torch.tensor(values, dtype=torch.float64, device=COMM_DEVICE)
    dist.all_reduce(t)
    return t.tolist()


def all_max(value):
    """The largest of one number over ranks."""
    if WORLD == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=COMM_DEVICE)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t.item()


def setup_distributed(cfg):
    global RANK, WORLD, COMM_DEVICE
    try:
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        raise SystemExit(f"train.py: WORLD_SIZE={os.environ['WORLD_SIZE']!r} is not a number of processes") from None
    unset = [v for v in ("RANK", "MASTER_ADDR", "MASTER_PORT") if v not in os.environ]
    if world_size > 1 and unset:  # the group could not form (or would wait forever for its peers)
        raise SystemExit(f"train.py: WORLD_SIZE={world_size} is set but {', '.join(unset)} not: launch with "
                         f"torchrun --nproc_per_node={world_size} train.py ..., or unset WORLD_SIZE")
    if world_size > 1:
        use_cuda = torch.cuda.is_available() and cfg.device != "cpu"
        if use_cuda:  # before the group starts, so NCCL binds each rank to its own GPU
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
            COMM_DEVICE = f"cuda:{torch.cuda.current_device()}"
        # a rank that finishes its rollouts early (dynamic sampling draws 1 to max_gen_batches
        # batches per rank, each minutes long at the paper's geometry) waits at the next all_sum;
        # NCCL's default 10-minute timeout would abort such a wait, so allow hours
        dist.init_process_group(backend="nccl" if use_cuda else "gloo", timeout=datetime.timedelta(hours=2))
        RANK, WORLD = dist.get_rank(), dist.get_world_size()
    if WORLD > 1 and COMM_DEVICE != "cpu" and cfg.device not in ("auto", "cuda", COMM_DEVICE):
        raise SystemExit(f"train.py: under torchrun each rank uses its own GPU ({COMM_DEVICE} here); "
                         f"pass --device cuda or auto, not {cfg.device}")
    if cfg.device == "auto":
        cfg.device = f"cuda:{torch.cuda.current_device()}" if torch.cuda.is_available() else "cpu"
    device = torch.device(cfg.device)
    if WORLD == 1 and device.type == "cuda" and device.index is not None:
        torch.cuda.set_device(device)  # peak-memory stats and CUDA graphs follow the current device
    runs_rl = not cfg.baseline and cfg.rl_steps > 0
    if runs_rl and cfg.batch_size % WORLD:
        raise SystemExit(f"train.py: --batch-size {cfg.batch_size} must be divisible by the "
                         f"{WORLD} ranks")
    supervises = cfg.baseline or (not cfg.init_from and cfg.sft_steps > 0)  # the warm start / baseline run
    if supervises and cfg.sft_batch % WORLD:
        raise SystemExit(f"train.py: --sft-batch {cfg.sft_batch} must be divisible by the {WORLD} ranks")
    if runs_rl and cfg.mini_batches > cfg.batch_size // WORLD:
        raise SystemExit(f"train.py: --mini-batches {cfg.mini_batches} is more than the "
                         f"{cfg.batch_size // WORLD} prompt groups each rank holds (--batch-size / ranks): "
                         f"some optimizer steps would have nothing to train on")


# -----------------------------------------------------------------------------
# Data: every sample comes from its index, so the step number is the data position.

EVAL_SEED = 10**6  # held-out samples use seeds from here on, training seeds stay below
SFT_SEED = 5 * 10**5
GATE_SEED = 2 * 10**6  # the copy gate's documents: held out from training AND from the evaluation
MAX_SEED = 10**12  # get_sample's seed * 10**7 + number stays below 2**64


def load_data(cfg):
    """None (generated tasks), a list of samples (JSONL), or a tasks.HotpotQA file (.json)."""
    if not cfg.data:
        return None
    try:
        data = tasks.HotpotQA(cfg.data) if cfg.data.endswith(".json") else tasks.load_jsonl(cfg.data)
    except (ValueError, FileNotFoundError) as e:
        not_hotpotqa = cfg.data.endswith(".json") and ("not valid JSON" in str(e) or "expected a JSON list" in str(e))
        hint = (" (a .json --data is read as HotpotQA's official JSON; a JSONL file of samples needs "
                "the .jsonl extension)" if not_hotpotqa else "")
        raise SystemExit(f"train.py: {e}{hint}")
    if getattr(data, "skipped", None):
        print0(f"{cfg.data}: set aside {len(data.skipped)} question(s) whose answer is empty once normalized "
               f"(every reply would match it), the first: question {data.skipped[0]}")
    if len(data) <= cfg.eval_n:
        raise SystemExit(f"train.py: {cfg.data} has {len(data)} samples and the last --eval-n {cfg.eval_n} "
                         f"are held out for evaluation, which leaves none to train on; lower --eval-n")
    if not isinstance(data, tasks.HotpotQA) and cfg.eval_n and eval_scales(cfg) != [1.0]:
        print0(f"note: --eval-scales {cfg.eval_scales}: the samples of a JSONL file keep their own lengths, so "
               f"they are evaluated as they are (1x) only")
    return data


def get_sample(cfg, tokenizer, data, index, scale=1.0):
    """Sample number `index` (training) or EVAL_SEED + i (held out) at scale x the training length."""
    if data is not None:  # a user file: the last eval_n questions are held out
        n_train = max(1, len(data) - cfg.eval_n)
        i = n_train + (index - EVAL_SEED) % cfg.eval_n if index >= EVAL_SEED else index % n_train
        i = min(i, len(data) - 1)
        if isinstance(data, tasks.HotpotQA):  # RULER-HotpotQA: n_docs (or train_length) x scale
            seed = cfg.seed + (0 if index >= EVAL_SEED else index // n_train)  # new distractors each epoch
            size = (dict(n_docs=round(cfg.n_docs * scale)) if cfg.n_docs else
                    dict(length=round(cfg.train_length * scale), tokenizer=tokenizer))
            try:
                return data.sample(i, seed=seed, **size)
            except ValueError as e:
                raise SystemExit(f"train.py: {e}")
        sample = dict(data[i])
        sample.setdefault("task", "hotpotqa")
        return sample
    # (make_sample_retry: a seed whose text misses the length tolerance, common at the copy
    # curriculum's 128 tokens, gives way to the next seed of this index's own sequence)
    seed = cfg.seed * 10**7 + index
    try:
        if cfg.task == "hotpot_synth" and cfg.n_docs:
            n_docs = max(2, round(cfg.n_docs * scale))
            return tasks.make_sample_retry(cfg.task, None, seed, tokenizer, n_docs=n_docs)
        return tasks.make_sample_retry(cfg.task, round(cfg.train_length * scale), seed, tokenizer)
    except ValueError as e:
        raise SystemExit(f"train.py: cannot make a {cfg.task} sample: {e}")


def use_cuda_graph(cfg):
    """--cuda-graph applies on a CUDA device only (elsewhere main prints a note and decodes eagerly)."""
    return cfg.cuda_graph and torch.device(cfg.device).type == "cuda"


def agent_config(cfg, temperature, training=False):
    """The agent's settings; only training caps its documents at --max-chunks (evaluation reads all)."""
    return AgentConfig(chunk_tokens=cfg.chunk_tokens, memory_tokens=cfg.memory_tokens,
                       answer_tokens=cfg.answer_tokens, compact_prompts=cfg.prompts == "compact",
                       temperature=temperature, top_p=cfg.top_p, max_rows=cfg.rollout_rows,
                       cuda_graph=use_cuda_graph(cfg), max_chunks=cfg.max_chunks if training else 0)


# -----------------------------------------------------------------------------
# Model, tokenizer, checkpoints


def autocast(cfg):
    """The context every forward pass of training runs in: mixed precision when --dtype bfloat16.

    The weights, their gradients and the AdamW moments stay float32 (the "master" weights) and
    torch.autocast runs the matmuls and attention in bf16 (the KV cache follows: model.new_cache).
    Why not bf16 weights: bf16 keeps 8 significant bits, so a weight of 0.02 moves in steps of
    2^-13 = 1.2e-4, and an AdamW update of ~lr = 1e-6 (the paper's) would round away to nothing.
    """
    return torch.autocast(torch.device(cfg.device).type, dtype=getattr(torch, cfg.dtype),
                          enabled=cfg.dtype != "float32")


def build_model(cfg):
    """(model, tokenizer) from --init-from, or a fresh preset model with our tokenizer. The weights
    are float32 whatever --dtype says (the compute dtype; see autocast)."""
    if cfg.init_from:
        try:
            tokenizer = load_tokenizer(cfg.init_from)  # ours (.model) or the folder's tokenizer.json
            model = load_hf(cfg.init_from, dtype=torch.float32, device=cfg.device)
        except (OSError, ValueError, KeyError, RuntimeError, ImportError) as e:
            raise SystemExit(f"train.py: cannot load --init-from {cfg.init_from}: {e}{run_folder_hint(cfg.init_from)}")
        if tokenizer.vocab_size > model.config.vocab_size:
            raise SystemExit(f"train.py: tokenizer has {tokenizer.vocab_size} ids but the model "
                             f"in {cfg.init_from} only {model.config.vocab_size}")
        shape = ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "intermediate_size")
        if any(getattr(model.config, k) != MODEL_PRESETS[cfg.model][k] for k in shape):
            print0(f"note: --init-from {cfg.init_from} holds its own model (hidden {model.config.hidden_size}, "
                   f"{model.config.num_hidden_layers} layers), not the --model {cfg.model} preset: the "
                   f"checkpoint's config is used")
    else:
        tok_dir = os.path.join(cfg.out_dir, "tokenizer")
        try:
            if RANK == 0:
                tokenizer = get_tokenizer(tok_dir, vocab_size=cfg.vocab_size)
            if WORLD > 1:
                dist.barrier()
            tokenizer = get_tokenizer(tok_dir, vocab_size=cfg.vocab_size)
        except (ValueError, OSError) as e:  # a --vocab-size sentencepiece cannot train, a folder it cannot write
            raise SystemExit(f"train.py: tokenizer ({tok_dir}, --vocab-size {cfg.vocab_size}): {e}")
        torch.manual_seed(cfg.seed)
        model = Qwen2(config_from_preset(cfg.model, vocab_size=tokenizer.vocab_size))
        model = model.to(device=cfg.device)
    model.gradient_checkpointing = cfg.grad_ckpt
    if cfg.prompts == "auto":  # the compact prompts suit our 2K-vocab models; Qwen's get the full ones
        cfg.prompts = "full" if isinstance(tokenizer, HFTokenizer) else "compact"
    return model, tokenizer


def geometry_check(cfg, model, tokenizer, data):
    """Print the geometry; a clear error if a conversation cannot fit the window."""
    positions = model.config.max_position_embeddings
    window = cfg.window or positions
    if window > positions:
        raise SystemExit(f"train.py: --window {window} exceeds the model's {positions} positions")
    sample = get_sample(cfg, tokenizer, data, 0)
    smallest = min(eval_scales(cfg))
    if cfg.eval_n and smallest < 1:  # a too-short evaluation document fails here, not after training
        try:
            get_sample(cfg, tokenizer, data, EVAL_SEED, smallest)
        except SystemExit as e:
            raise SystemExit(f"{e} (at --eval-scales {smallest:g}: raise the smallest scale)")
    problem, longest = longest_question(tokenizer, data, sample)
    document = len(tokenizer.encode(sample["context"]))
    try:
        need = check_window(tokenizer, [problem + 8], agent_config(cfg, 1.0), window)
    except ValueError as e:
        raise SystemExit(f"train.py: {e}" + (f" (the longest question is {longest} of {cfg.data})"
                                             if data is not None else ""))
    if cfg.baseline:  # the baseline reads a whole document: sample 0's, or every one of a JSONL file
        samples = data if isinstance(data, list) else [sample]
        direct = [len(direct_turn_ids(tokenizer, tokenizer.encode(s["question"]), tokenizer.encode(s["context"]),
                                      cfg.prompts == "compact")) for s in samples]
        worst = direct.index(max(direct))
        if direct[worst] + cfg.answer_tokens > window:
            which, fix = ((f"the {ordinal(worst + 1)} sample of {cfg.data}", "shorten that document or leave it out")
                          if isinstance(data, list) else
                          ("sample 0's", "lower --train-length" + (" or --n-docs" if sized_in_docs(cfg) else "")))
            raise SystemExit(f"train.py: --baseline reads a whole document in one turn, and {which} is prompt "
                             f"{direct[worst]} + answer {cfg.answer_tokens} = {direct[worst] + cfg.answer_tokens} "
                             f"tokens > the {window}-token window; {fix}")
    print0(f"geometry: chunk {cfg.chunk_tokens} + memory {cfg.memory_tokens} + answer "
           f"{cfg.answer_tokens} + problem ~{problem} -> longest conversation {need} of a {window}-token "
           f"window; training documents like sample 0: {document} tokens"
           f"{f' ({cfg.n_docs} docs)' if sized_in_docs(cfg) else ''}, "
           f"{math.ceil(document / cfg.chunk_tokens)} chunks")
    if cfg.max_chunks and document > cfg.max_chunks * cfg.chunk_tokens:
        print0(f"--max-chunks {cfg.max_chunks}: the agent trains on the first and last "
               f"{cfg.max_chunks * cfg.chunk_tokens // 2} tokens of such a document (the middle "
               f"{document - cfg.max_chunks * cfg.chunk_tokens} are cut, needles there too); evaluation reads all")
    plan = memory_plan(cfg, model.config, model.num_parameters(), need)
    peak = plan["training state"] + max(plan["rollout KV cache"] + plan["rollout prefill"],
                                        plan["update logits"] + plan["update layers"])
    print0("memory plan per rank (estimated from shapes, GiB): " +
           ", ".join(f"{name} {b / 2**30:.2f}" for name, b in plan.items()) +
           f"; peak ~{peak / 2**30:.1f} (state + the larger of the rollout and update phases)")
    total = device_memory(cfg.device)
    if total and peak > total:  # (an estimate, so a warning: but past the device, it is out of memory)
        print0(f"warning: that peak is more than this device's {total / 2**30:.1f} GiB: lower --rollout-rows "
               f"(rows per generate call), --micro-batch or --eval-n, or pass --grad-ckpt")
    print0(f"model: {cfg.model if not cfg.init_from else cfg.init_from}, "
           f"{model.num_parameters() / 1e6:.2f}M parameters, vocab {model.config.vocab_size}, "
           f"float32 weights, {cfg.dtype} compute on {cfg.device}, {WORLD} rank(s)")


def ordinal(n):
    """How a message counts samples.

    >>> [ordinal(n) for n in (1, 2, 3, 4, 11, 12, 22, 113)]
    ['1st', '2nd', '3rd', '4th', '11th', '12th', '22nd', '113th']
    """
    return f"{n}{'th' if 10 <= n % 100 <= 20 else {1: 'st', 2: 'nd', 3: 'rd'}.get(n % 10, 'th')}"


def longest_question(tokenizer, data, sample):
    """(tokens, which sample) of the longest question the run meets: every one of a data file (a long
    one past sample 0 would overflow the window mid-run), sample 0's of a generated task (whose
    questions come from one template: geometry_check's 8 tokens of slack cover the rest)."""
    if data is None:
        return len(tokenizer.encode(sample["question"])), "sample 0's"
    items = data.items if isinstance(data, tasks.HotpotQA) else data
    lengths = [len(tokenizer.encode(item["question"])) for item in items]
    i = lengths.index(max(lengths))
    return max(lengths), (f"question {data.file_index[i]}'s" if isinstance(data, tasks.HotpotQA)
                          else f"the {ordinal(i + 1)} sample's")


def device_memory(device):
    """Bytes of memory on `device` (a CUDA GPU's, or the machine's RAM for the CPU), None if unknown."""
    if torch.device(device).type == "cuda":
        return torch.cuda.get_device_properties(torch.device(device)).total_memory
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # (not Linux)
        return None
    for limit in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:  # a container's limit (cgroup v2, v1): "max" or a huge number when there is none
            with open(limit) as f:
                total = min(total, int(f.read()))
        except (OSError, ValueError):
            pass
    return total


def memory_plan(cfg, config, n_params, longest):
    """Bytes of the big allocations on one rank, estimated from shapes (not measured), printed at
    start so that a geometry that cannot fit the accelerator shows it before any rollout.

      training state   float32 weights + gradients + AdamW m and v: 16 bytes a parameter
                       (+ 4 for the frozen reference model when --kl-coef > 0)
      rollout KV cache one generate call: 2 (k, v) x layers x rows x kv heads x longest
                       conversation x head_dim x bytes of the compute dtype
      rollout prefill  the MLP's gate, up and product activations of that call's prefill:
                       rows x longest conversation x intermediate x bytes x 3
      update logits    one micro-batch: micro_batch x longest reply x vocab x 4 (float32) x 3
                       (log-softmax, its gradient, the entropy's softmax)
      update layers    one micro-batch's saved activations, ~ micro_batch x longest conversation x
                       (3 x intermediate + 8 x hidden) x bytes per layer: all layers, or with
                       --grad-ckpt one layer plus each layer's float32 input (hidden x 4)
    rows = --rollout-rows, or all rows of a rollout (batch_size / ranks x group_size) or of an
    evaluation pass (eval_n / ranks) when that is 0.
    """
    width = 2 if cfg.dtype == "bfloat16" else 4
    all_rows = max(cfg.batch_size // WORLD * cfg.group_size, math.ceil(cfg.eval_n / WORLD))
    rows = min(cfg.rollout_rows or all_rows, all_rows)
    reply = max(cfg.memory_tokens, cfg.answer_tokens)
    tokens = cfg.micro_batch * longest
    per_layer = tokens * (3 * config.intermediate_size + 8 * config.hidden_size) * width
    layers = (per_layer + config.num_hidden_layers * tokens * config.hidden_size * 4 if cfg.grad_ckpt
              else config.num_hidden_layers * per_layer)
    return {
        "training state": n_params * (16 + (4 if cfg.kl_coef > 0 else 0)),
        "rollout KV cache": 2 * config.num_hidden_layers * rows * config.num_key_value_heads * longest
                            * config.head_dim * width,
        "rollout prefill": rows * longest * config.intermediate_size * width * 3,
        "update logits": cfg.micro_batch * reply * config.vocab_size * 4 * 3,
        "update layers": layers,
    }


def save_state(cfg, model, tokenizer, optimizer, step, history):
    """OUT_DIR/ckpt = model/ (HF format) + trainer.pt, swapped in atomically (temp dir + rename)."""
    if RANK != 0:
        return
    final = os.path.join(cfg.out_dir, "ckpt")
    tmp = staging_dir(final)
    try:
        save_checkpoint(model, os.path.join(tmp, "model"), tokenizer_file=tokenizer.files(),
                        meta={"step": step, "config": dataclasses.asdict(cfg)})
        torch.save({"step": step, "optimizer": optimizer.state_dict(), "torch_rng": torch.get_rng_state(),
                    "python_rng": random.getstate(), "history": history, "world": WORLD,
                    "config": dataclasses.asdict(cfg)}, os.path.join(tmp, "trainer.pt"))
    except BaseException:  # (a full disk, say): no stray folder; the previous ckpt stays as it was
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    swap_in(tmp, final)


GEOMETRY_FIELDS = ("model", "init_from", "task", "chunk_tokens", "memory_tokens", "answer_tokens",
                   "vocab_size", "dtype", "prompts")
# what --resume may change: how long to go on, evaluation (but with a data file --eval-n splits
# it, so not there), and system knobs. Every other setting must be the checkpoint's, or the run
# would not continue as it began (the data position, for one, depends on the seed and the batch
# sizes; the KL reference on --sft-steps). --rollout-rows and --micro-batch split the batch
# differently, so the draws (rollout rows) or the float rounding (micro-batches) may then differ
# from an uninterrupted run's.
RESUME_MAY_CHANGE = ("recipe", "rl_steps", "eval_scales", "eval_n", "out_dir", "device", "rollout_rows",
                     "micro_batch", "grad_ckpt", "compile", "cuda_graph", "save_every", "resume", "baseline_steps")


def check_same_flags(cfg, saved, path, weights):
    """Stop unless this run's flags are those the checkpoint in `path` was trained with (`saved`, its
    config), but for RESUME_MAY_CHANGE; `weights` is the folder a new run could start from instead."""
    def same(name, a, b):  # (a path given another way, "run/" or relative, is the same folder)
        if name in ("init_from", "data") and a and b:
            return os.path.realpath(a) == os.path.realpath(b)
        if cfg.data and (name == "task" or name == "train_length" and not cfg.data.endswith(".json")):
            return True  # (unused with this --data, and parse_args refuses them)
        return a == b
    for name in GEOMETRY_FIELDS:
        if not same(name, saved.get(name), getattr(cfg, name)):
            raise SystemExit(f"train.py: checkpoint {path} is incompatible: it was trained with "
                             f"{name}={saved.get(name)!r}, this run has {getattr(cfg, name)!r}")
    may_change = [n for n in RESUME_MAY_CHANGE if not (n == "eval_n" and cfg.data)]
    changed = [f"--{f.name.replace('_', '-')} {saved[f.name]!r} (this run: {getattr(cfg, f.name)!r})"
               for f in dataclasses.fields(cfg) if f.name not in may_change and f.name in saved
               and not same(f.name, saved[f.name], getattr(cfg, f.name))]
    if changed:
        raise SystemExit(f"train.py: --resume continues the run in {path} as it began, but it was trained with "
                         f"{'; '.join(changed)}. Repeat its flags (only --rl-steps, evaluation and system "
                         f"flags may change), or start a new run from a copy of its weights in another "
                         f"--out-dir (--init-from COPY of {weights})")


def load_state(cfg, model, optimizer):
    """Restore OUT_DIR/ckpt into model and optimizer; returns (step, history)."""
    path = os.path.join(cfg.out_dir, "ckpt")
    keys = ("step", "optimizer", "torch_rng", "python_rng", "history", "config")
    try:
        state = torch.load(os.path.join(path, "trainer.pt"), map_location="cpu", weights_only=False)
        if not (isinstance(state, dict) and all(k in state for k in keys) and isinstance(state["config"], dict)):
            raise ValueError(f"it lacks some of {', '.join(keys)}")
    except (MemoryError, torch.OutOfMemoryError):
        raise  # (not the file's fault)
    except Exception as e:  # (a truncated or foreign file: torch.load's error types are many)
        raise SystemExit(f"train.py: --resume: {path}/trainer.pt is unreadable ({type(e).__name__}: {e}), so the "
                         f"run cannot continue exactly; start a new run from its weights in another --out-dir "
                         f"(--init-from {path}/model)") from None
    check_same_flags(cfg, state["config"], path, os.path.join(path, "model"))
    if state.get("world", WORLD) != WORLD:
        raise SystemExit(f"train.py: --resume: the run in {path} was trained on {state['world']} ranks and this "
                         f"one has {WORLD}; each rank's share of the prompts would change, so relaunch it "
                         f"with {state['world']}")
    try:  # (read on the CPU: load_state_dict copies onto the device, where no second model fits)
        saved = load_hf(os.path.join(path, "model"), dtype=torch.float32, device="cpu")
        model.load_state_dict(saved.state_dict())
        optimizer.load_state_dict(state["optimizer"])
    except torch.OutOfMemoryError:
        raise
    except (OSError, ValueError, RuntimeError, KeyError) as e:
        others = [os.path.join(cfg.out_dir, d) for d in ("rl", "warmstart")
                  if os.path.isfile(os.path.join(cfg.out_dir, d, "config.json"))]
        raise SystemExit(f"train.py: --resume: the checkpoint in {path} is damaged ({e}), so the run cannot "
                         f"continue" + (f"; earlier weights are in {' and '.join(others)}: start a new run from "
                                        f"one of them in another --out-dir (--init-from)" if others else ""))
    torch.set_rng_state(state["torch_rng"])
    random.setstate(state["python_rng"])
    return state["step"], state["history"]


# -----------------------------------------------------------------------------
# Scoring: log-probs of response tokens under the model (the one forward used for training)


def response_logits(model, prompts, responses, temperature=1.0):
    """Logits at the response positions only, divided by temperature: (B, R, V) for R = longest response.

    Each row is prompt + response, right-padded to (B, T); the model runs causally over positions
    0..T-1, and the hidden state that predicts response token j sits at prompt_len - 1 + j. Only
    those (B, R) hidden states go through the lm_head, so a 150K vocabulary never costs (B, T, V).
    """
    device = model.lm_head.weight.device
    B = len(prompts)
    T = max(len(p) + len(r) for p, r in zip(prompts, responses))
    R = max(len(r) for r in responses)
    idx = torch.zeros((B, T), dtype=torch.long, device=device)  # right padding: causal attention never reads it
    for b, (p, r) in enumerate(zip(prompts, responses)):
        idx[b, :len(p) + len(r)] = torch.tensor(p + r, device=device)
    x = model.hidden_states(idx)  # (B, T, C): causal, positions 0..T-1
    starts = torch.tensor([len(p) - 1 for p in prompts], device=device)  # (B,)
    where = (starts[:, None] + torch.arange(R, device=device)).clamp(max=T - 1)  # (B, R)
    h = x.gather(1, where[..., None].expand(B, R, x.size(-1)))  # (B, R, C)
    logits = model.logits(h)  # (B, R, V)
    return logits / temperature if temperature != 1.0 else logits


def pair_of(conv):
    """What a conversation's forward depends on: (prompt ids, response ids), hashable."""
    return tuple(conv.prompt_ids), tuple(conv.response_ids)


def micro_batches(convs, size):
    """Split conversations into lists of at most `size` DISTINCT (prompt, response) pairs each, all
    copies of a pair in the same list (the micro-batches of the update, see response_logprobs).

    >>> from types import SimpleNamespace as C
    >>> a, b = C(prompt_ids=[1], response_ids=[2]), C(prompt_ids=[1], response_ids=[3])
    >>> c = C(prompt_ids=[4], response_ids=[2])
    >>> [[x.response_ids[0] * 10 + x.prompt_ids[0] for x in m] for m in micro_batches([a, b, a, c, a], 2)]
    [[21, 31, 21, 21], [24]]
    """
    pairs, source = distinct(pair_of(c) for c in convs)
    micros = [[] for _ in range(0, len(pairs), size)]
    for c, u in zip(convs, source):
        micros[u // size].append(c)  # its pair's micro-batch
    return micros


def response_logprobs(model, convs, temperature=1.0, with_entropy=False, entropy_grad=False):
    """Log-probs (N, R) of each conversation's response tokens under softmax(logits / temperature),
    and their entropies (N, R) when asked (detached unless entropy_grad: an entropy bonus in the
    loss needs its gradient); R = the longest response, padding 0.

    A group's rollouts often repeat a turn word for word (the first turn always: same prompt; later
    ones while their memories agree and they reply alike). Each distinct (prompt, response) pair
    goes through the model once and every copy gets its row, so a loss over the N rows still counts
    each copy, and its gradient is the one N separate forwards would give.
    """
    pairs, source = distinct(pair_of(c) for c in convs)  # U distinct pairs; (N,) row of each copy
    prompts, responses = [list(p) for p, _ in pairs], [list(r) for _, r in pairs]
    logits = response_logits(model, prompts, responses, temperature)  # (U, R, V)
    targets = pad_rows(responses, logits.size(1), dtype=torch.long, device=logits.device)  # (U, R)
    index = torch.tensor(source, device=logits.device)  # (N,)
    logp = dapo.logprobs_from_logits(logits, targets)[index]  # (N, R)
    entropy = None
    if with_entropy:
        entropy = dapo.entropy_from_logits(logits if entropy_grad else logits.detach())[index]  # (N, R)
    return logp, entropy


def pad_rows(rows, R, value=0.0, dtype=torch.float32, device="cpu"):
    out = torch.full((len(rows), R), value, dtype=dtype, device=device)
    for b, row in enumerate(rows):
        out[b, :len(row)] = torch.tensor(row, dtype=dtype, device=device)
    return out


# -----------------------------------------------------------------------------
# 1. Warm start: supervised conversations from a question-agnostic memory policy


def find_ids(ids_bytes, pattern):
    """Index of the first occurrence of the id list `pattern` in ids (given as int32 bytes), or None."""
    needle = array("i", pattern).tobytes()
    at = ids_bytes.find(needle)
    while at != -1 and at % 4:  # a match must start on an id boundary
        at = ids_bytes.find(needle, at + 1)
    return None if at == -1 else at // 4


def memory_note(needle, notes="keyed", asked=None):
    """How the warm start writes a needle into memory (cfg.notes): a short note that names what
    it is about, then the needle's value.

    >>> memory_note({"key": "icy-zebra", "value": "7368886"})
    ' icy-zebra: 7368886.'
    >>> memory_note({"key": "bold", "value": "7"}, "value")
    ' 7.'
    >>> memory_note({"key": "bold", "value": "$3"}, "value"), memory_note({"key": "bold", "value": "$3"}, "digits")
    (' $3.', ' 3.')
    >>> memory_note({"key": "bold", "value": "7"}, "restate", asked="last")
    ' last: 7.'

    keyed: the needle's own key. value: the value alone. digits: the value's digits alone, so a
    price "$3" and a number "3" make the same note and a note is one choice (which digit), not
    two (which kind, then which digit). restate: the QUESTION's word (what is
    asked, not which needle this is), so the note of any needle reads " last: 7." when the
    question asks for the last number. The leading space makes a key tokenize as it does inside
    the text (" icy" not "ic" "y"), so writing the note is pure copying.
    """
    label = {"keyed": needle["key"], "restate": asked, "value": None, "digits": None}[notes]
    value = (re.sub(r"[^0-9]", "", needle["value"]) or needle["value"]) if notes == "digits" else needle["value"]
    return f" {label}: {value}." if label else f" {value}."


def note_value(note):
    """The value a note holds: ' last: 7.' -> '7', ' 7.' -> '7', ' icy-zebra: 7368886.' -> '7368886'."""
    return note.strip().rstrip(".").split(" ")[-1]


def sample_facts(sample, tokenizer, chunks, notes="keyed"):
    """For each chunk, the notes of the facts lying wholly inside it, in the order they appear:
    memory_note of each needle for NIAH tasks; for other tasks, every sentence of the context. A
    fact cut by a chunk boundary is in no chunk (the agent cannot see it whole either).
    """
    if sample.get("needles"):
        asked = tasks.asked_word(sample["question"])
        facts = [(sample["context"][n["start"]:n["end"]] if "start" in n
                  else tasks.NEEDLE.format(key=n["key"], value=n["value"]), memory_note(n, notes, asked))
                 for n in sample["needles"]]
    else:
        sentences = [s.strip() for s in re.split(r"(?<=[.!?])\s+|\n+", sample["context"]) if s.strip()]
        facts = [(s, " " + s) for s in sentences]
    ids_bytes = array("i", [t for c in chunks for t in c]).tobytes()
    size = len(chunks[0]) if chunks else 1
    per_chunk = [[] for _ in chunks]
    for fact, note in dict.fromkeys(facts):
        for pattern in (tokenizer.encode(" " + fact), tokenizer.encode(fact)):
            hit = find_ids(ids_bytes, pattern)
            if hit is not None:
                if hit // size == (hit + len(pattern) - 1) // size:
                    per_chunk[hit // size].append((hit, note))
                break
    return [[note for _, note in sorted(found)] for found in per_chunk]


def warm_start_conversations(sample, tokenizer, cfg, rng, keep="reservoir", replace=0.0):
    """[(prompt_ids, reply_ids)] for one sample: its K memory turns and the final turn.

    Memory turns: as many notes as fit the memory budget, chosen whatever the question asks: with
    keep="reservoir", reservoir sampling over the notes seen so far (a uniform random subset); with
    keep="latest", the newest ones (no randomness: the copy curriculum's targets, see warm_start).
    replace > 0 swaps reservoir's probability (capacity / seen) for a fixed one: a sticky coin,
    under which a full memory keeps its notes against each new fact with probability 1 - replace.
    Final turn: keyed notes (" bold: 7.") box the asked value(s) if the memory holds them, else
    "unknown"; value and restated notes (" 7.", " last: 7.") carry no needle key to check, so it
    boxes the value the memory holds. Either way the warm start learns to answer from its memory,
    never which notes to keep.
    """
    agent = agent_config(cfg, 1.0, training=True)
    compact = agent.compact_prompts
    problem = tokenizer.encode(sample["question"])
    chunks = document_chunks(tokenizer.encode(sample["context"]), agent)
    facts = sample_facts(sample, tokenizer, chunks, notes=cfg.notes)
    note_len = max([len(tokenizer.encode(f)) for fs in facts for f in fs] or [1])
    capacity = max(1, (cfg.memory_tokens - 1) // note_len)  # notes the memory can hold (+ the stop id)
    memory, seen, convs = [], 0, []
    memory_ids = tokenizer.encode(initial_memory(compact))
    for chunk, new_facts in zip(chunks, facts):
        prompt = memory_turn_ids(tokenizer, problem, memory_ids, chunk, compact)
        for fact in new_facts:
            seen += 1
            if keep == "latest":
                memory = (memory + [fact])[-capacity:]
            elif len(memory) < capacity:  # reservoir sampling: a uniform random subset of the facts seen
                memory.append(fact)
            elif rng.random() < (replace or capacity / seen):
                memory[rng.randrange(capacity)] = fact
        reply = tokenizer.render_reply("".join(memory) if memory else initial_memory(compact))
        reply = reply[:cfg.memory_tokens]
        convs.append((prompt, reply))
        memory_ids = reply[:-1] if reply[-1] == tokenizer.im_end_id else reply
    if cfg.notes != "keyed" and sample.get("needles"):  # no needle key to check: box what memory holds
        found = [note_value(note) for note in memory]
    else:
        found = [a for a in sample["answers"] if a in "".join(memory)]
    answer = ", ".join(found) if found else "unknown"
    convs.append((final_turn_ids(tokenizer, problem, memory_ids, compact),
                  tokenizer.render_reply(f"\\boxed{{{answer}}}")[:cfg.answer_tokens]))
    return convs


def supervised(cfg, model, conversations_of, label, gate_at=None, copy_rate=None):
    """cfg.sft_steps AdamW steps of cross-entropy on reply tokens only (the prompt carries no loss).

    conversations_of(index, rng, step) gives the [(prompt_ids, reply_ids)] of training sample `index`;
    each step takes cfg.sft_batch samples (shared out over ranks), the loss is the global token mean.
    Learning rate: linear warm-up, then cosine down to 10%.

    gate_at, copy_rate (the warm start: where its copy curriculum ends, and how well the agent
    copies): before step gate_at, while copy_rate() is below cfg.copy_gate, add curriculum steps
    (at most cfg.copy_patience) on new samples at the learning rate of step gate_at - 1. The
    scheduled steps then go on as if none had been added, so a run whose copy formed in time is
    unchanged.
    """
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.sft_lr, weight_decay=0.0, betas=(0.9, 0.95))
    rng = random.Random(cfg.seed + 12345 + RANK)
    model.train()
    t0 = time.time()
    per_rank = cfg.sft_batch // WORLD

    def lr_at(step):
        warmup = min(1.0, (step + 1) / min(20, cfg.sft_steps // 5 + 1))
        return cfg.sft_lr * warmup * (0.1 + 0.45 * (1 + math.cos(math.pi * step / cfg.sft_steps)))  # cosine to 10%

    def train_step(sample_step, data_step, lr):
        """One AdamW step at lr on the samples of sample_step, built as at step data_step; the global loss."""
        for group in optimizer.param_groups:
            group["lr"] = lr
        convs = []
        for i in range(per_rank):
            convs += conversations_of(SFT_SEED + (sample_step * WORLD + RANK) * per_rank + i, rng, data_step)
        n_tokens = all_sum([sum(len(r) for _, r in convs)])[0]  # global token-mean
        loss_sum = 0.0
        for m in range(0, len(convs), cfg.micro_batch):
            micro = convs[m:m + cfg.micro_batch]
            with autocast(cfg):
                logits = response_logits(model, [p for p, _ in micro], [r for _, r in micro])  # (B, R, V)
            R = logits.size(1)
            targets = pad_rows([r for _, r in micro], R, dtype=torch.long, device=logits.device)
            mask = pad_rows([[1] * len(r) for _, r in micro], R, device=logits.device)
            logp = dapo.logprobs_from_logits(logits, targets)  # (B, R)
            loss = -(logp * mask).sum() / n_tokens
            loss.backward()
            loss_sum += loss.item()
        if WORLD == 1:  # (under DDP: the gradient-norm check, the same on every rank; see rl_step)
            check_finite(cfg, loss_sum, label)
        all_reduce_grads(model)
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip or math.inf)
        check_finite(cfg, float(grad_norm), f"{label} (gradient norm)")
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return all_sum([loss_sum])[0]

    for step in range(cfg.sft_steps):
        if step == gate_at:
            extend_copy_curriculum(cfg, copy_rate, lambda extra: train_step(cfg.sft_steps + extra, step - 1,
                                                                            lr_at(step - 1)), label, t0)
        loss = train_step(step, step, lr_at(step))
        if step % 25 == 0 or step == cfg.sft_steps - 1:
            print0(f"{label} {step + 1:4d}/{cfg.sft_steps} | loss {loss:.4f} | "
                   f"lr {lr_at(step):.2e} | {time.time() - t0:.0f}s")
    model.eval()


GATE_EVERY = 25  # curriculum steps between two measurements of the copy gate


def extend_copy_curriculum(cfg, copy_rate, curriculum_step, label, t0):
    """Run curriculum_step(extra) for extra = 0, 1, ..., GATE_EVERY steps at a time, until
    copy_rate() reaches cfg.copy_gate or cfg.copy_patience steps were added (see warm_start: the
    copy curriculum's gate). Returns the number of steps added."""
    rate, extra = copy_rate(), 0
    if rate < cfg.copy_gate and cfg.copy_patience:
        print0(f"{label}: copy curriculum: the agent copies in {100 * rate:.0f}% of documents < --copy-gate "
               f"{cfg.copy_gate}: going on")
    while rate < cfg.copy_gate and extra < cfg.copy_patience:
        for _ in range(min(GATE_EVERY, cfg.copy_patience - extra)):
            loss = curriculum_step(extra)
            extra += 1
        rate = copy_rate()
        print0(f"{label} +{extra:3d} copy curriculum steps | loss {loss:.4f} | copies {100 * rate:.0f}% of "
               f"documents | {time.time() - t0:.0f}s")
    if rate >= cfg.copy_gate:
        print0(f"{label}: copy curriculum: the agent copies in {100 * rate:.0f}% of documents >= --copy-gate "
               f"{cfg.copy_gate}: through the gate" + (f" ({extra} steps added)" if extra else ""))
    else:
        print0(f"warning: {label}: copy curriculum: the agent copies in only {100 * rate:.0f}% of documents "
               f"after {extra} added steps (--copy-gate {cfg.copy_gate}, --copy-patience {cfg.copy_patience}): "
               f"the copy has not formed, and RL is unlikely to learn from this warm start (on cpu-demo, the warm "
               f"starts of seeds 6 and 17: README, 'Across seeds'); try another --seed")
    return extra


def copy_rate(cfg, model, tokenizer, n=64, policy=None):
    """The copy gate's measure: the fraction of n held-out copy-curriculum documents (those with a
    fact to copy) after which the greedy agent's last memory reply is exactly the curriculum's
    target, token for token with its stop id: the newest notes read (warm_start_conversations with
    keep="latest"). It checks the whole skill the curriculum teaches: find a fact in a chunk, copy
    it, carry it through the chunks without one. The documents are numbered from GATE_SEED, apart
    from the evaluation's, so that no test document (whose needles a shrunk document of the same
    number shares) decides how long the warm start trains. (The warm-start loss says less: on the cpu-demo a
    step's loss of 0.19 went with 44% of documents copied for seed 6 and 59% for seed 9;
    EXPERIMENTS.md, session 19.)
    policy: a scripted stand-in for the model (rollout.run_agent's), for tests."""
    short = curriculum_config(cfg)
    # each rank runs its share of the n documents and the counts are summed, so that every rank
    # gets the same rate and takes the same branch of the gate (ranks that disagreed would deadlock)
    samples = [get_sample(cfg, tokenizer, None, GATE_SEED + i, scale=cfg.short_chunk / cfg.chunk_tokens)
               for i in range(RANK, n, WORLD)]
    targets = [warm_start_conversations(s, tokenizer, short, random.Random(0), keep="latest")[-2][1]
               for s in samples]  # the last memory turn's reply: (prompt, reply) pairs, then the final turn
    was_training = model.training
    model.eval()
    with torch.no_grad(), autocast(cfg):
        # training=True: the agent reads the documents its targets were made from (--max-chunks)
        rollouts = run_agent(model, tokenizer, samples, agent_config(short, 0.0, training=True), seed=0,
                             policy=policy, max_positions=cfg.window or None)
    model.train(was_training)
    empty = tokenizer.render_reply(initial_memory(short.prompts == "compact"))
    scored = [(r.conversations[-2].response_ids, t) for r, t in zip(rollouts, targets) if t != empty]
    copied, total = all_sum([sum(reply == target for reply, target in scored), len(scored)])
    return copied / max(total, 1)


def curriculum_config(cfg):
    """The copy curriculum's agent: chunks of --short-chunk tokens, notes of --curriculum-notes."""
    return dataclasses.replace(cfg, chunk_tokens=cfg.short_chunk, notes=cfg.curriculum_notes or cfg.notes)


def in_copy_curriculum(cfg, data, step):
    """True while supervised step `step` reads the shrunk copy-curriculum samples (see warm_start):
    before --short-chunk-steps, with 0 < --short-chunk < --chunk-tokens, on generated tasks only."""
    return step < cfg.short_chunk_steps and 0 < cfg.short_chunk < cfg.chunk_tokens and data is None


def curriculum_conversations(cfg, tokenizer, data, index, rng, step):
    """Warm-start conversations of training sample `index` at warm-start step `step`: before
    cfg.short_chunk_steps, the sample at short_chunk / chunk_tokens of the training length read in
    chunks of cfg.short_chunk tokens (as many chunks and needles, a third of the tokens) with
    memory targets chosen by cfg.curriculum_keep; after, the training geometry itself with
    --sft-replace's sticky coin (0: reservoir targets). A user's data file is never shrunk (only
    generated tasks are)."""
    if in_copy_curriculum(cfg, data, step):
        sample = get_sample(cfg, tokenizer, data, index, scale=cfg.short_chunk / cfg.chunk_tokens)
        return warm_start_conversations(sample, tokenizer, curriculum_config(cfg), rng, keep=cfg.curriculum_keep)
    return warm_start_conversations(get_sample(cfg, tokenizer, data, index), tokenizer, cfg, rng,
                                    replace=cfg.sft_replace)


def warm_start(cfg, model, tokenizer, data):
    """Supervised training on warm_start_conversations (question-agnostic memory targets).

    A copy curriculum: the first cfg.short_chunk_steps steps run the same agent at a smaller scale:
    chunks of cfg.short_chunk tokens (16) instead of cfg.chunk_tokens (48), documents shrunk by the
    same factor (same number of chunks and needles).

    Why: a from-scratch model has no attention head that finds a needle and copies it. With
    ~130-token prompts it sits for hundreds of steps writing the format around the most common
    key and digit (attention spread over every position gives almost no gradient toward the
    right one). Short prompts shorten that plateau, and the copy carries over to long ones
    (measured in EXPERIMENTS.md, session 3).

    The curriculum's memory targets keep the latest note (--curriculum-keep latest), not a random
    one: with reservoir targets the note to write after a new needle is the chunk's with
    probability 1/seen and the memory's otherwise, a coin the model cannot predict, so the
    gradient toward either copy is diluted. Both choices are question-agnostic (the latest needle
    is the asked one no more often than a random one), and the last steps return to random
    targets (below), so RL still starts from a policy that keeps a random needle. Measured
    (EXPERIMENTS.md, sessions 15-16): with reservoir targets the copy never formed for seeds 3, 6 and 8 of the
    cpu-demo; with latest targets seed 8's formed by curriculum step ~175 and seed 3's by ~275.
    --curriculum-notes digits writes the curriculum's notes without a price's sign (" 3.", not
    " $3."): one digit to copy, not a kind and a digit; the later steps still write --notes.

    After the curriculum, a sticky coin (--sft-replace 0.25): a full memory takes a new fact with
    probability 1/4, whatever the fact or how many came before. Reservoir sampling (--sft-replace
    0) takes it with probability capacity / facts seen, a count that is in no prompt, so the model
    can only learn its average, and warm starts learned it unevenly. Both are question-agnostic,
    and with one note and four needles both leave the number in the final memory ~1/4 of the
    time. Measured on cpu-demo (EXPERIMENTS.md, sessions 26-27): the warm starts whose RL did not
    rise held the number against a price least often (57-67% of such turns, at 0.7); with the
    sticky coin seed 5's held it in 90%, and RL rose from every warm start whose copy had formed
    in the default curriculum (seed 6's, formed late or with digit notes, still did not: session 28).

    The copy gate: a seed whose copy has not formed when the curriculum ends sits on a plateau
    (loss ~0.45), and RL cannot start from it. So where the curriculum would end, the greedy agent
    runs on 64 held-out curriculum documents (copy_rate), and the curriculum goes on, 25 steps at
    a time, until its final memory is exactly the newest note in at least --copy-gate (75%) of
    them, for at most --copy-patience (300) more steps; a seed whose copy formed in time is
    unchanged. Measured on the cpu-demo (EXPERIMENTS.md, session 19): at step 300, seeds whose
    copy had formed copied 84-95% of documents, seeds on the plateau 5-13%. (Session 18's gate
    read the mean loss of the last 25 steps instead; its 0.3 passed seed 6 with 14% copied.)
    """
    def conversations_of(index, rng, step):
        return curriculum_conversations(cfg, tokenizer, data, index, rng, step)

    if in_copy_curriculum(cfg, data, 0):
        print0(f"warm start: chunks of {cfg.short_chunk} tokens for {min(cfg.short_chunk_steps, cfg.sft_steps)} "
               f"steps" + (f", then {cfg.chunk_tokens}" if cfg.short_chunk_steps < cfg.sft_steps else
                           " (all of them)"))
    gated = in_copy_curriculum(cfg, data, 0) and cfg.copy_gate > 0 and cfg.short_chunk_steps < cfg.sft_steps
    supervised(cfg, model, conversations_of, "warm start", gate_at=cfg.short_chunk_steps if gated else None,
               copy_rate=lambda: copy_rate(cfg, model, tokenizer))


# -----------------------------------------------------------------------------
# 1b. The full-attention baseline (--baseline): the same model answering with the whole document


def baseline_max_scale(cfg, model, tokenizer):
    """The largest multiple of --train-length whose documents still fit the window whole."""
    window = cfg.window or model.config.max_position_embeddings
    question = 64  # room for the question's tokens (a task question is ~15-30)
    overhead = len(direct_turn_ids(tokenizer, [], [], cfg.prompts == "compact")) + question + cfg.answer_tokens
    return (window - overhead) / (cfg.train_length * (1 + tasks.LENGTH_TOLERANCE))


def baseline_conversations(cfg, tokenizer, data, index, rng, step, top, window=None):
    """The baseline's one supervised conversation of training sample `index`: (whole document +
    question) -> \\boxed{answer}. Document lengths are drawn uniformly from 1x up to `top`, the
    longest that fits the window, so the baseline is trained on every length it can read: any
    failure beyond is the window's, not a lack of training. Before cfg.short_chunk_steps, the
    agent's copy curriculum (see warm_start) holds here too: documents shrunk to
    short_chunk / chunk_tokens of the training length. A conversation longer than `window` stops
    the run (a data file's documents keep their own lengths; the model would read past its
    positions without a word)."""
    if in_copy_curriculum(cfg, data, step):
        scale = cfg.short_chunk / cfg.chunk_tokens
    else:
        scale = rng.uniform(1.0, top)
    sample = get_sample(cfg, tokenizer, data, index, scale=scale)
    prompt = direct_turn_ids(tokenizer, tokenizer.encode(sample["question"]),
                             tokenizer.encode(sample["context"]), cfg.prompts == "compact")
    reply = tokenizer.render_reply("\\boxed{%s}" % ", ".join(sample["answers"]))
    if window is not None and len(prompt) + cfg.answer_tokens > window:
        i = index % max(1, len(data) - cfg.eval_n) if data is not None else index  # (get_sample's numbering)
        where = (f"question {data.file_index[i]} of {cfg.data}" if isinstance(data, tasks.HotpotQA) else
                 f"the {ordinal(i + 1)} sample of {cfg.data}" if data is not None else f"sample {index}")
        raise SystemExit(f"train.py: --baseline reads a whole document in one turn, and {where} is prompt "
                         f"{len(prompt)} + answer {cfg.answer_tokens} tokens > the {window}-token window")
    return [(prompt, reply[:cfg.answer_tokens])]


def train_baseline(cfg, model, tokenizer, data):
    """cfg.baseline_steps supervised steps on baseline_conversations (batch --sft-batch, lr --sft-lr),
    the first half on curriculum-shrunk documents, then whole ones.

    Why after the agent's warm start: like the paper's baselines, which start from the same
    pretrained model as MemAgent, this one starts from what the agent starts from (a model that
    can copy a fact out of a text), and only the reading differs. Trained from scratch instead,
    the 1M-parameter model never learned to find the needle in a whole document: its loss sat at
    a digit guess for 360 steps of 64 documents (README, session 8)."""
    cfg = dataclasses.replace(cfg, sft_steps=cfg.baseline_steps, short_chunk_steps=cfg.baseline_steps // 2)
    top = max(1.0, baseline_max_scale(cfg, model, tokenizer)) if data is None else 1.0
    window = cfg.window or model.config.max_position_embeddings

    def conversations_of(index, rng, step):
        return baseline_conversations(cfg, tokenizer, data, index, rng, step, top, window)

    print0(f"== full-attention baseline: {cfg.sft_steps} supervised steps on whole documents of "
           f"{cfg.train_length}-{round(cfg.train_length * top)} tokens")
    if in_copy_curriculum(cfg, data, 0):
        print0(f"baseline: documents of {round(cfg.train_length * cfg.short_chunk / cfg.chunk_tokens)} "
               f"tokens for the first {cfg.short_chunk_steps} steps (the agent's copy curriculum)")
    supervised(cfg, model, conversations_of, "baseline")


# -----------------------------------------------------------------------------
# 2. RL: multi-conversation DAPO


def check_finite(cfg, value, where):
    """Stop before a NaN/inf loss reaches the weights, saying which checkpoint is left to go on from."""
    if math.isfinite(value):
        return
    ckpt = os.path.join(cfg.out_dir, "ckpt")
    if os.path.exists(os.path.join(ckpt, "trainer.pt")):
        with open(os.path.join(ckpt, "model", "meta.json")) as f:  # (the step, without the optimizer's GBs)
            step = json.load(f)["step"]
        kept = f"The last good checkpoint, {ckpt} at RL step {step}, is kept"
    else:
        kept = f"No RL checkpoint was written yet (the first comes at step {cfg.save_every})"
    raise SystemExit(f"train.py: non-finite loss ({value}) during {where}; stopping. {kept}; "
                     f"try a lower --lr / --sft-lr.")


def all_reduce_grads(model):
    """Sum gradients over ranks (losses are already divided by GLOBAL normalizers)."""
    if WORLD == 1:
        return
    for p in model.parameters():
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        dist.all_reduce(p.grad)


def collect_rollouts(cfg, model, tokenizer, data, step, data_round=0):
    """Roll out groups until dynamic sampling has its batch. Returns (groups to train on,
    (groups with reward variance, groups drawn), the first draw's rollouts, tokens generated,
    the most draws any rank made).

    Which prompts a draw gets: a generated task makes a fresh sample for every draw slot (step,
    draw, rank) by seed, so no two draws ever share one. A data file is read in order like a data
    loader: draw d of this step takes the batch_size questions after the data_round batches that
    earlier draws consumed, so in one process every question comes up once per epoch, whatever
    dynamic sampling skipped (a resumed run recounts data_round from its history). With several
    ranks a round ends with the rank that drew most; the slots of ranks that stopped earlier are
    skipped."""
    per_rank = cfg.batch_size // WORLD
    agent = agent_config(cfg, cfg.temperature, training=True)
    draws = []

    def draw():
        d = len(draws)
        base = ((step * cfg.max_gen_batches + d) * WORLD + RANK) * per_rank  # this draw's slot
        first = base if data is None else ((data_round + d) * WORLD + RANK) * per_rank
        samples = [get_sample(cfg, tokenizer, data, first + i) for i in range(per_rank)]
        with autocast(cfg):
            rollouts = run_agent(model, tokenizer, samples, agent, group_size=cfg.group_size,
                                 seed=cfg.seed * 1_000_003 + base, max_positions=cfg.window or None)
        for r in rollouts:
            r.accuracy = r.reward  # the task reward, before any overlong penalty
            if cfg.overlong_buffer:
                lengths = [len(c.response_ids) for c in r.conversations]
                budgets = [cfg.answer_tokens if c.is_final else cfg.memory_tokens for c in r.conversations]
                caches = [min(cfg.overlong_buffer, b) for b in budgets]
                r.reward += dapo.rollout_overlong_penalty(lengths, budgets, caches)
        draws.append(rollouts)
        return [rollouts[g * cfg.group_size:(g + 1) * cfg.group_size] for g in range(per_rank)]

    # the signal dynamic sampling asks of a group: its rewards (with the overlong penalty) or its accuracies
    rewards_of = lambda group: [getattr(r, cfg.filter_groups_by) for r in group]
    if cfg.dynamic_sampling:
        try:
            groups, stats = dapo.fill_batch(draw, rewards_of, per_rank, cfg.max_gen_batches)
        except dapo.NoSignalError as e:  # not one group with signal in max_gen_batches draws
            print(f"step {step + 1} (rank {RANK}): {e}; no update from this rank", flush=True)
            groups = []
    else:
        groups = draw()
    drawn = [d[i:i + cfg.group_size] for d in draws for i in range(0, len(d), cfg.group_size)]
    with_signal = sum(len(set(rewards_of(g))) > 1 for g in drawn)  # groups dynamic sampling keeps (or would)
    generated = sum(len(c.response_ids) for d in draws for r in d for c in r.conversations)
    return groups, (with_signal, len(drawn)), draws[0], generated, int(all_max(len(draws)))


def score_responses(cfg, model, convs):
    """{id(conversation): log-probs of its response tokens} under `model` as the update's forward
    computes them (response_logits at the sampling temperature, under autocast), without grad."""
    scores = {}
    with torch.no_grad():
        for micro in micro_batches(convs, cfg.micro_batch):
            with autocast(cfg):
                logp = response_logprobs(model, micro, cfg.temperature)[0].tolist()  # (B, R)
            for c, row in zip(micro, logp):
                scores[id(c)] = row[:len(c.response_ids)]
    return scores


def warmup_lr(cfg, step, mini_batch):
    """The learning rate of mini-batch `mini_batch` of RL step `step`: linear warm-up over the first
    cfg.warmup_steps RL steps (verl steps its scheduler once per RL step, so the paper's 20 warm-up
    steps are RL steps), rising at every optimizer step within them, then constant. A function of
    the step alone, so a resumed run gets the same rates whatever mini-batches were skipped.

    >>> [warmup_lr(TrainConfig(lr=1.0, warmup_steps=2, mini_batches=2), s, k) for s in (0, 1, 2) for k in (0, 1)]
    [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    """
    done = step * cfg.mini_batches + mini_batch + 1  # optimizer steps up to and including this one
    return cfg.lr * min(1.0, done / max(cfg.warmup_steps * cfg.mini_batches, 1))


def rl_step(cfg, model, ref_model, optimizer, tokenizer, data, step, data_round=0):
    """One DAPO step: rollouts -> advantages -> mini-batched clipped-surrogate updates.
    data_round: rollout batches of a data file consumed by the earlier steps (collect_rollouts)."""
    t0 = time.time()
    model.eval()
    on_cuda = next(model.parameters()).device.type == "cuda"
    if on_cuda:  # peak memory of each phase, to set against the memory plan printed at start
        torch.cuda.reset_peak_memory_stats()
    groups, (with_signal, drawn), first, generated, draws = collect_rollouts(cfg, model, tokenizer, data,
                                                                             step, data_round)
    t_rollout = time.time() - t0
    if on_cuda:
        peak_rollout = torch.cuda.max_memory_allocated() / 2**30
        torch.cuda.reset_peak_memory_stats()

    # rollout metrics of the first draw: an unbiased view of the current policy
    rollouts = first
    convs_all = [c for r in rollouts for c in r.conversations]
    mem = [c for c in convs_all if not c.is_final]
    fin = [c for c in convs_all if c.is_final]
    sums = all_sum([len(rollouts), sum(r.reward for r in rollouts), sum(r.accuracy for r in rollouts),
                    len(mem), sum(len(c.response_ids) for c in mem), len(fin),
                    sum(len(c.response_ids) for c in fin), sum(c.truncated for c in convs_all),
                    len(convs_all), generated, with_signal, drawn])
    n = max(sums[0], 1)
    metrics = {"step": step + 1, "reward": sums[1] / n, "accuracy": sums[2] / n,
               "kept_fraction": sums[10] / max(sums[11], 1), "draws": draws, "memory_len": sums[4] / max(sums[3], 1),
               "answer_len": sums[6] / max(sums[5], 1), "truncation_rate": sums[7] / max(sums[8], 1)}

    # advantages: one per rollout, from its group; every conversation gets its rollout's
    t1 = time.time()
    model.train()
    kept = [r for g in groups for r in g]
    rewards = torch.tensor([r.reward for r in kept])
    group_ids = [gi for gi, g in enumerate(groups) for _ in g]  # (a sample index repeats across draws)
    adv = dapo.group_advantages(rewards, group_ids, norm_by_std=cfg.adv_std) if kept else torch.zeros(0)
    parts = [groups[i::cfg.mini_batches] for i in range(cfg.mini_batches)]  # mini-batches of groups
    adv_of_conv = {id(c): float(a) for r, a in zip(kept, adv) for c in r.conversations}  # its rollout's
    # the old policy's log-probs, scored by the update's own forward before any update (as verl
    # recomputes them): the engine's (cached decode) agree to ~1e-6 in float32 but differ by up to
    # ~2e-2 a token in bf16, which would read as policy change (ratio != 1, clipping) before any
    # step. How far the engine's are from these is logged as rollout_logp_gap. The first
    # mini-batch runs before any update, so its own forward's log-probs, detached, are its old
    # ones; only the later mini-batches are scored here (none with one mini-batch per step).
    kept_convs = [c for r in kept for c in r.conversations]
    part_convs = [[c for g in part for r in g for c in r.conversations] for part in parts]
    logp_old_of = {}
    for convs in part_convs[1:]:  # each part in the micro-batches its update makes: the same shapes, so in
        logp_old_of.update(score_responses(cfg, model, convs))  # bf16 the same rounding (ratio 1 until a step)
    later_convs = [c for convs in part_convs[1:] for c in convs]
    gap = sum(abs(a - b) for c in later_convs for a, b in zip(c.logprobs, logp_old_of[id(c)]))
    logp_ref_of = score_responses(cfg, ref_model, kept_convs) if ref_model is not None else None  # frozen
    # token-weighted sums of the per-micro-batch diagnostics; pg_loss adds up to each mini-batch's loss
    # (kl_ref only with a reference model: a logged 0.0 would read as "has not moved from it")
    stat_names = ["clip_frac_low", "clip_frac_high", "dual_clip_frac", "ratio_mean", "approx_kl", "entropy"]
    stat_names += ["kl_ref"] * (ref_model is not None) + ["response_tokens"]  # response_tokens stays last
    stats = dict.fromkeys(stat_names, 0.0)
    pg_loss, stepped, grad_norms = 0.0, 0, 0.0
    budget = max(cfg.memory_tokens, cfg.answer_tokens)
    for mini, convs in enumerate(part_convs):
        # normalizers of the whole mini-batch over all ranks: exact token-mean under accumulation
        token_norm, seq_norm = all_sum([sum(len(c.response_ids) for c in convs), len(convs)])
        if token_norm == 0:  # no rank kept a group for this mini-batch: no optimizer step either
            continue
        for micro_convs in micro_batches(convs, cfg.micro_batch):
            micro = [(c, adv_of_conv[id(c)]) for c in micro_convs]
            with autocast(cfg):
                # scored under the distribution the rollouts sampled from: softmax(logits / T); one
                # forward per distinct (prompt, response), a row for every copy
                logp, entropy = response_logprobs(model, micro_convs, cfg.temperature, with_entropy=True,
                                                  entropy_grad=cfg.entropy_coef != 0)  # (B, R)
            R, dev = logp.size(1), logp.device
            mask = pad_rows([[1] * len(c.response_ids) for c in micro_convs], R, device=dev)  # (B, R)
            if mini == 0:  # the policy that sampled, not yet updated: ratio exactly 1
                logp_old = logp.detach()  # (B, R)
                gap += sum(abs(a - b) for (c, _), row in zip(micro, logp_old.tolist())
                           for a, b in zip(c.logprobs, row))
            else:
                logp_old = pad_rows([logp_old_of[id(c)] for c, _ in micro], R, device=dev)  # (B, R)
            advantages = mask * torch.tensor([a for _, a in micro], device=dev)[:, None]  # (B, R)
            logp_ref = None
            if logp_ref_of is not None:
                logp_ref = pad_rows([logp_ref_of[id(c)] for c, _ in micro], R, device=dev)  # (B, R)
            loss, m_stats = dapo.policy_loss(
                logp, logp_old, advantages, mask, eps_low=cfg.clip_low, eps_high=cfg.clip_high,
                dual_clip_c=cfg.dual_clip or None, agg=cfg.loss_agg, token_normalizer=token_norm,
                seq_normalizer=seq_norm, max_len=budget, logp_ref=logp_ref, kl_coef=cfg.kl_coef,
                entropy=entropy, entropy_coef=cfg.entropy_coef)
            # one process stops at a NaN loss before its backward. Under DDP a rank must not leave
            # alone (the others would wait for it in the all-reduce): the gradient-norm check after
            # the all-reduce sees the NaN on every rank and stops them all
            if WORLD == 1:
                check_finite(cfg, loss.item(), f"RL step {step + 1}")
            loss.backward()
            w = m_stats["response_tokens"]
            for k in stats:
                stats[k] += m_stats.get(k, 0.0) * (w if k != "response_tokens" else 1.0)
            pg_loss += m_stats["pg_loss"]
        stepped += 1
        all_reduce_grads(model)
        for group in optimizer.param_groups:  # warm-up, then constant
            group["lr"] = warmup_lr(cfg, step, mini)
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip or math.inf)
        check_finite(cfg, float(grad_norm), f"RL step {step + 1} (gradient norm)")
        grad_norms += float(grad_norm)  # before clipping: how hard the step pulled
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    model.eval()
    t_update = time.time() - t1
    totals = all_sum([stats[k] for k in stats] + [gap, pg_loss, len(groups)])
    trained_tokens = totals[len(stats) - 1]  # stats' last entry, response_tokens
    n_tok = max(trained_tokens, 1.0)
    metrics.update({k: v / n_tok for k, v in zip(stats, totals) if k != "response_tokens"})
    # pg_loss: the mean over the mini-batches that stepped (each one's loss summed over micro-batches and ranks)
    metrics.update(rollout_logp_gap=totals[-3] / n_tok, pg_loss=totals[-2] / max(stepped, 1),
                   groups=int(totals[-1]), grad_norm=grad_norms / max(stepped, 1))
    metrics.update(time_rollout=t_rollout, time_update=t_update, lr=warmup_lr(cfg, step, cfg.mini_batches - 1),
                   tokens_per_s=sums[9] / max(t_rollout, 1e-9), trained_tokens=trained_tokens)
    if on_cuda:  # GiB allocated at the phase's high-water mark, the most of any rank
        metrics.update(peak_gib_rollout=all_max(peak_rollout),
                       peak_gib_update=all_max(torch.cuda.max_memory_allocated() / 2**30))
    return metrics


# -----------------------------------------------------------------------------
# 3. Evaluation: greedy agent on held-out seeds at multiples of the training length


def evaluate(cfg, model, tokenizer, data, label, full_attention=False):
    """({scale: accuracy}, {scale: holds}) for each of --eval-scales; samples shared out over ranks.

    holds (the agent on needle tasks only, else {}): (fraction of documents whose final memory
    holds SOME needle's value, fraction whose final memory holds the asked one), from
    reward.memory_holds. The first says whether the agent copies facts into memory at all, the
    second whether it keeps the right one: what RL has to teach. With full_attention, the model
    answers with the whole document in its window (the baseline); a scale whose documents do not
    fit gets None."""
    model.eval()
    results, holds = {}, {}
    scales = eval_scales(cfg)
    if data is not None and not isinstance(data, tasks.HotpotQA):
        scales = [1.0]  # a JSONL file has its own lengths
    for scale in scales:
        t0 = time.time()
        mine = [EVAL_SEED + i for i in range(cfg.eval_n) if i % WORLD == RANK]
        samples = [get_sample(cfg, tokenizer, data, i, scale) for i in mine]
        if full_attention:
            with autocast(cfg):
                answers = run_full_attention(model, tokenizer, samples, cfg.answer_tokens,
                                             cfg.prompts == "compact", max_positions=cfg.window or None,
                                             cuda_graph=use_cuda_graph(cfg))
            rewards = [a.reward for a in answers if a.fits]
            fits, total = all_sum([len(rewards), len(samples)])
            if fits < total:  # part of a length beyond the window is no score at all
                results[f"{scale:g}x"] = None
                print0(f"eval {label:11s} {scale:>4g}x: {int(total - fits)} of {int(total)} documents "
                       f"exceed the {cfg.window or model.config.max_position_embeddings}-token window")
                continue
        else:
            with autocast(cfg):
                rollouts = run_agent(model, tokenizer, samples, agent_config(cfg, 0.0), group_size=1,
                                     seed=cfg.seed, max_positions=cfg.window or None) if samples else []
            rewards = [r.reward for r in rollouts]
        correct, count = all_sum([sum(rewards), len(rewards)])
        tokens = sum(s.get("n_tokens") or len(tokenizer.encode(s["context"])) for s in samples)
        results[f"{scale:g}x"] = correct / max(count, 1)
        held_text = ""
        if not full_attention:  # (every rank takes part in the sum, whatever its samples hold)
            finals = [(r.memories[-1], s) for r, s in zip(rollouts, samples) if s.get("needles")]
            any_value, asked, with_needles = all_sum([
                sum(memory_holds(memory, [n["value"] for n in s["needles"]]) for memory, s in finals),
                sum(memory_holds(memory, s["answers"]) for memory, s in finals), len(finals)])
            if with_needles == count > 0:  # a needle task
                holds[f"{scale:g}x"] = (any_value / count, asked / count)
                held_text = (f" | final memory holds a needle value {100 * any_value / count:.0f}%, "
                             f"the asked one {100 * asked / count:.0f}%")
        print0(f"eval {label:11s} {scale:>4g}x ({tokens // max(len(samples), 1)} tokens/doc): "
               f"accuracy {100 * correct / max(count, 1):5.1f}%{held_text} ({time.time() - t0:.0f}s)")
    return results, holds


def warn_if_no_copy(cfg, holds):
    """A warning when the starting policy's final memory holds a needle's value in under 70% of
    the documents at the first eval length: it has not learned to copy a fact into memory, and RL
    cannot teach WHICH fact to keep before it does. (Measured on cpu-demo, EXPERIMENTS.md,
    sessions 14-19: warm starts that copy hold one in 91-100% of documents at 1x; seed 3's, which
    always writes the same digit, in 34% (a fixed digit is one of a document's four in 40%), and
    seed 6's and seed 8's in 41% and 44%, all before the copy curriculum kept the newest note;
    seed 6's still 31% after that, 70-78% after session 18's loss gate, and 55% in session 19,
    when the copy gate's 300 added steps left it copying in 44% of curriculum documents.)"""
    if not holds:
        return
    scale, (any_value, _) = next(iter(holds.items()))
    if any_value < 0.7:
        hint = (f" (a warm start of {cfg.sft_steps} steps may be too short to learn to copy, and on cpu-demo "
                f"some seeds' warm starts never do: more --sft-steps, or another --seed)"
                if not cfg.init_from and cfg.sft_steps > 0 else "")
        print0(f"warning: the starting policy's final memory holds a needle value in only "
               f"{100 * any_value:.0f}% of documents at {scale}: it does not copy facts into memory, "
               f"so RL is unlikely to learn{hint}")


def starting_row(cfg):
    """The eval table's row for the policy RL starts from, named for what it is.

    >>> [starting_row(TrainConfig(sft_steps=n, init_from=d)) for n, d in ((500, ""), (0, ""), (0, "qwen"))]
    ['warm start', 'random init', '--init-from']
    """
    if cfg.init_from:
        return "--init-from"
    return "warm start" if cfg.sft_steps > 0 else "random init"


def note_if_rl_flat(cfg, table, steps_done=None, gain=0.2):
    """A note when RL gained under `gain` (20 points) at the first eval length over the starting
    policy after steps_done RL steps (default --rl-steps): say it is the draw, and what to try.
    (On cpu-demo 16 of seeds 0-19 rose +60.9 to +81.2 points within 80 steps; seeds 6 and 17,
    whose copy did not form, did not rise; seed 10 rose slowly (+35.9, +43.8 after 160 steps) and
    seed 18 stalled at +7.8 once its policy's entropy collapsed on a partial rule (session 31). Under the reservoir targets of sessions 22-26, seeds
    5 and 8 did not rise either, and neither a DAPO flag nor another RL draw from their warm starts
    changed that: README, "Across seeds", and EXPERIMENTS.md, sessions 24-26.)"""
    # (an eval.json written before session 32 names every starting row "warm start")
    start = table.get(starting_row(cfg)) or table.get("warm start") or {}
    end = table.get("RL") or {}
    scale = next(iter(end), None)
    if scale is None or start.get(scale) is None or end[scale] is None or end[scale] - start[scale] >= gain:
        return
    gained = f"note: RL gained {100 * (end[scale] - start[scale]):+.1f} points at {scale} over the starting policy"
    if starting_row(cfg) == "random init":  # (the paper recipes without --init-from)
        print0(f"{gained}, which was the random initialization (--sft-steps 0, no --init-from): it does not "
               f"know the format, so its rewards are (almost) all 0 and few groups carry a signal to learn "
               f"from; start RL from a model that does (--init-from DIR, or --sft-steps N for a warm start)")
        return
    steps_done = cfg.rl_steps if steps_done is None else steps_done
    print0(f"{gained}. Whether DAPO finds what to keep within {steps_done} RL steps depends on the draw, "
           f"its warm start most (on cpu-demo 16 of seeds 0-19 rose by 61 to 81 points in 80 steps; README, "
           f"'Across seeds'): continue it (--resume --rl-steps {2 * steps_done}) or try another --seed "
           f"(without --init-from: a new warm start)")


def print_table(table):
    """Markdown table, one row per policy. Columns: every scale any row has (a --resume run may
    evaluate at other --eval-scales than its warm start was): "-" where a row has none."""
    scales = list(dict.fromkeys(s for row in table.values() for s in row))
    print0("\n| policy | " + " | ".join(scales) + " |")
    print0("|---|" + "---|" * len(scales))
    for name, row in table.items():
        print0(f"| {name} | " + " | ".join("-" if s not in row else "beyond window" if row[s] is None
                                           else f"{100 * row[s]:.1f}" for s in scales) + " |")


def plot(history, path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print0(f"(no {path}: the plot needs matplotlib, an optional dependency: pip install matplotlib)")
        return
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.5))
    steps = [h["step"] for h in history]
    for ax, keys in zip(axes, (("reward", "accuracy"), ("memory_len", "answer_len"), ("entropy", "approx_kl"))):
        for k in keys:
            ax.plot(steps, [h.get(k, 0.0) for h in history], label=k)
        ax.set_xlabel("RL step")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


# -----------------------------------------------------------------------------


def refuse_to_overwrite(cfg):
    """A new run (no --resume) in an --out-dir that holds another run's checkpoints stops here,
    and so does a --resume with nothing to continue from beside ckpt/ or rl/ (it would start over
    on top of them): training never overwrites a checkpoint unasked."""
    folders = ("warmstart", "ckpt", "rl", "baseline", "tokenizer", "ckpt.old")
    files = [name for name in folders if os.path.lexists(os.path.join(cfg.out_dir, name))
             and not os.path.isdir(os.path.join(cfg.out_dir, name))]
    if files:  # (a checkpoint would be saved into, or read from, a file)
        raise SystemExit(f"train.py: --out-dir {cfg.out_dir} holds {', '.join(files)} as a file where this trainer "
                         f"keeps a folder; move it away or choose another --out-dir")
    earlier = [name + "/" for name in folders[:4] if os.path.isdir(os.path.join(cfg.out_dir, name))]
    if earlier and not cfg.resume:
        raise SystemExit(f"train.py: --out-dir {cfg.out_dir} already holds a run ({', '.join(earlier)}), which a "
                         f"new run would overwrite: " + ("" if cfg.baseline else "pass --resume to continue it, or ") +
                         "choose another --out-dir (or delete that folder to start over)")
    if cfg.resume and "baseline/" in earlier:  # (its eval.json and warmstart/ would be overwritten)
        raise SystemExit(f"train.py: --resume: --out-dir {cfg.out_dir} holds a --baseline run (baseline/), which "
                         f"has no RL to continue; an agent's run goes in another --out-dir")
    finished = [name for name in earlier if name in ("ckpt/", "rl/")]
    ckpt = os.path.join(cfg.out_dir, "ckpt")
    # (ckpt.old: a swap cut short, which main's recover_swap restores)
    resumable = any(os.path.exists(os.path.join(d, "trainer.pt")) for d in (ckpt, ckpt + ".old"))
    if cfg.resume and finished and not resumable:
        # (a warm start alone, from a run stopped before its first RL checkpoint, is what RL starts from)
        raise SystemExit(f"train.py: --resume: --out-dir {cfg.out_dir} holds {', '.join(finished)} but no "
                         f"ckpt/trainer.pt to continue from, and starting over would overwrite them; start a "
                         f"new run from its weights in another --out-dir (--init-from {cfg.out_dir}/rl or "
                         f"{cfg.out_dir}/ckpt/model)")


def main(argv=None):
    cfg = parse_args(argv)
    refuse_to_overwrite(cfg)
    setup_distributed(cfg)
    try:
        os.makedirs(cfg.out_dir, exist_ok=True)
    except OSError as e:  # (a read-only disk, a folder without write permission)
        raise SystemExit(f"train.py: cannot create --out-dir {cfg.out_dir}: {e.strerror}")
    t_start = time.time()
    print0(f"recipe {cfg.recipe}: " + json.dumps(dataclasses.asdict(cfg)))
    if cfg.recipe in ("paper", "shipped") and not cfg.init_from and cfg.sft_steps == 0:
        print0("note: the paper starts RL from an instruct model: pass --init-from DIR (HF Qwen2)")
    if cfg.recipe in ("paper", "shipped") and cfg.device == "cpu":
        print0("note: the paper's geometry on the CPU: one RL step takes hours; it is meant for a GPU")
    if cfg.cuda_graph and not use_cuda_graph(cfg):
        print0(f"note: --cuda-graph needs a CUDA device; decoding eagerly on {cfg.device}")
    data = load_data(cfg)
    model, tokenizer = build_model(cfg)
    geometry_check(cfg, model, tokenizer, data)
    if cfg.compile:
        model.forward = torch.compile(model.forward)

    if RANK == 0:  # a save killed outright (SIGKILL, out of memory) leaves its half-written folder behind
        for name in ("ckpt", "warmstart", "rl", "baseline"):
            for path in remove_stale_staging(os.path.join(cfg.out_dir, name)):
                print0(f"removed {path}: the unfinished folder of a save that was killed")
    if cfg.baseline:
        return baseline_main(cfg, model, tokenizer, data, t_start)

    ckpt = os.path.join(cfg.out_dir, "ckpt")
    warm_dir = os.path.join(cfg.out_dir, "warmstart")  # where warm_start_and_save puts the warm start
    table_path = os.path.join(cfg.out_dir, "eval.json")
    table = {}
    if cfg.resume and RANK == 0 and recover_swap(ckpt):
        print0(f"--resume: a checkpoint save was cut short; continuing from the previous one ({ckpt}.old)")
    if WORLD > 1:
        dist.barrier()
    resuming = cfg.resume and os.path.exists(os.path.join(ckpt, "trainer.pt"))
    # a run stopped before its first RL checkpoint: its warm start is whole, so RL starts from it
    warm_saved = cfg.resume and not resuming and os.path.isfile(os.path.join(warm_dir, "config.json"))
    if cfg.resume and not resuming:
        print0(f"--resume: no checkpoint in {ckpt} yet, " + (f"starting RL from the warm start in {warm_dir}"
                                                              if warm_saved else "starting from the beginning"))

    # 1. warm start (or a loaded checkpoint), evaluated once; a resumed run does neither again
    # (load_state below restores the model) and keeps the table it already has
    if resuming:
        try:
            with open(table_path) as f:
                table = json.load(f)
        except FileNotFoundError:
            pass
        except (json.JSONDecodeError, UnicodeDecodeError) as e:  # (written by hand, or by an older run)
            table = f"unreadable ({e})"
        if not isinstance(table, dict):
            print0(f"warning: {table_path} is {table if isinstance(table, str) else 'not a table (a JSON object)'}; "
                   f"its rows (the starting policy's) are not carried over: evaluate that checkpoint with "
                   f"infer.py --eval")
            table = {}
    elif warm_saved:
        load_warm_start(cfg, model, warm_dir)
    elif not cfg.init_from and cfg.sft_steps > 0:
        warm_start_and_save(cfg, model, tokenizer, data)
    if not resuming and cfg.eval_n > 0:
        print0("== evaluating the starting policy")
        start_row = starting_row(cfg)
        table[start_row], holds = evaluate(cfg, model, tokenizer, data, start_row)
        warn_if_no_copy(cfg, holds)
        if RANK == 0:
            write_table(table, table_path)

    # 2. RL
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay,
                                  betas=(0.9, cfg.adam_beta2))
    ref_model = None
    if cfg.kl_coef > 0:  # a frozen float32 copy of the policy RL starts from: the KL is to it
        if resuming and not cfg.init_from and cfg.sft_steps > 0:  # (the model is still build_model's)
            if not os.path.exists(os.path.join(warm_dir, "config.json")):
                raise SystemExit(f"train.py: --kl-coef needs the warm start this run began RL from, "
                                 f"and {warm_dir} is gone")
            ref_model = load_hf(warm_dir, device=cfg.device)
        else:  # a fresh run after its warm start, or build_model's weights (--init-from, random init)
            ref_model = Qwen2(model.config).to(cfg.device)
            ref_model.load_state_dict(model.state_dict())
        ref_model.requires_grad_(False).eval()
    step, history = 0, []
    if resuming:
        step, history = load_state(cfg, model, optimizer)
        print0(f"resumed from {ckpt} at step {step}")
        if step >= cfg.rl_steps:
            print0(f"note: the checkpoint is at RL step {step} and --rl-steps is {cfg.rl_steps}: no step is "
                   f"left to run (pass a larger --rl-steps to go on)")
    metrics_path = os.path.join(cfg.out_dir, "metrics.jsonl")
    if RANK == 0:  # the metrics file holds exactly the steps of the run so far
        with open(metrics_path, "w") as f:
            f.writelines(json.dumps(h) + "\n" for h in history)
    if step < cfg.rl_steps:
        print0(f"== RL: {cfg.rl_steps} DAPO steps x {cfg.batch_size} prompts x {cfg.group_size} rollouts")
    while step < cfg.rl_steps:
        data_round = sum(h.get("draws", cfg.max_gen_batches) for h in history)  # (older runs: no "draws")
        metrics = rl_step(cfg, model, ref_model, optimizer, tokenizer, data, step, data_round)
        step += 1
        history.append(metrics)
        print0(f"step {step:4d}/{cfg.rl_steps} | reward {metrics['reward']:.3f} | acc "
               f"{metrics['accuracy']:.3f} | kept {metrics['kept_fraction']:.2f} | mem "
               f"{metrics['memory_len']:.1f} ans {metrics['answer_len']:.1f} trunc "
               f"{metrics['truncation_rate']:.2f} | clip {metrics['clip_frac_low']:.3f}/"
               f"{metrics['clip_frac_high']:.3f} | kl {metrics['approx_kl']:.4f} | ent "
               f"{metrics['entropy']:.3f} | gnorm {metrics['grad_norm']:.2f} | rollout "
               f"{metrics['time_rollout']:.1f}s update {metrics['time_update']:.1f}s | "
               f"{metrics['tokens_per_s']:.0f} tok/s" + (f" | peak GiB {metrics['peak_gib_rollout']:.1f}/"
               f"{metrics['peak_gib_update']:.1f}" if "peak_gib_update" in metrics else ""))
        if RANK == 0:
            with open(metrics_path, "a") as f:
                f.write(json.dumps(metrics) + "\n")
        if step % cfg.save_every == 0 or step == cfg.rl_steps:
            save_state(cfg, model, tokenizer, optimizer, step, history)
    if RANK == 0 and history:
        curve = [round(h["accuracy"], 2) for h in history]
        print0(f"reward curve (accuracy per step): {curve}")
        plot(history, os.path.join(cfg.out_dir, "curves.png"))
        save_checkpoint(model, os.path.join(cfg.out_dir, "rl"), tokenizer_file=tokenizer.files(),
                        meta={"config": dataclasses.asdict(cfg)})

    # 3. evaluation of the RL policy
    if cfg.rl_steps > 0 and cfg.eval_n > 0:
        print0("== evaluating the RL policy")
        table["RL"], _ = evaluate(cfg, model, tokenizer, data, "RL")
    if table:
        print_table(table)
        note_if_rl_flat(cfg, table, steps_done=step)
    if RANK == 0:
        write_table(table, table_path)
        print0(f"saved {table_path}; total time {time.time() - t_start:.0f}s")
    if WORLD > 1:
        dist.barrier()  # no rank tears the group down while another still talks to it
        dist.destroy_process_group()
    return table


def write_table(table, path):
    """eval.json through a temp file and a rename: a kill mid-write leaves the previous table whole."""
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(table, f, indent=2)
    os.replace(tmp, path)


def warm_start_and_save(cfg, model, tokenizer, data):
    """Stage 1 for the agent and the baseline alike; the model lands in OUT_DIR/warmstart."""
    print0(f"== warm start: {cfg.sft_steps} supervised steps, question-agnostic memory targets")
    warm_start(cfg, model, tokenizer, data)
    if RANK == 0:
        # an agent's checkpoint even in a --baseline run (infer.py refuses baseline ones as agents)
        agent_cfg = dataclasses.replace(cfg, baseline=False)
        save_checkpoint(model, os.path.join(cfg.out_dir, "warmstart"), tokenizer_file=tokenizer.files(),
                        meta={"config": dataclasses.asdict(agent_cfg)})


def load_warm_start(cfg, model, warm_dir):
    """--resume of a run with a whole warm start and no RL checkpoint: its weights, if its flags are
    this run's (never a new warm start on top of it)."""
    try:
        saved, meta = load_checkpoint(warm_dir, device="cpu")
    except (OSError, ValueError) as e:
        raise SystemExit(f"train.py: --resume: the warm start in {warm_dir} is damaged ({e}); move it away to "
                         f"train a new one") from None
    if not meta.get("config"):
        raise SystemExit(f"train.py: --resume: {warm_dir} has no meta.json with the flags it was trained with, "
                         f"so whether this run began from it cannot be told; move it away, or start a new run "
                         f"from it in another --out-dir (--init-from {warm_dir})")
    check_same_flags(cfg, dict(meta["config"], baseline=cfg.baseline), warm_dir, warm_dir)
    model.load_state_dict(saved.state_dict())


def baseline_main(cfg, model, tokenizer, data, t_start):
    """--baseline: the agent's warm start (unless --init-from), then supervised full-attention
    training, then its evaluation table (no RL)."""
    if not cfg.init_from and cfg.sft_steps > 0:
        warm_start_and_save(cfg, model, tokenizer, data)
    elif not cfg.init_from:
        print0("note: --sft-steps 0 without --init-from: the baseline starts from random weights "
               "(from scratch it may never learn to find the needle: README, session 8)")
    train_baseline(cfg, model, tokenizer, data)
    if RANK == 0:
        save_checkpoint(model, os.path.join(cfg.out_dir, "baseline"), tokenizer_file=tokenizer.files(),
                        meta={"config": dataclasses.asdict(cfg), "full_attention": True})
    table = {}
    if cfg.eval_n > 0:
        print0("== evaluating the full-attention baseline")
        table["full attention"], _ = evaluate(cfg, model, tokenizer, data, "baseline", full_attention=True)
        print_table(table)
    if RANK == 0:
        write_table(table, os.path.join(cfg.out_dir, "eval.json"))
        print0(f"saved {os.path.join(cfg.out_dir, 'baseline')}; total time {time.time() - t_start:.0f}s")
    if WORLD > 1:
        dist.barrier()
        dist.destroy_process_group()
    return table


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:  # (saves are swapped in whole, so a stop at any moment leaves them loadable)
        print("\ntrain.py: interrupted. Checkpoints are swapped in whole, so none is half-written: --resume "
              "continues an RL run from its last ckpt/ (or its warmstart/); a --baseline run starts again "
              "(--init-from OUT_DIR/warmstart skips its warm start)", file=sys.stderr)
        sys.exit(130)
