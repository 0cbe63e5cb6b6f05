"""
Run a trained MemAgent on a document and watch its memory, chunk by chunk.

  python infer.py --ckpt out/train/rl --file doc.txt --question "Who founded the company?"
  python infer.py --ckpt out/train/rl --task niah_number_among_prices --length 128k --seed 1000003
  python infer.py --ckpt out/train/rl --task niah_number_among_prices --eval --lengths 1k 4k 16k 64k 256k 1M

The agent reads the document in chunks of `chunk_tokens`; after each chunk it rewrites its memory
(at most `memory_tokens`), and after the last one it answers from the memory alone. Printing the
memory after every turn shows what the policy chose to keep (on a generated needle task, each
turn's header names the needles its chunk brought, and whether the question asks for them).
`--eval` measures accuracy (the training reward: exact match of the boxed answer, or the fraction
of references found on tasks with several), the task's RULER metric (RULER, arXiv 2404.06654:
string_match_all for needles and variable tracking, string_match_part for QA; on the boxed
answer), how much of the answer the final memory holds (above accuracy: the answer turn misread
a right memory), tokens/s and peak memory over document lengths: the extrapolation table. On
needle tasks it adds what the memory did at each turn whose chunk holds a needle (keep the old
note, take the new one, or neither), by what the memory held and which needle came: what RL
changed (turn_decisions). The agent geometry (chunk, memory and answer budgets, prompt variant)
comes from the checkpoint's training config unless overridden.
`--eval --baseline CKPT` adds a full-attention checkpoint (train.py --baseline) on the same
documents; `--baseline-positions N` lets it read past the positions it was built for.
"""

import argparse
import dataclasses
import json
import os
import sys
import time

import torch

from memagent.prompts import initial_memory
from memagent.reward import EVAL_METRIC, REWARD_KIND, eval_score, memory_holds, score_answer
from memagent.tasks import TASKS, make_sample_retry, parse_length
from memagent.tokenizer import HFTokenizer, load_tokenizer
from model import check_device, load_checkpoint
from rollout import AgentConfig, check_window, chunk_ids, run_agent, run_full_attention


def fail(message):
    """One clear line on stderr and a non-zero exit: how every bad input ends."""
    print(f"infer.py: error: {message}", file=sys.stderr)
    sys.exit(2)


def load_agent(ckpt, device, dtype):
    """(model, tokenizer, training config dict) from our checkpoint or a HF Qwen2 directory."""
    try:
        model, meta = load_checkpoint(ckpt, dtype=dtype, device=device)
    except (FileNotFoundError, ValueError, OSError) as e:
        fail(f"cannot load checkpoint {ckpt!r}: {e}")
    try:  # ours: the sentencepiece .model saved beside the weights; a HF folder: its tokenizer.json
        tokenizer = load_tokenizer(meta["directory"])
    except (FileNotFoundError, ValueError, ImportError) as e:
        fail(f"checkpoint {ckpt!r}: {e}")
    if tokenizer.vocab_size > model.config.vocab_size:
        fail(f"checkpoint {ckpt!r}: its tokenizer has {tokenizer.vocab_size} ids but the model only "
             f"{model.config.vocab_size}: they do not belong together")
    return model.eval(), tokenizer, meta.get("config", {})


def read_document(path):
    if not os.path.exists(path):
        fail(f"no such file: {path}")
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        fail(f"cannot read {path}: {e.strerror}")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        fail(f"{path} is not UTF-8 text (invalid byte at offset {e.start})")
    if not text.strip():
        fail(f"{path} is empty: there is nothing to read")
    if "\x00" in text:  # valid UTF-8 can still be binary (or UTF-16 without its byte-order mark)
        fail(f"{path} holds NUL bytes (first at character {text.index(chr(0))}): a binary file, or "
             f"text in another encoding than UTF-8")
    return text


