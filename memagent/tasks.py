"""Long-context tasks, generated from a seed: the documents MemAgent learns to read.

A sample is a dict {question, context, answers, task, length, n_tokens, seed, ...metadata}.
`length` is the requested context length in tokens, `n_tokens` what the context really measures
(always within 2% of `length` for the generated tasks; a real HotpotQA file's paragraphs come
whole, see HotpotQA.sample). Every generator is a plain function (length, seed, tokenizer)
and they all sit in the TASKS dict:

    niah_single_noise   one needle "One of the special magic numbers for KEY is: VALUE." in a
                        bland sentence group repeated over and over (RULER's noise haystack)
    niah_single_prose   the same needle in varied invented prose
    niah_multikey       the asked needle plus 3 needles with other keys (distractors)
    niah_multivalue     4 needles with the same key; all 4 values must be returned
    niah_multiquery     4 needles with 4 keys, all 4 asked at once
    vt                  variable tracking: VAR ABCDE = 12345, then VAR X = VAR Y four times;
                        return every variable that holds the value
    hotpot_synth        two-hop QA over an invented world of people, companies and cities,
                        written as `Document i:\\n{title}\\n{text}` documents (gold + distractors)

Keys are adjective-noun pairs ("amber-falcon"), values 7-digit numbers, needle depths uniform.
load_hotpotqa turns a real HotpotQA JSON file into RULER-HotpotQA samples the same way.

How lengths are hit quickly. Text is built from small pieces (sentences, needles, documents)
glued together at whitespace. Tokenizers that split words at whitespace (ours, and byte-level
BPEs like Qwen's) then give a token count that is (nearly) the sum of the pieces' counts, so we
count each whitespace-led unit (" apple.") once, cache it, and add. One real encode of the
finished context checks the count; if it is off by more than 1%, the budget is corrected and
the same (seeded) text is rebuilt. A 1M-token context takes a few seconds.

Command line (--seed S makes samples from seeds S * 1,000,000 + i; train.py --seed T makes its
training samples from seeds T * 10,000,000 + i, i < 1,000,000, which is S = 10T here, its held-out
evaluation from S = 10T + 1 and its copy gate's from S = 10T + 2, so an S whose last digit is 3-9
is unseen by any train.py run. For --task hotpotqa, --seed only draws the distractors: the
questions are the file's first --n, and train.py holds out the file's LAST --eval-n):
    python -m memagent.tasks --task niah_multikey --length 32k --n 128 --seed 3 --out data.jsonl
"""
import argparse
import itertools
import json
import os
import random
import re
import sys
import time
from fractions import Fraction

from memagent.reward import REWARD_KIND, normalize_answer

LENGTH_TOLERANCE = 0.02  # a context's token count is within 2% of the requested length
# the longest document make_sample builds: 2^24 = 16.8M tokens (~25 s, ~5x the paper's longest,
# 3.5M); past it a slip such as a length of 1e9 would run for hours and exhaust memory
MAX_LENGTH = 2**24
MAX_DOCS = MAX_LENGTH // 64  # the same cap in hotpot_synth documents (a paragraph is ~100 tokens)

# ----------------------------------------------------------------------------------------------
# Procedural prose: haystack and filler text. No digits, no hyphens, no all-caps words, so a
# needle's key or value, or a variable name, can never appear in it by accident.

_SUBJECTS = (
    "the old gardener|a young painter|the village baker|my grandmother|the ferry captain|"
    "a quiet student|the night watchman|the shepherd|our neighbour|the librarian|"
    "a travelling musician|the school teacher|the fisherman|a curious child|the mayor|"
    "the blacksmith|an elderly poet|the carpenter|the innkeeper|a lonely sailor|my uncle|"
    "the head nurse|a retired soldier|the youngest daughter|the station master").split("|")
_VERBS = (
    "repaired|painted|carried|found|described|cleaned|studied|sold|borrowed|drew|measured|"
    "admired|forgot|guarded|polished|wrapped|ignored|mended|noticed|moved|hid|returned").split("|")
_THINGS = (
    "a wooden bench|the broken gate|an old map|a basket of apples|the red lantern|"
    "a letter from the coast|the copper kettle|a small boat|the garden wall|a stack of books|"
    "the church bell|a woollen blanket|the long table|a jar of honey|the stone bridge|"
    "a bundle of firewood|the faded curtain|a pair of boots|the clock tower|"
    "a sketch of the harbour|the iron stove|a cracked mirror|the blue door").split("|")
_PLACES = (
    "near the river|behind the library|at the edge of the forest|in the market square|"
    "on the hill above the town|beside the mill|under the old oak|along the northern road|"
    "at the bottom of the valley|in the back room of the inn|by the harbour wall|"
    "inside the greenhouse|across the frozen lake|in the attic").split("|")
_TIMES = (
    "before dawn|every autumn|after the long winter|on quiet evenings|during the harvest|"
    "late one summer|at the end of each week|when the snow melted|on the first warm morning|"
    "years ago|just after the storm|while everyone slept").split("|")
_WANDERS = (
    "walked slowly|waited patiently|sang softly|worked late|rested for a while|"
    "laughed quietly|stood in silence|wandered around|read aloud|kept watch").split("|")
_IDEAS = (
    "patience|honest work|a good meal|careful planning|old friendship|a kind word|curiosity|"
    "a steady hand|simple habits|good weather|music|silence|a warm fire|clean tools").split("|")
_WEATHERS = (
    "raining|cold and windy|almost dark|unusually warm|foggy|a bright clear day|"
    "late in the afternoon|still early").split("|")
_SAYINGS = (
    "every road leads somewhere|a tidy workshop saves an hour|the rain always comes back|"
    "small things matter most|the river remembers everything|bread tastes better when shared|"
    "a map is only a promise|nobody regrets an early start|old tools tell long stories|"
    "the best soup is made slowly|a closed door is still a door|winter teaches patience|"
    "every garden needs a fence|the quiet ones notice the most|a good boat needs a calm crew|"
    "stories grow longer in the telling|the hills look closer before rain").split("|")
_STATES = "forgotten|left|standing|hidden|stored|kept".split("|")
_SAIDS = "often said|once wrote|liked to say|told everyone|always claimed|still insists".split("|")

_TEMPLATES = [
    "{S} {v} {t} {p}.",
    "{T}, {s} {v} {t}.",
    "{S} {w} {p} {time}.",
    "It was {weather} when {s} {v} {t}.",
    "{S} believed that {idea} mattered more than {idea2}.",
    "Nobody knew why {s} {v} {t} {time}.",
    "{S} {said} that {saying}.",
    "{Th} had been {state} {p} for many years.",
    "There was {t} {p}, and {s} {v} it {time}.",
    "According to {s}, {s2} {v} {t} {time}.",
]


def _cap(text: str) -> str:
    return text[0].upper() + text[1:]


