"""Tests of train.py: recipes and flags, clear errors, the warm start's targets, the scoring forward,
and the whole pipeline on the tiny model (smoke run, exact resume, NaN stop, 2-process gloo DDP)."""
import copy
import dataclasses
import doctest
import json
import math
import os
import random
import re
import shutil
import socket
import subprocess
import sys
import types

import pytest
import torch

import dapo
import train
from rollout import Generation, chunk_ids
from memagent import tasks
from memagent.reward import compute_reward
from memagent.tokenizer import get_tokenizer
from model import Qwen2, config_from_preset, load_hf, save_checkpoint
from conftest import DEVICES

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMING_KEYS = {"time_rollout", "time_update", "tokens_per_s"}


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    """A shared out-dir root whose tokenizer/ is trained once for the whole module."""
    root = tmp_path_factory.mktemp("train")
    get_tokenizer(os.path.join(root, "seed", "tokenizer"))
    return root


def fresh_out(root, name):
    """An out dir that already holds the module's tokenizer (so runs skip tokenizer training)."""
    out = os.path.join(root, name)
    shutil.copytree(os.path.join(root, "seed"), out)
    return out


@pytest.fixture(scope="module")
def smoke_run(tok_dir):
    """One smoke pipeline for the module; its warm start (30 steps: it has learnt to stop its
    replies, so rewards vary) is the --init-from of the runs below, which then skip supervision."""
    out = fresh_out(tok_dir, "smoke")
    table = run_main(["--recipe", "smoke", "--out-dir", out, "--sft-steps", "30"])
    return out, table


def run_main(args):
    """train.main in this process, on the CPU unless `args` names a device: the CPU is where these
    tests' exact expectations (resume equality to 1e-6, sampled rewards) were established."""
    train.RANK, train.WORLD = 0, 1
    return train.main(["--device", "cpu"] + args)


