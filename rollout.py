"""
Rollouts: the batched sampling engine, and (on top of it) the overwrite-memory agent.

The engine, `generate`, is what every rollout turn calls:
  1. one batched prefill: the prompts of all rows, right-padded to the longest, go through the model
     in a single forward that writes their keys/values into a preallocated KV cache (a prompt that
     several rows repeat, as a GRPO group does, is prefilled once and copied to its rows);
  2. one forward per decode step for the whole batch: every row feeds its last sampled token at its
     own next position (= its own next cache slot), so rows with different prompt lengths never
     read each other's positions and padding never enters attention;
  3. each row samples independently from its own distribution (temperature, top-k, top-p) with a
     seeded generator; a row that emits a stop id is finished and stops producing tokens.

For RL, every sampled token also gets its log-probability log softmax(logits / temperature)[token]
(temperature 1 for greedy rows), the distribution the trainer scores with too (as verl does). The
trainer does not divide by these: it recomputes the "old policy" log-probs with its own forward
(train.py, rl_step) and logs their gap to these as a check of the engine. Top-k / top-p truncation
is not in either: with top_p < 1 a token is drawn from the truncated distribution but scored under
the whole one, as verl scores vLLM's samples (training uses neither: the paper samples at top-p 1.0).

Speed on a GPU: an eager decode step of a 24-layer model is over a thousand small operations, and
the CPU issuing them, not the GPU, sets the pace (measured on an H100: ~29 ms a step for qwen-ish-0.5b
whether 1 or 16 rows decode). `cuda_graph=True` records one decode step as a CUDA graph once per
call and replays it every step (gpt-fast's trick); the static cache makes that possible, since a
replay must see the same tensors at the same addresses: `CudaGraphDecoder` below.
"""

import math
from dataclasses import dataclass
from numbers import Integral

import torch
import torch.nn.functional as F

from memagent.prompts import direct_prompt, final_prompt, initial_memory, memory_prompt
from memagent.reward import check_task, compute_reward
from memagent.tokenizer import chat_prompt

# -----------------------------------------------------------------------------
# The sampling engine


@dataclass
class Generation:
    """What `generate` returns for one row."""
    tokens: list  # sampled ids, the stop id included when the row stopped on one
    logprobs: list  # log p(token) under softmax(logits / temperature) (temperature 1 if greedy), one per token
    stop_reason: str  # "stop" (emitted a stop id) or "length" (ran out of max_new_tokens)


def filter_logits(logits, top_k=0, top_p=1.0):
    """Mask (to -inf) the logits (B, V) that top-k / top-p sampling may not pick.

    top_k=0 and top_p=1.0 keep everything. Top-p keeps the smallest set of most likely tokens whose
    probability mass reaches top_p (the most likely token is always kept). Example: probs
    [0.5, 0.3, 0.15, 0.05] with top_p=0.8 keep the first two (0.5 + 0.3 reaches 0.8).
    """
    if top_k and top_k < logits.size(-1):
        keep = torch.topk(logits, top_k, dim=-1).indices  # (B, top_k): exactly k ids, even among ties
        drop = torch.ones_like(logits, dtype=torch.bool).scatter(-1, keep, False)
        logits = logits.masked_fill(drop, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        mass_before = probs.cumsum(dim=-1) - probs  # mass of the strictly more likely tokens
        drop_sorted = mass_before >= top_p  # (B, V)
        drop_sorted[:, 0] = False  # the most likely token stays, even with top_p = 0
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


MIN_TEMPERATURE = 1e-6  # below it a sample is the argmax in all but name (and near 1e-37 logits / T overflows)


def check_sampling(temperature, top_k, top_p):
    """Raise a clear error for sampling settings that have no meaning."""
    if not (temperature == 0 or MIN_TEMPERATURE <= temperature < math.inf):
        raise ValueError(f"temperature must be 0 (greedy) or a finite number >= {MIN_TEMPERATURE} (below "
                         f"that sampling is greedy in all but name; infinity is uniform noise), got {temperature}")
    if not isinstance(top_k, Integral) or top_k < 0:
        raise ValueError(f"top_k must be an integer >= 0 (0 = off), got {top_k}")
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1] (1 = off), got {top_p}")


