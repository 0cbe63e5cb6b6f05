"""
Measured speed of the sampling engine (and, later, of the agent).

  python bench.py                                  # tiny model, CPU-friendly sizes
  python bench.py --model qwen-ish-0.5b --batch 16 --prompt-len 7000 --new-tokens 256   # on a GPU

Prints prefill tokens/s, decode tokens/s (all rows together) and ms per decode step, peak memory,
and for CUDA the decode bandwidth bound of ../shared/design.md section 6 so the figure can be read
as a fraction of what the hardware allows. Random weights: speed does not depend on their values.
Timings are wall clock after a warm-up run; compare figures only within one run of one machine.
"""

import argparse
import json
import time

import torch

from model import Qwen2, config_from_preset
from rollout import generate


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def peak_memory_mb(device):
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    import resource  # CPU: peak resident set of this process (Linux reports KiB)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bench_generate(model, batch, prompt_len, new_tokens, repeats=3):
    """Time the prefill alone, then prefill + new_tokens decode steps; decode = difference."""
    device = model.lm_head.weight.device
    g = torch.Generator().manual_seed(0)
    prompts = torch.randint(0, model.config.vocab_size, (batch, prompt_len), generator=g).tolist()
    generate(model, prompts, max_new_tokens=4, temperature=1.0, seed=0)  # warm-up
    prefill_s, total_s = [], []
    for _ in range(repeats):
        sync(device); t0 = time.perf_counter()
        generate(model, prompts, max_new_tokens=1, temperature=1.0, seed=0)
        sync(device); t1 = time.perf_counter()
        generate(model, prompts, max_new_tokens=new_tokens, temperature=1.0, seed=0)  # no stop ids: full length
        sync(device); t2 = time.perf_counter()
        prefill_s.append(t1 - t0); total_s.append(t2 - t1)
    prefill, total = min(prefill_s), min(total_s)
    decode = max(total - prefill, 1e-9)
    steps = new_tokens - 1
    return dict(batch=batch, prompt_len=prompt_len, new_tokens=new_tokens,
                prefill_tok_s=batch * prompt_len / prefill, decode_tok_s=batch * steps / decode,
                decode_ms_per_step=1000 * decode / steps, peak_mem_mb=peak_memory_mb(device))


def decode_bound_tok_s(model, batch, ctx, bandwidth_bytes_s):
    """Bandwidth bound: every step reads all weights once plus each row's KV cache."""
    c = model.config
    elt = model.lm_head.weight.element_size()
    weight_bytes = model.num_parameters() * elt
    kv_bytes_per_token = 2 * c.num_hidden_layers * c.num_key_value_heads * c.head_dim * elt
    step_s = (weight_bytes + batch * ctx * kv_bytes_per_token) / bandwidth_bytes_s
    return batch / step_s


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="tiny", help="model preset (model.PRESETS)")
    p.add_argument("--vocab-size", type=int, default=None, help="default: the preset's (2048 for tiny/small)")
    p.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    p.add_argument("--prompt-len", type=int, default=512)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--bandwidth", type=float, default=3.35e12, help="bytes/s for the CUDA bound (H100 SXM)")
    p.add_argument("--json", action="store_true", help="print one JSON object per measurement")
    args = p.parse_args()

    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    torch.manual_seed(0)
    with torch.device(device):
        model = Qwen2(config_from_preset(args.model, vocab_size=args.vocab_size)).to(dtype).eval()
    name = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    if not args.json:
        print(f"# generate: {args.model} ({model.num_parameters() / 1e6:.1f}M params, {dtype}) on {name}")
        print(f"{'batch':>5} {'prompt':>6} {'new':>4} {'prefill tok/s':>14} {'decode tok/s':>13} "
              f"{'ms/step':>8} {'peak MB':>8}" + (f" {'% of bound':>10}" if device.type == "cuda" else ""))
    for batch in args.batch:
        r = bench_generate(model, batch, args.prompt_len, args.new_tokens)
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
