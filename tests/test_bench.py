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