def free_port():
    """A free local port for a gloo rendezvous, so parallel test runs do not collide."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def read_metrics(out):
    with open(os.path.join(out, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


# -----------------------------------------------------------------------------
# flags and recipes


def test_help_lists_the_dapo_flags():
    out = subprocess.run([sys.executable, "train.py", "--help"], cwd=ROOT, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0
    for flag in ("--recipe", "--clip-high", "--no-dynamic-sampling", "--adv-std", "--no-adv-std",
                 "--loss-agg", "--kl-coef", "--entropy-coef", "--resume", "--init-from", "--overlong-buffer",
                 "--filter-groups-by"):
        assert flag in out.stdout, flag


def test_recipes_and_overrides():
    shipped = train.parse_args(["--recipe", "shipped"])
    assert (shipped.clip_high, shipped.kl_coef, shipped.adv_std, shipped.dynamic_sampling) == \
        (0.20, 0.001, False, False)
    paper = train.parse_args(["--recipe", "paper"])
    assert (paper.chunk_tokens, paper.memory_tokens, paper.answer_tokens, paper.window) == (5000, 1024, 1024, 8192)
    assert (paper.group_size, paper.lr, paper.clip_high, paper.dynamic_sampling) == (16, 1e-6, 0.28, True)
    assert paper.model == "qwen-ish-0.5b" and paper.dtype == "bfloat16"
    assert (paper.max_chunks, shipped.max_chunks, train.parse_args([]).max_chunks) == (8, 8, 0)
    # rollouts at the paper's temperature 1.0 there and in the shipped scripts; the cpu-demo's tiny model at 0.7
    assert (paper.temperature, shipped.temperature, train.parse_args([]).temperature) == (1.0, 1.0, 0.7)
    cfg = train.parse_args(["--recipe", "shipped", "--clip-high", "0.3", "--dynamic-sampling",
                            "--loss-agg", "seq-mean-token-mean"])
    assert (cfg.clip_high, cfg.dynamic_sampling, cfg.loss_agg, cfg.kl_coef) == (0.3, True, "seq-mean-token-mean", 0.001)
    assert train.parse_args([]).recipe == "cpu-demo"
    # each recipe writes where it cannot overwrite the main job's out/train/rl
    dirs = [train.parse_args(a).out_dir for a in ([], ["--baseline"], ["--recipe", "smoke"],
                                                  ["--recipe", "smoke", "--baseline"])]
    assert dirs == ["out/train", "out/baseline", "out/smoke", "out/smoke-baseline"]


@pytest.mark.parametrize("args, message", [
    (["--recipe", "nope"], "unknown recipe"),
    (["--task", "nope"], "unknown task"),
    (["--model", "huge"], "unknown model preset"),
    (["--loss-agg", "mean"], "unknown --loss-agg"),
    (["--data", "/no/such/file.jsonl"], "does not exist"),
    (["--notes", "long"], "--notes must be"),
    (["--curriculum-notes", "long"], "--curriculum-notes must be"),
    (["--copy-gate", "-0.1"], "must be a fraction of documents in [0, 1]"),
    (["--copy-gate", "1.5"], "must be a fraction of documents in [0, 1]"),
    (["--copy-patience", "-5"], "must be >= 0 (0 = off)"),
    (["--notes", "restate", "--task", "hotpot_synth"], "--notes restate needs"),
    (["--dtype", "float16"], "gradient scaler"),
    (["--rollout-rows", "-1"], "--rollout-rows must be >= 0"),
    (["--max-chunks", "-1"], "--max-chunks must be >= 0"),
    (["--baseline", "--resume"], "no checkpoint to resume"),
    (["--chunk-tokens", "0"], "--chunk-tokens, --memory-tokens and --answer-tokens must be >= 1"),
    (["--memory-tokens", "-3"], "must be >= 1"),
    (["--temperature", "0"], "--temperature must be finite and >= 1e-06"),
    (["--temperature", "inf"], "--temperature must be finite and >= 1e-06"),
    (["--grad-clip", "-1"], "--grad-clip must be >= 0 (0 = no clipping"),
    (["--overlong-buffer", "-1"], "--overlong-buffer must be >= 0"),
    (["--kl-coef", "-0.1"], "--kl-coef must be a finite number >= 0"),
    (["--kl-coef", "inf"], "--kl-coef must be a finite number >= 0"),
    (["--n-docs", "50"], "--n-docs sizes documents in paragraphs"),
    (["--sft-batch", "0"], "--sft-batch must be >= 1"),
    (["--seed", "-1"], "--seed must be in [0, 1,000,000,000,000]"),
    (["--seed", str(10**12 + 1)], "must fit 64 bits; got 1000000000001"),
    (["--data", ""], "--data is empty; leave the flag out to use its default"),
    (["--data", os.path.join(ROOT, "README.md"), "--task", "vt"], "--task makes generated documents; --data"),
    (["--data", os.path.join(ROOT, "README.md"), "--train-length", "500"], "keep their own lengths: drop it"),
    (["--window", "-5"], "--window must be >= 0 (0 = the model's positions), got -5"),
    (["--out-dir", "out/r_\udcff"], "--out-dir 'out/r_?' is not UTF-8 text"),  # (the byte 0xff in argv)
    (["--eval-n", "1000001"], "--eval-n 1000001 is more than the 1,000,000 held-out samples"),
    (["--init-from", ""], "--init-from is empty"),
    (["--recipe", " "], "--recipe is empty"),
    (["--out-dir", ""], "--out-dir is empty"),
    (["--eval-scales", "1,1e9"], "--train-length 384 x --eval-scales up to 1e+09 is past the 16,777,216 tokens"),
    (["--train-length", "20000000"], "--train-length 20000000 x --eval-scales up to 64 is past the 16,777,216"),
    (["--task", "hotpot_synth", "--n-docs", "10", "--eval-scales", "1e5"], "past the 262,144 documents"),
    (["--top-p", "0"], "--top-p must be in (0, 1]"),
    (["--max-gen-batches", "0"], "--max-gen-batches must be >= 1"),
    (["--filter-groups-by", "score"], "--filter-groups-by must be reward or accuracy"),
    (["--save-every", "0"], "--save-every must be >= 1"),
    (["--clip-low", "1.5"], "need 0 <= --clip-low < 1"),
    (["--dual-clip", "0.5"], "--dual-clip must be > 1"),
    (["--group-size", "1"], "--group-size must be >= 2 for RL"),
    (["--device", "gpu"], "--device: unknown device 'gpu'"),
    (["--eval-scales", "1,x"], "expected numbers like 1,4,16,64"),
    (["--eval-scales", "0"], "each multiple of the training length must be > 0"),
    (["--eval-scales", "1,-4"], "each multiple of the training length must be > 0"),
    (["--rl-steps", "-1"], "--rl-steps must be >= 0"),
    (["--sft-steps", "-1"], "--sft-steps must be >= 0"),
    (["--eval-n", "-1"], "--eval-n must be >= 0"),
    (["--short-chunk", "-1"], "--short-chunk must be >= 0"),
    (["--lr", "-1"], "--lr must be a finite number >= 0"),
    (["--lr", "nan"], "--lr must be a finite number >= 0"),
    (["--sft-lr", "inf"], "--sft-lr must be a finite number >= 0"),
    (["--weight-decay", "-0.01"], "--weight-decay must be a finite number >= 0"),
    (["--adam-beta2", "1"], "--adam-beta2 must be in [0, 1)"),
    (["--entropy-coef", "nan"], "--entropy-coef must be finite"),
    (["--out-dir", os.path.join(ROOT, "README.md")], "is a file, not a folder"),
    (["--out-dir", os.path.join(ROOT, "README.md", "run", "a")], "README.md is a file, so no folder can be made below"),
    (["--clip-high", "nan"], "need 0 <= --clip-low < 1 and --clip-high >= 0"),
    (["--dual-clip", "nan"], "--dual-clip must be > 1"),
    (["--init-from", ROOT, "--vocab-size", "1024"], "--init-from DIR brings its own tokenizer"),
])
def test_bad_flags_give_one_line_errors(args, message, capsys):
    with pytest.raises(SystemExit) as e:
        train.parse_args(args)
    assert e.value.code == 2
    assert message in capsys.readouterr().err


def test_a_vocab_size_sentencepiece_cannot_train_is_a_clear_error(tmp_path):
    with pytest.raises(SystemExit) as e:
        run_main(["--recipe", "smoke", "--vocab-size", "100", "--out-dir", str(tmp_path)])
    assert "--vocab-size 100" in str(e.value) and "too small" in str(e.value)


def test_a_new_run_never_overwrites_another_runs_checkpoints(smoke_run, tmp_path, capsys):
    """Without --resume, an --out-dir that holds a run is refused before anything is written: its
    checkpoint and metrics are byte for byte what they were."""
    out = str(tmp_path / "again")
    shutil.copytree(smoke_run[0], out)
    before = {p: open(os.path.join(out, p), "rb").read() for p in ("ckpt/trainer.pt", "metrics.jsonl")}
    with pytest.raises(SystemExit) as e:
        run_main(["--recipe", "smoke", "--out-dir", out, "--rl-steps", "1"])
    assert str(e.value).startswith(f"train.py: --out-dir {out} already holds a run (warmstart/, ckpt/, rl/)")
    assert "pass --resume to continue it" in str(e.value)
    assert {p: open(os.path.join(out, p), "rb").read() for p in before} == before
    with pytest.raises(SystemExit) as e:  # the baseline cannot --resume: the message does not offer it
        run_main(["--recipe", "smoke", "--baseline", "--out-dir", out])
    assert "already holds a run" in str(e.value) and "--resume" not in str(e.value)
    # --resume with the optimizer state gone (ckpt/trainer.pt deleted): refused, not started over
    os.remove(os.path.join(out, "ckpt", "trainer.pt"))
    weights = {p: open(os.path.join(out, p, "model.safetensors"), "rb").read() for p in ("warmstart", "rl")}
    with pytest.raises(SystemExit) as e:
        run_main(["--recipe", "smoke", "--out-dir", out, "--resume"])
    assert "holds ckpt/, rl/ but no ckpt/trainer.pt to continue from" in str(e.value)
    assert {p: open(os.path.join(out, p, "model.safetensors"), "rb").read() for p in weights} == weights


def test_a_damaged_checkpoint_stops_resume_with_its_name_and_leaves_the_run_as_it_was(smoke_run, tmp_path):
    """A torn or foreign trainer.pt, a trainer.pt without its keys, ckpt/model's weights torn: one
    clear message each (they were a pickle error, a KeyError, a zip error), and nothing is written."""
    common = ["--recipe", "smoke", "--sft-steps", "30", "--resume", "--rl-steps", "3"]
    cases = {"trainer.pt": (b"half a file", "ckpt/trainer.pt is unreadable (UnpicklingError"),
             "keys": (None, "is unreadable (ValueError: it lacks some of step, optimizer"),
             "model/model.safetensors": (b"\x00" * 4, "ckpt is damaged (cannot read the weights")}
    for name, (content, message) in cases.items():
        out = str(tmp_path / name.replace("/", "-"))
        shutil.copytree(smoke_run[0], out)
        if content is None:
            torch.save({"step": 2}, os.path.join(out, "ckpt", "trainer.pt"))
        else:
            with open(os.path.join(out, "ckpt", name), "wb") as f:
                f.write(content)
        before = {p: open(os.path.join(out, p), "rb").read() for p in ("metrics.jsonl", "rl/model.safetensors")}
        with pytest.raises(SystemExit) as e:
            run_main(common + ["--out-dir", out])
        assert str(e.value).startswith("train.py: --resume: ") and message in str(e.value), name
        assert "start a new run from" in str(e.value) and "Traceback" not in str(e.value)
        assert {p: open(os.path.join(out, p), "rb").read() for p in before} == before


def test_a_file_where_a_checkpoint_folder_goes_and_a_table_that_is_not_one(smoke_run, tmp_path, capsys):
    out = str(tmp_path / "run")
    shutil.copytree(smoke_run[0], out)
    with open(os.path.join(out, "ckpt.old"), "w") as f:  # (a swap's leftover, as a file)
        f.write("x")
    with pytest.raises(SystemExit) as e:
        run_main(["--recipe", "smoke", "--resume", "--out-dir", out])
    assert "holds ckpt.old as a file where this trainer keeps a folder" in str(e.value)
    os.remove(os.path.join(out, "ckpt.old"))
    with open(os.path.join(out, "eval.json"), "w") as f:
        json.dump([1, 2], f)  # valid JSON, but not a table: --resume once crashed on it after its RL steps
    capsys.readouterr()
    run_main(["--recipe", "smoke", "--sft-steps", "30", "--resume", "--out-dir", out, "--rl-steps", "3"])
    assert "eval.json is not a table (a JSON object)" in capsys.readouterr().out
    with open(os.path.join(out, "eval.json")) as f:
        assert list(json.load(f)) == ["RL"]  # a table again: the RL row, the unreadable rows left out


def test_a_long_question_past_sample_0_and_a_baseline_document_past_the_window_stop_at_start(tok_dir, tmp_path):
    """geometry_check read sample 0 alone: a longer question further down a JSONL file overflowed
    the window mid-run, and a --baseline whose documents exceed the window trained on cut ones."""
    tok = get_tokenizer(os.path.join(tok_dir, "seed", "tokenizer"))
    samples = tasks.make_samples("niah_single_noise", 200, n=6, seed=0, tokenizer=tok)
    samples[4]["question"] = "Which word? " * 400  # ~1,600 tokens: past a 512-token window
    data = tmp_path / "long.jsonl"
    tasks.save_jsonl(samples, data)
    out = fresh_out(tok_dir, "longq")
    with pytest.raises(SystemExit) as e:
        run_main(["--recipe", "smoke", "--out-dir", out, "--data", str(data), "--eval-n", "2", "--window", "512"])
    assert "window too small" in str(e.value) and f"the longest question is the 5th sample's of {data}" in str(e.value)
    assert not os.path.exists(os.path.join(out, "warmstart"))
    with pytest.raises(SystemExit) as e:
        run_main(["--recipe", "smoke", "--baseline", "--out-dir", out, "--window", "256"])
    assert re.search(r"--baseline reads a whole document in one turn, and sample 0's is prompt \d+ \+ answer "
                     r"16 = \d+ tokens > the 256-token window; lower --train-length$", str(e.value))
    assert not os.path.exists(os.path.join(out, "warmstart"))
    # a data file's documents keep their own lengths: sample 3's, past the window, stops the baseline
    samples[4]["question"] = "Which word?"
    samples[3] = tasks.make_sample("niah_single_noise", 700, 3, tok)
    tasks.save_jsonl(samples, data)
    with pytest.raises(SystemExit) as e:  # (at the start: a JSONL file's documents are all known then)
        run_main(["--recipe", "smoke", "--baseline", "--out-dir", fresh_out(tok_dir, "longdoc"), "--data", str(data),
                  "--eval-n", "2", "--window", "512"])
    assert re.search(rf"and the 4th sample of {re.escape(str(data))} is prompt 7\d\d \+ answer 16 = 7\d\d tokens > "
                     r"the 512-token window; shorten that document or leave it out$", str(e.value))
    # during the run (a HotpotQA document, sized as it is drawn): the conversation's own check
    cfg = train.parse_args(["--recipe", "smoke", "--baseline", "--data", str(data), "--eval-n", "2"])
    cfg.prompts = "compact"
    with pytest.raises(SystemExit) as e:
        train.baseline_conversations(cfg, tok, samples, 3, random.Random(0), 10**6, 1.0, window=512)
    assert re.search(r"and the 4th sample of .* is prompt 7\d\d \+ answer 16 tokens > the 512-token window$",
                     str(e.value))


def test_world_size_without_torchrun_and_an_out_dir_that_cannot_be_made(tok_dir, monkeypatch):
    cfg = train.parse_args(["--recipe", "smoke", "--device", "cpu"])
    monkeypatch.setenv("WORLD_SIZE", "2")
    for name in ("RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(SystemExit) as e:  # (init_process_group would fail deep inside, or wait forever)
        train.setup_distributed(cfg)
    assert "WORLD_SIZE=2 is set but RANK, MASTER_ADDR, MASTER_PORT not: launch with torchrun" in str(e.value)
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(SystemExit, match="WORLD_SIZE='two' is not a number"):
        train.setup_distributed(cfg)
    monkeypatch.delenv("WORLD_SIZE")

    def read_only(path, exist_ok=False):  # (what a read-only disk answers; root passes permission bits)
        raise PermissionError(13, "Permission denied", path)
    monkeypatch.setattr(train.os, "makedirs", read_only)
    out = os.path.join(tok_dir, "read-only")
    with pytest.raises(SystemExit) as e:
        run_main(["--recipe", "smoke", "--out-dir", out])
    assert str(e.value) == f"train.py: cannot create --out-dir {out}: Permission denied"


def test_notes_for_flags_a_run_cannot_use(smoke_run, tmp_path, capsys):
    """--model with --init-from of another shape, and --eval-scales with a JSONL file, are said
    to be unused (a note), not silently dropped."""
    out = fresh_out(os.path.dirname(smoke_run[0]), "notes")
    data = tmp_path / "data.jsonl"
    tasks.save_jsonl(tasks.make_samples("niah_single_noise", 200, n=4, seed=0,
                                        tokenizer=train.load_tokenizer(os.path.join(smoke_run[0], "rl"))), data)
    run_main(["--recipe", "smoke", "--out-dir", out, "--init-from", os.path.join(smoke_run[0], "rl"),
              "--model", "small", "--data", str(data), "--eval-n", "1", "--eval-scales", "1,4", "--rl-steps", "0"])
    printed = capsys.readouterr().out
    assert "holds its own model (hidden 128, 4 layers), not the --model small preset" in printed
    assert "note: --eval-scales 1,4: the samples of a JSONL file keep their own lengths" in printed


def test_a_jsonl_file_named_json_gets_a_hint(tmp_path):
    path = tmp_path / "samples.json"
    path.write_text(json.dumps({"question": "q", "context": "c", "answers": ["1"]}) + "\n" * 2 +
                    json.dumps({"question": "q", "context": "c", "answers": ["2"]}) + "\n")
    with pytest.raises(SystemExit) as e:
        run_main(["--recipe", "smoke", "--data", str(path), "--out-dir", str(tmp_path / "out")])
    assert "not valid JSON" in str(e.value) and "needs the .jsonl extension" in str(e.value)


def test_a_plan_past_the_devices_memory_is_a_warning_at_start(tok_dir, monkeypatch, capsys):
    if os.path.exists("/proc/meminfo"):  # the kernel's MemTotal (kB) bounds it (a container's limit may be lower)
        with open("/proc/meminfo") as f:
            total_kb = int(next(line for line in f if line.startswith("MemTotal:")).split()[1])
        assert 2**20 < train.device_memory("cpu") / 1024 <= 1.01 * total_kb
    cfg = train.parse_args(["--recipe", "smoke", "--device", "cpu"])
    tok = get_tokenizer(os.path.join(tok_dir, "seed", "tokenizer"))
    model = Qwen2(config_from_preset("tiny", vocab_size=tok.vocab_size))
    cfg.prompts = "compact"
    train.geometry_check(cfg, model, tok, None)
    assert "warning" not in capsys.readouterr().out  # the smoke run's ~0.4 GiB fits
    monkeypatch.setattr(train, "device_memory", lambda device: 2**26)  # a 64 MiB device
    train.geometry_check(cfg, model, tok, None)
    assert "warning: that peak is more than this device's 0.1 GiB: lower --rollout-rows" in capsys.readouterr().out


def test_window_too_small_is_a_clear_error(tok_dir):
    out = fresh_out(tok_dir, "window")
    with pytest.raises(SystemExit) as e:
        run_main(["--recipe", "smoke", "--out-dir", out, "--window", "120"])
    assert "window too small" in str(e.value) and str(e.value).startswith("train.py:")


def test_too_short_evaluation_documents_are_refused_before_training(tok_dir):
    """A scale whose documents cannot hold the task's needles fails at the start, not after the
    warm start and RL it would otherwise follow."""
    out = fresh_out(tok_dir, "scales")
    with pytest.raises(SystemExit) as e:
        run_main(["--recipe", "smoke", "--out-dir", out, "--eval-scales", "0.01,1"])
    assert "--eval-scales 0.01" in str(e.value) and "too small" in str(e.value)
    assert not os.path.exists(os.path.join(out, "warmstart"))


# -----------------------------------------------------------------------------
# the warm start's targets


def test_warm_start_targets_are_question_agnostic(tok_dir):
    """Memory targets never depend on the question; they are short notes " key: value." of needles
    seen so far; the final target boxes the asked value exactly when the memory kept the asked
    needle (else "unknown"); and the kept needle is uniform (~1/4 with 4 needles)."""
    tok = get_tokenizer(os.path.join(tok_dir, "seed", "tokenizer"))
    cfg = train.parse_args(["--recipe", "smoke", "--prompts", "compact"])
    hits, n = 0, 80
    for i in range(n):
        sample = tasks.make_sample("niah_multikey", 384, 1000 + i, tok)
        other = dict(sample, question=sample["question"].replace(sample["needles"][0]["key"], "odd-key"))
        convs = train.warm_start_conversations(sample, tok, cfg, random.Random(i))
        convs_other = train.warm_start_conversations(other, tok, cfg, random.Random(i))
        memories = [tok.decode(r[:-1]) for _, r in convs[:-1]]
        assert memories == [tok.decode(r[:-1]) for _, r in convs_other[:-1]]
        notes = {"%s: %s." % (x["key"], x["value"]) for x in sample["needles"]}
        # capacity: memory 32 tokens, a note 13 -> two notes at most
        assert all(m == "None." or (m.count(":") <= 2 and set(m.replace(". ", ".|").split("|")) <= notes)
                   for m in (m.strip() for m in memories)), memories
        final = tok.decode(convs[-1][1][:-1])
        asked_kept = sample["answers"][0] in memories[-1]
        assert final == ("\\boxed{%s}" % sample["answers"][0] if asked_kept else "\\boxed{unknown}")
        hits += asked_kept
    assert 0.25 < hits / n < 0.65, hits / n  # 2 of the 4 needles kept, uniformly (minus cut needles)


def test_value_notes_keep_a_seen_digit_whatever_the_question(tok_dir):
    """--notes value (memory 4 tokens): each memory is " d." for the digit of one needle already
    read (the digit of a needle in this chunk or an earlier one), the same whatever the question,
    and the final turn boxes that digit; the kept needle is uniform, so the asked one is kept ~1/4
    of the time."""
    tok = get_tokenizer(os.path.join(tok_dir, "seed", "tokenizer"))
    cfg = train.parse_args(["--prompts", "compact", "--short-chunk", "0", "--notes", "value",
                            "--memory-tokens", "4", "--task", "niah_multikey_short",
                            "--chunk-tokens", "96"])  # 4 chunks: no needle cut by a boundary
    hits, n = 0, 80
    for i in range(n):
        sample = tasks.make_sample(cfg.task, cfg.train_length, 2000 + i, tok)
        other = dict(sample, question=tasks.SHORT_QUESTION.format(key="zzz"))
        convs = train.warm_start_conversations(sample, tok, cfg, random.Random(i))
        replies = [r for _, r in convs]  # prompts differ by the question, replies must not
        assert replies == [r for _, r in train.warm_start_conversations(other, tok, cfg, random.Random(i))]
        chunks = chunk_ids(tok.encode(sample["context"]), cfg.chunk_tokens)
        memories = [tok.decode(r[:-1]) for r in replies[:-1]]
        for k, memory in enumerate(memories):
            read = tok.decode([t for c in chunks[:k + 1] for t in c])
            digits = re.findall(r"number is (\d)\.", read)
            if not digits:
                assert memory == "None.", memory
            else:
                assert re.fullmatch(r" \d\.", memory) and memory[1] in digits, memory
        assert tok.decode(replies[-1][:-1]) == "\\boxed{%s}" % memories[-1].strip(" .")
        hits += memories[-1].strip(" .") == sample["answers"][0]
    assert 0.12 < hits / n < 0.40, hits / n


@pytest.mark.parametrize("replace", [0.0, 0.25])
def test_default_warm_start_keeps_prices_as_often_as_the_number(tok_dir, replace):
    """The cpu-demo warm start (niah_number_among_prices, value notes, memory 5 tokens): each
    memory is " d." or " $d.", the value of a needle already read, with no preference for the
    number: the final memory holds the number ~1/4 of the time and a price ~3/4, with reservoir
    targets (replace 0: the kept needle is uniform) and with --sft-replace 0.25's sticky coin
    (the number at position 1-4 of 4 ends in memory with probability .75^3, .25*.75^2, .25*.75,
    .25: mean 0.249); the final turn boxes what the memory holds, right only for the number.
    Choosing the number is left to RL."""
    tok = get_tokenizer(os.path.join(tok_dir, "seed", "tokenizer"))
    cfg = train.parse_args(["--prompts", "compact", "--short-chunk", "0", "--chunk-tokens", "96"])
    assert (cfg.task, cfg.notes, cfg.memory_tokens) == ("niah_number_among_prices", "value", 5)
    kept_number, n = 0, 120
    for i in range(n):
        sample = tasks.make_sample(cfg.task, cfg.train_length, 4000 + i, tok)
        convs = train.warm_start_conversations(sample, tok, cfg, random.Random(i), replace=replace)
        chunks = chunk_ids(tok.encode(sample["context"]), cfg.chunk_tokens)  # 4: no needle cut
        memories = [tok.decode(r[:-1]) for _, r in convs[:-1]]
        assert all(r[-1] == tok.im_end_id for _, r in convs[:-1])  # a note fits whole: never cut
        for k, memory in enumerate(memories):
            text_read = tok.decode([t for c in chunks[:k + 1] for t in c])
            read = re.findall(r"(?:number|price) is (\$?\d)\.", text_read)
            assert memory == "None." if not read else memory.strip(" .") in read, (memory, read)
        held = memories[-1].strip(" .")
        assert tok.decode(convs[-1][1][:-1]) == "\\boxed{%s}" % held
        right = held == sample["answers"][0]
        assert compute_reward(cfg.task, "\\boxed{%s}" % held, sample["answers"]) == right
        kept_number += right
    assert 0.14 < kept_number / n < 0.36, kept_number / n


def test_digits_notes_drop_the_price_sign(tok_dir):
    """--notes digits on the default task: the same reservoir choice as value notes, but a kept
    price "$3" is written " 3.", like a number: every memory is " d." for the digit of a needle
    read so far, whatever its kind, and the final turn boxes that digit."""
    tok = get_tokenizer(os.path.join(tok_dir, "seed", "tokenizer"))
    value = train.parse_args(["--prompts", "compact", "--short-chunk", "0", "--chunk-tokens", "96"])
    digits = train.parse_args(["--prompts", "compact", "--short-chunk", "0", "--chunk-tokens", "96",
                               "--notes", "digits"])
    prices_kept = 0
    for i in range(40):
        sample = tasks.make_sample(digits.task, digits.train_length, 6000 + i, tok)
        convs = train.warm_start_conversations(sample, tok, digits, random.Random(i))
        as_value = train.warm_start_conversations(sample, tok, value, random.Random(i))
        chunks = chunk_ids(tok.encode(sample["context"]), digits.chunk_tokens)
        for k, ((_, reply), (_, value_reply)) in enumerate(zip(convs[:-1], as_value[:-1])):
            memory = tok.decode(reply[:-1])
            read = re.findall(r"(?:number|price) is \$?(\d)\.", tok.decode([t for c in chunks[:k + 1] for t in c]))
            assert memory == "None." if not read else re.fullmatch(r" \d\.", memory) and memory[1] in read
            assert memory == tok.decode(value_reply[:-1]).replace("$", "")  # the same choice
            prices_kept += "$" in tok.decode(value_reply[:-1])
        assert tok.decode(convs[-1][1][:-1]) == "\\boxed{%s}" % tok.decode(convs[-2][1][:-1]).strip(" .")
    assert prices_kept > 20  # prices were kept, and written without their sign


def test_curriculum_notes_apply_to_the_copy_curriculum_only(tok_dir):
    """--curriculum-notes digits: curriculum steps write " 3." for a price, later steps " $3."."""
    tok = get_tokenizer(os.path.join(tok_dir, "seed", "tokenizer"))
    cfg = train.parse_args(["--prompts", "compact", "--curriculum-notes", "digits"])
    memories = {True: set(), False: set()}  # in the curriculum or not -> memories written
    for step in (0, cfg.short_chunk_steps):
        for i in range(30):
            convs = train.curriculum_conversations(cfg, tok, None, i, random.Random(i), step)
            memories[step == 0] |= {tok.decode(r[:-1]) for _, r in convs[:-1]}
    assert not any("$" in m for m in memories[True]) and len(memories[True]) > 5
    assert any("$" in m for m in memories[False])


def test_latest_targets_keep_the_newest_needle_read(tok_dir):
    """keep="latest" (the copy curriculum's targets): after each chunk the memory is the value of
    the last needle read so far, found here by a regex over the text read, "None." before any;
    no randomness (any rng gives the same targets); the final turn boxes that value, so the
    number is kept when it is the last needle, ~1/4 of the time, as with reservoir targets."""
    tok = get_tokenizer(os.path.join(tok_dir, "seed", "tokenizer"))
    cfg = train.parse_args(["--prompts", "compact", "--short-chunk", "0", "--chunk-tokens", "96"])
    kept_number, n = 0, 80
    for i in range(n):
        sample = tasks.make_sample(cfg.task, cfg.train_length, 5000 + i, tok)
        convs = train.warm_start_conversations(sample, tok, cfg, random.Random(i), keep="latest")
        assert convs == train.warm_start_conversations(sample, tok, cfg, random.Random(i + 1), keep="latest")
        chunks = chunk_ids(tok.encode(sample["context"]), cfg.chunk_tokens)
        memories = [tok.decode(r[:-1]) for _, r in convs[:-1]]
        read = []  # values of the needles lying whole in a chunk read so far (a cut one is in none)
        for chunk, memory in zip(chunks, memories):
            read += re.findall(r"(?:number|price) is (\$?\d)\.", tok.decode(chunk))
            assert memory == (" %s." % read[-1] if read else "None."), (memory, read)
        assert tok.decode(convs[-1][1][:-1]) == "\\boxed{%s}" % memories[-1].strip(" .")
        kept_number += memories[-1].strip(" .") == sample["answers"][0]
    assert 0.12 < kept_number / n < 0.40, kept_number / n


def test_sticky_coin_targets_replace_a_full_memory_with_the_set_probability(tok_dir):
    """--sft-replace P (after the copy curriculum): where a chunk brings one new needle into a
    memory that already holds one, the target takes it with probability P, whatever either
    needle is (here 0.25: counted over ~200 such turns), and keeps the old note otherwise; the
    first needle always fills an empty memory. P = 1 gives the latest-note targets exactly."""
    tok = get_tokenizer(os.path.join(tok_dir, "seed", "tokenizer"))
    cfg = train.parse_args(["--prompts", "compact", "--short-chunk", "0", "--chunk-tokens", "96",
                            "--sft-replace", "0.25"])
    assert cfg.sft_replace == 0.25 == train.parse_args([]).sft_replace  # the default
    taken = {"number": [], "price": []}  # kind of the new needle -> took it?
    for i in range(100):
        convs = train.curriculum_conversations(cfg, tok, None, 7000 + i, random.Random(i), cfg.short_chunk_steps)
        assert convs == train.warm_start_conversations(train.get_sample(cfg, tok, None, 7000 + i), tok, cfg,
                                                       random.Random(i), replace=0.25)
        sample = train.get_sample(cfg, tok, None, 7000 + i)
        chunks = chunk_ids(tok.encode(sample["context"]), cfg.chunk_tokens)
        memories = ["None."] + [tok.decode(r[:-1]) for _, r in convs[:-1]]
        for chunk, before, after in zip(chunks, memories, memories[1:]):
            new = re.findall(r"(?:number|price) is (\$?\d)\.", tok.decode(chunk))
            if len(new) != 1:
                assert len(new) > 1 or after == before
                continue
            if before == "None.":
                assert after == " %s." % new[0]
            else:
                assert after in (before, " %s." % new[0]), (before, after, new)
                taken["price" if "$" in new[0] else "number"].append(after == " %s." % new[0] != before)
        latest = train.warm_start_conversations(sample, tok, cfg, random.Random(i), keep="latest")
        assert latest == train.warm_start_conversations(sample, tok, cfg, random.Random(i), replace=1.0)
    events = taken["number"] + taken["price"]
    assert len(events) > 150 and len(taken["number"]) > 30
    assert 0.17 < sum(events) / len(events) < 0.33, sum(events) / len(events)
    assert 0.08 < sum(taken["number"]) / len(taken["number"]) < 0.45  # no preference for a kind


def test_max_chunks_caps_training_documents_but_not_evaluation(tok_dir, monkeypatch):
    """--max-chunks 3 on cpu-demo's 8-chunk documents (384 tokens, chunks of 48): the warm start's
    3 memory turns read the document's first 72 ids and its last 72 (center truncation, oracle:
    slices of the encoded document), RL's rollouts get the cap, evaluation reads every chunk."""
    from rollout import Rollout
    tok = get_tokenizer(os.path.join(tok_dir, "seed", "tokenizer"))
    cfg = train.parse_args(["--max-chunks", "3", "--eval-n", "2", "--eval-scales", "1", "--overlong-buffer", "0",
                            "--device", "cpu"])
    sample = train.get_sample(cfg, tok, None, 0)
    ids = tok.encode(sample["context"])
    assert len(ids) > 3 * cfg.chunk_tokens
    convs = train.warm_start_conversations(sample, tok, cfg, random.Random(0))
    kept = ids[:72] + ids[-72:]
    assert len(convs) == 3 + 1
    for k, (prompt, _) in enumerate(convs[:-1]):
        chunk = kept[48 * k:48 * (k + 1)]
        assert any(prompt[i:i + 48] == chunk for i in range(len(prompt)))
    caps = []

    def recording_run_agent(model, tokenizer, samples, agent_cfg, group_size=1, seed=0, **kwargs):
        caps.append(agent_cfg.max_chunks)
        return [Rollout(sample=i, member=m, conversations=[], answer="", memories=["None."], reward=float(m))
                for i in range(len(samples)) for m in range(group_size)]
    monkeypatch.setattr(train, "run_agent", recording_run_agent)
    train.collect_rollouts(cfg, None, tok, None, 0)
    train.evaluate(cfg, torch.nn.Identity(), tok, None, "scripted")
    assert caps == [3, 0]