def agent_config(args, train_cfg, tokenizer):
    """Agent geometry: flags first, then the checkpoint's training config, then defaults."""
    def pick(name, default):
        value = getattr(args, name)
        return value if value is not None else train_cfg.get(name, default)
    if isinstance(tokenizer, HFTokenizer):  # a real Qwen checkpoint: the paper's prompts and budgets
        defaults = dict(chunk_tokens=5000, memory_tokens=1024, answer_tokens=1024, prompts="full")
    else:
        defaults = dict(chunk_tokens=256, memory_tokens=64, answer_tokens=32, prompts="compact")
    prompts = train_cfg.get("prompts", defaults["prompts"])
    assumed = [f"--{name.replace('_', '-')} {defaults[name]}" for name in ("chunk_tokens", "memory_tokens",
               "answer_tokens") if getattr(args, name) is None and name not in train_cfg]
    if assumed:  # a HF folder, or a checkpoint without meta.json: its training geometry is unknown
        print(f"note: the checkpoint records no training geometry (meta.json); assuming {', '.join(assumed)} "
              f"and {prompts} prompts: pass the ones it was trained with", file=sys.stderr)
    try:
        return AgentConfig(chunk_tokens=pick("chunk_tokens", defaults["chunk_tokens"]),
                           memory_tokens=pick("memory_tokens", defaults["memory_tokens"]),
                           answer_tokens=pick("answer_tokens", defaults["answer_tokens"]),
                           compact_prompts=prompts != "full",
                           temperature=args.temperature, top_p=args.top_p, top_k=args.top_k,
                           cuda_graph=args.cuda_graph)
    except ValueError as e:  # a budget below 1, a negative temperature, top_p outside (0, 1], ...
        fail("--" + str(e).replace("_", "-"))


