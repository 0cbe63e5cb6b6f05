"""The prompts: fields in the right places, template cost additive, compact really compact."""
import doctest

import pytest

from memagent import prompts, reward, tasks, tokenizer
from memagent.prompts import (INITIAL_MEMORY, INITIAL_MEMORY_COMPACT, final_prompt,
                              initial_memory, memory_prompt, template_text)
from memagent.tokenizer import chat_prompt, train_tokenizer


@pytest.fixture(scope="session")
def tok(tmp_path_factory):
    return train_tokenizer(str(tmp_path_factory.mktemp("tok_prompts")), vocab_size=2048)


@pytest.mark.parametrize("compact", [False, True])
def test_fields_appear_once_in_order(compact):
    p = memory_prompt("PROBLEM_X", "MEMORY_Y", "CHUNK_Z", compact=compact)
    positions = [p.index(f) for f in ("PROBLEM_X", "MEMORY_Y", "CHUNK_Z")]
    assert positions == sorted(positions)
    assert all(p.count(f) == 1 for f in ("PROBLEM_X", "MEMORY_Y", "CHUNK_Z"))
    f = final_prompt("PROBLEM_X", "MEMORY_Y", compact=compact)
    assert f.index("PROBLEM_X") < f.index("MEMORY_Y")
    assert "\\boxed{}" in f and "CHUNK_Z" not in f


def test_fields_with_braces_are_not_formatted():
    # user text full of braces must pass through untouched
    p = memory_prompt("{problem}", "a {memory} b", "{0} {chunk}")
    assert "{problem}" in p and "a {memory} b" in p and "{0} {chunk}" in p


def test_initial_memory():
    assert initial_memory() == INITIAL_MEMORY and initial_memory(True) == INITIAL_MEMORY_COMPACT
    assert len(INITIAL_MEMORY_COMPACT) < len(INITIAL_MEMORY)


@pytest.mark.parametrize("compact", [False, True])
def test_prompt_cost_is_template_plus_fields(tok, compact):
    """The rollout's window check: template tokens + field tokens, exactly, with our tokenizer."""
    problem = "What is the special magic number for amber-falcon mentioned in the text?"
    memory = "The magic number for amber-falcon is 1234567.\nNothing else so far."
    chunk = " The lake is calm.\n\nOne of the special magic numbers is: 7654321. "
    template = len(tok.encode_chat(chat_prompt(template_text(compact))))
    fields = sum(len(tok.encode(x)) for x in (problem, memory, chunk))
    full = len(tok.encode_chat(chat_prompt(memory_prompt(problem, memory, chunk, compact))))
    assert full == template + fields
    final = len(tok.encode_chat(chat_prompt(final_prompt(problem, memory, compact))))
    assert final <= template + len(tok.encode(problem)) + len(tok.encode(memory))


def test_template_sizes(tok):
    full = len(tok.encode_chat(chat_prompt(template_text(False))))
    compact = len(tok.encode_chat(chat_prompt(template_text(True))))
    # the full prompt is paragraph-sized like the paper's; the compact one a few words
    assert 60 <= full <= 250
    assert compact <= 40
    assert compact * 3 < full


def test_docstring_examples_run():
    """Every worked example in the package's docstrings is true."""
    for module in (prompts, reward, tasks, tokenizer):
        result = doctest.testmod(module)
        assert result.attempted > 0 and result.failed == 0, module.__name__
