"""A HF tokenizer.json behind our interface: transformers' own tokenizer and chat template are the
oracle. The test builds a small byte-level BPE (Qwen2's kind) with the ChatML specials and a chat
template that, like Qwen2.5's, adds a default system turn when the conversation has none."""

import json
from pathlib import Path

import pytest

tokenizers = pytest.importorskip("tokenizers")
transformers = pytest.importorskip("transformers")

from memagent.tokenizer import HFTokenizer, load_tokenizer  # noqa: E402

SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."
# A ChatML template written for this test, with Qwen2.5's observable behaviour (no tools).
TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>system\\n" + SYSTEM + "<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if not (message.role == 'system' and loop.first) %}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    directory = tmp_path_factory.mktemp("qwen-like")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    text = ["One of the special magic numbers for amber-falcon is: 1234567.",
            "Document 3:\nZentek\nZentek is a company based in Belhaven.", SYSTEM] * 50
    tok.train_from_iterator(text, trainer)
    tok.save(str(directory / "tokenizer.json"))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": "<|im_end|>",
              "pad_token": "<|endoftext|>", "chat_template": TEMPLATE}
    (directory / "tokenizer_config.json").write_text(json.dumps(config))
    return str(directory)


USER_TEXTS = ["Hi", "Question:\nWhat is the number for amber-falcon?\nMemory:\nNone.\n",
              "  spaces  and\ttabs, unicode é ✓, digits 0123456789\n\nend"]


@pytest.mark.parametrize("user", USER_TEXTS)
def test_render_prompt_matches_apply_chat_template(hf_dir, user):
    ours = HFTokenizer(hf_dir)
    theirs = transformers.AutoTokenizer.from_pretrained(hf_dir)
    expected = theirs.apply_chat_template([{"role": "user", "content": user}], tokenize=True,
                                          add_generation_prompt=True)
    if isinstance(expected, dict) or hasattr(expected, "input_ids"):
        expected = expected["input_ids"]
    assert ours.system_prompt == SYSTEM
    assert ours.render_prompt(user) == list(expected)
    assert ours.decode(ours.render_prompt(user)).startswith("<|im_start|>system\n" + SYSTEM)


@pytest.mark.parametrize("text", USER_TEXTS + ["<|im_start|>user\nx<|im_end|>"])
def test_encode_decode_match_transformers(hf_dir, text):
    """Chat text: transformers' default. Data: transformers' split_special_tokens=True, which
    encodes a special-token string as ordinary text."""
    ours = HFTokenizer(hf_dir)
    theirs = transformers.AutoTokenizer.from_pretrained(hf_dir)
    assert ours.encode_chat(text) == theirs.encode(text, add_special_tokens=False)
    assert ours.encode(text) == theirs.encode(text, add_special_tokens=False, split_special_tokens=True)
    assert ours.decode(ours.encode(text)) == text and ours.decode(ours.encode_chat(text)) == text
    specials = {ours.im_start_id, ours.im_end_id, ours.endoftext_id}
    assert not specials & set(ours.encode(text))
    # control ids: what transformers counts as special added tokens (rollouts drop them from a memory)
    assert ours.control_ids == {i for i, t in theirs.added_tokens_decoder.items() if t.special} == specials


def test_special_ids_and_stops(hf_dir):
    tok = load_tokenizer(hf_dir)
    assert isinstance(tok, HFTokenizer)
    assert tok.encode_chat("<|im_end|>") == [tok.im_end_id] and tok.eos_id == tok.im_end_id
    assert set(tok.stop_ids) == {tok.im_end_id, tok.encode_chat("<|endoftext|>")[0]}
    reply = tok.render_reply("The answer is \\boxed{7}.")
    assert reply[-1] == tok.im_end_id and tok.decode_reply(reply + [5, 6]) == "The answer is \\boxed{7}."


def test_control_ids_are_the_special_added_tokens(hf_dir, tmp_path):
    """Qwen2.5's tokenizer adds more tokens than the ChatML three, some special (<|fim_prefix|>)
    and some not (<tool_call>): control_ids holds the special ones, as transformers counts them."""
    import shutil

    from tokenizers import AddedToken, Tokenizer
    shutil.copytree(hf_dir, tmp_path / "more")
    path = str(tmp_path / "more" / "tokenizer.json")
    tok = Tokenizer.from_file(path)
    tok.add_special_tokens([AddedToken("<|fim_prefix|>", special=True)])
    tok.add_tokens([AddedToken("<tool_call>", special=False)])
    tok.save(path)
    ours, theirs = HFTokenizer(str(tmp_path / "more")), transformers.AutoTokenizer.from_pretrained(tmp_path / "more")
    fim, tool = ours.hf.token_to_id("<|fim_prefix|>"), ours.hf.token_to_id("<tool_call>")
    assert fim in ours.control_ids and tool not in ours.control_ids and len(ours.control_ids) == 4
    assert ours.control_ids == {i for i, t in theirs.added_tokens_decoder.items() if t.special}