def sample_next(scaled_logits, greedy, top_k, top_p, generator):
    """One token per row (B,) from logits already divided by the temperature (B, V); greedy: argmax."""
    if greedy:
        return scaled_logits.argmax(dim=-1)
    probs = filter_logits(scaled_logits, top_k, top_p).softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def distinct(items):
    """The distinct (hashable) items in first-seen order, and for each item its index among them.

    >>> distinct(["a", "b", "a", "c", "b"])
    (['a', 'b', 'c'], [0, 1, 0, 2, 1])
    """
    index_of = {}
    source = [index_of.setdefault(item, len(index_of)) for item in items]
    return list(index_of), source


class CudaGraphDecoder:
    """One decode step of `model` over `cache`, captured once as a CUDA graph and replayed per step.

    A graph replays fixed kernels on fixed addresses, so everything a step reads lives in buffers
    made here: the tokens (B, 1) and positions (B, 1) are copied in before each replay, and every
    step attends over all cache slots (kv_len = the cache length; the mask hides the slots past
    each row's position, so the result is the eager step's). Capture runs inside torch.autocast
    with its weight-cast cache off when autocast is on: a cached cast is freed when the caller's
    autocast exits, and a graph that read it would read freed memory. Costs: under autocast every
    replay casts the fp32 weights to bf16 again, and each capture syncs, collects garbage and
    empties torch's allocator cache (torch.cuda.graph does): once per call, next to a turn's
    hundreds of steps.
    """

    def __init__(self, model, cache):
        B, L, device = cache.batch_size, cache.max_len, cache.k.device
        self.token = torch.zeros((B, 1), dtype=torch.long, device=device)
        # the warm-up step really runs and writes slot L-1 of every row: a slot no row reads before
        # it writes it itself (a row at position p attends to slots <= p, after writing slot p)
        self.positions = torch.full((B, 1), L - 1, dtype=torch.long, device=device)
        autocast = torch.autocast("cuda", dtype=torch.get_autocast_dtype("cuda"),
                                  enabled=torch.is_autocast_enabled("cuda"), cache_enabled=False)

        def step():
            return model(self.token, cache=cache, positions=self.positions, kv_len=L)[:, -1].float()  # (B, V)

        # streams and graphs belong to the *current* CUDA device: make it the model's (cuda:1 too),
        # or the capture would record nothing of the model's kernels and replays return stale logits
        self.device = device
        with torch.cuda.device(device):
            side = torch.cuda.Stream()  # warm up off the main stream (cuBLAS workspaces are made here)
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side), autocast:
                step()
            torch.cuda.current_stream().wait_stream(side)
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph), autocast:
                self.logits = step()  # (B, V): the graph's output buffer, refilled by every replay

    def __call__(self, token, positions):
        self.token.copy_(token)
        self.positions.copy_(positions)
        with torch.cuda.device(self.device):
            self.graph.replay()
        return self.logits


