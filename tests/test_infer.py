"""infer.py: the trace of a run, and one clear error line with a non-zero exit for each bad input."""

import json
import os
import re
import shutil

import pytest
import torch

import infer
from memagent.reward import compute_reward
from memagent.tasks import make_sample_retry
from memagent.tokenizer import get_tokenizer
from model import Qwen2, config_from_preset, load_checkpoint, save_checkpoint


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    root = tmp_path_factory.mktemp("infer")
    tok = get_tokenizer(str(root / "tok"))
    torch.manual_seed(0)
    model = Qwen2(config_from_preset("tiny", vocab_size=tok.vocab_size))
    geometry = {"chunk_tokens": 64, "memory_tokens": 8, "answer_tokens": 6, "prompts": "compact"}
    return save_checkpoint(model, str(root / "ckpt"), tokenizer_file=tok.path, meta={"config": geometry})


@pytest.fixture(scope="module")
def baseline(ckpt, tmp_path_factory):
    """The same weights marked as a full-attention checkpoint (what train.py --baseline writes)."""
    model, meta = load_checkpoint(ckpt)
    config = dict(meta["config"], baseline=True)
    return save_checkpoint(model, str(tmp_path_factory.mktemp("infer") / "baseline"),
                           tokenizer_file=meta["tokenizer_file"], meta={"config": config, "full_attention": True})


