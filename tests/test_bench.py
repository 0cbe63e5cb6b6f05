"""bench.py --agent: a model whose lm_head is larger than the tokenizer (the qwen-ish presets keep
Qwen's 151,936 rows, our tokenizer has 2,048 ids) must still run: sampling stays within the ids
the tokenizer can decode, while the full lm_head is computed."""

import json
import os
import subprocess
import sys

import torch

from bench import TokenizerSizedLogits
from conftest import ROOT
from memagent.tokenizer import get_tokenizer
from model import Qwen2, config_from_preset


def test_logits_cover_the_tokenizers_ids_only():
    torch.manual_seed(0)
    model = TokenizerSizedLogits(config_from_preset("tiny", vocab_size=300), n_ids=100).eval()
    idx = torch.randint(0, 100, (2, 5))
    logits = model(idx)
    full = Qwen2.forward(model, idx)  # the plain model's (B, T, 300) logits
    assert logits.shape == (2, 5, 100) and full.shape == (2, 5, 300)
    torch.testing.assert_close(logits, full[..., :100])


def test_agent_bench_runs_with_an_lm_head_larger_than_the_tokenizer(tmp_path):
    tok_dir = str(tmp_path / "tok")
    n_ids = get_tokenizer(tok_dir).vocab_size
    cmd = [sys.executable, "bench.py", "--agent-one", "1", "--agent", "--model", "tiny",
           "--vocab-size", str(4 * n_ids), "--tokenizer-dir", tok_dir, "--device", "cpu",
           "--task", "niah_single_noise", "--base-length", "200", "--batch", "2",
           "--chunk-tokens", "64", "--memory-tokens", "8", "--answer-tokens", "4"]
    # a plain Qwen2 here samples 3 ids in 4 beyond the tokenizer and fails with "ids out of range"
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120,
                         env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert out.returncode == 0, out.stderr[-2000:]
    row = json.loads(out.stdout.strip().splitlines()[-1])
    assert row["turns"] == 5 and row["context_tokens"] > 0  # 200 tokens in chunks of 64: 4 memory turns + answer
    assert row["device"] == "CPU (1 threads)"  # the process that ran it names its own threads (OMP_NUM_THREADS=1)


def test_decode_bound_reads_only_the_batch_rows_of_an_untied_embedding():
    from bench import decode_bound_tok_s
    with torch.device("meta"):
        tied = Qwen2(config_from_preset("tiny", vocab_size=1000))
        untied = Qwen2(config_from_preset("tiny", vocab_size=1000, tie_word_embeddings=False))
    # tiny: C=128, 4 layers, 2 kv heads of 32; fp32. KV bytes a token: 2*4*2*32*4 = 2048.
    # untied adds a 1000x128 lm_head, but a step reads only 2 of the input embedding's 1000 rows
    P = tied.num_parameters()
    assert untied.num_parameters() == P + 128_000
    for model, weights in ((tied, P), (untied, P + 2 * 128)):
        step_s = (weights * 4 + 2 * 10 * 2048) / 1e9  # batch 2, context 10, 1 GB/s
        assert decode_bound_tok_s(model, 2, 10, 1e9) == 2 / step_s


def test_bad_sizes_are_one_line_errors(tmp_path):
    tok_dir = str(tmp_path / "tok")
    get_tokenizer(tok_dir)
    for flags, message in ((["--new-tokens", "1"], "--new-tokens must be >= 2"),
                           (["--batch", "0"], "--batch and --prompt-len must be >= 1"),
                           (["--cuda-graph"], "--cuda-graph needs a CUDA device"),
                           (["--vocab-size", "0"], "--vocab-size must be >= 1"),
                           (["--bandwidth", "nan"], "--bandwidth must be a finite number of bytes/s > 0"),
                           (["--prompt-len", "2047", "--new-tokens", "2"], "exceeds tiny's 2048 positions"),
                           (["--agent", "--batch", "1", "4"], "agent mode reads one --batch"),
                           (["--device", "meta"], "device type 'meta' is not supported"),
                           (["--agent", "--tokenizer-dir", "README.md"], "--tokenizer-dir README.md is a file"),
                           (["--agent", "--vocab-size", "500", "--tokenizer-dir", tok_dir],
                            "--vocab-size 500 is smaller than the tokenizer's 2048 ids"),
                           (["--agent", "--base-length", "1000000", "--multiples", "1", "64"],
                            "--base-length 1000000 x --multiples up to 64 is past the 16,777,216 tokens")):
        out = subprocess.run([sys.executable, "bench.py", "--device", "cpu"] + flags, cwd=ROOT,
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 2 and message in out.stderr and "Traceback" not in out.stderr