@torch.no_grad()
def generate(model, prompts, max_new_tokens, temperature=1.0, top_k=0, top_p=1.0, stop_ids=(),
             seed=None, generator=None, pad_id=0, share_prefill=True, cuda_graph=False):
    """Sample continuations for a batch of prompts of different lengths.

    prompts: list of B lists of token ids (each non-empty). Returns a list of B `Generation`s.
    max_new_tokens: one budget for all rows, or a list with one per row (the agent mixes memory
    turns and final-answer turns in one batch). Each row stops at its first stop id (kept as its
    last token) or when it has used its budget.
    Randomness comes from `generator` (a torch.Generator on the model's device) or, if None, from a
    new one seeded with `seed`; rows draw independently, so duplicated prompts (a GRPO group)
    get different samples.
    share_prefill: prefill each distinct prompt once and copy its keys/values and last-token logits
    to every row that repeats it (a group's G rollouts share their first prompt, and later ones
    while their memories agree). Only the prefill is shared: every row still draws its own tokens.
    False prefills every row (the slow, obvious way the tests compare against).
    cuda_graph: replay each decode step from a CUDA graph (`CudaGraphDecoder`; CUDA only).
    """
    device = model.lm_head.weight.device
    if cuda_graph and device.type != "cuda":
        raise ValueError(f"generate: cuda_graph=True needs a model on a CUDA device, this one is on {device}")
    B = len(prompts)
    if B == 0:
        return []
    if any(len(p) == 0 for p in prompts):
        raise ValueError("generate: every prompt needs at least one token")
    ids = torch.tensor([t for p in prompts for t in p])  # every prompt id, flat
    V = model.config.vocab_size
    if ids.is_floating_point() or ids.is_complex() or ids.min() < 0 or ids.max() >= V:
        raise ValueError(f"generate: prompt ids must be integers in [0, {V}) (the model's vocabulary), "
                         f"got values from {ids.min().item()} to {ids.max().item()}")
    check_sampling(temperature, top_k, top_p)
    budgets = list(max_new_tokens) if isinstance(max_new_tokens, (list, tuple)) else [max_new_tokens] * B
    if len(budgets) != B or not all(isinstance(n, Integral) for n in budgets) or min(budgets) < 1:
        raise ValueError(f"generate: need one budget >= 1 per prompt, got {max_new_tokens}")
    for p, n in zip(prompts, budgets):
        if len(p) + n > model.config.max_position_embeddings:
            raise ValueError(f"generate: a prompt of {len(p)} tokens + {n} new tokens exceeds the "
                             f"model's {model.config.max_position_embeddings} positions")
    max_new_tokens = max(budgets)
    lengths = torch.tensor([len(p) for p in prompts], device=device)  # (B,)
    budget = torch.tensor(budgets, device=device)  # (B,)
    T = max(len(p) for p in prompts)
    if generator is None:
        generator = torch.Generator(device=device)
        if seed is None:
            generator.seed()  # a fresh random seed for this generator only (the global RNG is untouched)
        else:
            generator.manual_seed(seed)
    stop = torch.tensor(sorted(set(stop_ids or ())) or [-1], device=device)

    # the U distinct prompts and, for each row, which of them it is (all B rows without sharing)
    if share_prefill:
        unique, source = distinct(tuple(p) for p in prompts)  # U prompts; (B,) index into them
    else:
        unique, source = prompts, list(range(B))

    # right-pad the distinct prompts into one (U, T) tensor; padding sits after each row's real tokens
    idx = torch.full((len(unique), T), pad_id, dtype=torch.long, device=device)
    for u, p in enumerate(unique):
        idx[u, :len(p)] = torch.tensor(p, dtype=torch.long)

    cache_len = max(len(p) + n for p, n in zip(prompts, budgets))
    cache = model.new_cache(B, cache_len)  # allocated once for the whole call
    last = torch.tensor([len(p) - 1 for p in unique], device=device)  # (U,)
    logits = model(idx, cache=cache, logits_index=last).float()  # (U, V): K/V land in cache rows 0..U-1
    if len(unique) < B:  # fan out: row b gets the slots and logits of its distinct prompt
        cache.copy_rows(source, upto=T)
        logits = logits[torch.tensor(source, device=device)]  # (B, V)

    out_tokens = torch.full((B, max_new_tokens), pad_id, dtype=torch.long, device=device)
    out_logprobs = torch.zeros((B, max_new_tokens), device=device)
    n_generated = torch.zeros(B, dtype=torch.long, device=device)  # tokens each row produced
    finished = torch.zeros(B, dtype=torch.bool, device=device)
    stopped = torch.zeros(B, dtype=torch.bool, device=device)
    check_every = 1 if device.type == "cpu" else 16  # polling `finished` syncs with the GPU
    decoder = CudaGraphDecoder(model, cache) if cuda_graph and max_new_tokens > 1 else None
    for step in range(max_new_tokens):
        scaled = logits / temperature if temperature > 0 else logits  # (B, V); greedy rows: temperature 1
        token = sample_next(scaled, temperature == 0, top_k, top_p, generator)  # (B,)
        logprob = F.log_softmax(scaled, dim=-1).gather(-1, token[:, None]).squeeze(-1)  # (B,) under `scaled`
        active = ~finished
        out_tokens[:, step] = torch.where(active, token, pad_id)
        out_logprobs[:, step] = torch.where(active, logprob, 0.0)
        n_generated += active.long()
        hit_stop = active & torch.isin(token, stop)
        stopped |= hit_stop
        finished |= hit_stop | (n_generated >= budget)
        if step + 1 == max_new_tokens or (step % check_every == 0 and bool(finished.all())):
            break
        # every row feeds its new token at its own next position: prompt length + step. (A finished
        # row's slots are never read again; its position is clamped only to stay inside the cache.)
        positions = (lengths + step).clamp(max=cache_len - 1)[:, None]  # (B, 1)
        if decoder is not None:
            logits = decoder(token[:, None], positions)  # (B, V), valid until the next replay
        else:
            kv_len = min(T + step + 1, cache_len)  # the slots any row can read so far
            logits = model(token[:, None], cache=cache, positions=positions, kv_len=kv_len)
            logits = logits[:, -1].float()  # (B, V)

    n_generated, stopped = n_generated.tolist(), stopped.tolist()
    out_tokens, out_logprobs = out_tokens.tolist(), out_logprobs.tolist()
    return [Generation(tokens=out_tokens[b][:n_generated[b]], logprobs=out_logprobs[b][:n_generated[b]],
                       stop_reason="stop" if stopped[b] else "length") for b in range(B)]