def prose_sentence(rng: random.Random, forbidden=()) -> str:
    """One invented, readable sentence; never one containing a string from `forbidden`.

    forbidden is matched case-insensitively; pass a sample's answers to be sure filler text
    cannot give them away. Example: "Before dawn, the shepherd mended a small boat."
    """
    forbidden = [f.lower() for f in forbidden if f]
    for _ in range(1000):
        s, s2 = rng.sample(_SUBJECTS, 2)
        t = rng.choice(_THINGS)
        idea, idea2 = rng.sample(_IDEAS, 2)
        sentence = rng.choice(_TEMPLATES).format(
            S=_cap(s), s=s, s2=s2, said=rng.choice(_SAIDS), v=rng.choice(_VERBS), t=t, Th=_cap(t), p=rng.choice(_PLACES),
            T=_cap(rng.choice(_TIMES)), time=rng.choice(_TIMES), w=rng.choice(_WANDERS),
            weather=rng.choice(_WEATHERS), idea=idea, idea2=idea2,
            saying=rng.choice(_SAYINGS), state=rng.choice(_STATES))
        low = sentence.lower()
        if not any(f in low for f in forbidden):
            return sentence
    raise ValueError(f"could not write a sentence avoiding {forbidden!r}")


def _prose_stream(rng, forbidden=()):
    """Endless (separator, sentence) pairs: paragraphs of 3-7 sentences, blank line between."""
    first = True
    while True:
        for j in range(rng.randint(3, 7)):
            yield ("" if first else "\n\n" if j == 0 else " "), prose_sentence(rng, forbidden)
            first = False


# RULER's noise haystack idea, in our own sentences: one bland group, repeated, one per line.
NOISE_SENTENCES = ["The lake is calm.", "The sky is clear.", "The road is long.",
                   "Here we stay.", "Round and round again."]


def _noise_stream():
    first = True
    while True:
        for j, sentence in enumerate(NOISE_SENTENCES):
            yield ("" if first else "\n" if j == 0 else " "), sentence
            first = False


# ----------------------------------------------------------------------------------------------
# Token counting and length fitting

_UNIT = re.compile(r"\s*\S+|\s+")


class _TokenCounter:
    """Token count of text as the sum of its whitespace-led units (" apple."), each encoded once.

    Exact for tokenizers that never merge across whitespace (ours); close for byte-level BPEs.
    """

    def __init__(self, tokenizer):
        self.encode = tokenizer.encode
        self.cache = {}

    def __call__(self, text: str) -> int:
        total = 0
        for unit in _UNIT.findall(text):
            n = self.cache.get(unit)
            if n is None:
                n = self.cache[unit] = len(self.encode(unit))
            total += n
        return total


def _take_until(stream, budget: int, count, lookahead: int = 30) -> list:
    """Items from stream until their token total is as close to budget as whole items allow.

    When the next item would overshoot, the last slot goes to whichever of it and the
    following `lookahead` items fills the remaining gap best (or to none of them).
    """
    items, total = [], 0
    for sep, text in stream:
        n = count(sep + text)
        if total + n > budget:
            gap = budget - total
            candidates = [(sep, text)] + list(itertools.islice(stream, lookahead))
            best = min(candidates, key=lambda c: abs(gap - count(c[0] + c[1])))
            if abs(gap - count(best[0] + best[1])) < gap:  # closer with it than without
                items.append(best)
            break
        items.append((sep, text))
        total += n
    return items


def _assemble(items, inserts):
    """Render haystack items with inserted sentences; return (context, spans).

    items: (separator, sentence) pairs. inserts: (depth in [0, 1], sentence, payload) triples;
    each goes before haystack item round(depth * len(items)). spans: (start, end, payload) of
    every insert, character offsets into the context, in context order.
    """
    slots = {}
    for depth, text, payload in sorted(inserts, key=lambda x: x[0]):
        slots.setdefault(round(depth * len(items)), []).append((text, payload))
    pieces, spans, pos = [], [], 0
    for i in range(len(items) + 1):
        chunk = [(" ", text, payload) for text, payload in slots.get(i, [])]
        if i < len(items):
            chunk.append((items[i][0], items[i][1], None))
        for sep, text, payload in chunk:
            sep = (sep or " ") if pieces else ""  # never start with, or lose, whitespace
            pieces.append(sep + text)
            pos += len(sep)
            if payload is not None:
                spans.append((pos, pos + len(text), payload))
            pos += len(text)
    return "".join(pieces), spans


def _fit(build, target: int, tokenizer, what: str):
    """Call build(budget) -> (context, meta) until the context measures within 1% of target.

    build must be deterministic (same seed each call); a miss adjusts the budget by the error.
    Returns (context, meta, n_tokens); raises if even the best try misses by more than 2%.
    """
    budget, best = target, None
    for _ in range(4):
        context, meta = build(budget)
        n = len(tokenizer.encode(context))
        if best is None or abs(n - target) < abs(best[2] - target):
            best = (context, meta, n)
        if abs(n - target) <= 0.01 * target:
            break
        budget += target - n
    context, meta, n = best
    if abs(n - target) > LENGTH_TOLERANCE * target:
        raise ValueError(f"{what}: could not reach {target} tokens (got {n}); "
                         "is the length too small for this task?")
    return context, meta, n


# ----------------------------------------------------------------------------------------------
# Needles in a haystack (after RULER)

_KEY_ADJECTIVES = (
    "amber brave calm dusty eager fancy gentle hollow icy jolly keen lucky misty noble odd "
    "proud quick rusty silent tidy upbeat vivid wild young zesty bold crisp dapper faint "
    "gloomy hasty humble lively mellow nimble plain quaint rapid sturdy tender").split()
_KEY_NOUNS = (
    "falcon harbor lantern meadow otter pebble quill raven saddle thimble violin walrus "
    "anchor badger candle dolphin ember fern goblet hazel igloo jackal kettle lemon magnet "
    "nectar orchid parrot quartz ribbon spruce tulip urchin velvet willow yak zebra").split()

NEEDLE = "One of the special magic numbers for {key} is: {value}."
# niah_multikey_short: a 7-token needle, a one-token key (a word our tokenizer keeps whole)
SHORT_NEEDLE = "The {key} number is {value}."
SHORT_QUESTION = "What is the {key} number?"
PRICE_NEEDLE = "The {key} price is {value}."  # niah_number_among_prices' distractors ("$3")
SHORT_KEYS = ("black white pink soft slow wild bold new quick calm clean simple red blue cold "
              "dark").split()


def _random_key(rng):
    return f"{rng.choice(_KEY_ADJECTIVES)}-{rng.choice(_KEY_NOUNS)}"


def _distinct(rng, n, make, out=()):
    out = list(out)  # start from these (kept first), add new ones until there are n
    while len(out) < n:
        x = make(rng)
        if x not in out:
            out.append(x)
    return out