def run_one(model, tokenizer, sample, cfg, args):
    """Read one document, printing the memory after each turn unless --json; return a result dict.
    On a generated needle task each turn's header names the needles its chunk brought, and whether
    the question asks for them, so the trace shows what the memory chose between."""
    n_chunks = -(-len(tokenizer.encode(sample["context"])) // cfg.chunk_tokens)
    brought = chunk_needles(tokenizer, sample, cfg.chunk_tokens)

    def show(turn, rollouts):
        if args.json or args.quiet:
            return
        r = rollouts[0]
        if turn < n_chunks:
            needles = [f'"{sample["context"][n["start"]:n["end"]].strip()}" '
                       f'({"asked" if n["value"] in sample["answers"] else "not asked"})'
                       for n in (brought[turn] if brought else [])]
            note = f" (the chunk brought {', '.join(needles)})" if needles else ""
            print(f"--- memory after chunk {turn + 1}/{n_chunks}{note} ---\n{r.memories[-1]}", flush=True)

    if not (args.json or args.quiet):
        print(f"question: {sample['question']}")
    t0 = time.perf_counter()
    try:
        (rollout,) = run_agent(model, tokenizer, [sample], cfg, seed=args.seed, on_turn=show)
    except ValueError as e:  # the window check: e.g. a question too long for the window
        fail(str(e))
    seconds = time.perf_counter() - t0
    result = dict(question=sample["question"], answer=rollout.answer, memories=rollout.memories,
                  chunks=n_chunks, seconds=round(seconds, 3))
    if sample.get("answers"):
        result.update(references=sample["answers"], reward=rollout.reward,
                      **score_answer(rollout.answer, sample["answers"]))
    return result


def peak_memory_mb(device):
    """CUDA: the peak allocated since the last reset (one length's own). CPU: the process's peak
    resident memory so far, which never goes down: every earlier length (and the model) is in it.
    (bench.py --agent runs each length in its own process for a per-length CPU figure.)"""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def kv_megabytes(model, tokens):
    """Size of the KV cache one document needs for `tokens` positions (computed, not measured)."""
    c = model.config
    per_token = 2 * c.num_hidden_layers * c.num_key_value_heads * c.head_dim * model.lm_head.weight.element_size()
    return tokens * per_token / 2**20


def chunk_needles(tokenizer, sample, chunk_tokens):
    """For each chunk of a generated needle sample, the needles whose sentence lies whole inside it
    (a needle that a chunk boundary cuts is in no chunk: the agent never sees it whole); [] for
    a document without needle positions (a --file, a HotpotQA question)."""
    if not sample.get("needles") or any("start" not in n for n in sample["needles"]):
        return []
    chunks = [tokenizer.decode(c) for c in chunk_ids(tokenizer.encode(sample["context"]), chunk_tokens)]
    return [[n for n in sample["needles"] if sample["context"][n["start"]:n["end"]] in chunk] for chunk in chunks]


def turn_decisions(tokenizer, sample, rollout, cfg):
    """What the agent did at each memory turn whose chunk holds exactly one whole needle: a list of
    (memory before, the chunk's needle, what the reply did), read off the values the memories hold
    (reward.memory_holds, so a number written as " $7." still holds "7", as the reward reads it).

    memory before: "asked" (it holds the answer), "other" (another needle's value), "nothing".
    the chunk's needle: "asked" or "other". A needle that a chunk boundary cuts is in no chunk.
    the reply: "take" (holds the chunk's value and none that the memory held), "keep" (holds what
    the memory held and not the chunk's value; from "nothing": the reply does not hold the
    chunk's value, it let the needle pass), "other" (both, neither, or something else).
    This is what RL has to change on a selective task: from a warm start that keeps or takes
    whatever comes, to "take the asked needle, keep it against every other" (README).
    """
    asked = set(sample["answers"])
    memories = [initial_memory(cfg.compact_prompts)] + rollout.memories  # before turn k: memories[k]
    decisions = []
    for k, inside in enumerate(chunk_needles(tokenizer, sample, cfg.chunk_tokens)):
        if len(inside) != 1 or k + 1 >= len(memories):
            continue
        new = inside[0]["value"]
        held = [n["value"] for n in sample["needles"] if memory_holds(memories[k], [n["value"]])]
        before = "asked" if asked & set(held) else ("other" if held else "nothing")
        reply = memories[k + 1]
        has_new = memory_holds(reply, [new])
        has_old = [memory_holds(reply, [v]) for v in held if v != new]
        if has_new and not any(has_old):
            action = "take"
        elif not has_new and all(has_old):
            action = "keep"
        else:
            action = "other"
        decisions.append((before, "asked" if new in asked else "other", action))
    return decisions


def decision_table(decisions):
    """{"memory before | chunk": {"keep": turns, "take": turns, "other": turns}} over turn_decisions."""
    table = {}
    for before in ("nothing", "asked", "other"):
        for chunk in ("asked", "other"):
            actions = [a for b, c, a in decisions if (b, c) == (before, chunk)]
            if actions:
                table[f"{before} | {chunk}"] = {a: actions.count(a) for a in ("keep", "take", "other")}
    return table


def evaluate(model, tokenizer, cfg, args, lengths, baseline=None):
    """Accuracy, tokens/s and peak memory per document length (`lengths`: args.lengths parsed),
    greedy, on held-out seeds.

    baseline = (model, tokenizer, compact, answer_tokens, trained_positions) of a full-attention
    checkpoint: it answers the SAME documents with each whole document in its window; beyond its
    positions (model.config.max_position_embeddings: --baseline-positions may raise it past
    trained_positions) it is not run.
    """
    device = model.lm_head.weight.device
    rows = []
    for length_text, length in zip(args.lengths, lengths):
        try:
            samples = [make_sample_retry(args.task, length, args.seed + i, tokenizer) for i in range(args.n)]
        except ValueError as e:
            fail(str(e))
        if not rows:  # warm-up off the clock (kernel loading, cuBLAS and allocator set-up)
            warm_up(model, tokenizer, samples[0], cfg, min(args.batch, args.n))
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        rewards, metric, held = [], [], []  # held: how much of the answer the final memory holds
        read = []  # (sample, rollout): the turn table is read after the clock stops
        for start in range(0, len(samples), args.batch):  # documents of one length read together
            batch = samples[start:start + args.batch]
            try:
                # (seed + start: each batch its own draws when sampling)
                rollouts = run_agent(model, tokenizer, batch, cfg, seed=args.seed + start)
            except ValueError as e:  # the window check: the geometry does not fit the model's positions
                fail(str(e))
            for r in rollouts:
                answers = batch[r.sample]["answers"]
                rewards.append(r.reward)
                metric.append(eval_score(args.task, r.answer, answers))
                held.append(holds_answer(r.memories[-1], args.task, answers))
                read.append((batch[r.sample], r))
            if not args.json:
                # a terminal redraws one line; a log file gets a line per batch
                tty = sys.stderr.isatty()
                print(("\r" if tty else "") + f"{length_text}: {len(rewards)}/{len(samples)} documents",
                      end="" if tty else "\n", file=sys.stderr)
        seconds = time.perf_counter() - t0
        decisions = [d for sample, r in read for d in turn_decisions(tokenizer, sample, r, cfg)]
        tokens = sum(s["n_tokens"] for s in samples)
        problem = max(len(tokenizer.encode(s["question"])) for s in samples)
        row = dict(length=length, accuracy=100 * sum(rewards) / len(rewards), n=len(samples),
                   metric=EVAL_METRIC[args.task], metric_score=100 * sum(metric) / len(metric),
                   memory_holds_answer=100 * sum(held) / len(held),
                   context_tok_s=tokens / seconds, seconds=seconds, peak_mem_mb=peak_memory_mb(device),
                   peak_mem="this length" if device.type == "cuda" else "process",
                   # the agent's longest conversation (check_window returns it; no window limit here)
                   kv_mb=kv_megabytes(model, check_window(tokenizer, [problem], cfg, 10**12)),
                   decisions=decision_table(decisions))
        if baseline is not None:
            row.update(run_baseline(baseline, samples, args, tokens))
        rows.append(row)
        if not args.json and sys.stderr.isatty():
            print(file=sys.stderr)  # end the redrawn progress line
    return rows


def warm_up(model, tokenizer, sample, cfg, rows):
    """One turn of `rows` copies of the sample's first chunk, with short replies."""
    first = dict(sample, context=tokenizer.decode(tokenizer.encode(sample["context"])[:cfg.chunk_tokens]))
    short = dataclasses.replace(cfg, memory_tokens=min(cfg.memory_tokens, 8),
                                answer_tokens=min(cfg.answer_tokens, 8))
    try:
        run_agent(model, tokenizer, [first] * rows, short, seed=0)
    except ValueError as e:  # the window check: the geometry does not fit the model's positions
        fail(str(e))


def holds_answer(memory, task, answers):
    """How much of the answer a memory holds (reward.memory_holds): 1 or 0 for a one-answer task, the
    fraction of the references held where the reward wants all of them (vt, multivalue, multiquery)."""
    if REWARD_KIND[task] == "all":
        return sum(memory_holds(memory, [a]) for a in answers) / len(answers)
    return float(memory_holds(memory, answers))


def run_baseline(baseline, samples, args, tokens):
    """The full-attention columns of one length: accuracy (None beyond the window), time, memory."""
    model, tokenizer, compact, answer_tokens, trained_positions = baseline
    device = model.lm_head.weight.device
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    answers, status = [], "ok"
    try:
        for start in range(0, len(samples), args.batch):
            answers += run_full_attention(model, tokenizer, samples[start:start + args.batch], answer_tokens,
                                          compact, temperature=args.temperature, seed=args.seed + start,
                                          top_p=args.top_p, top_k=args.top_k, cuda_graph=args.cuda_graph)
    except torch.cuda.OutOfMemoryError:
        status = "out of memory"
    seconds = time.perf_counter() - t0
    if status == "ok" and not all(a.fits for a in answers):
        status = f"beyond {model.config.max_position_embeddings} positions"
    ok = status == "ok"
    longest = max(len(a.prompt_ids) for a in answers) + answer_tokens if ok else 0
    return dict(baseline_status=status, baseline_extrapolated=longest > trained_positions,
                baseline_accuracy=100 * sum(a.reward for a in answers) / len(answers) if ok else None,
                baseline_metric_score=100 * sum(eval_score(args.task, a.answer, s["answers"])
                                                for a, s in zip(answers, samples)) / len(answers) if ok else None,
                baseline_seconds=seconds if ok else None,
                baseline_tok_s=tokens / seconds if ok else None,
                baseline_peak_mem_mb=peak_memory_mb(device) if ok else None,
                baseline_kv_mb=kv_megabytes(model, longest) if ok else None)


def print_table(rows):
    if "baseline_status" not in rows[0]:
        metric = f"{rows[0]['metric']} %"
        print(f"{'length':>8} {'accuracy %':>10} {metric:>12} {'memory holds answer %':>21} {'n':>4} "
              f"{'context tok/s':>13} {'seconds':>8} {'peak MB':>8} {'KV MB/doc':>9}")
        for r in rows:
            print(f"{r['length']:8d} {r['accuracy']:10.1f} {r['metric_score']:12.1f} {r['memory_holds_answer']:21.1f} "
                  f"{r['n']:4d} {r['context_tok_s']:13.0f} {r['seconds']:8.1f} {r['peak_mem_mb']:8.0f} "
                  f"{r['kv_mb']:9.2f}")
        if rows[0]["peak_mem"] == "process":
            print("(peak MB on the CPU: the process's peak resident memory so far, earlier lengths included)")
        return
    m = rows[0]["metric"]
    print(f"| length | n | MemAgent acc % | MemAgent {m} % | MemAgent s | MemAgent KV MB/doc | full attention acc % | "
          f"full attention {m} % | full attention s | full attention KV MB/doc |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        agent = (f"| {r['length']} | {r['n']} | {r['accuracy']:.1f} | {r['metric_score']:.1f} | {r['seconds']:.1f} | "
                 f"{r['kv_mb']:.2f} |")
        if r["baseline_status"] == "ok":
            note = " (positions extrapolated)" if r["baseline_extrapolated"] else ""
            print(agent + f" {r['baseline_accuracy']:.1f}{note} | {r['baseline_metric_score']:.1f} | "
                          f"{r['baseline_seconds']:.1f} | {r['baseline_kv_mb']:.2f} |")
        else:
            print(agent + f" {r['baseline_status']} | - | - | - |")


def print_decisions(rows):
    """The memory turns of every length together, by what the memory held and what the chunk brought."""
    table = {}
    for r in rows:
        for key, counts in r["decisions"].items():
            total = table.setdefault(key, dict(keep=0, take=0, other=0))
            for action, n in counts.items():
                total[action] += n
    if not table:
        return
    print("\nmemory turns whose chunk holds one whole needle (all lengths):")
    print(f"{'memory before | chunk':>24} {'turns':>6} {'keep %':>7} {'take %':>7} {'other %':>8}")
    for key, t in table.items():
        n = sum(t.values())
        print(f"{key:>24} {n:6d} {100 * t['keep'] / n:7.1f} {100 * t['take'] / n:7.1f} {100 * t['other'] / n:8.1f}")


def parse_length_or_fail(text):
    try:
        return parse_length(text)
    except ValueError as e:
        fail(str(e))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", "--init-from", dest="ckpt", required=True,
                   help="one of our checkpoints (a directory such as out/train/rl), or a HF Qwen2 "
                        "directory (config.json, *.safetensors, tokenizer.json)")
    src = p.add_argument_group("the document")
    src.add_argument("--file", help="a UTF-8 text file to read")
    src.add_argument("--question", help="the question to answer about --file")
    src.add_argument("--task", help=f"a generated sample instead: one of {', '.join(TASKS)}")
    src.add_argument("--length", help="context length of the generated sample, e.g. 128k or 1M (default 4k)")
    src.add_argument("--seed", type=int, default=1_000_000, help="sample seed (held out from training)")
    ev = p.add_argument_group("evaluation table (--eval)")
    ev.add_argument("--eval", action="store_true", help="accuracy / speed / memory over --lengths")
    ev.add_argument("--lengths", nargs="+", help="document lengths (default 1k 4k 16k 64k)")
    ev.add_argument("--n", type=int, help="documents per length (default 16)")
    ev.add_argument("--batch", type=int, help="documents read together (default 8)")
    ev.add_argument("--baseline", metavar="CKPT", help="a full-attention checkpoint (train.py --baseline) "
                                                       "to run on the same documents, side by side")
    ev.add_argument("--baseline-positions", type=int, metavar="N",
                    help="let the baseline read up to N positions instead of the ones it was built "
                         "for: RoPE then extrapolates to positions it never trained on")
    g = p.add_argument_group("agent and sampling (default: the checkpoint's geometry, greedy)")
    g.add_argument("--chunk-tokens", type=int)
    g.add_argument("--memory-tokens", type=int)
    g.add_argument("--answer-tokens", type=int)
    g.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    g.add_argument("--top-p", type=float, default=1.0)
    g.add_argument("--top-k", type=int, default=0)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--cuda-graph", action="store_true",
                   help="replay each decode step from a CUDA graph (~5x faster decoding on a GPU; CUDA only)")
    p.add_argument("--json", action="store_true", help="machine-readable output on stdout")
    p.add_argument("--quiet", action="store_true", help="do not print the memory trace")
    args = p.parse_args(argv)

    if args.task is not None and args.task not in TASKS:
        fail(f"unknown task {args.task!r}; choose one of {', '.join(TASKS)}")
    if args.eval and args.task is None:
        fail("--eval needs --task (the generated task to measure)")
    if not args.eval and (args.file is None) == (args.task is None):
        fail("give either --file with --question, or --task")
    if args.baseline and not args.eval:
        fail("--baseline goes with --eval (it adds the full-attention columns to the table)")
    if args.baseline_positions is not None and (not args.baseline or args.baseline_positions < 1):
        fail("--baseline-positions needs --baseline and a positive number of positions")
    if args.file is not None and not (args.question or "").strip():
        fail("--file needs --question (a non-blank one)")
    if args.seed < 0:  # random.Random(-s) is random.Random(s): seed -5 would build seed 5's document
        fail(f"--seed must be >= 0, got {args.seed}")
    if args.question is not None and args.file is None:
        fail("--question goes with --file (a --task sample brings its own question)")
    if args.eval and args.file is not None:
        fail("--eval measures generated --task documents; run --file without --eval")
    if args.file is not None and args.length is not None:
        fail("--length sizes a generated --task sample; a --file is read whole")
    if args.eval and args.length is not None:
        fail("--eval reads --lengths (several); --length is for a single document")
    given = [flag for flag, value in (("--lengths", args.lengths), ("--n", args.n), ("--batch", args.batch))
             if value is not None]
    if given and not args.eval:
        fail(f"{', '.join(given)}: only with --eval (a single run reads one document)")
    args.lengths = args.lengths or ["1k", "4k", "16k", "64k"]
    args.n = 16 if args.n is None else args.n
    args.batch = 8 if args.batch is None else args.batch
    if args.n < 1 or args.batch < 1:
        fail(f"--n and --batch must be >= 1, got {args.n} and {args.batch}")
    # every length parsed before minutes of work on the first
    lengths = [parse_length_or_fail(text) for text in args.lengths]
    length = parse_length_or_fail("4k" if args.length is None else args.length)
    try:
        device = check_device(args.device)
    except ValueError as e:
        fail(f"--device: {e}")
    if args.cuda_graph and device.type != "cuda":
        fail(f"--cuda-graph needs a CUDA device, got --device {args.device}")
    if device.type == "cuda" and device.index is not None:
        torch.cuda.set_device(device)  # streams, CUDA graphs and memory stats follow the current device
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model, tokenizer, train_cfg = load_agent(args.ckpt, device, dtype)
    if train_cfg.get("baseline"):
        fail(f"{args.ckpt} is a full-attention baseline (train.py --baseline), not a memory agent; "
             f"pass it as --baseline beside an agent's --ckpt with --eval")
    cfg = agent_config(args, train_cfg, tokenizer)

    if args.eval:
        baseline = None
        if args.baseline:
            b_model, b_tok, b_cfg = load_agent(args.baseline, device, dtype)
            if b_cfg and not b_cfg.get("baseline"):  # (a HF model has no training config: welcome)
                fail(f"--baseline {args.baseline} is a memory agent's checkpoint, not a full-attention "
                     f"one; train one with train.py --baseline, or pass a HF Qwen2 folder")
            trained_positions = b_model.config.max_position_embeddings
            if args.baseline_positions:
                b_model.config.max_position_embeddings = args.baseline_positions
            b_prompts = "full" if isinstance(b_tok, HFTokenizer) else "compact"  # as agent_config picks
            baseline = (b_model, b_tok, b_cfg.get("prompts", b_prompts) != "full",
                        b_cfg.get("answer_tokens", cfg.answer_tokens), trained_positions)
        rows = evaluate(model, tokenizer, cfg, args, lengths, baseline)
        if args.json:
            print(json.dumps(rows))
        else:
            print_table(rows)
            print_decisions(rows)
        return

    if args.file is not None:
        sample = dict(question=args.question, context=read_document(args.file), answers=[], task="")
    else:
        try:
            sample = make_sample_retry(args.task, length, args.seed, tokenizer)
        except ValueError as e:
            fail(str(e))
    result = run_one(model, tokenizer, sample, cfg, args)
    if args.json:
        print(json.dumps(result))
        return
    print(f"--- answer ---\n{result['answer']}")
    if "reward" in result:
        print(f"reference: {', '.join(result['references'])}   reward: {result['reward']:.2f}")
    print(f"({result['chunks']} chunks in {result['seconds']:.1f} s)")


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        print("\ninfer.py: interrupted", file=sys.stderr)
        sys.exit(130)
