"""
Measured speed of the sampling engine and of the agent.

  python bench.py                                  # tiny model, CPU-friendly sizes
  python bench.py --model qwen-ish-0.5b --batch 1 16 64 --prompt-len 7000 --new-tokens 128   # on a GPU
  python bench.py ... --cuda-graph                 # the same, decode steps replayed from a CUDA graph
  python bench.py --agent                          # the agent on documents of 1x, 4x, 16x, 64x length
  python bench.py --agent --model qwen-ish-0.5b --batch 16 --chunk-tokens 5000 --memory-tokens 1024 \\
      --answer-tokens 1024 --base-length 5000 --multiples 1 4 16 --cuda-graph   # the paper's geometry

Prints prefill tokens/s, decode tokens/s (all rows together) and ms per decode step, peak memory,
and for CUDA the decode bandwidth bound (a decode step must read every weight and each row's KV
cache once: batch / ((weight bytes + batch x context x KV bytes a token) / bandwidth) tokens/s),
so the figure can be read as a fraction of what the hardware allows. Random weights: speed does
not depend on their values.
Timings are wall clock after a warm-up run; compare figures only within one run of one machine.
"""

import argparse
import dataclasses
import json
import os
import time

import torch

from memagent.tasks import MAX_LENGTH, TASKS
from model import PRESETS, Qwen2, check_device, config_from_preset
from rollout import generate


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def device_name(device):
    """What the figures ran on: the GPU's name, or the CPU with this process's thread count."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({torch.get_num_threads()} threads)"


def peak_memory_mb(device):
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    import resource  # CPU: peak resident set of this process (Linux reports KiB)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bench_generate(model, batch, prompt_len, new_tokens, repeats=3, cuda_graph=False):
    """Time the prefill alone, then prefill + new_tokens decode steps; decode = difference."""
    device = model.lm_head.weight.device
    g = torch.Generator().manual_seed(0)
    prompts = torch.randint(0, model.config.vocab_size, (batch, prompt_len), generator=g).tolist()
    generate(model, prompts, max_new_tokens=4, temperature=1.0, seed=0, cuda_graph=cuda_graph)  # warm-up
    if device.type == "cuda":  # this batch size's own peak (on the CPU: the process's high-water mark)
        torch.cuda.reset_peak_memory_stats()
    prefill_s, total_s = [], []
    for _ in range(repeats):
        sync(device); t0 = time.perf_counter()
        generate(model, prompts, max_new_tokens=1, temperature=1.0, seed=0)
        sync(device); t1 = time.perf_counter()
        # no stop ids: full length (with cuda_graph the capture is timed too: once per call, as in use)
        generate(model, prompts, max_new_tokens=new_tokens, temperature=1.0, seed=0, cuda_graph=cuda_graph)
        sync(device); t2 = time.perf_counter()
        prefill_s.append(t1 - t0); total_s.append(t2 - t1)
    prefill, total = min(prefill_s), min(total_s)
    decode = max(total - prefill, 1e-9)
    steps = new_tokens - 1
    return dict(batch=batch, prompt_len=prompt_len, new_tokens=new_tokens,
                prefill_tok_s=batch * prompt_len / prefill, decode_tok_s=batch * steps / decode,
                decode_ms_per_step=1000 * decode / steps, peak_mem_mb=peak_memory_mb(device))


def decode_bound_tok_s(model, batch, ctx, bandwidth_bytes_s):
    """Bandwidth bound: every step reads all weights once plus each row's KV cache. (An untied
    input embedding is the exception: a step reads only its `batch` rows.)"""
    c = model.config
    elt = model.lm_head.weight.element_size()
    weights = model.num_parameters()
    if not c.tie_word_embeddings:
        weights -= model.model.embed_tokens.weight.numel() - batch * c.hidden_size
    weight_bytes = weights * elt
    kv_bytes_per_token = 2 * c.num_hidden_layers * c.num_key_value_heads * c.head_dim * elt
    step_s = (weight_bytes + batch * ctx * kv_bytes_per_token) / bandwidth_bytes_s
    return batch / step_s


class TokenizerSizedLogits(Qwen2):
    """A model whose lm_head has more rows than our tokenizer has ids (the qwen-ish presets keep
    Qwen's 151,936: their real cost per step) returns logits for the tokenizer's ids only, so a
    random model never samples an id the tokenizer cannot decode. The full matmul still runs."""

    def __init__(self, config, n_ids):
        super().__init__(config)
        self.n_ids = n_ids

    def forward(self, *args, **kwargs):
        return super().forward(*args, **kwargs)[..., :self.n_ids]  # (..., V) -> (..., n_ids)


def bench_agent_one(args):
    """One document length in this process: time run_agent on --batch samples, print one JSON line."""
    from memagent.tasks import make_sample
    from memagent.tokenizer import get_tokenizer
    from rollout import AgentConfig, run_agent

    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    tok = get_tokenizer(args.tokenizer_dir)
    vocab = args.vocab_size or (None if "vocab_size" in PRESETS[args.model] else tok.vocab_size)
    torch.manual_seed(0)
    with torch.device(device):
        model = TokenizerSizedLogits(config_from_preset(args.model, vocab_size=vocab), tok.vocab_size)
        model = model.to(dtype).eval()
    length = args.base_length * args.agent_one
    samples = [make_sample(args.task, length, seed, tok) for seed in range(args.batch[0])]
    cfg = AgentConfig(chunk_tokens=args.chunk_tokens, memory_tokens=args.memory_tokens,
                      answer_tokens=args.answer_tokens, compact_prompts=args.model in ("tiny", "small"),
                      cuda_graph=args.cuda_graph)
    warmup = [dict(s, context=tok.decode(tok.encode(s["context"])[:args.chunk_tokens])) for s in samples]
    short = dataclasses.replace(cfg, memory_tokens=min(cfg.memory_tokens, 8), answer_tokens=min(cfg.answer_tokens, 8))
    run_agent(model, tok, warmup, short, seed=0)  # one chunk each, short replies: warms up kernels
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    sync(device); t0 = time.perf_counter()
    rollouts = run_agent(model, tok, samples, cfg, seed=0)
    sync(device); seconds = time.perf_counter() - t0
    context_tokens = sum(len(tok.encode(s["context"])) for s in samples)
    turns = max(len(r.conversations) for r in rollouts)
    generated = sum(len(c.response_ids) for r in rollouts for c in r.conversations)
    print(json.dumps(dict(multiple=args.agent_one, context_tokens=context_tokens, turns=turns,
                          seconds=seconds, context_tok_s=context_tokens / seconds,
                          us_per_context_token=1e6 * seconds / context_tokens,
                          generated_tok_s=generated / seconds, peak_mem_mb=peak_memory_mb(device),
                          device=device_name(device))))


def bench_agent(args):
    """Each length in a fresh process, so peak memory is that length's own."""
    import subprocess
    import sys

    name = device_name(torch.device(args.device))  # the header's guess; each row reports its own process's
    if not args.json:
        print(f"# agent: {args.model}, {args.batch[0]} documents of {args.task}, chunk {args.chunk_tokens} / "
              f"memory {args.memory_tokens} / answer {args.answer_tokens} tokens, on {name}"
              + (", decode from a CUDA graph" if args.cuda_graph else ""))
        print(f"{'x':>4} {'context tok':>12} {'turns':>5} {'seconds':>8} {'context tok/s':>13} "
              f"{'us/token':>9} {'vs 1x':>6} {'peak MB':>8}")
    base = None
    for m in args.multiples:
        cmd = [sys.executable, __file__, "--agent-one", str(m)] + sys.argv[1:]
        out = subprocess.run(cmd, capture_output=True, text=True)
        if out.returncode != 0:  # its last line says why (the whole traceback: run it with --agent-one)
            why = out.stderr.strip().splitlines()[-1:] or [
                f"it exited with code {out.returncode} and said nothing"
                + (" (killed by a signal: out of memory?)" if out.returncode < 0 else "")]
            sys.exit(f"bench: the {m}x run failed: {why[0]}")
        r = json.loads(out.stdout.strip().splitlines()[-1])
        base = base or r["us_per_context_token"]
        r["vs_1x"] = r["us_per_context_token"] / base
        if args.json:
            print(json.dumps(dict(r, model=args.model)))
            continue
        print(f"{m:4d} {r['context_tokens']:12d} {r['turns']:5d} {r['seconds']:8.1f} {r['context_tok_s']:13.0f} "
              f"{r['us_per_context_token']:9.1f} {r['vs_1x']:6.2f} {r['peak_mem_mb']:8.0f}")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="tiny", help="model preset (model.PRESETS)")
    p.add_argument("--vocab-size", type=int, default=None,
                   help="lm_head rows; default: the preset's (tiny/small: the tokenizer's)")
    p.add_argument("--batch", type=int, nargs="+", default=None,
                   help="batch sizes (default 1 8); agent mode: documents read together (default 4)")
    p.add_argument("--prompt-len", type=int, default=512)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--bandwidth", type=float, default=3.35e12, help="bytes/s for the CUDA bound (H100 SXM)")
    p.add_argument("--json", action="store_true", help="print one JSON object per measurement")
    p.add_argument("--cuda-graph", action="store_true",
                   help="decode steps replayed from a CUDA graph (rollout.CudaGraphDecoder); CUDA only")
    agent = p.add_argument_group("agent mode: cost of reading documents of growing length")
    agent.add_argument("--agent", action="store_true", help="benchmark run_agent instead of generate")
    agent.add_argument("--task", default="niah_multikey")
    agent.add_argument("--base-length", type=int, default=2048, help="context tokens of the 1x document")
    agent.add_argument("--multiples", type=int, nargs="+", default=[1, 4, 16, 64])
    agent.add_argument("--chunk-tokens", type=int, default=512)
    agent.add_argument("--memory-tokens", type=int, default=128)
    agent.add_argument("--answer-tokens", type=int, default=32)
    agent.add_argument("--tokenizer-dir", default="out/tokenizer",
                       help="our tokenizer's folder (trained there, in seconds, if it holds none)")
    agent.add_argument("--agent-one", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    args.batch = args.batch or ([4] if (args.agent or args.agent_one) else [1, 8])
    if args.model not in PRESETS:
        p.error(f"unknown --model {args.model!r}; choose one of {', '.join(PRESETS)}")
    if args.agent and args.task not in TASKS:
        p.error(f"unknown --task {args.task!r}; choose one of {', '.join(TASKS)}")
    if min(args.multiples + [args.chunk_tokens, args.memory_tokens, args.answer_tokens, args.base_length]) < 1:
        p.error("--multiples, --base-length and the --chunk/--memory/--answer-tokens budgets must be >= 1")
    if args.agent and args.base_length * max(args.multiples) > MAX_LENGTH:  # (checked before the 1x row runs)
        p.error(f"--base-length {args.base_length} x --multiples up to {max(args.multiples)} is past the "
                f"{MAX_LENGTH:,} tokens a document may have (memagent/tasks.py MAX_LENGTH)")
    try:
        device = check_device(args.device)
    except ValueError as e:
        p.error(f"--device: {e}")
    if device.type == "cuda" and device.index is not None:
        torch.cuda.set_device(device)  # peak memory, syncs and CUDA graphs follow the current device
    if args.cuda_graph and device.type != "cuda":
        p.error(f"--cuda-graph needs a CUDA device, got --device {args.device}")
    if args.new_tokens < 2:
        p.error(f"--new-tokens must be >= 2 (decode speed is timed over the steps after the first), "
                f"got {args.new_tokens}")
    if min(args.batch) < 1 or args.prompt_len < 1:
        p.error("--batch and --prompt-len must be >= 1")
    if not 0 < args.bandwidth < float("inf"):
        p.error(f"--bandwidth must be a finite number of bytes/s > 0, got {args.bandwidth}")
    if args.vocab_size is not None and args.vocab_size < 1:
        p.error(f"--vocab-size must be >= 1, got {args.vocab_size}")
    if (args.agent or args.agent_one) and os.path.exists(args.tokenizer_dir) and not os.path.isdir(args.tokenizer_dir):
        p.error(f"--tokenizer-dir {args.tokenizer_dir} is a file, not a folder")
    if args.agent and args.vocab_size is not None:  # (the model must have an id for every token)
        from memagent.tokenizer import get_tokenizer
        n_ids = get_tokenizer(args.tokenizer_dir).vocab_size
        if args.vocab_size < n_ids:
            p.error(f"--vocab-size {args.vocab_size} is smaller than the tokenizer's {n_ids} ids")
    if (args.agent or args.agent_one) and len(args.batch) > 1:
        p.error(f"agent mode reads one --batch of documents at every length, got {len(args.batch)} values")
    positions = config_from_preset(args.model).max_position_embeddings
    if not (args.agent or args.agent_one) and args.prompt_len + args.new_tokens > positions:
        p.error(f"--prompt-len {args.prompt_len} + --new-tokens {args.new_tokens} exceeds {args.model}'s "
                f"{positions} positions")
    if args.agent_one is not None:
        return bench_agent_one(args)
    if args.agent:
        return bench_agent(args)

    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    torch.manual_seed(0)
    with torch.device(device):
        model = Qwen2(config_from_preset(args.model, vocab_size=args.vocab_size)).to(dtype).eval()
    name = device_name(device)
    if not args.json:
        print(f"# generate: {args.model} ({model.num_parameters() / 1e6:.1f}M params, {dtype}) on {name}"
              + (", decode from a CUDA graph" if args.cuda_graph else ", eager decode"))
        print(f"{'batch':>5} {'prompt':>6} {'new':>4} {'prefill tok/s':>14} {'decode tok/s':>13} "
              f"{'ms/step':>8} {'peak MB':>8}" + (f" {'% of bound':>10}" if device.type == "cuda" else ""))
    for batch in args.batch:
        r = bench_generate(model, batch, args.prompt_len, args.new_tokens, cuda_graph=args.cuda_graph)
        if device.type == "cuda":
            bound = decode_bound_tok_s(model, batch, args.prompt_len + args.new_tokens // 2, args.bandwidth)
            r["pct_of_bandwidth_bound"] = 100 * r["decode_tok_s"] / bound
        r.update(model=args.model, device=name)
        if args.json:
            print(json.dumps(r))
        else:
            print(f"{batch:5d} {args.prompt_len:6d} {args.new_tokens:4d} {r['prefill_tok_s']:14.0f} "
                  f"{r['decode_tok_s']:13.1f} {r['decode_ms_per_step']:8.2f} {r['peak_mem_mb']:8.0f}"
                  + (f" {r['pct_of_bandwidth_bound']:10.1f}" if device.type == "cuda" else ""))


if __name__ == "__main__":
    main()
