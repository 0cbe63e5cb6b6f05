"""Scoring an answer: pull it out of \\boxed{...}, normalize it, compare it with the references.

The training reward is rule-based, as in the paper: the model's final reply must put its
answer in \\boxed{}; a reply with no (complete) box earns 0. What "correct" means depends on
the task, and that choice lives in one table, REWARD_KIND:

    task                 kind    reward
    niah_single_noise    exact   1 if the boxed answer equals a reference after normalization
    niah_single_prose    exact
    niah_multikey        exact
    niah_multikey_short  exact
    niah_first_last      exact
    niah_distractors     exact
    niah_number_among_prices  exact
    hotpot_synth         exact
    hotpotqa             exact
    niah_multivalue      all     fraction of the references found inside the boxed answer
    niah_multiquery      all       (case-insensitive substring, RULER's string_match_all)
    vt                   all

The evaluation metrics are here too: HotpotQA's exact match / sub-exact-match / token F1
(after HotpotQA's normalization) and RULER's string_match_all / string_match_part.
"""
import re
import string
from collections import Counter

REWARD_KIND = {
    "niah_single_noise": "exact",
    "niah_single_prose": "exact",
    "niah_multikey": "exact",
    "niah_multikey_short": "exact",
    "niah_first_last": "exact",
    "niah_distractors": "exact",
    "niah_number_among_prices": "exact",
    "hotpot_synth": "exact",
    "hotpotqa": "exact",
    "niah_multivalue": "all",
    "niah_multiquery": "all",
    "vt": "all",
}

# the evaluation metric of each task (RULER, arXiv 2404.06654), on the boxed answer: RULER's
# string_match_all for the needle tasks and variable tracking, string_match_part for QA
EVAL_METRIC = {task: "match_part" if task in ("hotpot_synth", "hotpotqa") else "match_all" for task in REWARD_KIND}

_BOX_OPEN = re.compile(r"\\boxed\s*\{")


