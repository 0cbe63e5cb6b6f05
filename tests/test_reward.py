"""Answer extraction, HotpotQA normalization, the metrics and the per-task training reward.

Expected values are worked out by hand in the comments.
"""
import pytest

from memagent import tasks
from memagent.reward import (REWARD_KIND, compute_reward, exact_match, extract_boxed, f1_score,
                             normalize_answer, score_answer, string_match_all, string_match_part,
                             sub_exact_match)


@pytest.mark.parametrize("text, expected", [
    (r"The answer is \boxed{Paris}.", "Paris"),
    (r"\boxed{\frac{1}{2}}", r"\frac{1}{2}"),                  # nested braces balance
    (r"\boxed{{a}{b{c}}}", "{a}{b{c}}"),                         # deeper nesting
    (r"first \boxed{1} then \boxed{2}", "2"),                   # the last box wins
    (r"\boxed {  New York  }", "New York"),                     # spaces before { and inside
    ("\\boxed{line one\nline two}", "line one\nline two"),       # newlines inside
    (r"\boxed{}", ""),                                           # empty box: an empty answer
    ("no box at all", None),
    (r"\boxed{unclosed", None),                                  # cut off mid-answer
    (r"\boxed{1} and then \boxed{2", None),                      # last box unclosed: no answer
    (r"\boxed 5", None),                                         # no brace, no box
    ("", None),
])
def test_extract_boxed(text, expected):
    assert extract_boxed(text) == expected


def test_normalize_answer():
    assert normalize_answer("The Eiffel Tower!") == "eiffel tower"
    assert normalize_answer("  a  B,  an C ") == "b c"
    assert normalize_answer("Theatre of the Absurd") == "theatre of absurd"  # 'the' only as a word
    assert normalize_answer("U.S.A.") == "usa"
    assert normalize_answer("...") == ""


def test_exact_and_sub_exact_match():
    assert exact_match("The Beatles", "beatles") == 1.0
    assert exact_match("Beatles!", "The  beatles.") == 1.0
    assert exact_match("the beatles band", "beatles") == 0.0
    assert sub_exact_match("I think it was the Beatles band", "Beatles") == 1.0
    assert sub_exact_match("Beatles", "the Beatles band") == 0.0  # reference must be inside
    assert sub_exact_match("anything", "the") == 0.0  # reference normalizes to ""
    assert sub_exact_match("", "a") == 1.0


def test_f1_by_hand():
    # pred "new york city" (3 tokens), ref "new york" (2): common 2, P = 2/3, R = 1,
    # F1 = 2 * (2/3) / (5/3) = 0.8
    assert f1_score("New York City", "new york") == pytest.approx(0.8)
    # pred "paris france" vs ref "the city of paris" -> "city of paris": common 1,
    # P = 1/2, R = 1/3, F1 = 2 * (1/6) / (5/6) = 0.4
    assert f1_score("Paris, France", "the city of Paris") == pytest.approx(0.4)
    assert f1_score("london", "paris") == 0.0
    assert f1_score("yes", "no") == 0.0
    assert f1_score("yes it is", "yes") == 0.0   # yes/no answers get no partial credit
    assert f1_score("yes", "yes") == 1.0


def test_string_match():
    refs = ["1234567", "7654321", "ABCDE", "zzz"]
    assert string_match_all("1234567; abcde and 7654321", refs) == 0.75  # case-insensitive
    assert string_match_part("it is Paris", ["paris", "lyon"]) == 1.0
    assert string_match_part("it is Rome", ["paris", "lyon"]) == 0.0
    with pytest.raises(ValueError):
        string_match_all("x", [])
    with pytest.raises(ValueError):
        string_match_part("x", [])


def test_reward_single_answer_tasks():
    assert compute_reward("niah_single_noise", r"so \boxed{1234567}", ["1234567"]) == 1.0
    assert compute_reward("niah_multikey", r"\boxed{1234568}", ["1234567"]) == 0.0
    assert compute_reward("niah_multikey", r"\boxed{1234567 or 7654321}", ["1234567"]) == 0.0
    # punctuation, articles and case do not matter; any reference will do
    assert compute_reward("hotpotqa", r"\boxed{The  Beatles.}", ["Beatles"]) == 1.0
    assert compute_reward("hotpotqa", r"\boxed{UK}", ["United Kingdom", "UK"]) == 1.0
    assert compute_reward("hotpot_synth", r"\boxed{Oakmouth}", ["Oakmouth"]) == 1.0


def test_reward_multi_answer_tasks():
    answers = ["1111111", "2222222", "3333333", "4444444"]
    assert compute_reward("niah_multivalue", r"\boxed{1111111, 3333333}", answers) == 0.5
    assert compute_reward("niah_multiquery", r"\boxed{" + " ".join(answers) + "}", answers) == 1.0
    assert compute_reward("vt", r"\boxed{abcde, FGHIJ}", ["ABCDE", "FGHIJ", "KLMNO"]) \
        == pytest.approx(2 / 3)
    # only the boxed part counts: values outside the box earn nothing
    assert compute_reward("niah_multivalue", r"1111111 2222222 \boxed{3333333}", answers) == 0.25


def test_reward_without_a_usable_box_is_zero():
    for task in REWARD_KIND:
        assert compute_reward(task, "1234567", ["1234567"]) == 0.0        # no box
        assert compute_reward(task, r"\boxed{}", ["1234567"]) == 0.0      # empty box
        assert compute_reward(task, r"\boxed{1234567", ["1234567"]) == 0.0  # unclosed box


def test_reward_errors_and_table():
    with pytest.raises(ValueError, match="unknown task 'nope'.*niah_single_noise"):
        compute_reward("nope", r"\boxed{1}", ["1"])
    with pytest.raises(ValueError, match="at least one"):
        compute_reward("vt", r"\boxed{1}", [])
    with pytest.raises(ValueError, match="score_answer: .*at least one"):
        score_answer(r"\boxed{1}", [])
    # every generated task, plus real HotpotQA, has a reward kind
    assert set(REWARD_KIND) == set(tasks.TASKS) | {"hotpotqa"}
    assert {k for k, v in REWARD_KIND.items() if v == "all"} == \
        {"niah_multivalue", "niah_multiquery", "vt"}


def test_score_answer():
    s = score_answer(r"\boxed{New York City}", ["New York"])
    assert s == {"boxed": True, "em": 0.0, "sub_em": 1.0, "f1": pytest.approx(0.8),
                 "match_all": 1.0, "match_part": 1.0}
    s = score_answer("New York", ["New York"])  # unboxed: scored as an empty answer
    assert s["boxed"] is False and s["em"] == 0.0 and s["match_part"] == 0.0