# -----------------------------------------------------------------------------
# The overwrite-memory agent (MemAgent, arXiv 2507.02259)
#
#   memory = initial memory
#   for chunk k of the document:   memory = reply to memory_prompt(problem, memory, chunk k)
#   answer = reply to final_prompt(problem, memory)
#
# Every prompt is built from token ids, not re-tokenized text: the problem and the document are
# encoded once, each chunk is a slice of `chunk_tokens` document ids (the last may be shorter),
# and the memory placed in the next prompt is the previous reply's ids, its stop token and any
# control id (<|im_start|>, <|pad|>, ... sampled mid-reply) dropped: the memory is data in the
# next prompt, and data never carries a control id, so a reply cannot fake a turn boundary there.
# So a prompt is never longer than template + problem + max(memory_tokens, initial memory) +
# chunk_tokens, and what the trainer scores later is exactly what the model saw. (One cost with a
# BPE tokenizer that merges punctuation with the newline after it, as Qwen2's does: a field's last
# token and the template's "\n" stay two tokens where encoding the whole text would give one.
# Same text, a few more ids.)


@dataclass
class AgentConfig:
    chunk_tokens: int = 256  # document tokens shown per memory turn
    memory_tokens: int = 64  # budget of a memory reply (a longer one is cut there: "truncated")
    answer_tokens: int = 32  # budget of the final reply
    compact_prompts: bool = True  # memagent.prompts' compact variant (tiny/small models)
    temperature: float = 1.0  # sampling temperature (train.py: 0.7 on cpu-demo, 1.0 in the paper recipes); 0 = greedy
    top_p: float = 1.0
    top_k: int = 0
    max_rows: int = 0  # most rows per generate call (bounds the KV cache and prefill); 0 = all
    # training only: a longer document is center-truncated to max_chunks chunks before it is cut
    # (the paper trains on at most 8). 0 = read every chunk, as evaluation does
    max_chunks: int = 0
    cuda_graph: bool = False  # decode steps replayed from a CUDA graph (generate; CUDA only)

    def __post_init__(self):
        for name in ("chunk_tokens", "memory_tokens", "answer_tokens"):
            if not isinstance(getattr(self, name), Integral) or getattr(self, name) < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {getattr(self, name)!r}")
        if not isinstance(self.max_rows, Integral) or self.max_rows < 0:
            raise ValueError(f"max_rows must be an integer >= 0 (0 = all rows in one call), got {self.max_rows!r}")
        if not isinstance(self.max_chunks, Integral) or self.max_chunks < 0:
            raise ValueError(f"max_chunks must be an integer >= 0 (0 = no cap), got {self.max_chunks!r}")
        check_sampling(self.temperature, self.top_k, self.top_p)


@dataclass
class Conversation:
    """One prompt -> response exchange of a rollout: the unit `dapo.py` puts a loss on."""
    rollout: int  # index of its rollout in the list run_agent returns
    sample: int  # index of the sample (= the GRPO group) it belongs to
    turn: int  # 0..K-1 memory turns, K the final answer
    is_final: bool
    prompt_ids: list
    response_ids: list  # the sampled tokens, stop token included when the reply stopped
    logprobs: list  # log p of each response token under softmax(logits / temperature), as sampled (a diagnostic)
    truncated: bool  # the reply hit its budget without a stop token