def extract_boxed(text: str) -> str | None:
    """The content of the last \\boxed{...} in text, stripped; None when there is none.

    Braces inside the box must balance; a last box that never closes (a reply cut off
    mid-answer) counts as no answer, even if an earlier box was complete.

    >>> extract_boxed(r"so \\boxed{1} or rather \\boxed{ \\frac{1}{2} }")
    '\\\\frac{1}{2}'
    >>> extract_boxed(r"\\boxed {Paris}"), extract_boxed("Paris"), extract_boxed(r"\\boxed{a")
    ('Paris', None, None)
    """
    opens = list(_BOX_OPEN.finditer(text))
    if not opens:
        return None
    start = opens[-1].end()  # just after the opening brace
    depth = 1
    for i in range(start, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return text[start:i].strip()
    return None  # unbalanced: the box never closes


def normalize_answer(s: str) -> str:
    """HotpotQA's normalization: lowercase, drop punctuation, drop a/an/the, squeeze spaces.

    >>> normalize_answer("  The  Eiffel-Tower, Paris! ")
    'eiffeltower paris'
    """
    s = s.lower()
    s = "".join(ch for ch in s if ch not in string.punctuation)
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


def exact_match(prediction: str, reference: str) -> float:
    """1.0 if both strings normalize to the same text.

    >>> exact_match("The Beatles.", "beatles"), exact_match("Beatles band", "beatles")
    (1.0, 0.0)
    """
    return float(normalize_answer(prediction) == normalize_answer(reference))


def sub_exact_match(prediction: str, reference: str) -> float:
    """1.0 if the normalized reference occurs inside the normalized prediction.

    An empty (after normalization) reference only matches an empty prediction.

    >>> sub_exact_match("It was the Beatles band.", "Beatles"), sub_exact_match("x", "y")
    (1.0, 0.0)
    """
    pred, ref = normalize_answer(prediction), normalize_answer(reference)
    if not ref:
        return float(pred == ref)
    return float(ref in pred)


def f1_score(prediction: str, reference: str) -> float:
    """HotpotQA's token F1 between normalized prediction and reference.

    yes/no/noanswer references must match exactly (no partial credit), as in HotpotQA.

    >>> f1_score("new york city", "New York")  # precision 2/3, recall 1
    0.8
    """
    pred, ref = normalize_answer(prediction), normalize_answer(reference)
    special = ("yes", "no", "noanswer")
    if (pred in special or ref in special) and pred != ref:
        return 0.0
    pred_tokens, ref_tokens = pred.split(), ref.split()
    common = sum((Counter(pred_tokens) & Counter(ref_tokens)).values())
    if common == 0:
        return 0.0
    precision = common / len(pred_tokens)
    recall = common / len(ref_tokens)
    return 2 * precision * recall / (precision + recall)


def string_match_all(prediction: str, references: list[str]) -> float:
    """RULER: the fraction of references found in the prediction (case-insensitive substring).

    >>> string_match_all("Values: 1234567 and 7654321", ["1234567", "7654321", "1111111"])
    0.6666666666666666
    """
    if not references:
        raise ValueError("string_match_all needs at least one reference")
    pred = prediction.lower()
    return sum(ref.lower() in pred for ref in references) / len(references)


def string_match_part(prediction: str, references: list[str]) -> float:
    """RULER's QA metric: 1.0 if any reference is found in the prediction (case-insensitive).

    >>> string_match_part("It is PARIS.", ["Paris", "Lyon"])
    1.0
    """
    if not references:
        raise ValueError("string_match_part needs at least one reference")
    pred = prediction.lower()
    return float(any(ref.lower() in pred for ref in references))


def check_task(task: str) -> None:
    """Raise a clear error for a task this module has no reward for."""
    if task not in REWARD_KIND:
        raise ValueError(f"unknown task {task!r}; known tasks: {', '.join(sorted(REWARD_KIND))}")


def compute_reward(task: str, response: str, answers: list[str]) -> float:
    """The training reward of one final reply (see REWARD_KIND for which task gets what).

    >>> compute_reward("niah_single_noise", r"It is \\boxed{1234567}.", ["1234567"])
    1.0
    >>> compute_reward("vt", r"\\boxed{ABCDE, FGHIJ}", ["ABCDE", "FGHIJ", "KLMNO", "PQRST"])
    0.5
    >>> compute_reward("hotpot_synth", "Paris", ["Paris"])  # no box, no reward
    0.0
    """
    check_task(task)
    if not answers:
        raise ValueError(f"task {task!r}: a sample needs at least one reference answer")
    boxed = extract_boxed(response)
    if boxed is None or not boxed:
        return 0.0
    if REWARD_KIND[task] == "all":
        return string_match_all(boxed, answers)
    return max(exact_match(boxed, ref) for ref in answers)


def score_answer(response: str, answers: list[str]) -> dict:
    """Every evaluation metric of one final reply, on its boxed answer ("" when unboxed).

    EM, sub-EM and F1 take the best reference; match_all / match_part are RULER's.
    """
    if not answers:
        raise ValueError("score_answer: a sample needs at least one reference answer")
    boxed = extract_boxed(response)
    pred = boxed if boxed is not None else ""
    return {
        "boxed": boxed is not None,
        "em": max(exact_match(pred, ref) for ref in answers),
        "sub_em": max(sub_exact_match(pred, ref) for ref in answers),
        "f1": max(f1_score(pred, ref) for ref in answers),
        "match_all": string_match_all(pred, answers),
        "match_part": string_match_part(pred, answers),
    }


def eval_score(task: str, response: str, answers: list[str]) -> float:
    """The task's evaluation metric (EVAL_METRIC) of one final reply.

    >>> eval_score("niah_single_noise", r"\\boxed{The number is 1234567.}", ["1234567"])  # reward: 0
    1.0
    """
    return score_answer(response, answers)[EVAL_METRIC[task]]


def memory_holds(memory: str, values: list[str]) -> bool:
    """Whether a memory text holds one of `values` as whole words, both normalized as the reward
    normalizes answers (so " $3." holds "3", as \\boxed{$3} earns "3"'s reward): a diagnostic of
    what the agent kept (does it copy facts at all? does it keep the asked one?), never a reward.

    >>> memory_holds(" $5.", ["5", "2"]), memory_holds(" 3.", ["$4", "2"]), memory_holds(" 17.", ["7"])
    (True, False, False)
    >>> memory_holds(" icy-zebra: 7368886. bold: 2.", ["7368886"]), memory_holds("None.", ["one"])
    (True, False)
    """
    held = f" {normalize_answer(memory)} "
    wanted = [normalize_answer(v) for v in values]
    return any(w and f" {w} " in held for w in wanted)