def test_evaluation_reports_what_the_final_memory_holds_and_warns_without_a_copy(tok_dir, monkeypatch,
                                                                                capsys):
    """evaluate's second table: of 8 documents whose scripted final memories hold the asked value (2),
    another needle's value (2), a digit no needle has (2) or nothing (2), the memory holds a needle
    value in 4/8 and the asked one in 2/8 (hand-counted); a starting policy under 70% gets the
    warning, one at 70% does not."""
    from rollout import Rollout
    tok = get_tokenizer(os.path.join(tok_dir, "seed", "tokenizer"))
    cfg = train.parse_args(["--eval-n", "8", "--eval-scales", "1", "--device", "cpu"])
    assert cfg.task == "niah_number_among_prices"

    def scripted_run_agent(model, tokenizer, samples, agent_cfg, group_size, seed, max_positions):
        rollouts = []
        for i, sample in enumerate(samples):
            values = [n["value"] for n in sample["needles"]]
            other = next(v for v in values if v not in sample["answers"])
            absent = next(d for d in "0123456789" if d not in values and "$" + d not in values)
            memory = [sample["answers"][0], other, absent, None][i % 4]
            rollouts.append(Rollout(sample=i, member=0, conversations=[], answer="",
                                    memories=[f" {memory}." if memory else "None."], reward=float(i % 4 == 0)))
        return rollouts

    monkeypatch.setattr(train, "run_agent", scripted_run_agent)
    accuracy, holds = train.evaluate(cfg, torch.nn.Identity(), tok, None, "scripted")  # (never called)
    assert accuracy == {"1x": 0.25} and holds == {"1x": (0.5, 0.25)}
    assert "final memory holds a needle value 50%, the asked one 25%" in capsys.readouterr().out
    train.warn_if_no_copy(cfg, holds)
    assert "warning: the starting policy's final memory holds a needle value in only 50% of documents at 1x" \
        in capsys.readouterr().out
    train.warn_if_no_copy(cfg, {"1x": (0.7, 0.2)})
    assert "warning" not in capsys.readouterr().out
    train.warn_if_no_copy(dataclasses.replace(cfg, sft_steps=0), {"4x": (0.34, 0.12)})
    assert re.search(r"warning: .* 34% of documents at 4x: .*learn\n", capsys.readouterr().out)  # no --seed hint


def test_table_has_every_scale_of_every_row(capsys):
    """A --resume run evaluated at other --eval-scales than its warm start: the columns are the
    union, "-" where a policy was not evaluated (it crashed with a KeyError before)."""
    train.print_table({"warm start": {"1x": 0.25, "2x": 0.5}, "RL": {"1x": 1.0, "4x": None}})
    assert capsys.readouterr().out == ("\n| policy | 1x | 2x | 4x |\n|---|---|---|---|\n"
                                       "| warm start | 25.0 | 50.0 | - |\n| RL | 100.0 | - | beyond window |\n")


def test_a_flat_rl_run_ends_with_a_note(capsys):
    """After the table: a note when RL gained under 20 points at the first length (oracle: the
    hand-made tables below), a note that names the random initialization when RL started from it,
    silence when it rose or when there is nothing to compare."""
    cfg = train.parse_args([])
    train.note_if_rl_flat(cfg, {"warm start": {"1x": 0.172, "4x": 0.19}, "RL": {"1x": 0.156, "4x": 0.19}})
    out = capsys.readouterr().out
    assert "note: RL gained -1.6 points at 1x" in out and "--resume --rl-steps 160" in out
    train.note_if_rl_flat(cfg, {"warm start": {"1x": 0.2}, "RL": {"1x": 0.2}}, steps_done=120)  # resumed past 80
    assert "within 120 RL steps" in (out := capsys.readouterr().out) and "--resume --rl-steps 240" in out
    random_start = train.parse_args(["--sft-steps", "0"])  # RL from the random initialization
    train.note_if_rl_flat(random_start, {"random init": {"1x": 0.0}, "RL": {"1x": 0.0}})
    out = capsys.readouterr().out
    assert "which was the random initialization" in out and "--resume" not in out
    loaded = train.TrainConfig(init_from="some/dir")  # its row, and an older run's name for it
    for name in ("--init-from", "warm start"):
        train.note_if_rl_flat(loaded, {name: {"1x": 0.3}, "RL": {"1x": 0.35}})
        assert "note: RL gained +5.0 points at 1x" in capsys.readouterr().out
    for table in ({"warm start": {"1x": 0.172}, "RL": {"1x": 0.984}}, {"warm start": {"1x": 0.2}},
                  {"RL": {"1x": 0.1}}, {"warm start": {"1x": None}, "RL": {"1x": None}}):
        train.note_if_rl_flat(cfg, table)
        assert capsys.readouterr().out == ""


def test_restated_notes_name_the_question_and_keep_a_random_digit(tok_dir):
    """--notes restate (niah_first_last, memory 6 tokens): each memory is
    " first: d." / " last: d." with the QUESTION's word and the digit of a needle already read;
    asking the other question changes the word and nothing else (the kept digit ignores the
    question), the final turn boxes the kept digit, and the asked needle is kept ~1/4 of the time."""
    tok = get_tokenizer(os.path.join(tok_dir, "seed", "tokenizer"))
    cfg = train.parse_args(["--prompts", "compact", "--short-chunk", "0", "--task", "niah_first_last",
                            "--notes", "restate", "--memory-tokens", "6", "--chunk-tokens", "96"])
    hits, n = 0, 80
    for i in range(n):
        sample = tasks.make_sample(cfg.task, cfg.train_length, 3000 + i, tok)
        word = re.fullmatch(r"What is the (first|last) number\?", sample["question"]).group(1)
        flip = {"first": "last", "last": "first"}[word]
        other = dict(sample, question=sample["question"].replace(word, flip))
        replies = [tok.decode(r[:-1]) for _, r in train.warm_start_conversations(sample, tok, cfg, random.Random(i))]
        flipped = [tok.decode(r[:-1]) for _, r in train.warm_start_conversations(other, tok, cfg, random.Random(i))]
        assert [m.replace(flip, word) for m in flipped] == replies
        chunks = chunk_ids(tok.encode(sample["context"]), cfg.chunk_tokens)
        for k, memory in enumerate(replies[:-1]):
            digits = re.findall(r"number is (\d)\.", tok.decode([t for c in chunks[:k + 1] for t in c]))
            assert memory == "None." if not digits else re.fullmatch(r" %s: (\d)\." % word, memory)
            assert not digits or memory[-2] in digits
        assert replies[-1] == "\\boxed{%s}" % replies[-2][-2]
        hits += replies[-2][-2] == sample["answers"][0]
    assert 0.12 < hits / n < 0.40, hits / n