@dataclass
class Rollout:
    sample: int  # index into the samples given to run_agent
    member: int  # 0..group_size-1 within its group
    conversations: list  # K memory conversations, then the final one
    memories: list  # memory text after every turn: the trace a student reads
    answer: str  # text of the final reply (stop token dropped)
    reward: float  # the task reward of the answer (train.py then adds its overlong penalty here)
    accuracy: float = 0.0  # train.py keeps the task reward here before adding that penalty


def encode_prompt(tokenizer, user_text, fields):
    """Ids of the chat prompt for user_text, with each placeholder in `fields` replaced by ids.

    fields maps a placeholder string appearing in user_text to the token ids to splice in, e.g.
    {"@@CHUNK@@": chunk_ids}. The text around the placeholders (the template) is encoded piece by
    piece as chat text; the fields are data, encoded before (tokenizer.encode: a "<|im_end|>" in a
    document stays text), so nothing a document holds can close the user turn.
    """
    text = chat_prompt(user_text, tokenizer.system_prompt)
    ids, rest = [], text
    while rest:
        hits = [(rest.find(name), name) for name in fields if name in rest]
        if not hits:
            ids += tokenizer.encode_chat(rest)
            break
        at, name = min(hits)
        ids += tokenizer.encode_chat(rest[:at]) + list(fields[name])
        rest = rest[at + len(name):]
    return ids


PROBLEM, MEMORY, CHUNK = "\x00problem\x00", "\x00memory\x00", "\x00chunk\x00"  # never in real text


def memory_turn_ids(tokenizer, problem_ids, memory_ids, chunk_ids, compact):
    user = memory_prompt(PROBLEM, MEMORY, CHUNK, compact=compact)
    return encode_prompt(tokenizer, user, {PROBLEM: problem_ids, MEMORY: memory_ids, CHUNK: chunk_ids})


def final_turn_ids(tokenizer, problem_ids, memory_ids, compact):
    user = final_prompt(PROBLEM, MEMORY, compact=compact)
    return encode_prompt(tokenizer, user, {PROBLEM: problem_ids, MEMORY: memory_ids})


def direct_turn_ids(tokenizer, problem_ids, context_ids, compact):
    """The full-attention baseline's prompt: the whole document and the problem in one turn."""
    user = direct_prompt(PROBLEM, CHUNK, compact=compact)
    return encode_prompt(tokenizer, user, {PROBLEM: problem_ids, CHUNK: context_ids})


def chunk_ids(context_ids, chunk_tokens):
    """Cut the document into consecutive chunks of exactly chunk_tokens ids (the last may be shorter).

    >>> chunk_ids(list(range(7)), 3)
    [[0, 1, 2], [3, 4, 5], [6]]
    """
    return [context_ids[i:i + chunk_tokens] for i in range(0, len(context_ids), chunk_tokens)]


def center_truncate(ids, max_len):
    """Keep the first max_len // 2 and the last max_len - max_len // 2 ids; the middle goes.

    How MemAgent caps its training documents at 8 chunks (its released code truncates at the
    center): the start and the end of a long document survive, and a fact in its middle may be cut
    away, a rollout that cannot earn its reward. max_len 0 = no cap.

    >>> center_truncate(list(range(10)), 5)
    [0, 1, 7, 8, 9]
    >>> center_truncate(list(range(4)), 5)
    [0, 1, 2, 3]
    """
    if not max_len or len(ids) <= max_len:
        return ids
    head = max_len // 2
    return ids[:head] + ids[len(ids) - (max_len - head):]


def document_chunks(context_ids, cfg):
    """The chunks an agent reads: the document center-truncated to cfg.max_chunks chunks (if set), cut."""
    return chunk_ids(center_truncate(context_ids, cfg.max_chunks * cfg.chunk_tokens), cfg.chunk_tokens)