def run(argv, capsys):
    code = 0
    try:
        infer.main(argv)
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def test_file_run_prints_memory_after_every_chunk(ckpt, tmp_path, capsys):
    doc = tmp_path / "doc.txt"
    doc.write_text("Ann founded Zentek in Belhaven. " * 30)  # ~200 tokens: several 64-token chunks
    code, out, _ = run(["--ckpt", ckpt, "--file", str(doc), "--question", "Who founded Zentek?"], capsys)
    assert code == 0
    n = out.count("--- memory after chunk")
    tok = load_checkpoint(ckpt)[1]["tokenizer_file"]
    expected = -(-len(get_tokenizer(os.path.dirname(tok)).encode(doc.read_text())) // 64)  # chunks of 64
    assert n == expected >= 3 and f"memory after chunk {n}/{n} ---" in out and "--- answer ---" in out


def test_the_trace_names_the_needles_each_chunk_brought(ckpt, capsys):
    """A generated needle document: the question comes first, and each turn's header names the needles
    lying whole in its chunk, the asked one marked. Oracle: chunk k covers the characters between the
    decoded lengths of its first k x 64 and (k + 1) x 64 ids, and a needle is whole in the chunk that
    covers its character span; one that straddles a boundary is named nowhere."""
    code, out, _ = run(["--ckpt", ckpt, "--task", "niah_number_among_prices", "--length", "600", "--seed", "1000000"],
                       capsys)
    assert code == 0 and out.startswith("question: What is the magic number?\n")
    tok = get_tokenizer(os.path.dirname(load_checkpoint(ckpt)[1]["tokenizer_file"]))
    sample = make_sample_retry("niah_number_among_prices", 600, 1000000, tok)
    ids = tok.encode(sample["context"])
    edges = [len(tok.decode(ids[:k])) for k in range(0, len(ids), 64)] + [len(sample["context"])]
    expected = {}
    for n in sample["needles"]:
        for k in range(len(edges) - 1):
            if edges[k] <= n["start"] and n["end"] <= edges[k + 1]:
                asked = "asked" if n["value"] in sample["answers"] else "not asked"
                expected.setdefault(k + 1, []).append(f'"{sample["context"][n["start"]:n["end"]].strip()}" ({asked})')
    headers = re.findall(r"--- memory after chunk (\d+)/\d+(?: \(the chunk brought (.*)\))? ---", out)
    assert len(headers) == len(edges) - 1  # every chunk has a header
    assert 0 < sum(map(len, expected.values())) < len(sample["needles"])  # this document has one cut needle
    assert {int(k): text.split(", ") for k, text in headers if text} == expected


def test_json_output_of_a_generated_sample(ckpt, capsys):
    code, out, _ = run(["--ckpt", ckpt, "--task", "niah_single_noise", "--length", "300", "--json"], capsys)
    result = json.loads(out)
    assert code == 0 and len(result["memories"]) == result["chunks"]
    assert result["reward"] == compute_reward("niah_single_noise", result["answer"], result["references"])
    boxed = re.search(r"\\boxed\{([^{}]*)\}", result["answer"])  # exact match by hand: the digits only
    assert result["em"] == float(bool(boxed) and boxed[1].strip() == result["references"][0])


def test_eval_table(ckpt, capsys):
    code, out, _ = run(["--ckpt", ckpt, "--task", "niah_single_noise", "--eval", "--lengths", "200", "400",
                        "--n", "2", "--json"], capsys)
    rows = json.loads(out)
    assert code == 0 and [r["length"] for r in rows] == [200, 400] and all(r["n"] == 2 for r in rows)


def test_eval_counts_the_final_memories_that_hold_the_answer(ckpt, capsys, monkeypatch):
    """A scripted agent whose final memory holds the answer in the first of every two documents
    (normalized as the reward: " $<answer>.") and a wrong value in the second: 50% at each length,
    whatever the (untrained) model would have written; the printed table carries the column."""
    from rollout import Rollout

    def scripted_run_agent(model, tokenizer, samples, cfg, seed):
        return [Rollout(sample=i, member=0, conversations=[], answer="", reward=0.0,
                        memories=[f" ${s['answers'][0]}." if i % 2 == 0 else " none."])
                for i, s in enumerate(samples)]

    monkeypatch.setattr(infer, "run_agent", scripted_run_agent)
    code, out, _ = run(["--ckpt", ckpt, "--task", "niah_single_noise", "--eval", "--lengths", "200", "400",
                        "--n", "4", "--json"], capsys)
    assert code == 0 and [r["memory_holds_answer"] for r in json.loads(out)] == [50.0, 50.0]
    code, out, _ = run(["--ckpt", ckpt, "--task", "niah_single_noise", "--eval", "--lengths", "200",
                        "--n", "4"], capsys)
    assert code == 0 and "memory holds answer %" in out and re.search(r"\b50\.0\b", out)


def test_eval_reports_the_ruler_metric_and_how_much_of_a_multi_answer_memory_holds(ckpt, capsys, monkeypatch):
    """A scripted agent: on niah_single_noise it boxes the answer inside a sentence in every other
    document, which the reward (exact match) scores 0 and RULER's string_match_all 1: accuracy 0%,
    match_all 50%. On vt (several references) its final memory holds 2 of them: 50% held, not 100%."""
    from rollout import Rollout

    def scripted_run_agent(model, tokenizer, samples, cfg, seed):
        rollouts = []
        for i, s in enumerate(samples):
            answer = rf"\boxed{{the value is {s['answers'][0]}}}" if i % 2 == 0 else r"\boxed{nothing}"
            rollouts.append(Rollout(sample=i, member=0, conversations=[], answer=answer,
                                    reward=compute_reward(s["task"], answer, s["answers"]),
                                    memories=[" " + " ".join(s["answers"][:2]) + "."]))
        return rollouts

    monkeypatch.setattr(infer, "run_agent", scripted_run_agent)
    code, out, _ = run(["--ckpt", ckpt, "--task", "niah_single_noise", "--eval", "--lengths", "300",
                        "--n", "4", "--json"], capsys)
    (row,) = json.loads(out)
    assert code == 0 and (row["accuracy"], row["metric"], row["metric_score"]) == (0.0, "match_all", 50.0)
    code, out, _ = run(["--ckpt", ckpt, "--task", "vt", "--eval", "--lengths", "600", "--n", "2", "--json"], capsys)
    (row,) = json.loads(out)
    n_refs = len(make_sample_retry("vt", 600, 1_000_000, infer.load_agent(ckpt, torch.device("cpu"),
                                                                          torch.float32)[1])["answers"])
    assert code == 0 and row["memory_holds_answer"] == pytest.approx(100 * 2 / n_refs)


def test_eval_window_too_small_is_one_line(ckpt, capsys):
    code, _, err = run(["--ckpt", ckpt, "--task", "niah_single_noise", "--eval", "--lengths", "300", "--n", "1",
                        "--chunk-tokens", "5000"], capsys)
    assert code == 2 and err.startswith("infer.py: error: window too small") and "Traceback" not in err


def test_eval_beside_the_full_attention_baseline(ckpt, baseline, capsys):
    code, out, _ = run(["--ckpt", ckpt, "--task", "niah_single_noise", "--eval", "--lengths", "300", "3k",
                        "--n", "2", "--baseline", baseline, "--json"], capsys)
    rows = json.loads(out)
    assert code == 0 and rows[0]["baseline_status"] == "ok" and rows[0]["baseline_accuracy"] is not None
    assert rows[1]["baseline_status"] == "beyond 2048 positions" and rows[1]["baseline_accuracy"] is None
    assert rows[0]["kv_mb"] == rows[1]["kv_mb"]  # the agent's window does not grow with the document
    code, out, _ = run(["--ckpt", ckpt, "--task", "niah_single_noise", "--eval", "--lengths", "300", "3k",
                        "--n", "1", "--baseline", baseline], capsys)
    assert "| 3000 | 1 |" in out and "beyond 2048 positions" in out


def test_the_baseline_samples_as_the_agent_does(ckpt, baseline, capsys, monkeypatch):
    """--temperature / --top-p / --top-k reach the full-attention baseline too (it decoded greedily
    beside a sampling agent before)."""
    seen, real = [], infer.run_full_attention
    monkeypatch.setattr(infer, "run_full_attention", lambda *a, **k: seen.append(k) or real(*a, **k))
    code, _, _ = run(["--ckpt", ckpt, "--task", "niah_single_noise", "--eval", "--lengths", "300", "--n", "1",
                      "--baseline", baseline, "--temperature", "0.7", "--top-p", "0.9", "--top-k", "5", "--json"],
                     capsys)
    assert code == 0 and [(k["temperature"], k["top_p"], k["top_k"]) for k in seen] == [(0.7, 0.9, 5)]


def test_baseline_positions_let_full_attention_read_past_its_window(ckpt, baseline, capsys):
    """The tiny checkpoint has 2048 positions: a 3k document is beyond them unless
    --baseline-positions raises the limit, and then its row says the positions were extrapolated."""
    code, out, _ = run(["--ckpt", ckpt, "--task", "niah_single_noise", "--eval", "--lengths", "300", "3k",
                        "--n", "1", "--baseline", baseline, "--baseline-positions", "4096", "--json"], capsys)
    rows = json.loads(out)
    assert code == 0 and [r["baseline_status"] for r in rows] == ["ok", "ok"]
    assert [r["baseline_extrapolated"] for r in rows] == [False, True]
    assert rows[1]["baseline_kv_mb"] > 5 * rows[0]["baseline_kv_mb"]  # its cache grows with the document
    code, out, _ = run(["--ckpt", ckpt, "--task", "niah_single_noise", "--eval", "--lengths", "3k",
                        "--n", "1", "--baseline", baseline, "--baseline-positions", "4096"], capsys)
    assert "(positions extrapolated)" in out


@pytest.mark.parametrize("make,message", [
    (lambda d: ["--file", str(d / "missing.txt"), "--question", "q"], "no such file"),
    (lambda d: ["--file", str(d.joinpath("bin.txt")), "--question", "q"], "is not UTF-8"),
    (lambda d: ["--file", str(d.joinpath("empty.txt")), "--question", "q"], "is empty"),
    (lambda d: ["--file", str(d.joinpath("ok.txt")), "--question", "why " * 3000], "window too small"),
    (lambda d: ["--task", "vt", "--length", "12q"], "cannot read length '12q'"),
    (lambda d: ["--task", "vt", "--eval", "--lengths", "300", "0"], "length '0' must be a positive"),
    (lambda d: ["--file", str(d / "ok.txt"), "--question", "q", "--length", "2k"], "a --file is read whole"),
    (lambda d: ["--task", "vt", "--device", "gpu"], "--device: unknown device 'gpu'"),
    (lambda d: ["--task", "nope"], "unknown task 'nope'"),
    (lambda d: ["--file", str(d.joinpath("ok.txt"))], "--file needs --question"),
    (lambda d: ["--file", str(d.joinpath("ok.txt")), "--question", "  "], "--file needs --question (a non-blank one)"),
    (lambda d: ["--file", str(d.joinpath("nul.txt")), "--question", "q"], "holds NUL bytes (first at character 3)"),
    (lambda d: ["--task", "vt", "--length", ""], "cannot read length ''"),
    (lambda d: ["--task", "vt", "--baseline", "x"], "--baseline goes with --eval"),
    (lambda d: ["--task", "vt", "--eval", "--baseline-positions", "4096"], "--baseline-positions needs --baseline"),
    (lambda d: ["--task", "vt", "--question", "q"], "--question goes with --file"),
    (lambda d: ["--task", "vt", "--eval", "--file", str(d / "ok.txt"), "--question", "q"], "run --file without --eval"),
    (lambda d: ["--task", "vt", "--eval", "--length", "2k"], "--eval reads --lengths"),
    (lambda d: ["--task", "vt", "--eval", "--n", "0"], "--n and --batch must be >= 1"),
    (lambda d: ["--task", "vt", "--n", "4", "--lengths", "1k"], "--lengths, --n: only with --eval"),
    (lambda d: ["--task", "vt", "--eval", "--batch", "0"], "--n and --batch must be >= 1"),
    (lambda d: ["--file", str(d / "ok.txt"), "--question", "q", "--chunk-tokens", "0"], "--chunk-tokens must be an integer >= 1"),
    (lambda d: ["--file", str(d / "ok.txt"), "--question", "q", "--chunk-tokens", "-5"], "--chunk-tokens must be an integer >= 1"),
    (lambda d: ["--task", "vt", "--temperature", "-1"], "--temperature must be 0 (greedy) or a finite number >= 1e-06"),
    (lambda d: ["--task", "vt", "--temperature", "inf"], "infinity is uniform noise"),
    (lambda d: ["--task", "vt", "--device", "meta"], "--device: meta: device type 'meta' is not supported"),
    (lambda d: ["--task", "vt", "--seed", "-5"], "--seed must be >= 0"),
    (lambda d: ["--task", "vt", "--temperature", "1", "--top-p", "0"], "--top-p must be in (0, 1]"),
    (lambda d: ["--task", "vt", "--top-k", "-2"], "--top-k must be an integer >= 0"),
])
def test_bad_input_is_one_clear_line(ckpt, tmp_path, capsys, make, message):
    (tmp_path / "bin.txt").write_bytes(b"\xff\xfe\x00abc")
    (tmp_path / "empty.txt").write_text("  \n")
    (tmp_path / "ok.txt").write_text("some text")
    (tmp_path / "nul.txt").write_bytes(b"abc\x00\x00")
    code, _, err = run(["--ckpt", ckpt] + make(tmp_path), capsys)
    assert code == 2 and message in err
    assert err.startswith("infer.py: error:") and "Traceback" not in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without CUDA")
def test_cuda_without_cuda_is_one_line(ckpt, capsys):
    code, _, err = run(["--ckpt", ckpt, "--task", "vt", "--device", "cuda"], capsys)
    assert code == 2 and "this torch has no CUDA device" in err


def test_cuda_graph_off_cuda_is_one_line(ckpt, capsys):
    code, _, err = run(["--ckpt", ckpt, "--task", "vt", "--device", "cpu", "--cuda-graph"], capsys)
    assert code == 2 and "--cuda-graph needs a CUDA device" in err and "Traceback" not in err


def test_an_agent_checkpoint_is_not_a_baseline(ckpt, capsys):
    code, _, err = run(["--ckpt", ckpt, "--task", "vt", "--eval", "--lengths", "300", "--baseline", ckpt], capsys)
    assert code == 2 and "is a memory agent's checkpoint, not a full-attention one" in err


def test_broken_checkpoint_files_are_named(ckpt, tmp_path, capsys):
    empty_config = tmp_path / "empty-config"
    empty_config.mkdir()
    (empty_config / "config.json").write_text("{}")
    code, _, err = run(["--ckpt", str(empty_config), "--task", "vt"], capsys)
    assert code == 2 and "config.json lacks vocab_size, hidden_size" in err
    truncated = shutil.copytree(ckpt, tmp_path / "truncated")
    (truncated / "model.safetensors").write_bytes(b"")
    code, _, err = run(["--ckpt", str(truncated), "--task", "vt"], capsys)
    assert code == 2 and "cannot read the weights" in err and "model.safetensors" in err


def test_a_baseline_checkpoint_is_not_an_agent(ckpt, tmp_path, capsys):
    tok = get_tokenizer(str(tmp_path / "tok"))
    model = Qwen2(config_from_preset("tiny", vocab_size=tok.vocab_size))
    base = save_checkpoint(model, str(tmp_path / "base"), tokenizer_file=tok.path,
                           meta={"config": {"baseline": True}, "full_attention": True})
    code, _, err = run(["--ckpt", base, "--task", "vt", "--length", "300"], capsys)
    assert code == 2 and "is a full-attention baseline" in err


def test_checkpoint_errors(ckpt, tmp_path, capsys):
    code, _, err = run(["--ckpt", str(tmp_path / "none"), "--task", "vt"], capsys)
    assert code == 2 and "cannot load checkpoint" in err
    # a tokenizer with more ids than the model's vocabulary does not belong to it
    tok = get_tokenizer(str(tmp_path / "big"), vocab_size=3000)
    model = Qwen2(config_from_preset("tiny", vocab_size=2048))
    bad = save_checkpoint(model, str(tmp_path / "bad"), tokenizer_file=tok.path)
    code, _, err = run(["--ckpt", bad, "--task", "vt"], capsys)
    assert code == 2 and "do not belong together" in err


def test_a_training_runs_folder_names_its_checkpoints(ckpt, tmp_path, capsys):
    run_dir = tmp_path / "run"
    shutil.copytree(ckpt, run_dir / "rl")
    code, _, err = run(["--ckpt", str(run_dir), "--task", "vt"], capsys)
    assert code == 2 and f"it is a training run's folder: pass one of its checkpoints, {run_dir / 'rl'}" in err
    shutil.copytree(ckpt, run_dir / "ckpt" / "model")  # the resume folder: its weights are in model/
    code, _, err = run(["--ckpt", str(run_dir / "ckpt"), "--task", "vt"], capsys)
    assert code == 2 and f"pass one of its checkpoints, {run_dir / 'ckpt' / 'model'}" in err


def test_a_malformed_config_json_is_named(ckpt, tmp_path, capsys):
    broken = tmp_path / "broken"
    shutil.copytree(ckpt, broken)
    (broken / "config.json").write_text("{hidden_size: 128}")
    code, _, err = run(["--ckpt", str(broken), "--task", "vt"], capsys)
    assert code == 2 and f"{broken / 'config.json'} is not valid JSON" in err and "Traceback" not in err


def test_a_checkpoint_without_its_training_geometry_says_what_it_assumes(ckpt, tmp_path, capsys):
    bare = shutil.copytree(ckpt, tmp_path / "bare")
    os.remove(bare / "meta.json")  # the fixture's geometry (chunk 64, memory 8, answer 6) is gone
    code, out, err = run(["--ckpt", str(bare), "--task", "niah_single_noise", "--length", "300",
                          "--memory-tokens", "8", "--json"], capsys)
    assert code == 0 and json.loads(out)["chunks"] == 2  # ~300 tokens in chunks of 256: the defaults'
    assert ("assuming --chunk-tokens 256, --answer-tokens 32 and compact prompts" in err
            and "--memory-tokens" not in err)  # a flag given is not assumed
    _, _, err = run(["--ckpt", ckpt, "--task", "niah_single_noise", "--length", "300", "--json"], capsys)
    assert "assuming" not in err  # the fixture's meta.json has all three


def test_turn_decisions_read_what_a_scripted_policy_did(tmp_path):
    """Two rule-following stand-ins for the model, and the table must show their rules at 100%:
    'take the number, keep it against every price' (what RL should learn on the cpu-demo task) and
    'take every needle' (the copy curriculum). Needles cut by a chunk boundary are in no turn."""
    from memagent.tasks import make_sample_retry
    from rollout import AgentConfig, Generation, run_agent

    tok = get_tokenizer(str(tmp_path / "tok"))
    samples = [make_sample_retry("niah_number_among_prices", 384, 1_000_000 + i, tok) for i in range(12)]
    cfg = AgentConfig(chunk_tokens=48, memory_tokens=5, answer_tokens=8, compact_prompts=True)

    def scripted(take_prices):
        def policy(prompts, budgets, stop_ids, cfg):
            out = []
            for ids in prompts:
                text = tok.decode(ids)
                memory = text.split("Memory:\n", 1)[1].split("\n", 1)[0]
                if "\nText:\n" in text:
                    chunk = text.split("\nText:\n", 1)[1].split("\nNew memory:", 1)[0]
                    number = re.findall(r"The magic number is (\d)\.", chunk)  # whole sentences only
                    price = re.findall(r"The \w+ price is (\$\d)\.", chunk) if take_prices else []
                    reply = f" {(number + price)[0]}." if number + price else memory
                else:
                    reply = "\\boxed{" + memory.strip(" .$") + "}"
                tokens = tok.encode(reply) + [tok.im_end_id]
                out.append(Generation(tokens=tokens, logprobs=[0.0] * len(tokens), stop_reason="stop"))
            return out
        return policy

    for take_prices, expected in ((False, {"nothing | asked": "take", "nothing | other": "keep",
                                           "asked | other": "keep"}),
                                  (True, {"nothing | asked": "take", "nothing | other": "take",
                                          "asked | other": "take", "other | asked": "take",
                                          "other | other": "take"})):
        rollouts = run_agent(None, tok, samples, cfg, policy=scripted(take_prices), max_positions=512)
        decisions = [d for r in rollouts for d in infer.turn_decisions(tok, samples[r.sample], r, cfg)]
        table = infer.decision_table(decisions)
        assert set(table) == set(expected), table
        for key, action in expected.items():
            assert table[key][action] == sum(table[key].values()) > 0, (key, table[key])
        # every needle that lies whole in a chunk is one decision (3 of 4 needles are prices)
        whole = sum(any(s["context"][n["start"]:n["end"]] in tok.decode(c)
                        for c in [tok.encode(s["context"])[k:k + 48] for k in range(0, s["n_tokens"], 48)])
                    for s in samples for n in s["needles"])
        assert len(decisions) == whole > 30
        if not take_prices:  # the rule answers every document whose number lies whole in a chunk
            assert sum(r.reward for r in rollouts) == sum(t == "asked" for _, t, _ in decisions)