def test_copy_curriculum_shrinks_chunks_and_documents_then_stops(tok_dir):
    """Before --short-chunk-steps the warm start reads the same number of chunks at a third of the
    size (documents of 128 tokens in chunks of 16); from then on the training geometry (384 / 48);
    the curriculum only shrinks generated tasks, and is off when --short-chunk is 0."""
    tok = get_tokenizer(os.path.join(tok_dir, "seed", "tokenizer"))
    cfg = train.parse_args(["--prompts", "compact"])  # cpu-demo: 384 tokens, chunk 48, short 16
    assert (cfg.train_length, cfg.chunk_tokens, cfg.short_chunk) == (384, 48, 16)
    for step, doc_tokens, chunk in ((0, 128, 16), (cfg.short_chunk_steps - 1, 128, 16),
                                    (cfg.short_chunk_steps, 384, 48)):
        convs = train.curriculum_conversations(cfg, tok, None, 7, random.Random(0), step)
        sample = train.get_sample(cfg, tok, None, 7, scale=doc_tokens / 384)
        chunks = chunk_ids(tok.encode(sample["context"]), chunk)
        assert len(convs) == len(chunks) + 1 and len(chunks[0]) == chunk
        assert abs(len(tok.encode(sample["context"])) - doc_tokens) <= 0.02 * doc_tokens
        keep = "latest" if step < cfg.short_chunk_steps else "reservoir"  # (the curriculum's targets)
        assert convs[:-1] == train.warm_start_conversations(
            sample, tok, dataclasses.replace(cfg, chunk_tokens=chunk), random.Random(0), keep=keep,
            replace=cfg.sft_replace)[:-1]
        for (prompt, _), c in zip(convs, chunks):  # each memory turn reads its own chunk
            assert any(prompt[i:i + len(c)] == c for i in range(len(prompt)))
    off = dataclasses.replace(cfg, short_chunk=0)
    assert train.curriculum_conversations(off, tok, None, 7, random.Random(0), 0) == \
        train.curriculum_conversations(cfg, tok, None, 7, random.Random(0), cfg.short_chunk_steps)


def test_copy_gate_adds_curriculum_steps_until_the_agent_copies(capsys):
    """The gate measures, then adds GATE_EVERY (25) steps between measurements: rates 0.1, 0.5, 0.8
    pass a 0.75 gate after 50 added steps; a rate that never rises stops at --copy-patience (40 =
    25 + 15 steps, measured after each part) with a warning that the copy has not formed; a copy
    formed in time adds none and measures once."""
    for rates, patience, added, measured in (([0.1, 0.5, 0.8, 0.9], 100, 50, 3), ([0.1] * 5, 40, 40, 3),
                                             ([0.9], 100, 0, 1)):
        cfg = train.parse_args(["--copy-gate", "0.75", "--copy-patience", str(patience)])
        steps, rates_left = [], list(rates)
        assert train.extend_copy_curriculum(cfg, lambda: rates_left.pop(0), lambda extra: steps.append(extra) or 0.4,
                                            "warm start", 0.0) == added
        assert steps == list(range(added)) and len(rates) - len(rates_left) == measured, rates
        printed = capsys.readouterr().out
        assert ("warning:" in printed and "copies in only 10%" in printed) == (rates[-1] < 0.75), printed


NUMBER, PRICE = re.compile(r"The magic number is (\d)\."), re.compile(r"The \w+ price is \$(\d)\.")


def newest_note(text):
    """The note of the last needle sentence in `text` (' 9.' or ' $6.'), or None: a regex reading of
    what the copy curriculum's latest-note targets are."""
    found = [(m.start(), f" {m.group(1)}.") for m in NUMBER.finditer(text)]
    found += [(m.start(), f" ${m.group(1)}.") for m in PRICE.finditer(text)]
    return max(found)[1] if found else None


def test_copy_rate_scores_the_final_memory_against_the_newest_note(tok_dir):
    """copy_rate against scripted agents read off the prompt text by regex. One writes the newest
    note of its chunk, or keeps its memory when the chunk has none: exactly the curriculum's
    target, so every document counts (rate 1). One writes 'None.' after a chunk without a needle:
    right exactly on the documents whose last chunk holds a whole needle, counted here from the
    decoded chunks (documents with no whole needle are not scored)."""
    cfg = train.parse_args(["--device", "cpu"])
    cfg.prompts = "compact"
    tok = get_tokenizer(os.path.join(tok_dir, "seed", "tokenizer"))
    model = Qwen2(config_from_preset("tiny", vocab_size=tok.vocab_size))

    def agent(keep_memory):
        def policy(prompts, budgets, stop_ids, agent_cfg):
            out = []
            for ids, budget in zip(prompts, budgets):
                text = tok.decode(ids)
                if "Text:" not in text:  # the final turn is not scored: answer anything
                    reply = [tok.im_end_id]
                else:
                    chunk = text.split("Text:\n", 1)[1].split("\nNew memory:", 1)[0]
                    assert len(tok.encode(chunk)) < cfg.chunk_tokens / 2  # curriculum chunks (16 tokens), not 48
                    memory = text.split("Memory:\n", 1)[1].split("\nText:", 1)[0]
                    reply = tok.render_reply(newest_note(chunk) or (memory if keep_memory else "None."))[:budget]
                out.append(Generation(tokens=reply, logprobs=[0.0] * len(reply), stop_reason="stop"))
            return out
        return policy

    n = 24
    assert train.copy_rate(cfg, model, tok, n=n, policy=agent(True)) == 1.0
    # with --max-chunks the perfect copier reads the capped documents its targets come from: still 1
    assert train.copy_rate(dataclasses.replace(cfg, max_chunks=3), model, tok, n=n, policy=agent(True)) == 1.0
    with_note, last_chunk_note = 0, 0
    for i in range(n):
        sample = train.get_sample(cfg, tok, None, train.GATE_SEED + i, scale=cfg.short_chunk / cfg.chunk_tokens)
        notes = [newest_note(tok.decode(c)) for c in chunk_ids(tok.encode(sample["context"]), cfg.short_chunk)]
        with_note += any(notes)
        last_chunk_note += notes[-1] is not None
    assert 0 < last_chunk_note < with_note
    assert train.copy_rate(cfg, model, tok, n=n, policy=agent(False)) == last_chunk_note / with_note
    assert model.training  # copy_rate leaves the model as it found it


def test_copy_gate_inserts_its_steps_and_leaves_the_schedule_alone():
    """supervised with the gate at step 3 of 6: the added steps read new samples (sample steps 6, 7)
    built as curriculum step 2, then steps 3-5 run exactly as scheduled. A gate the copy rate already
    passes gives the same weights, bit for bit, as no gate."""
    cfg = train.parse_args(["--device", "cpu", "--sft-steps", "6", "--sft-batch", "1", "--copy-patience", "2"])
    reply = [5, 6, 7, 8]

    def run(gate, gate_at):
        torch.manual_seed(0)
        model = Qwen2(config_from_preset("tiny", vocab_size=64))
        calls = []

        def conversations_of(index, rng, step):
            calls.append((index - train.SFT_SEED, step))
            return [([1, 2, 3, index % 50 + 10], reply)]

        train.supervised(dataclasses.replace(cfg, copy_gate=gate), model, conversations_of, "t", gate_at=gate_at,
                         copy_rate=lambda: 0.5)
        return calls, model.state_dict()

    never_formed, _ = run(0.9, 3)
    assert never_formed == [(0, 0), (1, 1), (2, 2), (6, 2), (7, 2), (3, 3), (4, 4), (5, 5)]
    formed, weights = run(0.4, 3)
    ungated, reference = run(0.4, None)
    assert formed == ungated == [(i, i) for i in range(6)]
    assert all(torch.equal(weights[k], reference[k]) for k in reference)


def test_memory_note_tokenizes_like_the_needle_text(tok_dir):
    """Writing a note is pure copying: its key and value ids occur verbatim in the needle's ids."""
    tok = get_tokenizer(os.path.join(tok_dir, "seed", "tokenizer"))
    needle = {"key": "icy-zebra", "value": "7368886"}
    note = tok.encode(train.memory_note(needle))
    text = tok.encode("It rained. " + tasks.NEEDLE.format(**needle))
    key, value = note[:3], note[-8:-1]  # " icy" "-" "zebra" ... the seven digits

    def occurs_in(part, ids):
        return any(ids[i:i + len(part)] == part for i in range(len(ids)))

    assert occurs_in(key, text) and occurs_in(value, text)
    assert tok.decode(key) == " icy-zebra" and tok.decode(value) == "7368886"
    assert len(note) < len(tok.encode(" " + tasks.NEEDLE.format(**needle)))


def test_response_logits_match_the_full_forward():
    torch.manual_seed(0)
    model = Qwen2(config_from_preset("tiny", vocab_size=64)).eval()
    model.pad_id = 0
    prompts, responses = [[5, 6, 7], [8, 9]], [[10, 11], [12, 13, 14]]
    got = train.response_logits(model, prompts, responses)  # (2, 3, V)
    for b, (p, r) in enumerate(zip(prompts, responses)):
        full = model(torch.tensor([p + r]))[0]  # (T, V)
        want = full[len(p) - 1:len(p) - 1 + len(r)]
        torch.testing.assert_close(got[b, :len(r)], want, atol=1e-5, rtol=1e-5)


def test_repeated_conversations_share_a_forward_but_keep_their_gradient():
    """response_logprobs runs each distinct (prompt, response) once and gives every copy its row.
    Oracle: the plain forward over all N rows; the log-probs and the gradient of a loss that weighs
    each copy differently (its own advantage) must match."""
    torch.manual_seed(0)
    Conv = dataclasses.make_dataclass("Conv", ["prompt_ids", "response_ids"])
    a, b, c = Conv([5, 6, 7], [8, 9]), Conv([5, 6, 7], [8]), Conv([4, 5, 6, 7, 8], [9, 10, 11])
    convs = [a, b, Conv([5, 6, 7], [8, 9]), c, a, b, Conv([4, 5, 6, 7, 8], [9, 10, 11])]
    weights = torch.tensor([[1.0], [-2.0], [0.5], [3.0], [-1.0], [2.5], [-0.7]])  # (N, 1)

    def grads_and_logp(shared, entropy_bonus):
        torch.manual_seed(0)
        model = Qwen2(config_from_preset("tiny", vocab_size=64)).train()
        if shared:
            logp, entropy = train.response_logprobs(model, convs, temperature=0.7, with_entropy=True,
                                                    entropy_grad=entropy_bonus)
            assert entropy.shape == logp.shape and entropy.requires_grad == entropy_bonus
        else:
            responses = [x.response_ids for x in convs]
            logits = train.response_logits(model, [x.prompt_ids for x in convs], responses, 0.7)
            logp = dapo.logprobs_from_logits(logits, train.pad_rows(responses, logits.size(1), dtype=torch.long))
            entropy = dapo.entropy_from_logits(logits)
        mask = train.pad_rows([[1] * len(x.response_ids) for x in convs], logp.size(1))
        loss = (weights * logp * mask).sum()
        if entropy_bonus:  # the --entropy-coef term: its gradient must reach every copy too
            loss = loss - (weights.flip(0) * entropy * mask).sum()
        loss.backward()
        return [p.grad.clone() for p in model.parameters()], logp.detach() * mask

    for entropy_bonus in (False, True):
        (g_shared, lp_shared), (g_each, lp_each) = grads_and_logp(True, entropy_bonus), grads_and_logp(False, entropy_bonus)
        torch.testing.assert_close(lp_shared, lp_each, atol=1e-5, rtol=1e-5)
        for x, y in zip(g_shared, g_each):
            torch.testing.assert_close(x, y, atol=1e-5, rtol=1e-4)