def check_window(tokenizer, problem_lengths, cfg, max_positions):
    """Raise a clear error if the longest conversation cannot fit the model's positions.

    The longest memory turn is template + problem + memory + chunk_tokens, plus its reply
    (memory_tokens); the final turn is template + problem + memory + answer_tokens. The memory in a
    prompt is a reply (at most memory_tokens) or, before the first reply, the initial memory text.
    """
    template = len(memory_turn_ids(tokenizer, [], [], [], cfg.compact_prompts))
    final_template = len(final_turn_ids(tokenizer, [], [], cfg.compact_prompts))
    problem = max(problem_lengths)
    memory = max(cfg.memory_tokens, len(tokenizer.encode(initial_memory(cfg.compact_prompts))))
    memory_turn = template + problem + memory + cfg.chunk_tokens + cfg.memory_tokens
    final_turn = final_template + problem + memory + cfg.answer_tokens
    if memory_turn > max_positions:
        raise ValueError(
            f"window too small: a memory turn is template {template} + problem {problem} + memory {memory} "
            f"+ chunk {cfg.chunk_tokens} + reply {cfg.memory_tokens} = {memory_turn} tokens > the model's "
            f"{max_positions} positions; lower --chunk-tokens or --memory-tokens, or use a model with more "
            f"positions")
    if final_turn > max_positions:
        raise ValueError(
            f"window too small: the final turn is template {final_template} + problem {problem} + memory "
            f"{memory} + answer {cfg.answer_tokens} = {final_turn} tokens > the model's {max_positions} "
            f"positions; lower --answer-tokens or --memory-tokens, or use a model with more positions")
    return max(memory_turn, final_turn)


def model_policy(model, generator):
    """The default policy: `generate` on a model. A policy maps (prompts, budgets, cfg) to Generations;
    tests swap in a scripted one.

    With cfg.max_rows, a turn's rows go through generate in slices of at most max_rows: the KV cache
    of one call is max_rows x (longest prompt + budget) slots, so the paper's 128 x 16 rollouts of
    ~7K-token conversations run in 64-row slices instead of one 2048-row cache (~170 GiB in bf16).
    Rows draw from the one generator in order, so a run stays reproducible for a given max_rows.
    """
    def policy(prompts, budgets, stop_ids, cfg):
        step = cfg.max_rows or max(len(prompts), 1)
        generations = []
        for i in range(0, len(prompts), step):
            generations += generate(model, prompts[i:i + step], max_new_tokens=budgets[i:i + step],
                                    temperature=cfg.temperature, top_k=cfg.top_k, top_p=cfg.top_p,
                                    stop_ids=stop_ids, generator=generator, cuda_graph=cfg.cuda_graph)
        return generations
    return policy


def reply_text_and_reward(tokenizer, sample, gen):
    """Text of a final reply (its stop id dropped) and its task reward (0 without references)."""
    reply = gen.tokens[:-1] if gen.stop_reason == "stop" else gen.tokens
    text = tokenizer.decode(reply)
    answers = sample.get("answers")  # a user's own document may come without any
    return text, compute_reward(sample["task"], text, answers) if answers else 0.0