def test_missing_pieces_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no tokenizer.json"):
        HFTokenizer(str(tmp_path))
    from tokenizers import Tokenizer, models
    Tokenizer(models.BPE()).save(str(tmp_path / "tokenizer.json"))
    with pytest.raises(ValueError, match="no <\\|im_start\\|> token"):
        HFTokenizer(str(tmp_path))
    for text in ('{"model": 1}', "[]", "{bad"):  # tokenizers' own error is a bare Exception
        (tmp_path / "tokenizer.json").write_text(text)
        with pytest.raises(ValueError, match="tokenizer.json is not a HF tokenizer file: "):
            HFTokenizer(str(tmp_path))


def test_a_malformed_tokenizer_config_is_named_and_an_odd_one_has_no_system_turn(hf_dir, tmp_path):
    import shutil
    odd = shutil.copytree(hf_dir, tmp_path / "odd")
    for text in ("[]", '{"chat_template": 7}', '{"chat_template": [{"name": "tool_use"}, "x"]}'):
        (odd / "tokenizer_config.json").write_text(text)
        assert HFTokenizer(str(odd)).system_prompt is None
    (odd / "tokenizer_config.json").write_text("{chat_template: 1")
    with pytest.raises(ValueError, match="tokenizer_config.json is not valid JSON"):
        HFTokenizer(str(odd))


def test_infer_runs_on_a_tiny_hf_checkpoint_with_its_tokenizer(hf_dir, capsys, monkeypatch):
    """A HF Qwen2 folder (weights from save_pretrained + tokenizer files): infer.py --init-from
    uses its tokenizer.json, Qwen's system turn and the full prompts."""
    import shutil

    import torch

    import infer

    ckpt = hf_dir + "-model"
    shutil.copytree(hf_dir, ckpt)
    vocab = HFTokenizer(hf_dir).vocab_size
    cfg = transformers.Qwen2Config(vocab_size=vocab, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024)
    torch.manual_seed(0)
    transformers.Qwen2ForCausalLM(cfg).save_pretrained(ckpt, safe_serialization=True)
    from rollout import run_agent
    seen = []  # (tokenizer, agent config, rollouts) of every run_agent call infer makes

    def recording_run_agent(model, tokenizer, samples, agent_cfg, **kwargs):
        rollouts = run_agent(model, tokenizer, samples, agent_cfg, **kwargs)
        seen.append((tokenizer, agent_cfg, rollouts))
        return rollouts

    monkeypatch.setattr(infer, "run_agent", recording_run_agent)
    infer.main(["--init-from", ckpt, "--task", "niah_single_noise", "--length", "300", "--chunk-tokens", "100",
                "--memory-tokens", "12", "--answer-tokens", "8", "--json"])
    result = json.loads(capsys.readouterr().out)
    assert result["chunks"] == len(result["memories"]) >= 2  # ~300 tokens in chunks of 100
    # what infer really ran: the checkpoint's own tokenizer, the full prompts under Qwen's system turn
    (tok, agent, (r,)), = seen
    assert isinstance(tok, HFTokenizer) and tok.vocab_size == vocab
    assert agent.compact_prompts is False and agent.chunk_tokens == 100 and agent.memory_tokens == 12
    first = tok.decode(r.conversations[0].prompt_ids)
    assert first.startswith("<|im_start|>system\n" + SYSTEM) and "<problem>" in first
    assert r.memories == result["memories"]


def test_two_rl_steps_from_a_tiny_hf_checkpoint(hf_dir, tmp_path, capsys):
    import shutil

    import torch

    import train

    ckpt = str(tmp_path / "qwen-tiny")
    shutil.copytree(hf_dir, ckpt)
    cfg = transformers.Qwen2Config(vocab_size=HFTokenizer(hf_dir).vocab_size, hidden_size=64, intermediate_size=96,
                                   num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                   max_position_embeddings=1024)
    torch.manual_seed(0)
    transformers.Qwen2ForCausalLM(cfg).save_pretrained(ckpt, safe_serialization=True)
    out = tmp_path / "run"
    train.main(["--recipe", "smoke", "--device", "cpu", "--init-from", ckpt, "--out-dir", str(out),
                "--rl-steps", "2", "--eval-n", "0"])
    lines = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert [l["step"] for l in lines if "step" in l][-2:] == [1, 2]
    assert (out / "rl" / "model.safetensors").exists()
    # the trained checkpoint carries its tokenizer.json: infer.py reads it back like the original
    import infer
    capsys.readouterr()
    infer.main(["--ckpt", str(out / "rl"), "--task", "niah_single_noise", "--length", "300", "--json"])
    result = json.loads(capsys.readouterr().out)
    assert (out / "rl" / "tokenizer.json").read_bytes() == (Path(hf_dir) / "tokenizer.json").read_bytes()
    assert result["chunks"] == len(result["memories"]) >= 1