def test_micro_batches_hold_at_most_size_distinct_pairs_with_copies_together():
    rng = random.Random(1)
    Conv = dataclasses.make_dataclass("Conv", ["prompt_ids", "response_ids"])
    pool = [([rng.randrange(9)], [rng.randrange(3)]) for _ in range(12)]
    convs = [Conv(*rng.choice(pool)) for _ in range(60)]
    micros = train.micro_batches(convs, 4)
    assert sorted(map(id, convs)) == sorted(id(c) for m in micros for c in m)  # each exactly once
    pairs_of = [{train.pair_of(c) for c in m} for m in micros]
    assert all(len(p) <= 4 for p in pairs_of)
    assert all(not (p & q) for i, p in enumerate(pairs_of) for q in pairs_of[i + 1:])  # copies together
    assert len(micros) == -(-len({train.pair_of(c) for c in convs}) // 4)


def test_later_mini_batches_are_scored_in_the_shapes_of_their_update(tok_dir, smoke_run):
    """The old log-probs of mini-batches 2+ come from a scoring pass before any update. In bf16 a
    forward's rounding depends on the batch's shapes, so that pass must split each mini-batch as its
    update does: then with lr 0 (the policy never moves) every ratio is exactly 1. (Scoring all later
    mini-batches together gave |log ratio| up to ~1e-3 in bf16.)"""
    out = fresh_out(tok_dir, "bf16-mini")
    run_main(["--recipe", "smoke", "--out-dir", out, "--eval-n", "0", "--rl-steps", "1", "--dtype", "bfloat16",
              "--batch-size", "4", "--mini-batches", "4", "--lr", "0", "--group-size", "3",
              "--init-from", os.path.join(smoke_run[0], "warmstart")])
    (row,) = read_metrics(out)
    assert row["trained_tokens"] > 0
    assert row["ratio_mean"] == 1.0 and row["approx_kl"] == 0.0, row


def test_first_mini_batch_old_logprobs_equal_a_separate_scoring_pass():
    """rl_step takes the first mini-batch's old log-probs from its own training forward, detached,
    instead of a no-grad scoring pass first: exact only if the forward with grad computes the very
    same numbers (oracle: score_responses, the scoring pass the later mini-batches still use)."""
    torch.manual_seed(0)
    model = Qwen2(config_from_preset("tiny", vocab_size=64)).train()
    rng = random.Random(0)
    Conv = dataclasses.make_dataclass("Conv", ["prompt_ids", "response_ids"])
    convs = [Conv([rng.randrange(1, 64) for _ in range(rng.randint(3, 20))],
                  [rng.randrange(1, 64) for _ in range(rng.randint(1, 6))]) for _ in range(7)]
    cfg = train.TrainConfig(micro_batch=len(convs), device="cpu")
    scored = train.score_responses(cfg, model, convs)
    responses = [c.response_ids for c in convs]
    logits = train.response_logits(model, [c.prompt_ids for c in convs], responses, cfg.temperature)  # with grad
    targets = train.pad_rows(responses, logits.size(1), dtype=torch.long)
    logp = dapo.logprobs_from_logits(logits, targets)  # (B, R)
    assert logp.requires_grad
    for c, row in zip(convs, logp.detach().tolist()):
        assert row[:len(c.response_ids)] == scored[id(c)]  # bit for bit: every ratio is exactly 1


def scripted_groups(rewards, vocab_size, seed=1):
    """Groups of Rollouts (one list of rewards per group), each rollout 2 conversations (a memory
    turn, the answer) of random prompt and response ids of ragged lengths: rl_step's input."""
    from rollout import Conversation, Rollout
    rng = random.Random(seed)
    groups, k = [], 0
    for g, group_rewards in enumerate(rewards):
        group = []
        for m, reward in enumerate(group_rewards):
            convs = []
            for turn in range(2):
                response = [rng.randrange(1, vocab_size) for _ in range(rng.randint(1, 6))]
                prompt = [rng.randrange(1, vocab_size) for _ in range(rng.randint(3, 12))]
                convs.append(Conversation(rollout=k, sample=g, turn=turn, is_final=turn == 1, prompt_ids=prompt,
                                          response_ids=response, logprobs=[0.0] * len(response), truncated=False))
            r = Rollout(sample=g, member=m, conversations=convs, memories=[], answer="", reward=reward)
            r.accuracy = reward
            group.append(r)
            k += 1
        groups.append(group)
    return groups


@pytest.mark.parametrize("adv_std, lr", [(True, 0.05), (False, 0.08)])  # (lr: some ratios between the bounds)
def test_rl_step_update_equals_the_dapo_formula_written_out(monkeypatch, adv_std, lr):
    """rl_step end to end against the loss written out by hand, on scripted rollouts.

    Two groups of 3 rollouts (2 ragged conversations each), 2 mini-batches (one group each), plain
    SGD (lr 0.05 or 0.08), KL to a different reference (coef 0.1). Oracle, per mini-batch m with N_m
    response tokens:
        loss_m = (1/N_m) sum over its tokens of [ -min(r A, clip(r, 0.8, 1.28) A)
                                                  + 0.1 (exp(ref - new) - (ref - new) - 1) ]
    r = exp(new - old), old = the policy before any update; A = the rollout's advantage, by hand:
    rewards [1, 0, 0] -> (2/3, -1/3, -1/3) / sqrt(1/3); rewards [0.5, 1, 0] -> (0, 1, -1); with
    --no-adv-std (Dr. GRPO) not divided by the std: (2/3, -1/3, -1/3) and (0, 0.5, -0.5).
    The oracle runs plain full forwards, one conversation at a time, and updates a copy of the
    model. Flipping A's sign, giving a conversation another rollout's A, dropping the std, swapping
    the clip bounds, mis-normalizing the token-mean or scoring KL against the policy all fail here."""
    torch.manual_seed(0)
    V, kl_coef = 48, 0.1
    model = Qwen2(config_from_preset("tiny", vocab_size=V))
    ref = Qwen2(config_from_preset("tiny", vocab_size=V)).eval()  # another init: KL is not 0
    groups = scripted_groups([[1.0, 0.0, 0.0], [0.5, 1.0, 0.0]], V)
    if adv_std:
        advantages = [[a / math.sqrt(1 / 3) for a in (2 / 3, -1 / 3, -1 / 3)], [0.0, 1.0, -1.0]]
    else:
        advantages = [[2 / 3, -1 / 3, -1 / 3], [0.0, 0.5, -0.5]]
    first = [r for g in groups for r in g]
    monkeypatch.setattr(train, "collect_rollouts", lambda *a, **kw: (groups, (2, 2), first, 0, 1))
    cfg = train.parse_args(["--recipe", "smoke", "--device", "cpu", "--mini-batches", "2", "--batch-size", "2",
                            "--group-size", "3", "--lr", str(lr), "--warmup-steps", "0", "--grad-clip", "0",
                            "--kl-coef", str(kl_coef), "--micro-batch", "4", "--temperature", "1.0",
                            "--adv-std" if adv_std else "--no-adv-std"])

    def logp_of(net, c):  # (R,) log-probs of c's response tokens: one plain full forward
        ids = torch.tensor([c.prompt_ids + c.response_ids])
        logits = net(ids)[0, len(c.prompt_ids) - 1:-1]  # the positions that predict the response
        return logits.log_softmax(-1).gather(-1, torch.tensor(c.response_ids)[:, None])[:, 0]

    oracle = copy.deepcopy(model)
    with torch.no_grad():
        old = {id(c): logp_of(oracle, c) for g in groups for r in g for c in r.conversations}
        ref_lp = {id(c): logp_of(ref, c) for g in groups for r in g for c in r.conversations}
    clipped = between = 0  # tokens the clip zeroes; of them, those where swapped bounds would not
    for g, group in enumerate(groups):  # mini-batch g holds group g
        convs = [(c, advantages[g][m]) for m, r in enumerate(group) for c in r.conversations]
        n_tokens = sum(len(c.response_ids) for c, _ in convs)
        loss = 0.0
        for c, a in convs:
            new = logp_of(oracle, c)
            ratio = torch.exp(new - old[id(c)])
            surrogate = torch.minimum(ratio * a, ratio.clamp(1 - 0.2, 1 + 0.28) * a)
            d = ref_lp[id(c)] - new
            loss = loss + (-surrogate + kl_coef * (torch.exp(d) - d - 1)).sum() / n_tokens
            if a != 0:
                outside = (ratio > 1.28) if a > 0 else (ratio < 0.8)
                clipped += int(outside.sum())
                between += int(((ratio > 1.2) & (ratio <= 1.28)).sum() if a > 0 else ((ratio >= 0.72) & (ratio < 0.8)).sum())
        oracle.zero_grad()
        loss.backward()
        with torch.no_grad():
            for p in oracle.parameters():
                p -= lr * p.grad
    assert clipped > 0 and between > 0  # the second mini-batch is off-policy enough for the clip to bind

    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    train.rl_step(cfg, model, ref, optimizer, None, None, step=0)
    for (name, p), q in zip(model.named_parameters(), oracle.parameters()):
        torch.testing.assert_close(p, q, atol=2e-5, rtol=1e-4, msg=name)


def test_overlong_penalty_reads_each_turns_own_budget_and_accuracy_stays_the_task_reward(monkeypatch):
    """cpu-demo's buffer of 1 with memory budget 5 and answer budget 16 (hand-computed): a memory
    reply of 5 tokens fills its budget (-1); an answer of 15 is below 16 - 1 (0); accuracy keeps
    the task reward before the penalty."""
    from rollout import Conversation, Rollout
    cfg = train.parse_args(["--device", "cpu", "--no-dynamic-sampling", "--batch-size", "2", "--group-size", "2"])
    assert (cfg.memory_tokens, cfg.answer_tokens, cfg.overlong_buffer) == (5, 16, 1)
    lengths = {0: (5, 3), 1: (3, 15), 2: (4, 16), 3: (4, 4)}  # rollout -> (memory reply, answer) tokens

    def fake_run_agent(model, tok, samples, agent, group_size=1, seed=0, **kwargs):
        rollouts = []
        for i in range(len(samples) * group_size):
            convs = [Conversation(rollout=i, sample=i // group_size, turn=t, is_final=t == 1, prompt_ids=[1],
                                  response_ids=[7] * n, logprobs=[0.0] * n, truncated=False)
                     for t, n in enumerate(lengths[i])]
            rollouts.append(Rollout(sample=i // group_size, member=i % group_size, conversations=convs,
                                    memories=[], answer="", reward=1.0))
        return rollouts
    monkeypatch.setattr(train, "run_agent", fake_run_agent)
    monkeypatch.setattr(train, "get_sample", lambda *a, **kw: dict(question="q", context="c", answers=["1"]))
    _, _, first, _, _ = train.collect_rollouts(cfg, None, None, None, 0)
    assert [r.reward for r in first] == [0.0, 1.0, 0.0, 1.0]
    assert [r.accuracy for r in first] == [1.0, 1.0, 1.0, 1.0]


@pytest.mark.parametrize("filter_by, kept", [("reward", [0, 1]), ("accuracy", [1])])
def test_dynamic_sampling_filters_groups_on_reward_or_accuracy(monkeypatch, filter_by, kept):
    """Two groups of two, hand-built: group 0 answers wrong twice, but one of its memory replies
    fills its 5-token budget (overlong penalty -1), so its rewards differ (-1, 0) and its
    accuracies do not (0, 0); group 1 answers right once (rewards and accuracies 1, 0). Filtering
    on reward keeps both groups; on accuracy (DAPO's reference) only group 1."""
    from rollout import Conversation, Rollout
    cfg = train.parse_args(["--device", "cpu", "--batch-size", "2", "--group-size", "2",
                            "--max-gen-batches", "1", "--filter-groups-by", filter_by])
    memory_len, correct = [5, 3, 3, 3], [0.0, 0.0, 1.0, 0.0]  # per rollout

    def fake_run_agent(model, tok, samples, agent, group_size=1, seed=0, **kwargs):
        return [Rollout(sample=i // group_size, member=i % group_size, memories=[], answer="", reward=correct[i],
                        conversations=[Conversation(rollout=i, sample=i // group_size, turn=t, is_final=t == 1,
                                                    prompt_ids=[1], response_ids=[7] * n, logprobs=[0.0] * n,
                                                    truncated=False) for t, n in enumerate((memory_len[i], 3))])
                for i in range(len(samples) * group_size)]
    monkeypatch.setattr(train, "run_agent", fake_run_agent)
    monkeypatch.setattr(train, "get_sample", lambda *a, **kw: dict(question="q", context="c", answers=["1"]))
    groups, (with_signal, drawn), first, _, _ = train.collect_rollouts(cfg, None, None, None, 0)
    assert [r.reward for r in first] == [-1.0, 0.0, 1.0, 0.0]
    assert [[r.sample for r in g] for g in groups] == [[s, s] for s in kept]
    assert (with_signal, drawn) == (len(kept), 2)


@pytest.mark.parametrize("device", DEVICES)
def test_bf16_training_keeps_fp32_weights_so_a_1e_6_update_survives(tok_dir, device):
    """--dtype bfloat16 is mixed precision: the weights stay float32 and only the forward runs in
    bf16 (train.autocast). The oracle is the naive alternative, bf16 weights, where one AdamW step
    of lr 1e-6 (the paper's) rounds away on almost every weight: bf16's step near 0.02 is 1.2e-4."""
    cfg = train.parse_args(["--recipe", "smoke", "--dtype", "bfloat16", "--lr", "1e-6",
                            "--out-dir", fresh_out(tok_dir, "bf16-" + device)])
    cfg.device = device
    model, tokenizer = train.build_model(cfg)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    prompts, responses = [[5, 6, 7, 8], [9, 10]], [[11, 12], [13, 14, 15]]

    def changed_fraction(model, autocast):
        weight = model.model.layers[0].mlp.up_proj.weight  # (I, C), ~N(0, 0.02)
        before = weight.detach().clone()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6, weight_decay=0.0)
        with autocast:
            logits = train.response_logits(model, prompts, responses)  # (B, R, V)
        assert logits.dtype == torch.bfloat16  # the matmuls did run in bf16
        targets = train.pad_rows(responses, logits.size(1), dtype=torch.long, device=device)
        dapo.logprobs_from_logits(logits, targets).sum().neg().backward()
        optimizer.step()
        return (weight.detach() != before).float().mean().item()

    assert changed_fraction(model, train.autocast(cfg)) > 0.95
    naive = Qwen2(model.config).to(device=device, dtype=torch.bfloat16)  # what --dtype bfloat16 must not mean
    naive.load_state_dict(model.state_dict())
    assert changed_fraction(naive, torch.autocast(device, enabled=False)) < 0.05


@pytest.mark.parametrize("device", DEVICES)
def test_bf16_rollouts_under_autocast_match_a_fresh_bf16_forward(device):
    """Rollouts of a float32 model under train.autocast write a bf16 KV cache; their log-probs are
    those of a fresh (uncached) forward under the same autocast, to bf16 precision."""
    from rollout import generate
    cfg = train.parse_args(["--dtype", "bfloat16"])
    cfg.device = device
    torch.manual_seed(0)
    model = Qwen2(config_from_preset("tiny", vocab_size=64)).to(device).eval()
    prompts = [[5, 6, 7, 8, 9, 10], [11, 12, 13]]  # ragged: right padding in the prefill
    with train.autocast(cfg):
        gens = generate(model, prompts, max_new_tokens=8, temperature=1.0, seed=0)
        for p, g in zip(prompts, gens):
            with torch.no_grad():
                logp = torch.log_softmax(model(torch.tensor([p + g.tokens], device=device))[0].float(), dim=-1)
            want = [logp[len(p) - 1 + i, t].item() for i, t in enumerate(g.tokens)]
            assert g.logprobs == pytest.approx(want, abs=0.05)


def test_memory_plan_kv_cache_is_what_the_engine_allocates():
    """The start-up memory plan's KV line against the real cache of a generate call (bf16 under
    autocast: model.new_cache), for --rollout-rows and for a whole rollout batch."""
    model = Qwen2(config_from_preset("tiny", vocab_size=64))
    for rows_flag, rows in ((6, 6), (0, 4 * 8)):
        cfg = train.parse_args(["--dtype", "bfloat16", "--batch-size", "4", "--group-size", "8",
                                "--eval-n", "8", "--rollout-rows", str(rows_flag)])
        cfg.device = "cpu"
        plan = train.memory_plan(cfg, model.config, model.num_parameters(), longest=100)
        with train.autocast(cfg):
            cache = model.new_cache(rows, 100)
        assert cache.k.dtype == torch.bfloat16
        assert plan["rollout KV cache"] == cache.nbytes()
        assert plan["training state"] == 16 * model.num_parameters()