def run_agent(model, tokenizer, samples, cfg, group_size=1, seed=0, policy=None, max_positions=None,
              on_turn=None):
    """Run the memory agent on samples (dicts with question, context, answers, task) in one batch.

    Every sample is rolled out group_size times (independent samples of the same prompt). At turn
    k all rollouts still reading go through ONE batched `generate` call: those with a chunk k do a
    memory turn, those whose document just ended do their final turn in the same call and leave.
    Returns a list of Rollout, samples in order, each sample's group members consecutive.
    on_turn(turn, rollouts) is called after every turn (infer.py prints the memory trace with it).
    max_positions: the window every conversation must fit (default and cap: the model's positions).
    seed=None draws a fresh random seed.
    """
    if not isinstance(group_size, Integral) or group_size < 1:
        raise ValueError(f"group_size must be an integer >= 1, got {group_size!r}")
    for s in samples:  # an unknown task would otherwise fail at the final turn, after the whole batch ran
        if s.get("answers"):
            check_task(s.get("task"))
    if policy is None:
        generator = torch.Generator(device=model.lm_head.weight.device)
        if seed is None:
            generator.seed()  # a fresh random seed, as generate takes seed=None
        else:
            generator.manual_seed(seed)
        policy = model_policy(model, generator)
    if not samples:
        return []
    if model is not None:  # a caller's window may be smaller than the model's, never larger
        model_positions = model.config.max_position_embeddings
        max_positions = model_positions if max_positions is None else min(max_positions, model_positions)
    if max_positions is None:
        raise ValueError("run_agent: without a model, pass max_positions (the window to check prompts against)")
    stop_ids, control_ids = list(tokenizer.stop_ids), tokenizer.control_ids
    problems = [tokenizer.encode(s["question"]) for s in samples]
    documents = [document_chunks(tokenizer.encode(s["context"]), cfg) for s in samples]
    check_window(tokenizer, [len(p) for p in problems], cfg, max_positions)
    initial = tokenizer.encode(initial_memory(cfg.compact_prompts))

    rollouts, memory_ids = [], []
    for i, sample in enumerate(samples):
        for m in range(group_size):
            rollouts.append(Rollout(sample=i, member=m, conversations=[], memories=[], answer="", reward=0.0))
            memory_ids.append(initial)
    active = list(range(len(rollouts)))
    turn = 0
    while active:
        prompts, budgets = [], []
        for r in active:
            s = rollouts[r].sample
            if turn < len(documents[s]):
                prompts.append(memory_turn_ids(tokenizer, problems[s], memory_ids[r], documents[s][turn],
                                               cfg.compact_prompts))
                budgets.append(cfg.memory_tokens)
            else:
                prompts.append(final_turn_ids(tokenizer, problems[s], memory_ids[r], cfg.compact_prompts))
                budgets.append(cfg.answer_tokens)
        generations = policy(prompts, budgets, stop_ids, cfg)
        if len(generations) != len(prompts):
            raise ValueError(f"run_agent: the policy returned {len(generations)} generations for "
                             f"{len(prompts)} prompts")
        still_reading = []
        for r, prompt, gen in zip(active, prompts, generations):
            rollout, s = rollouts[r], rollouts[r].sample
            is_final = turn == len(documents[s])
            reply = gen.tokens[:-1] if gen.stop_reason == "stop" else gen.tokens
            rollout.conversations.append(Conversation(
                rollout=r, sample=s, turn=turn, is_final=is_final, prompt_ids=prompt,
                response_ids=list(gen.tokens), logprobs=list(gen.logprobs),
                truncated=gen.stop_reason == "length"))
            if is_final:
                rollout.answer, rollout.reward = reply_text_and_reward(tokenizer, samples[s], gen)
            else:
                memory_ids[r] = [t for t in reply if t not in control_ids]  # overwrite: the old memory is gone
                rollout.memories.append(tokenizer.decode(memory_ids[r]))
                still_reading.append(r)
        if on_turn is not None:
            on_turn(turn, rollouts)
        active = still_reading
        turn += 1
    return rollouts


# -----------------------------------------------------------------------------
# The baseline MemAgent is measured against: full attention over the whole document


@dataclass
class DirectAnswer:
    prompt_ids: list  # empty when the document did not fit
    answer: str
    reward: float
    fits: bool  # False: prompt + answer exceed the model's positions, nothing was generated


def run_full_attention(model, tokenizer, samples, answer_tokens, compact, temperature=0.0, seed=0,
                       max_positions=None, top_p=1.0, top_k=0, cuda_graph=False):
    """Answer each sample with the WHOLE document in the window: one prompt, one reply.

    A document whose prompt + answer budget exceeds max_positions is not run (fits=False): this is
    where full attention stops, whatever the hardware. Cost grows with the square of the document
    length in attention and linearly in KV-cache memory, unlike the agent's constant window.
    """
    max_positions = max_positions or model.config.max_position_embeddings
    problems = [tokenizer.encode(s["question"]) for s in samples]
    prompts = [direct_turn_ids(tokenizer, p, tokenizer.encode(s["context"]), compact)
               for p, s in zip(problems, samples)]
    fits = [len(p) + answer_tokens <= max_positions for p in prompts]
    results = [DirectAnswer(prompt_ids=[], answer="", reward=0.0, fits=False) for _ in samples]
    todo = [i for i, ok in enumerate(fits) if ok]
    if todo:
        generator = torch.Generator(device=model.lm_head.weight.device)
        generator.manual_seed(seed)
        gens = generate(model, [prompts[i] for i in todo], max_new_tokens=answer_tokens,
                        temperature=temperature, top_p=top_p, top_k=top_k, stop_ids=list(tokenizer.stop_ids),
                        generator=generator, cuda_graph=cuda_graph)
        for i, gen in zip(todo, gens):
            answer, reward = reply_text_and_reward(tokenizer, samples[i], gen)
            results[i] = DirectAnswer(prompt_ids=prompts[i], answer=answer, reward=reward, fits=True)
    return results