def _and_list(names):
    """'a' / 'a and b' / 'a, b and c'."""
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def _niah(length, seed, tokenizer, task, haystack, n_keys=1, n_values=1, n_queries=1, short=False,
          asked_key=None, price_distractors=False):
    """General RULER needle task: n_keys keys in the text, n_values values each, n_queries asked.

    short=True: SHORT_NEEDLE / SHORT_QUESTION with one-token keys ("bold") and one-digit values
    ("7") instead of "icy-zebra" and "7368886", and needles spread over the document (one per
    n-th of it) instead of at uniform random depths (see niah_multikey_short).
    asked_key (short only): the asked key is always this word, the other keys are distractors.
    price_distractors (with asked_key): the distractors are PRICE_NEEDLEs ("The bold price is
    $3.") instead of numbers; all four digits stay different.
    """
    count = _TokenCounter(tokenizer)
    template = SHORT_NEEDLE if short else NEEDLE

    def build(budget):
        rng = random.Random(seed)
        if short:
            first = [asked_key] if asked_key else []
            keys = _distinct(rng, n_keys, lambda r: r.choice(SHORT_KEYS), out=first)
            values = _distinct(rng, n_keys * n_values, lambda r: str(r.randint(0, 9)))
            if price_distractors:  # the asked key's value stays a number, the others become prices
                values = values[:n_values] + ["$" + v for v in values[n_values:]]
        else:
            keys = _distinct(rng, n_keys, _random_key)
            values = _distinct(rng, n_keys * n_values, lambda r: str(r.randint(1_000_000, 9_999_999)))
        needles = [(keys[i // n_values], values[i]) for i in range(len(values))]
        asked = keys[:n_queries]
        if short:  # spread out: needle i in its own stretch perm[i] of n equal stretches, off its ends
            perm = rng.sample(range(len(needles)), len(needles))
            depths = [(perm[i] + 0.1 + 0.8 * rng.random()) / len(needles) for i in range(len(needles))]
        else:
            depths = [rng.random() for _ in needles]
        inserts = [(d, (PRICE_NEEDLE if v.startswith("$") else template).format(key=k, value=v), (k, v))
                   for d, (k, v) in zip(depths, needles)]
        fixed = sum(count(" " + text) for _, text, _ in inserts)
        if fixed >= budget:
            raise ValueError(f"{task}: length {length} is too small, the needles alone take "
                             f"{fixed} tokens")
        # one-word keys are common words: keep them out of the filler (which has no digits)
        stream = (_noise_stream() if haystack == "noise"
                  else _prose_stream(rng, forbidden=keys if short else ()))
        context, spans = _assemble(_take_until(stream, budget - fixed, count), inserts)
        if short:
            question = SHORT_QUESTION.format(key=asked[0])
        elif n_queries > 1:
            question = (f"What are all the special magic numbers for {_and_list(asked)} "
                        "mentioned in the text?")
        elif n_values > 1:
            question = f"What are all the special magic numbers for {asked[0]} mentioned in the text?"
        else:
            question = f"What is the special magic number for {asked[0]} mentioned in the text?"
        meta = {
            "question": question,
            "answers": [v for k in asked for kk, v in needles if kk == k],
            "needles": [{"key": k, "value": v, "start": s, "end": e,
                         "depth": round(s / len(context), 4)} for s, e, (k, v) in spans],
        }
        return context, meta

    return _fit(build, length, tokenizer, task)


def niah_single_noise(length, seed, tokenizer):
    return _niah(length, seed, tokenizer, "niah_single_noise", haystack="noise")


def niah_single_prose(length, seed, tokenizer):
    return _niah(length, seed, tokenizer, "niah_single_prose", haystack="prose")


def niah_multikey(length, seed, tokenizer):
    return _niah(length, seed, tokenizer, "niah_multikey", haystack="prose", n_keys=4)


def niah_multikey_short(length, seed, tokenizer):
    """niah_multikey sized for a from-scratch 1M-parameter model (train.py's CPU default in session 4):
    4 needles "The bold number is 7.", one per quarter of the document, one asked ("What is the
    bold number?"). Copying a 7-digit value with repeated digits is beyond what such a model
    learns in minutes; a one-token key and one digit are not, and choosing WHICH needle to keep
    is just as hard as with long values."""
    return _niah(length, seed, tokenizer, "niah_multikey_short", haystack="prose", n_keys=4,
                 short=True)


def niah_first_last(length, seed, tokenizer):
    """niah_multikey_short's documents (4 needles "The bold number is 7.", one per quarter, four
    different digits), but the question asks by ORDER: "What is the first number?" or "What is the
    last number?" (half each, by seed). The memory holds one value, so the agent must keep the
    first needle it meets, or overwrite at every needle, depending on the question.

    Why it replaced niah_multikey_short as the CPU default (session 5; since session 7 the default
    is niah_number_among_prices): choosing the needle whose key equals
    the asked key is an equality test (an XOR of two inputs: neither the question alone nor the
    needle alone says keep or drop), which gives gradient descent no first-order signal; a
    from-scratch 1M-parameter model stays at chance on it for hundreds of fully supervised steps
    (EXPERIMENTS.md, sessions 4-6). Here the question alone decides the rule, and the choice is still
    one RL must learn: the warm start keeps a random needle. Measured: such a model learns the
    rule supervised in ~200 steps when the note restates the question's word (--notes restate),
    not with value notes; from reward, within the CPU budget, it learns only the unconditional
    "keep the first" rule (EXPERIMENTS.md).
    """
    context, meta, n_tokens = niah_multikey_short(length, seed, tokenizer)
    order = sorted(meta["needles"], key=lambda n: n["start"])
    which = "first" if random.Random(seed).random() < 0.5 else "last"
    needle = order[0] if which == "first" else order[-1]
    return context, dict(meta, question=f"What is the {which} number?", answers=[needle["value"]]), n_tokens


def niah_distractors(length, seed, tokenizer):
    """One needle that matters among three distractors: the question is always "What is the magic
    number?", the document holds "The magic number is 7." and three needles with other keys ("The
    bold number is 3."), one per quarter in random order, four different digits. The memory holds
    one value, so the agent must keep the magic needle and ignore the others, wherever it comes.

    The key to keep never changes, so unlike niah_multikey_short (match the asked key: an equality
    test) and niah_first_last (a rule chosen by the question) the decision can be read off the
    needle alone: keep it if it says "magic". It is still a choice of WHAT to remember that the
    warm start (which keeps a random needle, right 1/4 of the time) leaves to RL. Measured
    (EXPERIMENTS.md, session 6): a from-scratch 1M-parameter model learns this rule from reward
    only slowly.
    """
    return _niah(length, seed, tokenizer, "niah_distractors", haystack="prose", n_keys=4, short=True,
                 asked_key="magic")


def niah_number_among_prices(length, seed, tokenizer):
    """niah_distractors where the distractors are a different KIND of fact: "What is the magic
    number?", one needle "The magic number is 7." and three prices "The bold price is $3." (other
    keys), one per quarter in random order, four different digits. The memory holds one value,
    so the agent must keep the number and let the prices pass, wherever the number comes.

    The warm start copies any fact (" 7." or " $3.") and keeps a random one, right about 1/4 of
    the time; which to keep is RL's to learn. Here the deciding feature is one token of the value
    itself ("$" or not), which the model reads anyway to copy the value; in niah_distractors it is
    the key two tokens before the value, and in niah_first_last the question far back in the
    prompt, which a from-scratch 1M-parameter model learns from reward only slowly (EXPERIMENTS.md).
    Measured (train.py's CPU default, seed 0, session 27; 64 held-out documents): greedy accuracy
    21.9% after the warm start, 98.4% after 80 DAPO steps, 100% at 64x the training length
    (README, "Across seeds").
    """
    return _niah(length, seed, tokenizer, "niah_number_among_prices", haystack="prose", n_keys=4,
                 short=True, asked_key="magic", price_distractors=True)


def asked_word(question: str) -> str | None:
    """The word a short-needle question asks about, or None for any other question.

    >>> asked_word("What is the bold number?"), asked_word("What is the last number?"), asked_word("Who?")
    ('bold', 'last', None)
    """
    match = re.fullmatch(r"What is the (\w+) number\?", question)
    return match.group(1) if match else None


# the tasks whose questions asked_word understands
SHORT_TASKS = ("niah_multikey_short", "niah_first_last", "niah_distractors", "niah_number_among_prices")


def niah_multivalue(length, seed, tokenizer):
    return _niah(length, seed, tokenizer, "niah_multivalue", haystack="prose", n_values=4)


def niah_multiquery(length, seed, tokenizer):
    return _niah(length, seed, tokenizer, "niah_multiquery", haystack="prose", n_keys=4,
                 n_queries=4)


def variable_tracking(length, seed, tokenizer, hops=4):
    """VAR A = 12345, then VAR B = VAR A, ... (hops links), spread in order over noise text."""
    count = _TokenCounter(tokenizer)

    def build(budget):
        rng = random.Random(seed)
        names = _distinct(rng, hops + 1, lambda r: "".join(r.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZ")
                                                           for _ in range(5)))
        value = str(rng.randint(10_000, 99_999))
        lines = [f"VAR {names[0]} = {value}."]
        lines += [f"VAR {names[i]} = VAR {names[i - 1]}." for i in range(1, hops + 1)]
        depths = sorted(rng.random() for _ in lines)  # the chain reads in order
        fixed = sum(count(" " + line) for line in lines)
        if fixed >= budget:
            raise ValueError(f"vt: length {length} is too small, the chain alone takes "
                             f"{fixed} tokens")
        items = _take_until(_noise_stream(), budget - fixed, count)
        context, spans = _assemble(items, list(zip(depths, lines, lines)))
        meta = {
            "question": f"Find every variable that is assigned the value {value}, directly "
                        "or through other variables.",
            "answers": names,
            "chain": [{"text": t, "start": s, "end": e} for s, e, t in spans],
        }
        return context, meta

    return _fit(build, length, tokenizer, "vt")


# ----------------------------------------------------------------------------------------------
# Synthetic two-hop QA (after HotpotQA): an invented world written up as documents

_FIRST_NAMES = (
    "Alice Bruno Clara Dmitri Elena Felix Greta Hugo Ines Jonas Karin Leo Mira Nils Olga Pavel "
    "Quinn Rosa Stefan Tara Ulrich Vera Walter Xenia Yusuf Zora Anton Bianca Carlos Daria Emil "
    "Fiona Gustav Helga Ivan Julia Kasper Lena Marco Nora Oskar Petra Rafael Sofia Tomas "
    "Ursula Viktor Wanda Amir Selma").split()
_SURNAME_HEADS = ("Ash Brem Cal Dor Eld Fen Gar Hal Ist Jor Kel Lind Mor Nor Ost Pel Quar Ros "
                  "Sten Tor Ulm Vass Wen Yar Zell Bram Crad Drum Fros Grim").split()
_SURNAME_TAILS = "berg mann ova quist worth ley sen dahl ski nik holt er rich kov".split()
_CITY_HEADS = ("Bel Cor Dun Est Fal Glen Har Kil Lor Mar Nes Oak Pen Riv Sal Tam Ver Wyn Ald "
               "Bry Cas Dev Elm Fair").split()
_CITY_TAILS = "haven mouth field bury port wick stead gate minster cross".split()
_COMPANY_HEADS = ("Zen Vox Kry Lum Nex Orb Tri Vel Xan Ydr Ark Bex Cyr Dyn Evo Fyr Hex Ion "
                  "Jov Kin Myr Nov Opt Pyx Qor Rax Syn Tal Umb Vir").split()
_COMPANY_TAILS = "tek ora ix ant on ica ara eon io umo".split()
_COMPANY_KINDS = {  # name suffix -> what the company does
    "Foods": "food", "Motors": "car", "Labs": "research", "Textiles": "textile",
    "Shipping": "shipping", "Pharma": "pharmaceutical", "Energy": "energy",
    "Media": "media", "Robotics": "robotics", "Insurance": "insurance", "Breweries": "brewing",
    "Airlines": "airline", "Software": "software", "Steel": "steel", "Bank": "banking",
    "Furniture": "furniture", "Toys": "toy", "Optics": "optics", "Paper": "paper",
    "Telecom": "telecommunications"}
_PROFESSIONS = ("engineer|accountant|chemist|architect|lawyer|designer|economist|pilot|"
                "translator|surveyor|geologist|journalist|pharmacist|statistician").split("|")
_HOBBIES = ("sailing|chess|gardening|long walks|painting|birdwatching|cooking|cycling|"
            "playing the cello|restoring old radios|fishing|pottery").split("|")
_TRAITS = "patient|cheerful|stubborn|generous|careful|witty|reserved|ambitious".split("|")
_CITY_SIZES = "small|large|busy|quiet|historic|growing".split("|")
_CITY_SITES = ("on the northern coast|in a wide river valley|at the foot of the mountains|"
               "on the shore of a large lake|near the eastern border|on a windy plateau").split("|")
_CITY_SIGHTS = ("old harbour|university|spring festival|covered market|botanical garden|"
                "steep streets|cathedral|night trains").split("|")
_QUALITIES = "reliable|affordable|innovative|old fashioned|carefully made|popular".split("|")


class _World:
    """Invented cities, companies (each based in one city) and people (each with one employer).

    Names come from shuffled pools, so every entity is unique; a pool running dry means the
    requested context is longer than this world can describe (about 2M tokens).
    """

    def __init__(self, rng):
        self.rng = rng
        self.pools = {
            "person": [f"{f} {h}{t}" for f in _FIRST_NAMES for h in _SURNAME_HEADS
                       for t in _SURNAME_TAILS],
            "company": [f"{h}{t} {k}" for h in _COMPANY_HEADS for t in _COMPANY_TAILS
                        for k in _COMPANY_KINDS],
            "city": [f"{h}{t}" for h in _CITY_HEADS for t in _CITY_TAILS],
        }
        for pool in self.pools.values():
            rng.shuffle(pool)
        self.cities, self.companies, self.people = [], {}, {}

    def _name(self, kind):
        if not self.pools[kind]:
            raise ValueError(f"hotpot_synth ran out of invented {kind} names (it can "
                             "describe about 2M tokens); ask for a shorter context")
        return self.pools[kind].pop()

    def new_city(self):
        self.cities.append(self._name("city"))
        return self.cities[-1]

    def some_city(self, p_new):
        """A new city with probability p_new (always while there are few), else a known one."""
        if self.pools["city"] and (len(self.cities) < 8 or self.rng.random() < p_new):
            return self.new_city()
        return self.rng.choice(self.cities)

    def new_company(self):
        rng = self.rng
        name = self._name("company")
        city = self.some_city(p_new=0.3)
        self.companies[name] = {"city": city, "founded": rng.randint(1850, 2015)}
        return name

    def new_person(self, new_employer=False):
        rng = self.rng
        name = self._name("person")
        if new_employer or (self.pools["company"] and
                            (len(self.companies) < 8 or rng.random() < 0.15)):
            employer = self.new_company()
        else:
            employer = rng.choice(list(self.companies))
        birth_city = self.some_city(p_new=0.2)
        self.people[name] = {"employer": employer, "born": rng.randint(1940, 2000),
                             "birth_city": birth_city}
        return name

    # Each document: (title, fact sentences, filler sentences). Only filler may be trimmed.
    def person_doc(self, name, forbidden):
        rng, p, first = self.rng, self.people[name], name.split()[0]
        facts = [f"{name} is {_article(rng.choice(_PROFESSIONS))} who was born in {p['born']} "
                 f"in {p['birth_city']}.", f"{name} works for {p['employer']}."]
        filler = [f"Outside work, {first} enjoys {rng.choice(_HOBBIES)}.",
                  f"Friends describe {first} as {rng.choice(_TRAITS)}."]
        return name, facts, _with_prose(rng, filler, forbidden)

    def company_doc(self, name, forbidden):
        rng, c = self.rng, self.companies[name]
        kind = _COMPANY_KINDS[name.split()[-1]]
        facts = [f"{name} is {_article(kind)} company founded in {c['founded']}.",
                 f"It has its headquarters in {c['city']}."]
        filler = [f"The company is known for its {rng.choice(_QUALITIES)} products."]
        return name, facts, _with_prose(rng, filler, forbidden)

    def city_doc(self, name, forbidden):
        rng = self.rng
        facts = [f"{name} is {_article(rng.choice(_CITY_SIZES))} city {rng.choice(_CITY_SITES)}."]
        filler = [f"It is known for its {rng.choice(_CITY_SIGHTS)}."]
        return name, facts, _with_prose(rng, filler, forbidden)

    def distractor_doc(self, forbidden):
        r = self.rng.random()
        if r < 0.1 and self.pools["city"]:
            return self.city_doc(self.new_city(), forbidden)
        if r < 0.35 and self.pools["company"]:
            return self.company_doc(self.new_company(), forbidden)
        return self.person_doc(self.new_person(), forbidden)


def _article(word):
    return ("an " if word[0] in "aeiou" else "a ") + word


def _with_prose(rng, filler, forbidden):
    return filler + [prose_sentence(rng, forbidden) for _ in range(rng.randint(2, 5))]


def _synth_question(world, rng):
    """(question, answer, qtype, gold documents) for one bridge or comparison question."""
    kind = rng.choice(["bridge", "bridge", "compare_founded", "compare_born"])
    if kind == "bridge":
        person = world.new_person(new_employer=True)
        employer = world.people[person]["employer"]
        question = f"In which city is the employer of {person} based?"
        answer = world.companies[employer]["city"]
        return question, answer, kind, [("person", person), ("company", employer)]
    table, attr, make, doc_kind = (
        (world.companies, "founded", world.new_company, "company") if kind == "compare_founded"
        else (world.people, "born", world.new_person, "person"))
    a = make()
    b = make()
    while table[b][attr] == table[a][attr]:
        b = make()
    answer = a if table[a][attr] < table[b][attr] else b
    if kind == "compare_founded":
        question = f"Which company was founded earlier, {a} or {b}?"
    else:
        question = f"Who was born earlier, {a} or {b}?"
    return question, answer, kind, [(doc_kind, a), (doc_kind, b)]


def render_documents(docs) -> str:
    """[(title, text), ...] -> 'Document 1:\\n{title}\\n{text}\\n\\nDocument 2:...'."""
    return "\n\n".join(f"Document {i}:\n{title}\n{text}" for i, (title, text) in
                       enumerate(docs, 1))


def hotpot_synth(length, seed, tokenizer, n_docs=None):
    """Two-hop QA over gold + distractor documents, shuffled.

    Give either length (tokens; distractors are added, then filler sentences trimmed, from
    the distractors first, until the context measures `length`) or n_docs (exactly that many documents, gold
    included; length is then ignored and n_tokens reports what it came to).
    """
    count = _TokenCounter(tokenizer)
    if n_docs is not None and n_docs < 2:
        raise ValueError(f"hotpot_synth: n_docs must be at least 2 (the gold documents), "
                         f"got {n_docs}")

    def build(budget):
        rng = random.Random(seed)
        world = _World(random.Random(rng.getrandbits(64)))
        question, answer, qtype, gold_refs = _synth_question(world, rng)
        forbidden = [answer]
        make = {"person": world.person_doc, "company": world.company_doc}
        gold = [make[kind](name, forbidden) for kind, name in gold_refs]
        distractors = []

        def doc_tokens(doc, number):  # the numbers 1..N get used once each, whatever order
            return count(f"\n\nDocument {number}:\n{doc[0]}\n" + " ".join(doc[1] + doc[2]))

        facts_only = sum(doc_tokens((d[0], d[1], []), k + 1) for k, d in enumerate(gold))
        if n_docs is None and facts_only > budget * (1 + LENGTH_TOLERANCE):
            raise ValueError(f"hotpot_synth: length {length} is too small, the facts of the "
                             f"two gold documents alone take {facts_only} tokens")
        total = sum(doc_tokens(d, k + 1) for k, d in enumerate(gold))
        while (len(gold) + len(distractors) < n_docs) if n_docs is not None else total < budget:
            distractors.append(world.distractor_doc(forbidden))
            total += doc_tokens(distractors[-1], len(gold) + len(distractors))
        docs = gold + distractors
        order = list(range(len(docs)))
        rng.shuffle(order)
        if n_docs is None:  # trim filler, last distractors first, until closest to budget
            excess = count(_render(docs, order)) - budget
            for doc in distractors[::-1] + gold:
                while doc[2] and excess > 0 and count(" " + doc[2][-1]) < 2 * excess:
                    excess -= count(" " + doc[2].pop())
        context = _render(docs, order)
        meta = {"question": question, "answers": [answer], "qtype": qtype,
                "gold_docs": sorted(order.index(i) + 1 for i in range(len(gold))),
                "gold_titles": [d[0] for d in gold], "n_docs": len(docs)}
        return context, meta

    if n_docs is not None:
        context, meta = build(None)
        return context, meta, len(tokenizer.encode(context))
    return _fit(build, length, tokenizer, "hotpot_synth")


def _render(docs, order):
    return render_documents([(docs[i][0], " ".join(docs[i][1] + docs[i][2])) for i in order])


TASKS = {
    "niah_single_noise": niah_single_noise,
    "niah_single_prose": niah_single_prose,
    "niah_multikey": niah_multikey,
    "niah_multikey_short": niah_multikey_short,
    "niah_first_last": niah_first_last,
    "niah_distractors": niah_distractors,
    "niah_number_among_prices": niah_number_among_prices,
    "niah_multivalue": niah_multivalue,
    "niah_multiquery": niah_multiquery,
    "vt": variable_tracking,
    "hotpot_synth": hotpot_synth,
}


# ----------------------------------------------------------------------------------------------
# Samples, sample sets, lengths

def check_request(task, length, n_docs):
    """A ValueError naming what is wrong with a request make_sample cannot meet with any seed."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; valid tasks: {', '.join(TASKS)}")
    if n_docs is not None:
        if task != "hotpot_synth":
            raise ValueError(f"n_docs only applies to hotpot_synth, not {task!r}")
        if n_docs > MAX_DOCS:
            raise ValueError(f"n_docs {n_docs:,} is past the {MAX_DOCS:,} documents (MAX_DOCS) this generates")
    else:
        if not isinstance(length, int) or isinstance(length, bool) or length <= 0:
            raise ValueError(f"length must be a positive number of tokens, got {length!r}")
        if length > MAX_LENGTH:
            raise ValueError(f"length {length:,} is past the {MAX_LENGTH:,} tokens (MAX_LENGTH) a document "
                             f"may have here")


def make_sample(task: str, length: int | None, seed: int, tokenizer, n_docs: int | None = None):
    """One sample of `task` whose context measures `length` tokens (within 2%) under tokenizer.

    tokenizer: anything with encode(str) -> list[int] that adds no special tokens.
    n_docs: hotpot_synth only, a document count instead of a token length.
    """
    check_request(task, length, n_docs)
    if n_docs is not None:
        context, meta, n_tokens = hotpot_synth(None, seed, tokenizer, n_docs=n_docs)
    else:
        context, meta, n_tokens = TASKS[task](length, seed, tokenizer)
    return {"task": task, "question": meta.pop("question"), "context": context,
            "answers": meta.pop("answers"), "length": length, "n_tokens": n_tokens,
            "seed": seed, **meta}


def make_sample_retry(task: str, length: int | None, seed: int, tokenizer, n_docs: int | None = None,
                      attempts: int = 100):
    """make_sample, or, when that seed's text cannot hit the length within the tolerance (whole
    sentences cannot always fill the last few tokens: at 128 tokens about 1 seed in 3 of
    niah_number_among_prices misses), the next seed of its own sequence, seed + k * 10**9.
    Deterministic, so train.py and infer.py build the same held-out documents from the same seeds."""
    check_request(task, length, n_docs)  # (a request no seed can meet fails here, not 100 times)
    for k in range(attempts):
        try:
            return make_sample(task, length, seed + k * 10**9, tokenizer, n_docs=n_docs)
        except ValueError as e:  # (a bad request fails every try at once: its message ends up below)
            error = e
    raise ValueError(f"no {task} sample from seed {seed} in {attempts} tries: {error}")


def make_samples(task: str, length: int | None, n: int, seed: int, tokenizer,
                 n_docs: int | None = None) -> list[dict]:
    """n distinct samples; sample i comes from seed * 1_000_000 + i (make_sample_retry: a seed
    whose text misses the length takes the next of its own sequence), skipping exact repeats.
    Distinct means distinct documents: niah_number_among_prices has only 10 question/answer pairs."""
    if n <= 0 or n >= 1_000_000:
        raise ValueError(f"n must be between 1 and 999999, got {n}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")  # (random.Random(-s) is random.Random(s))
    samples, seen, repeats = [], set(), 0
    for i in range(1_000_000):
        if len(samples) == n or repeats == 1000:
            break
        sample = make_sample_retry(task, length, seed * 1_000_000 + i, tokenizer, n_docs=n_docs)
        signature = (sample["question"], tuple(sample["answers"]), sample["context"])
        repeats = repeats + 1 if signature in seen else 0  # repeats in a row
        if not repeats:
            seen.add(signature)
            samples.append(sample)
    if len(samples) < n:
        raise ValueError(f"could not make {n} distinct {task} samples (made {len(samples)}; the last "
                         f"{repeats} seeds repeated earlier documents)")
    return samples


def parse_length(text) -> int:
    """Token count from '4096', '32k', '1.5k' or '1M'. k = 1000 and M = 1,000,000 (decimal).

    >>> parse_length("32k"), parse_length("1M"), parse_length(" 1.5K "), parse_length("16.1k"), parse_length(4096)
    (32000, 1000000, 1500, 16100, 4096)
    """
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kKmM]?)\s*", str(text))
    if not m:
        raise ValueError(f"cannot read length {text!r}: expected tokens like 4096, 32k or 1M")
    value = Fraction(m[1]) * {"": 1, "k": 1000, "m": 1_000_000}[m[2].lower()]  # exact: 16.1k = 16100
    if value.denominator != 1 or value <= 0:
        raise ValueError(f"length {text!r} must be a positive whole number of tokens")
    return int(value)


def save_jsonl(samples, path) -> None:
    """One JSON object per line (UTF-8), parent folders created. Written to a temporary file that
    then replaces `path`, so a failure half-way leaves an existing file as it was."""
    path = os.path.realpath(path)  # (a symlink's target is what gets rewritten)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            for sample in samples:
                f.write(json.dumps(sample, ensure_ascii=False) + "\n")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


REQUIRED_KEYS = ("question", "context", "answers")


def _not_unicode(named_texts):
    """What is wrong with the first of (name, text) that no encoding can write, or None: JSON allows
    "\\ud800" escapes (lone surrogates), which the tokenizer cannot take.

    >>> _not_unicode([("the question", "ok"), ("the answer", "7\\udc00")])
    'the answer is not valid Unicode (a lone surrogate at character 1)'
    """
    for name, text in named_texts:
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as e:
            return f"{name} is not valid Unicode (a lone surrogate at character {e.start})"
    return None


def _is_needle(needle, context):
    """Whether a JSONL sample's needle has the shape make_sample gives: key and value strings, and
    the character span start:end of its sentence in the context (both or neither)."""
    if not (isinstance(needle, dict) and isinstance(needle.get("key"), str) and isinstance(needle.get("value"), str)):
        return False
    if "start" not in needle and "end" not in needle:
        return True
    start, end = needle.get("start"), needle.get("end")
    return all(type(i) is int for i in (start, end)) and 0 <= start < end <= len(context)


def load_jsonl(path) -> list[dict]:
    """Samples saved by save_jsonl; errors name the file and the bad line."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"no sample file at {path}")
    samples = []
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.readlines()
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text (byte {e.start})") from None
    except OSError as e:  # a directory, no permission, ...
        raise ValueError(f"{path}: cannot read it ({e.strerror})") from None
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            sample = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}, line {lineno}: not valid JSON ({e.msg})") from None
        if not isinstance(sample, dict):
            raise ValueError(f"{path}, line {lineno}: expected a JSON object")
        missing = [k for k in REQUIRED_KEYS if k not in sample]
        if missing:
            raise ValueError(f"{path}, line {lineno}: missing {', '.join(missing)}")
        if not isinstance(sample["question"], str) or not isinstance(sample["context"], str):
            raise ValueError(f"{path}, line {lineno}: question and context must be strings")
        for key in ("question", "context"):
            if not sample[key].strip():
                raise ValueError(f"{path}, line {lineno}: the {key} is empty: " +
                                 ("nothing to ask" if key == "question" else "there is nothing to read"))
        answers = sample["answers"]
        if not (isinstance(answers, list) and answers and all(isinstance(a, str) and a.strip() for a in answers)):
            raise ValueError(f"{path}, line {lineno}: answers must be a non-empty list of non-empty strings "
                             f"(an empty one is in every reply), got {json.dumps(answers)[:60]}")
        if not all(normalize_answer(a) for a in answers):  # "the", "." -> "": sub-EM would pass any reply
            raise ValueError(f"{path}, line {lineno}: an answer is empty once normalized (lowercase, no "
                             f"punctuation, no a/an/the), so every reply would match it: {json.dumps(answers)[:60]}")
        problem = _not_unicode([("question", sample["question"]), ("context", sample["context"])] +
                               [("an answer", a) for a in answers])
        if problem:
            raise ValueError(f"{path}, line {lineno}: {problem}")
        needles = sample.get("needles", [])  # (optional: a generated needle task's, read by train.py and infer.py)
        if not (isinstance(needles, list) and all(_is_needle(n, sample["context"]) for n in needles)):
            raise ValueError(f"{path}, line {lineno}: needles must be a list of objects with a string key and "
                             f"value, and an integer start < end inside the context (or neither), got "
                             f"{json.dumps(needles)[:80]}")
        task = sample.get("task", "hotpotqa")
        if not isinstance(task, str) or task not in REWARD_KIND:
            raise ValueError(f"{path}, line {lineno}: unknown task {task!r} (it decides the "
                             f"reward); known: {', '.join(sorted(REWARD_KIND))}")
        samples.append(sample)
    if not samples:
        raise ValueError(f"{path}: no samples (the file is empty or holds only blank lines)")
    return samples


# ----------------------------------------------------------------------------------------------
# Real HotpotQA -> RULER-HotpotQA

def _random_order(rng, n):
    """0..n-1 in random order, drawn lazily (Fisher-Yates, one swap per draw)."""
    pool = list(range(n))
    for k in range(n):
        j = rng.randrange(k, n)
        pool[k], pool[j] = pool[j], pool[k]
        yield pool[k]


def _read_json(path, what):
    if not os.path.exists(path):
        raise FileNotFoundError(f"no {what} at {path}")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text (byte {e.start})") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    except OSError as e:  # a directory, no permission, ...
        raise ValueError(f"{path}: cannot read it ({e.strerror})") from None


def _check_hotpotqa_item(item):
    """None if item has HotpotQA's shape, else what is wrong with it."""
    if not isinstance(item, dict):
        return f"not a JSON object but a {type(item).__name__}"
    missing = [k for k in ("question", "answer", "context") if k not in item]
    if missing:
        return f"missing {', '.join(missing)}"
    for key in ("question", "answer"):
        if not isinstance(item[key], str):
            return f"{key} is not a string but a {type(item[key]).__name__}"
    if not item["question"].strip():
        return "the question is empty: nothing to ask"
    def is_paragraph(p):  # [title, [sentence, ...]]
        return (isinstance(p, list) and len(p) == 2 and isinstance(p[0], str) and isinstance(p[1], list)
                and all(isinstance(x, str) for x in p[1]))
    if not isinstance(item["context"], list) or not all(is_paragraph(p) for p in item["context"]):
        return "context is not a list of [title, [sentences]] pairs"
    if not item["context"]:
        return "context is empty (no paragraphs of its own)"
    texts = [("the question", item["question"]), ("the answer", item["answer"])] + \
        [(f"paragraph {title!r}", title + "".join(s)) for title, s in item["context"]]
    problem = _not_unicode(texts)
    if problem:
        return problem
    facts = item.get("supporting_facts", [])
    if not isinstance(facts, list) or not all(isinstance(f, list) and len(f) == 2 and isinstance(f[0], str)
                                              for f in facts):
        return "supporting_facts is not a list of [title, sentence index] pairs"
    return None


class HotpotQA:
    """An official HotpotQA JSON file, read and checked once; `sample(qi, ...)` builds the
    RULER-HotpotQA sample of question qi when it is needed (the 90K-question train file at 200
    documents a question would be ~10 GB of text if every sample were built at once: an estimate,
    90K x ~28K tokens x ~4 bytes).

    Each question keeps all of its own paragraphs and gets paragraphs of *other* questions as
    distractors (never one sharing a title with its own), all rendered as
    `Document i:\\n{title}\\n{text}` and shuffled with a seeded RNG (seed, question index).
    """

    def __init__(self, path):
        self.path = path
        data = _read_json(path, "HotpotQA file")
        if not isinstance(data, list):
            raise ValueError(f"{path}: expected a JSON list of HotpotQA questions")
        for i, item in enumerate(data):
            problem = _check_hotpotqa_item(item)
            if problem:
                raise ValueError(f"{path}: question {i}: {problem}")
        # an answer that normalizes to nothing ("The", "-") is in every reply by sub-EM: a free
        # reward. Such questions are set aside (their indices in `skipped`), not the whole file
        usable = [bool(normalize_answer(item["answer"])) for item in data]
        self.skipped = [i for i, ok in enumerate(usable) if not ok]
        self.items = [item for item, ok in zip(data, usable) if ok]
        self.file_index = [i for i, ok in enumerate(usable) if ok]  # items[k] is the file's question file_index[k]
        if not self.items:
            raise ValueError(f"{path}: no questions" + (" with an answer that survives normalization"
                                                        if data else " (an empty list)"))
        # every distinct paragraph, in a fixed order; paragraph text = its sentences joined as-is
        self.paragraphs = sorted({(t, "".join(s)) for item in data for t, s in item["context"]})
        self.index = {p: i for i, p in enumerate(self.paragraphs)}

    def __len__(self):
        return len(self.items)

    def sample(self, qi, n_docs=None, length=None, tokenizer=None, seed=0) -> dict:
        """Question qi with n_docs documents in all (RULER: 50 ~ 7K tokens, 200 ~ 28K), or about
        length tokens (needs tokenizer; whole documents are added while that brings the count
        closer, so the context is within half a paragraph of length, not the generated tasks' 2%;
        a length shorter than the question's own paragraphs is an error), or neither: just the
        question's own paragraphs (HotpotQA's distractor setting, ~10).
        """
        if n_docs is not None and length is not None:
            raise ValueError("HotpotQA.sample: give n_docs or length, not both")
        if length is not None and tokenizer is None:
            raise ValueError("HotpotQA.sample: a length in tokens needs a tokenizer")
        if not 0 <= qi < len(self.items):
            raise ValueError(f"HotpotQA.sample: question {qi} is out of range: {self.path} has "
                             f"{len(self.items)} questions")
        item, paragraphs = self.items[qi], self.paragraphs
        number = self.file_index[qi]  # (the file's own count, which its error messages use)
        rng = random.Random(seed * 1_000_003 + qi)
        own = list(dict.fromkeys(self.index[(t, "".join(s))] for t, s in item["context"]))
        own_titles = {paragraphs[i][0] for i in own}
        others = (i for i in _random_order(rng, len(paragraphs)) if paragraphs[i][0] not in own_titles)
        chosen = list(own)
        if n_docs is not None:
            if n_docs < len(own):
                raise ValueError(f"n_docs={n_docs} is fewer than question {number}'s own "
                                 f"{len(own)} paragraphs")
            chosen += itertools.islice(others, n_docs - len(own))
            if len(chosen) < n_docs:
                raise ValueError(f"n_docs={n_docs} but {self.path} only has {len(chosen) - len(own)} "
                                 f"distractor paragraphs for question {number}")
        elif length is not None:
            count = _TokenCounter(tokenizer)

            def doc_tokens(i, number):  # numbers 1..N are all used whatever the shuffle, so the sum is exact
                return count(f"\n\nDocument {number}:\n{paragraphs[i][0]}\n{paragraphs[i][1]}")
            total = sum(doc_tokens(i, k + 1) for k, i in enumerate(own))
            if total > length * (1 + LENGTH_TOLERANCE):  # the question's own paragraphs are all kept
                raise ValueError(f"length={length} tokens is shorter than question {number}'s own {len(own)} "
                                 f"paragraphs (~{total} tokens), which every sample keeps; ask for a longer "
                                 f"length or give a document count (n_docs) instead")
            for i in others:
                n_doc = doc_tokens(i, len(chosen) + 1)
                if total + n_doc > length and (total + n_doc - length) >= (length - total):
                    break  # this document would take us further from length
                chosen.append(i)
                total += n_doc
            else:  # every paragraph of the file is in: short of the length, say so rather than return less
                if total < 0.98 * length:
                    raise ValueError(f"length={length} but {self.path} only has paragraphs for ~{total} tokens "
                                     f"around question {number}; ask for fewer tokens or use a bigger file")
        rng.shuffle(chosen)
        context = render_documents([paragraphs[i] for i in chosen])
        gold_titles = sorted({t for t, _ in item.get("supporting_facts", [])})
        return {
            "task": "hotpotqa", "question": item["question"], "context": context,
            "answers": [item["answer"]], "length": length,
            "n_tokens": len(tokenizer.encode(context)) if tokenizer is not None else None,
            "seed": seed, "id": item.get("_id", str(qi)), "n_docs": len(chosen),
            "gold_titles": gold_titles,
            "gold_docs": [k + 1 for k, i in enumerate(chosen) if paragraphs[i][0] in gold_titles],
            "type": item.get("type"), "level": item.get("level")}


def load_hotpotqa(path, n_docs=None, length=None, tokenizer=None, seed=0, n=None) -> list[dict]:
    """RULER-HotpotQA samples of the first n questions (all by default) of an official HotpotQA
    JSON file (which users bring); sizes as in `HotpotQA.sample`. Questions whose answer is
    empty once normalized are left out (HotpotQA.skipped)."""
    corpus = HotpotQA(path)
    return [corpus.sample(qi, n_docs=n_docs, length=length, tokenizer=tokenizer, seed=seed)
            for qi in range(len(corpus))[:n]]


# ----------------------------------------------------------------------------------------------
# Text for training the tokenizer

class _WordCounter:
    """Stand-in tokenizer, one "token" per word, so text can be made before ours exists."""

    @staticmethod
    def encode(text):
        return text.split()


def tokenizer_corpus(seed: int = 0, n_chars: int = 300_000) -> str:
    """About n_chars of text from every task family: questions, contexts and answers."""
    parts, size, i = [], 0, 0
    while size < n_chars:
        for task in TASKS:
            s = make_sample(task, 1000, seed * 1_000_000 + i, _WordCounter())
            text = "\n".join([s["question"], s["context"], ", ".join(s["answers"])])
            parts.append(text)
            size += len(text)
        i += 1
    return "\n\n".join(parts)


# ----------------------------------------------------------------------------------------------
# Command line

def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m memagent.tasks", description="Generate long-context samples as JSONL.")
    parser.add_argument("--task", required=True, help=f"one of {', '.join(TASKS)}, or hotpotqa")
    parser.add_argument("--length", help="context length in tokens: 4096, 32k, 1M (k = 1000)")
    parser.add_argument("--docs", type=int, help="hotpot_synth / hotpotqa: number of documents")
    parser.add_argument("--n", type=int, default=1, help="number of samples")
    parser.add_argument("--seed", type=int, default=0,
                        help="sample i uses generator seed SEED * 1,000,000 + i. train.py --seed T trains on "
                             "--seed 10T here, evaluates on 10T + 1 and gates its copy curriculum on 10T + 2: "
                             "a SEED ending in 3-9 is unseen by any train.py run (hotpotqa: SEED draws only the "
                             "distractors of the file's first --n questions)")
    parser.add_argument("--out", required=True, help="output .jsonl file")
    parser.add_argument("--hotpotqa", help="hotpotqa: path of the official HotpotQA JSON file")
    parser.add_argument("--tokenizer", help="a sentencepiece .model file (default: train or "
                                            "load ours from --tokenizer-dir)")
    parser.add_argument("--tokenizer-dir", default=None, help="cache folder of our tokenizer")
    parser.add_argument("--vocab-size", type=int, default=None)
    args = parser.parse_args(argv)

    if args.task not in TASKS and args.task != "hotpotqa":
        parser.error(f"unknown task {args.task!r}; valid: {', '.join(TASKS)}, hotpotqa")
    if args.length is None and args.docs is None:
        parser.error("give --length (or --docs for hotpot_synth / hotpotqa)")
    if args.docs is not None and args.task not in ("hotpot_synth", "hotpotqa"):
        parser.error("--docs only applies to hotpot_synth and hotpotqa")
    if args.docs is not None and args.length is not None:
        parser.error("give --length or --docs, not both")
    if args.tokenizer and (args.tokenizer_dir or args.vocab_size):
        parser.error("--tokenizer is a finished .model file; --tokenizer-dir and --vocab-size only "
                     "apply to our own tokenizer")
    if args.task == "hotpotqa" and not args.hotpotqa:
        parser.error("--task hotpotqa needs --hotpotqa FILE")
    if args.n <= 0:
        parser.error(f"--n must be positive, got {args.n}")
    if args.seed < 0:  # (random.Random(-s) is random.Random(s): another seed's samples, repeated)
        parser.error(f"--seed must be >= 0, got {args.seed}")
    if args.vocab_size is not None and args.vocab_size < 1:
        parser.error(f"--vocab-size must be >= 1, got {args.vocab_size}")
    if args.hotpotqa and args.task != "hotpotqa":
        parser.error(f"--hotpotqa FILE is read by --task hotpotqa only, not --task {args.task}")
    if args.hotpotqa and os.path.exists(args.hotpotqa) and os.path.exists(args.out) and \
            os.path.samefile(args.hotpotqa, args.out):
        parser.error(f"--out {args.out} is the --hotpotqa file itself: writing would destroy it")
    if args.tokenizer_dir and os.path.exists(args.tokenizer_dir) and not os.path.isdir(args.tokenizer_dir):
        parser.error(f"--tokenizer-dir {args.tokenizer_dir} is a file; it names the folder our tokenizer is "
                     f"cached in (a finished .model file goes to --tokenizer)")
    try:
        length = parse_length(args.length) if args.length is not None else None
    except ValueError as e:
        parser.error(str(e))

    from memagent import tokenizer as tok  # here, not at the top: tokenizer.py imports us
    try:
        if args.tokenizer:
            tokenizer = tok.Tokenizer.load(args.tokenizer)
        else:
            tokenizer = tok.get_tokenizer(args.tokenizer_dir or tok.DEFAULT_CACHE_DIR,
                                          vocab_size=args.vocab_size or tok.DEFAULT_VOCAB_SIZE)
        start = time.time()
        if args.task == "hotpotqa":
            samples = load_hotpotqa(args.hotpotqa, n_docs=args.docs,
                                    length=None if args.docs else length,
                                    tokenizer=tokenizer, seed=args.seed, n=args.n)
        else:
            samples = make_samples(args.task, None if args.docs else length, args.n, args.seed,
                                   tokenizer, n_docs=args.docs)
    except (ValueError, OSError) as e:  # (OSError: a --tokenizer-dir that is a file, say)
        parser.error(str(e))
    try:
        save_jsonl(samples, args.out)
    except OSError as e:
        parser.error(f"cannot write --out {args.out}: {e.strerror}")
    if len(samples) < args.n:
        print(f"note: {args.hotpotqa} has only {len(samples)} usable questions, so {len(samples)} samples "
              f"are written, not --n {args.n}")
    mean = sum(s["n_tokens"] for s in samples) / len(samples)
    print(f"wrote {len(samples)} {args.task} samples (mean {mean:.0f} tokens) to {args.out} "
          f"in {time.time() - start:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