# -----------------------------------------------------------------------------
# the pipeline


def test_smoke_pipeline_writes_everything(smoke_run):
    out, table = smoke_run
    assert set(table) == {"warm start", "RL"} and set(table["RL"]) == {"1x", "2x"}
    rows = read_metrics(out)
    assert [r["step"] for r in rows] == [1, 2]
    for key in ("reward", "accuracy", "kept_fraction", "memory_len", "answer_len", "truncation_rate",
                "clip_frac_low", "clip_frac_high", "approx_kl", "entropy", "time_rollout",
                "time_update", "tokens_per_s", "grad_norm"):
        assert key in rows[0]
    assert "kl_ref" not in rows[0]  # no --kl-coef: no reference model, so no KL to it is measured
    assert rows[0]["trained_tokens"] > 0 and rows[0]["entropy"] > 0 and rows[0]["grad_norm"] >= 0
    for sub in ("warmstart/model.safetensors", "ckpt/model/model.safetensors", "ckpt/trainer.pt",
                "rl/config.json", "eval.json"):
        assert os.path.exists(os.path.join(out, sub)), sub


def test_paper_recipe_runs_end_to_end_shrunk_on_the_cpu(tok_dir, monkeypatch, capsys):
    """The `paper` recipe's own path, shrunk to a tiny model, 4-document hotpot_synth samples and
    128-token chunks so that the CPU runs it: no warm start (--sft-steps 0), documents sized by
    --n-docs (training samples 4 documents, evaluation 4 and 8 at --eval-scales 1,2), RL rollouts
    in slices of --rollout-rows 3 reading at most --max-chunks 2, evaluation every chunk, bf16
    autocast, activation checkpointing in the update; --cuda-graph off CUDA gets its note. The
    oracle is the recipe's settings and the flags: each agent call is recorded as made."""
    out = fresh_out(tok_dir, "paper")
    calls = []  # (max_chunks, max_rows, temperature, n_docs of each sample) per run_agent call
    real_run_agent = train.run_agent

    def recording_run_agent(model, tokenizer, samples, agent_cfg, **kwargs):
        calls.append((agent_cfg.max_chunks, agent_cfg.max_rows, agent_cfg.temperature,
                      [s["n_docs"] for s in samples]))
        return real_run_agent(model, tokenizer, samples, agent_cfg, **kwargs)
    monkeypatch.setattr(train, "run_agent", recording_run_agent)
    checkpointed = []
    real_checkpoint = torch.utils.checkpoint.checkpoint

    def counting_checkpoint(function, *args, **kwargs):
        checkpointed.append(torch.is_autocast_enabled("cpu"))
        return real_checkpoint(function, *args, **kwargs)
    monkeypatch.setattr(torch.utils.checkpoint, "checkpoint", counting_checkpoint)

    table = run_main(["--recipe", "paper", "--model", "tiny", "--out-dir", out, "--n-docs", "4",
                      "--chunk-tokens", "128", "--memory-tokens", "24", "--answer-tokens", "16", "--window", "512",
                      "--batch-size", "2", "--group-size", "2", "--mini-batches", "1", "--micro-batch", "4",
                      "--rl-steps", "1", "--eval-n", "2", "--eval-scales", "1,2", "--rollout-rows", "3",
                      "--max-chunks", "2", "--no-dynamic-sampling"])
    printed = capsys.readouterr().out
    assert "note: --cuda-graph needs a CUDA device" in printed and "== warm start" not in printed
    assert not os.path.exists(os.path.join(out, "warmstart"))
    # the row RL starts from is named for what it is: no warm start ran, so "random init"
    assert set(table) == {"random init", "RL"} and all(set(row) == {"1x", "2x"} for row in table.values())
    training = [c for c in calls if c[0] == 2]
    evaluation = [c for c in calls if c[0] == 0]
    assert len(training) == 1 and len(evaluation) == 4  # one draw; 2 policies x 2 scales
    assert training[0][1:] == (3, 1.0, [4, 4])  # the recipe's temperature 1.0, the rows flag, --n-docs
    assert sorted(n for c in evaluation for n in c[3]) == [4] * 4 + [8] * 4  # 2 documents per scale per policy
    assert all(c[2] == 0.0 for c in evaluation)  # greedy
    assert checkpointed and all(checkpointed)  # the update's layers went through checkpoint, under autocast
    assert read_metrics(out)[0]["step"] == 1


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_smoke_pipeline_on_cuda_in_mixed_precision(tok_dir):
    """The GPU path of the paper recipe in miniature: bf16 autocast, activation checkpointing,
    sliced rollouts and CUDA-graph decoding on CUDA; the checkpoint keeps float32 weights."""
    from safetensors.torch import load_file
    out = fresh_out(tok_dir, "cuda")
    table = run_main(["--recipe", "smoke", "--out-dir", out, "--device", "cuda", "--dtype", "bfloat16",
                      "--grad-ckpt", "--rollout-rows", "3", "--kl-coef", "0.001", "--cuda-graph"])
    assert set(table) == {"warm start", "RL"}
    rows = read_metrics(out)
    assert [r["step"] for r in rows] == [1, 2]
    # each phase's measured peak: at least the fp32 weights + AdamW's two moments (+ grads in the update)
    state_gib = 12 * sum(w.numel() for w in load_file(os.path.join(out, "rl", "model.safetensors")).values()) / 2**30
    assert all(r["peak_gib_rollout"] >= state_gib and r["peak_gib_update"] >= state_gib for r in rows[1:])
    weights = load_file(os.path.join(out, "rl", "model.safetensors"))
    assert all(w.dtype == torch.float32 for w in weights.values())


def test_entropy_bonus_raises_the_entropy_of_the_next_rollouts(tok_dir, smoke_run):
    """--entropy-coef puts -COEF * entropy in the loss. From the same start and seed the first
    step's rollouts (and the entropy logged from them) are the same; after one update with a large
    bonus the policy samples at a higher entropy than after the plain DAPO update."""
    common = ["--recipe", "smoke", "--eval-n", "0", "--rl-steps", "2", "--no-dynamic-sampling",
              "--init-from", os.path.join(smoke_run[0], "warmstart")]
    entropies = {}
    for coef in ("0", "1.0"):
        out = fresh_out(tok_dir, f"entropy-{coef}")
        run_main(common + ["--out-dir", out, "--entropy-coef", coef])
        entropies[coef] = [r["entropy"] for r in read_metrics(out)]
    assert entropies["0"][0] == pytest.approx(entropies["1.0"][0], rel=1e-5)
    assert entropies["1.0"][1] > entropies["0"][1] + 0.05, entropies


def test_resume_continues_exactly(tok_dir, smoke_run, capsys):
    common = ["--recipe", "smoke", "--eval-n", "0", "--overlong-buffer", "24", "--group-size", "3",
              "--init-from", os.path.join(smoke_run[0], "warmstart")]
    straight = fresh_out(tok_dir, "straight")
    run_main(common + ["--out-dir", straight, "--rl-steps", "3"])
    split = fresh_out(tok_dir, "split")
    run_main(common + ["--out-dir", split, "--rl-steps", "2"])
    run_main(common + ["--out-dir", split, "--rl-steps", "3", "--resume"])
    a, b = read_metrics(straight), read_metrics(split)
    assert len(a) == len(b) == 3
    for row_a, row_b in zip(a, b):
        for k in row_a:
            if k not in TIMING_KEYS:
                assert row_a[k] == pytest.approx(row_b[k], rel=1e-6, abs=1e-9), k
    assert any(abs(r["pg_loss"]) > 0 and r["grad_norm"] > 0 for r in a)  # a real update to carry over
    # a checkpoint already past --rl-steps runs nothing more, and says so
    capsys.readouterr()
    run_main(common + ["--out-dir", split, "--rl-steps", "2", "--resume"])
    assert "at RL step 3 and --rl-steps is 2: no step is left to run" in capsys.readouterr().out
    assert read_metrics(split) == b
    # and a checkpoint from another geometry is refused
    with pytest.raises(SystemExit) as e:
        run_main(common + ["--out-dir", split, "--rl-steps", "4", "--resume", "--chunk-tokens", "80"])
    assert "incompatible" in str(e.value)
    # and so is a change that would not continue the run exactly, each changed flag named
    with pytest.raises(SystemExit) as e:
        run_main(common + ["--out-dir", split, "--rl-steps", "4", "--resume", "--lr", "0.01", "--seed", "3"])
    assert "--lr 0.0005 (this run: 0.01); --seed 0 (this run: 3)" in str(e.value), str(e.value)
    assert f"--init-from COPY of {split}/ckpt/model" in str(e.value)
    with pytest.raises(SystemExit, match="--sft-steps 4 \\(this run: 0\\)"):  # it picks the KL reference
        run_main(common + ["--out-dir", split, "--rl-steps", "4", "--resume", "--sft-steps", "0"])


@pytest.mark.parametrize("temperature", [0.5, 1.5])
def test_rl_scores_at_the_sampling_temperature(tok_dir, smoke_run, temperature):
    """The trainer scores responses under the distribution the engine sampled them from,
    softmax(logits / T): in float32 its log-probs equal the ones generate recorded (the oracle)."""
    out = fresh_out(tok_dir, f"temperature-{temperature}")
    run_main(["--recipe", "smoke", "--out-dir", out, "--eval-n", "0", "--rl-steps", "1", "--mini-batches", "1",
              "--temperature", str(temperature), "--init-from", os.path.join(smoke_run[0], "warmstart")])
    (row,) = read_metrics(out)
    assert row["trained_tokens"] > 0
    assert row["rollout_logp_gap"] < 1e-5  # mean |engine - trainer| per token (scored at T=1: ~0.5)


def test_first_mini_batch_is_on_policy_in_bf16(tok_dir, smoke_run):
    """Old log-probs come from the update's own forward before any step (as verl recomputes them),
    so with one mini-batch every ratio is exactly 1 even in bf16, where the engine's cached decode
    rounds differently from the training forward."""
    out = fresh_out(tok_dir, "bf16-on-policy")
    run_main(["--recipe", "smoke", "--out-dir", out, "--eval-n", "0", "--rl-steps", "1", "--mini-batches", "1",
              "--dtype", "bfloat16", "--init-from", os.path.join(smoke_run[0], "warmstart")])
    (row,) = read_metrics(out)
    assert row["trained_tokens"] > 0 and row["rollout_logp_gap"] > 1e-4  # the engine's do differ
    assert row["approx_kl"] == 0.0 and row["ratio_mean"] == 1.0
    assert row["clip_frac_low"] == row["clip_frac_high"] == 0.0


def test_later_mini_batches_are_scored_before_the_first_update(tok_dir, smoke_run):
    """With two mini-batches the second one's old log-probs are the policy that sampled (float32:
    equal to the engine's), while its new ones come from the policy the first step moved."""
    out = fresh_out(tok_dir, "two-mini-batches")
    run_main(["--recipe", "smoke", "--out-dir", out, "--eval-n", "0", "--rl-steps", "1", "--mini-batches", "2",
              "--init-from", os.path.join(smoke_run[0], "warmstart")])
    (row,) = read_metrics(out)
    assert row["trained_tokens"] > 0
    assert row["rollout_logp_gap"] < 1e-5  # every mini-batch's old log-probs: the sampling policy's
    assert row["ratio_mean"] != 1.0  # the second mini-batch's new ones: after the first update


def test_hotpotqa_file_trains_and_evaluates_at_document_multiples(tok_dir, tmp_path):
    """An official-format HotpotQA .json is RULER-HotpotQA: each question's own paragraphs plus
    distractors, --n-docs of them, x each eval scale; the last --eval-n questions are held out."""
    data = [{"_id": f"q{i}", "question": f"Where was person {i} born?", "answer": f"Town{i}",
             "context": [[f"Person {i}", [f"Person {i} was born in Town{i}.", " They liked tea."]],
                         [f"Town{i}", [f"Town{i} is a small place by the sea."]]],
             "supporting_facts": [[f"Person {i}", 0]], "type": "bridge", "level": "easy"} for i in range(24)]
    path = tmp_path / "hotpot.json"
    path.write_text(json.dumps(data))
    out = fresh_out(tok_dir, "hotpotqa")
    table = run_main(["--recipe", "smoke", "--out-dir", out, "--data", str(path), "--n-docs", "6",
                      "--eval-n", "4", "--eval-scales", "1,2", "--sft-steps", "2", "--rl-steps", "1"])
    assert set(table["RL"]) == {"1x", "2x"}
    cfg = train.parse_args(["--recipe", "smoke", "--data", str(path), "--n-docs", "6", "--eval-n", "4"])
    corpus = train.load_data(cfg)
    held_out = train.get_sample(cfg, None, corpus, train.EVAL_SEED + 1, scale=2.0)
    assert held_out["id"] == "q21" and held_out["n_docs"] == 12  # question 20 + 1, 6 docs x 2
    assert "Person 21 was born in Town21." in held_out["context"]
    first, again = train.get_sample(cfg, None, corpus, 0), train.get_sample(cfg, None, corpus, 20)
    assert first["id"] == again["id"] == "q0" and first["n_docs"] == 6
    assert first["context"] != again["context"]  # the second epoch draws other distractors


def test_grad_clip_zero_is_no_clipping(tok_dir, smoke_run):
    """--grad-clip 0 turns clipping off (clip_grad_norm_ with a max norm of 0 would zero every
    gradient). Oracle: a max norm no gradient reaches; and a max norm of 0.1 does clip here."""
    weights = {}
    for clip in ("0", "1e9", "0.1"):
        out = fresh_out(tok_dir, f"clip-{clip}")
        run_main(["--recipe", "smoke", "--out-dir", out, "--eval-n", "0", "--rl-steps", "1", "--lr", "0.01",
                  "--grad-clip", clip, "--init-from", os.path.join(smoke_run[0], "warmstart")])
        assert read_metrics(out)[0]["grad_norm"] > 0.1  # so the 0.1 run clips
        weights[clip] = load_hf(os.path.join(out, "rl")).state_dict()
    assert all(torch.equal(weights["0"][k], weights["1e9"][k]) for k in weights["0"])
    assert not all(torch.equal(weights["0"][k], weights["0.1"][k]) for k in weights["0"])


def test_warmup_is_counted_in_rl_steps():
    result = doctest.testmod(train)  # warmup_lr's worked example, among others
    assert result.failed == 0 and result.attempted > 0
    cfg = train.parse_args(["--recipe", "paper"])  # verl: 20 warm-up RL steps, 16 updates each
    assert train.warmup_lr(cfg, 0, 0) == pytest.approx(1e-6 / 320)
    assert train.warmup_lr(cfg, 18, 15) < 1e-6 == train.warmup_lr(cfg, 19, 15) == train.warmup_lr(cfg, 400, 0)


def test_kl_reference_is_the_policy_rl_starts_from(tok_dir):
    """From random weights (no warm start, no --init-from) the reference is the random model itself:
    before the first update the KL is 0. A warm start of unknown flags lying in the out dir is not
    taken for this run's by --resume (it once was silently passed over, then trained over)."""
    out = fresh_out(tok_dir, "kl-ref")
    stale = Qwen2(config_from_preset("tiny", vocab_size=2048))  # another run's warm start, no meta.json
    save_checkpoint(stale, os.path.join(out, "warmstart"))
    args = ["--recipe", "smoke", "--sft-steps", "0", "--kl-coef", "0.001", "--eval-n", "0", "--rl-steps", "1"]
    with pytest.raises(SystemExit) as e:
        run_main(args + ["--out-dir", out, "--resume"])
    assert "has no meta.json with the flags it was trained with" in str(e.value)
    assert not os.path.exists(os.path.join(out, "ckpt"))
    out = fresh_out(tok_dir, "kl-ref-new")
    run_main(args + ["--out-dir", out])
    (row,) = read_metrics(out)
    assert row["trained_tokens"] > 0 and row["kl_ref"] == pytest.approx(0.0, abs=1e-6)


def test_resume_recovers_a_checkpoint_swap_cut_short(tok_dir, smoke_run, monkeypatch):
    common = ["--recipe", "smoke", "--eval-n", "0", "--init-from", os.path.join(smoke_run[0], "warmstart")]
    out = fresh_out(tok_dir, "swap-cut")
    run_main(common + ["--out-dir", out, "--rl-steps", "2"])
    ckpt = os.path.join(out, "ckpt")
    os.replace(ckpt, ckpt + ".old")  # what a crash between swap_in's two renames leaves
    steps_run, rl_step = [], train.rl_step
    monkeypatch.setattr(train, "rl_step", lambda *a: steps_run.append(a[6]) or rl_step(*a))  # a[6]: step
    run_main(common + ["--out-dir", out, "--rl-steps", "3", "--resume"])
    assert steps_run == [2]  # continued after step 2, not from the beginning
    assert [r["step"] for r in read_metrics(out)] == [1, 2, 3]


def test_a_start_clears_what_a_killed_save_left_and_resume_survives_a_torn_table(tok_dir, smoke_run, capsys):
    """SIGKILL mid-save skips save_checkpoint's clean-up: its staging folder stays (a whole
    checkpoint's size at the paper's geometry). The next start removes it, and only it; a torn
    eval.json is named and left out instead of crashing --resume. Also: --adam-beta2 reaches AdamW."""
    common = ["--recipe", "smoke", "--eval-n", "0", "--init-from", os.path.join(smoke_run[0], "warmstart"),
              "--adam-beta2", "0.95"]
    out = fresh_out(tok_dir, "killed-save")
    run_main(common + ["--out-dir", out, "--rl-steps", "1"])
    killed = os.path.join(out, ".tmp-ckpt-k1ll3d")  # what staging_dir had made when the kill came
    os.makedirs(os.path.join(killed, "model"))
    with open(os.path.join(killed, "trainer.pt"), "wb") as f:
        f.write(b"half a file")
    unrelated = os.path.join(out, ".tmp-notes-mine")  # not a staging folder of this run's checkpoints
    os.makedirs(unrelated)
    with open(os.path.join(out, "eval.json"), "w") as f:
        f.write('{"warm start": {"1.0": ')  # torn mid-write
    capsys.readouterr()
    run_main(common + ["--out-dir", out, "--rl-steps", "2", "--resume"])
    printed = capsys.readouterr().out
    assert not os.path.exists(killed) and os.path.isdir(unrelated)
    assert f"removed {killed}" in printed and "eval.json is unreadable" in printed
    assert [r["step"] for r in read_metrics(out)] == [1, 2]
    with open(os.path.join(out, "eval.json")) as f:
        assert json.load(f) == {}  # rewritten whole (this run evaluates nothing)
    state = torch.load(os.path.join(out, "ckpt", "trainer.pt"), weights_only=False)
    assert [tuple(g["betas"]) for g in state["optimizer"]["param_groups"]] == [(0.9, 0.95)]


def test_the_paper_recipes_use_verls_adam_beta2():
    for recipe in ("paper", "shipped"):  # verl's AdamW default, which MemAgent's scripts leave alone
        assert train.parse_args(["--recipe", recipe]).adam_beta2 == 0.999
    assert train.parse_args([]).adam_beta2 == 0.99


def test_a_data_file_is_read_in_order_whatever_dynamic_sampling_draws(monkeypatch):
    """A data file is a data loader: each draw takes the next batch of questions, so every training
    question comes up once per epoch, in order, however many draws dynamic sampling makes.
    (Earlier each step jumped over max_gen_batches batches: with 48 questions, batch 8 and 3
    draws a step, only 16 questions were ever trained on.) Oracle: the questions in file order."""
    data = [dict(question=f"q{i}", context="c", answers=["1"], task="niah_single_noise") for i in range(50)]
    cfg = train.parse_args(["--recipe", "smoke", "--batch-size", "8", "--group-size", "2", "--eval-n", "2",
                            "--dynamic-sampling", "--max-gen-batches", "3", "--overlong-buffer", "0",
                            "--device", "cpu"])
    seen, calls = [], []

    def fake_run_agent(model, tok, samples, agent, group_size=1, seed=0, **kwargs):
        seen.extend(s["question"] for s in samples)
        calls.append(seed)
        signal = len(calls) % 3 != 1  # every third draw has no reward variance: dynamic sampling draws again
        return [types.SimpleNamespace(reward=float(signal and m % 2), conversations=[])
                for s in samples for m in range(group_size)]
    monkeypatch.setattr(train, "run_agent", fake_run_agent)
    data_round, draws_per_step = 0, []
    for step in range(12):
        *_, draws = train.collect_rollouts(cfg, None, None, data, step, data_round)
        data_round += draws
        draws_per_step.append(draws)
    assert set(draws_per_step) == {1, 2}  # dynamic sampling drew again on some steps
    assert seen == [f"q{i % 48}" for i in range(len(seen))]  # file order, epoch after epoch
    assert len(seen) > 48 and len(set(calls)) == len(calls)  # and every draw has its own rollout seed


def test_an_error_inside_the_rollouts_is_not_taken_for_a_batch_without_signal(monkeypatch):
    """Dynamic sampling with no group kept is survivable (no update this step); an error while
    rolling out (a CUDA out-of-memory is a RuntimeError too) must stop the run, not be swallowed."""
    cfg = train.parse_args(["--recipe", "smoke", "--dynamic-sampling", "--device", "cpu"])

    def failing_run_agent(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
    monkeypatch.setattr(train, "run_agent", failing_run_agent)
    with pytest.raises(torch.OutOfMemoryError, match="simulated"):
        train.collect_rollouts(cfg, None, None, [dict(question="q", context="c", answers=["1"])] * 40, 0)


def test_training_sample_numbers_may_not_reach_the_held_out_ones(capsys):
    # cpu-demo: RL draws sample numbers 0 .. rl_steps x 3 draws x 8 prompts - 1; the held-out ones
    # start at 1,000,000: 41,666 x 24 = 999,984 stays below it, 41,667 x 24 = 1,000,008 does not
    assert train.parse_args(["--rl-steps", "41666"]).rl_steps == 41666
    with pytest.raises(SystemExit):
        train.parse_args(["--rl-steps", "41667"])
    assert "up to 1,000,008" in capsys.readouterr().err
    # warm start: 500,000 + (steps + 300 patience) x 8 samples: 62,200 steps reach 1,000,000 exactly
    assert train.parse_args(["--sft-steps", "62200"]).sft_steps == 62200
    with pytest.raises(SystemExit):
        train.parse_args(["--sft-steps", "62201"])
    assert "where the held-out evaluation samples start" in capsys.readouterr().err
    # the baseline runs no RL, so its --rl-steps does not count
    assert train.parse_args(["--baseline", "--rl-steps", "41667"]).baseline


def test_rl_batch_checks_do_not_block_runs_without_rl():
    for args in (["--baseline"], ["--rl-steps", "0"]):
        cfg = train.parse_args(["--recipe", "smoke", "--mini-batches", "4", "--device", "cpu"] + args)
        train.setup_distributed(cfg)  # no SystemExit: these runs never split a batch into mini-batches
    with pytest.raises(SystemExit, match="--mini-batches 4 is more than the 2 prompt groups"):
        train.setup_distributed(train.parse_args(["--recipe", "smoke", "--mini-batches", "4", "--device", "cpu"]))


def test_impossible_batches_and_tiny_data_files_stop_before_training(tok_dir, tmp_path):
    out = fresh_out(tok_dir, "bad-batches")
    with pytest.raises(SystemExit, match="--mini-batches 4 is more than the 2 prompt groups"):
        run_main(["--recipe", "smoke", "--out-dir", out, "--mini-batches", "4"])
    path = tmp_path / "tiny.jsonl"
    tasks.save_jsonl([dict(question="q", context="c", answers=["1"], task="niah_single_noise")] * 3, path)
    with pytest.raises(SystemExit, match="has 3 samples and the last --eval-n 32 are held out"):
        run_main(["--recipe", "smoke", "--out-dir", out, "--data", str(path), "--eval-n", "32"])


def test_resume_does_not_redo_the_warm_start(tok_dir, monkeypatch):
    out = fresh_out(tok_dir, "resume-warm")
    common = ["--recipe", "smoke", "--out-dir", out, "--eval-n", "0"]
    run_main(common + ["--rl-steps", "1"])
    # as if stopped mid-run: with --eval-n 0 no eval.json is written before the end
    os.remove(os.path.join(out, "eval.json"))

    def again(*args):
        raise AssertionError("a resumed run re-ran the warm start")

    monkeypatch.setattr(train, "warm_start", again)
    run_main(common + ["--rl-steps", "2", "--resume"])
    assert [r["step"] for r in read_metrics(out)] == [1, 2]


def test_resume_from_a_warm_start_alone_starts_rl_from_it(tok_dir, monkeypatch, capsys):
    """A run stopped before its first RL checkpoint left a whole warmstart/ and no ckpt/trainer.pt.
    --resume once trained a new warm start over it, even under changed flags. Now: changed flags
    are refused and the folder is untouched; the same flags start RL from the saved weights, and
    the RL steps equal those of a run that went on without stopping (the oracle)."""
    common = ["--recipe", "smoke", "--eval-n", "0", "--sft-steps", "6"]
    whole = fresh_out(tok_dir, "warm-whole")
    run_main(common + ["--out-dir", whole, "--rl-steps", "2"])
    stopped = fresh_out(tok_dir, "warm-only")
    run_main(common + ["--out-dir", stopped, "--rl-steps", "0"])  # (as if stopped before RL step 1's save)
    weights = open(os.path.join(stopped, "warmstart", "model.safetensors"), "rb").read()
    with pytest.raises(SystemExit) as e:
        run_main(common[:-2] + ["--sft-steps", "7", "--out-dir", stopped, "--rl-steps", "2", "--resume"])
    assert f"continues the run in {os.path.join(stopped, 'warmstart')} as it began" in str(e.value)
    assert "--sft-steps 6 (this run: 7)" in str(e.value)
    assert open(os.path.join(stopped, "warmstart", "model.safetensors"), "rb").read() == weights

    with pytest.raises(SystemExit) as e:  # another run's way in (--init-from) is checked against it too
        run_main(common + ["--out-dir", stopped, "--rl-steps", "2", "--resume",
                           "--init-from", os.path.join(whole, "warmstart")])
    assert "is incompatible: it was trained with init_from=''" in str(e.value)

    def again(*args):
        raise AssertionError("a resumed run re-ran the warm start")
    monkeypatch.setattr(train, "warm_start", again)
    capsys.readouterr()
    run_main(common + ["--out-dir", stopped + "/", "--rl-steps", "2", "--resume"])
    assert "starting RL from the warm start in" in capsys.readouterr().out
    assert open(os.path.join(stopped, "warmstart", "model.safetensors"), "rb").read() == weights
    drop = lambda rows: [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in rows]  # noqa: E731
    assert drop(read_metrics(stopped)) == drop(read_metrics(whole))


def test_resume_compares_paths_as_folders_not_as_text(tmp_path):
    """--init-from run/ws, run/ws/ and its absolute path name one folder: --resume takes either."""
    (tmp_path / "ws").mkdir()
    saved = dataclasses.asdict(train.parse_args(["--init-from", str(tmp_path / "ws")]))
    for same in (str(tmp_path / "ws") + "/", os.path.relpath(tmp_path / "ws")):
        train.check_same_flags(train.parse_args(["--init-from", same]), saved, "ckpt", "ckpt/model")
    (tmp_path / "other").mkdir()
    with pytest.raises(SystemExit, match="is incompatible: it was trained with init_from="):
        train.check_same_flags(train.parse_args(["--init-from", str(tmp_path / "other")]), saved, "ckpt", "m")
    # --task and a JSONL file's --train-length: unused with --data (and refused now), so not compared
    data = str(tmp_path / "d.jsonl")
    open(data, "w").close()
    older = dict(dataclasses.asdict(train.parse_args(["--data", data])), task="vt", train_length=500)
    train.check_same_flags(train.parse_args(["--data", data]), older, "ckpt", "m")
    assert train.parse_args(["--curriculum-notes", ""]).curriculum_notes == ""  # (its default: = --notes)


def test_ctrl_c_is_one_line_and_resume_continues(tok_dir):
    """SIGINT once the first RL checkpoint is written: exit 130 with one line (not a traceback out of
    the forward pass), and the checkpoint it leaves resumes."""
    import signal
    import time
    out = fresh_out(tok_dir, "ctrl-c")
    args = [sys.executable, "train.py", "--recipe", "smoke", "--device", "cpu", "--out-dir", out, "--eval-n", "0"]
    run = subprocess.Popen(args + ["--rl-steps", "500"], cwd=ROOT, stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while not os.path.exists(os.path.join(out, "ckpt", "trainer.pt")) and time.time() < deadline:
        time.sleep(0.2)
    assert os.path.exists(os.path.join(out, "ckpt", "trainer.pt")), "no RL checkpoint within 240 s"
    run.send_signal(signal.SIGINT)
    err = run.communicate(timeout=120)[1]
    assert run.returncode == 130 and "Traceback" not in err
    assert err.strip().startswith("train.py: interrupted. Checkpoints are swapped in whole, so none is half-written")
    # (a stop between the swap's two renames leaves ckpt.old, which --resume restores)
    saved = [p for p in (os.path.join(out, "ckpt", "trainer.pt"), os.path.join(out, "ckpt.old", "trainer.pt"))
             if os.path.exists(p)]
    step = torch.load(saved[0], weights_only=False)["step"]
    done = subprocess.run(args + ["--rl-steps", str(step + 1), "--resume"], cwd=ROOT, capture_output=True,
                          text=True, timeout=240)
    assert done.returncode == 0 and f"resumed from {os.path.join(out, 'ckpt')} at step {step}" in done.stdout
    assert [r["step"] for r in read_metrics(out)] == list(range(1, step + 2))


def test_resume_refuses_a_baseline_runs_folder(tok_dir, smoke_run):
    out = fresh_out(tok_dir, "resume-baseline")
    shutil.copytree(os.path.join(smoke_run[0], "warmstart"), os.path.join(out, "baseline"))
    with pytest.raises(SystemExit) as e:  # (an agent's ckpt/, rl/ and eval.json would land beside it)
        run_main(["--recipe", "smoke", "--out-dir", out, "--resume"])
    assert "holds a --baseline run (baseline/), which has no RL to continue" in str(e.value)


@pytest.mark.parametrize("poison_after", [0, 1])
def test_nan_loss_stops_and_keeps_the_last_checkpoint(tok_dir, smoke_run, monkeypatch, poison_after):
    out = fresh_out(tok_dir, f"nan{poison_after}")
    real = dapo.policy_loss
    state_file = os.path.join(out, "ckpt", "trainer.pt")

    def poisoned(*args, **kwargs):  # the loss turns NaN once step `poison_after` has been checkpointed
        loss, metrics = real(*args, **kwargs)
        saved = torch.load(state_file, weights_only=False)["step"] if os.path.exists(state_file) else 0
        return (loss * float("nan") if saved >= poison_after else loss), metrics

    monkeypatch.setattr(dapo, "policy_loss", poisoned)
    with pytest.raises(SystemExit) as e:
        run_main(["--recipe", "smoke", "--out-dir", out, "--rl-steps", "3", "--eval-n", "0",
                  "--init-from", os.path.join(smoke_run[0], "warmstart")])
    assert f"non-finite loss (nan) during RL step {poison_after + 1}" in str(e.value)
    assert len(read_metrics(out)) == poison_after
    if poison_after == 0:  # the message must not promise a checkpoint that is not there
        assert not os.path.exists(state_file) and "No RL checkpoint was written yet" in str(e.value)
    else:
        assert torch.load(state_file, weights_only=False)["step"] == 1
        assert "checkpoint, " + os.path.join(out, "ckpt") + " at RL step 1, is kept" in str(e.value)


def test_ddp_gloo_two_processes(tok_dir, smoke_run):
    out = fresh_out(tok_dir, "ddp")
    port = free_port()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={port}",
           "train.py", "--recipe", "smoke", "--device", "cpu", "--out-dir", out, "--eval-scales", "1",
           "--init-from", os.path.join(smoke_run[0], "warmstart")]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=240, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    rows = read_metrics(out)
    assert [r["step"] for r in rows] == [1, 2] and rows[0]["groups"] == 2
    with open(os.path.join(out, "eval.json")) as f:
        assert set(json.load(f)) == {"--init-from", "RL"}  # (the starting row named for what it is)



DDP_WORKER = """
import sys
import torch
sys.path[:0] = [{root!r}, {tests!r}]
import train
from model import Qwen2, config_from_preset
from test_train import scripted_groups

cfg = train.parse_args({flags!r})
train.setup_distributed(cfg)
torch.manual_seed(0)
model = Qwen2(config_from_preset("tiny", vocab_size=48))
groups = scripted_groups({rewards!r}, 48)[train.RANK::train.WORLD]  # this rank's share of the prompts
first = [r for g in groups for r in g]
train.collect_rollouts = lambda *a, **kw: (groups, (len(groups), len(groups)), first, 0, 1)
train.rl_step(cfg, model, None, torch.optim.SGD(model.parameters(), lr=0.05), None, None, step=0)
torch.save(model.state_dict(), {out!r}.format(train.RANK))
"""


def test_ddp_update_equals_the_one_process_update(tmp_path, monkeypatch):
    """Two gloo ranks holding two prompt groups each take the same step as one process holding all
    four (token-mean over the GLOBAL token count, gradients summed): oracle, rl_step in this
    process on the whole batch. Both ranks end with the same weights."""
    rewards = [[1.0, 0.0], [0.0, 0.5], [1.0, 1.0], [0.0, 1.0]]
    flags = ["--recipe", "smoke", "--device", "cpu", "--batch-size", "4", "--mini-batches", "1",
             "--micro-batch", "3", "--lr", "0.05", "--warmup-steps", "0", "--temperature", "1.0"]
    script = tmp_path / "worker.py"
    out = str(tmp_path / "rank{}.pt")
    script.write_text(DDP_WORKER.format(root=ROOT, tests=os.path.join(ROOT, "tests"), flags=flags,
                                        rewards=rewards, out=out))
    port = free_port()
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                           f"--master_port={port}", str(script)], cwd=str(tmp_path), capture_output=True,
                          text=True, timeout=240, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    ranks = [torch.load(out.format(r)) for r in (0, 1)]

    torch.manual_seed(0)
    model = Qwen2(config_from_preset("tiny", vocab_size=48))
    before = copy.deepcopy(model.state_dict())
    groups = scripted_groups(rewards, 48)
    first = [r for g in groups for r in g]
    monkeypatch.setattr(train, "collect_rollouts", lambda *a, **kw: (groups, (4, 4), first, 0, 1))
    train.RANK, train.WORLD = 0, 1
    train.rl_step(train.parse_args(flags), model, None, torch.optim.SGD(model.parameters(), lr=0.05), None, None, 0)
    assert max(float((p - before[name]).abs().max()) for name, p in model.state_dict().items()) > 1e-3
    for name, p in model.state_dict().items():
        torch.testing.assert_close(ranks[0][name], p, atol=1e-6, rtol=1e-5, msg=name)
        torch.testing.assert_close(ranks[1][name], ranks[0][name], atol=0, rtol=0, msg=name)


def test_ddp_a_nan_on_one_rank_stops_every_rank(tmp_path):
    """Rank 1's loss turns NaN. Had it left alone, rank 0 would wait in the all-reduce for it (for
    hours outside torchrun, which would otherwise kill it): both must stop with the message. The
    two ranks are started by hand, so nothing but train.py stops them."""
    poison = ("import dapo\nreal = dapo.policy_loss\n"
              "def poisoned(*a, **k):\n    loss, m = real(*a, **k)\n"
              "    return (loss * float('nan') if train.RANK == 1 else loss), m\n"
              "dapo.policy_loss = poisoned\ntrain.rl_step(")
    flags = ["--recipe", "smoke", "--device", "cpu", "--batch-size", "4", "--mini-batches", "1",
             "--out-dir", str(tmp_path / "out")]
    script = tmp_path / "worker.py"
    script.write_text(DDP_WORKER.format(root=ROOT, tests=os.path.join(ROOT, "tests"), flags=flags,
                                        rewards=[[1.0, 0.0]] * 4, out=str(tmp_path / "rank{}.pt"))
                      .replace("train.rl_step(", poison, 1))
    port = free_port()
    procs = [subprocess.Popen([sys.executable, str(script)], cwd=str(tmp_path), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True,
                              env=dict(os.environ, OMP_NUM_THREADS="1", RANK=str(r), LOCAL_RANK=str(r),
                                       WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)))
             for r in (0, 1)]
    try:
        errs = [p.communicate(timeout=120)[1] for p in procs]
    finally:
        for p in procs:
            p.kill()
    for p, err in zip(procs, errs):
        assert p.returncode == 1 and "non-finite loss (nan) during RL step 1 (gradient norm)" in err, err[-2000:]
    assert not os.path.exists(tmp_path / "rank0.pt")  # no rank went on to the end of its step


# -----------------------------------------------------------------------------
# the full-attention baseline (--baseline)


def test_baseline_starts_from_the_agents_warm_start(tok_dir):
    """--baseline runs the agent's warm start first: bit-identical to an agent run's, saved as an
    agent checkpoint; with 0 baseline steps the baseline checkpoint is exactly that warm start."""
    base_out, agent_out = fresh_out(tok_dir, "baseline-warm"), fresh_out(tok_dir, "agent-warm")
    run_main(["--recipe", "smoke", "--baseline", "--out-dir", base_out, "--sft-steps", "3",
              "--baseline-steps", "0", "--eval-n", "0"])
    run_main(["--recipe", "smoke", "--out-dir", agent_out, "--sft-steps", "3", "--rl-steps", "0",
              "--eval-n", "0"])
    agent_warm = load_hf(os.path.join(agent_out, "warmstart")).state_dict()
    warm, base = (load_hf(os.path.join(base_out, d)).state_dict() for d in ("warmstart", "baseline"))
    for other in (warm, base):
        assert other.keys() == agent_warm.keys() and all(torch.equal(agent_warm[k], other[k]) for k in other)
    with open(os.path.join(base_out, "warmstart", "meta.json")) as f:
        assert json.load(f)["config"]["baseline"] is False  # infer.py loads it as an agent


def test_baseline_steps_split_between_curriculum_and_whole_documents(monkeypatch):
    """train_baseline runs --baseline-steps supervised steps, the first half on the copy
    curriculum's short documents whatever --short-chunk-steps says (that is the warm start's)."""
    seen = {}

    def fake_supervised(cfg, model, conversations_of, label):
        seen.update(steps=cfg.sft_steps,
                    curriculum=[train.in_copy_curriculum(cfg, None, s) for s in range(cfg.sft_steps)])

    monkeypatch.setattr(train, "supervised", fake_supervised)
    monkeypatch.setattr(train, "baseline_max_scale", lambda cfg, model, tok: 4.0)
    cfg = train.parse_args(["--baseline", "--baseline-steps", "10", "--short-chunk-steps", "300"])
    model = types.SimpleNamespace(config=types.SimpleNamespace(max_position_embeddings=2048))
    train.train_baseline(cfg, model, None, None)
    assert seen == dict(steps=10, curriculum=[True] * 5 + [False] * 5)


def test_baseline_trains_and_stops_at_its_window(tok_dir, smoke_run):
    out = fresh_out(tok_dir, "baseline")
    table = run_main(["--recipe", "smoke", "--baseline", "--out-dir", out, "--baseline-steps", "3",
                      "--init-from", os.path.join(smoke_run[0], "warmstart"), "--eval-scales", "1,16"])
    row = table["full attention"]
    assert row["16x"] is None and 0.0 <= row["1x"] <= 1.0  # 16 x 256 tokens cannot fit 2048 positions
    with open(os.path.join(out, "baseline", "meta.json")) as f:
        assert json.load(f)["full_attention"] is True
    assert not os.path.exists(os.path.join(out, "rl"))  # no RL for the baseline
    assert not os.path.exists(os.path.join(out, "warmstart"))  # --init-from: no warm start of its own


def test_baseline_examples_fill_the_window(tok_dir):
    """Training documents of the baseline reach the longest length that still fits the window."""
    tok = get_tokenizer(os.path.join(tok_dir, "seed", "tokenizer"))
    cfg = train.parse_args(["--recipe", "smoke", "--baseline", "--prompts", "compact"])
    model = Qwen2(config_from_preset("tiny", vocab_size=tok.vocab_size))
    top = train.baseline_max_scale(cfg, model, tok)
    sample = train.get_sample(cfg, tok, None, 0, scale=top)
    prompt = train.direct_turn_ids(tok, tok.encode(sample["question"]), tok.encode(sample["context"]), True)
    assert 0.8 * 2048 < len(prompt) + cfg.answer_tokens <= 2048


def test_baseline_follows_the_agents_copy_curriculum_then_fills_the_window(tok_dir):
    """The baseline's documents are shrunk like the agent's warm start for the first
    short_chunk_steps steps (256 x 16 / 64 = 64 tokens), then span 1x up to the window."""
    tok = get_tokenizer(os.path.join(tok_dir, "seed", "tokenizer"))
    cfg = train.parse_args(["--recipe", "smoke", "--baseline", "--prompts", "compact",
                            "--short-chunk", "16", "--short-chunk-steps", "5"])
    rng = random.Random(0)

    def doc_tokens(step, index):
        [(prompt, reply)] = train.baseline_conversations(cfg, tok, None, index, rng, step, top=4.0)
        assert tok.decode(reply).startswith("\\boxed{")
        return len(prompt)

    template = len(train.direct_turn_ids(tok, [], [], True))
    early = [doc_tokens(4, i) - template for i in range(8)]
    late = [doc_tokens(5, i) - template for i in range(8)]
    assert all(50 < n < 100 for n in early)  # 64 tokens of document + a ~10-token question
    assert all(256 <= n <= 4 * 256 * 1.05 + 40 for n in late) and max(late) > 2 * 256


def test_short_curriculum_samples_never_run_out_of_seeds(tok_dir):
    """At 128 tokens about a third of the seeds miss the 2% length tolerance; index 506686 (a
    warm-start index of a 64-sample batch) missed it on 10 seeds in a row and stopped a baseline run."""
    tok = get_tokenizer(os.path.join(tok_dir, "seed", "tokenizer"))
    cfg = train.parse_args([])
    sample = train.get_sample(cfg, tok, None, 506686, scale=16 / 48)
    assert abs(sample["n_tokens"] - 128) <= 0.02 * 128
    assert len(tok.encode(sample["context"])) == sample["n_tokens"]
