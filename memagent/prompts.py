"""The two prompts of MemAgent, and the memory it starts from.

MemAgent never shows the model the whole document. It runs a loop of short conversations:

    memory = INITIAL_MEMORY
    for chunk in chunks(document):
        memory = model(memory_prompt(problem, memory, chunk))   # overwrite, never append
    answer = model(final_prompt(problem, memory))              # answer inside \\boxed{...}

A third prompt, direct_prompt, belongs to the baseline MemAgent is compared with: the whole
document and the problem in one turn (full attention, no memory).

Each prompt is a single user turn; the chat wrapping (<|im_start|>user ... ) is added by
memagent.tokenizer.chat_prompt, not here.

Two variants with the same structure (problem, memory, section -> new memory; problem, memory
-> boxed answer):

* full (compact=False): close in spirit and length to the paper's prompts. Used by the
  `qwen-ish-*` presets and by real Qwen checkpoints, whose 8K window has room for ~120 tokens of
  instructions.
* compact (compact=True): a handful of words, for tiny models with a ~1-2K token window. Used
  by the `tiny` and `small` presets together with our own sentencepiece tokenizer.

Every field sits on its own line(s), between newlines. With our tokenizer (which splits at
newlines) the prompt's token count is therefore exactly

    len(encode(template_text(compact))) + len(encode(problem)) + len(encode(memory))
                                        + len(encode(chunk))

which is what the rollout's window check needs: template_text is the memory prompt with every
field empty (the longer of the two templates, so it bounds the final prompt as well).
"""

INITIAL_MEMORY = "No previous memory."
INITIAL_MEMORY_COMPACT = "None."

_MEMORY_FULL = (
    "You are given a problem, your notes so far (the memory), and the next section of a long "
    "text that may help with the problem. Read the section carefully and write an updated "
    "memory: keep every detail from the old memory that could still matter, add whatever new "
    "information in this section helps to solve the problem, and leave out everything else. "
    "The updated memory replaces the old one, so anything you drop is lost for good.\n"
    "\n"
    "<problem>\n{problem}\n</problem>\n"
    "\n"
    "<memory>\n{memory}\n</memory>\n"
    "\n"
    "<section>\n{chunk}\n</section>\n"
    "\n"
    "Updated memory:\n"
)

_FINAL_FULL = (
    "You are given a problem and your notes on a long text (the memory). Using the memory, "
    "solve the problem and put your final answer inside \\boxed{{}}.\n"
    "\n"
    "<problem>\n{problem}\n</problem>\n"
    "\n"
    "<memory>\n{memory}\n</memory>\n"
    "\n"
    "Your answer:\n"
)

_DIRECT_FULL = (
    "You are given a long text and a problem about it. Read the text, solve the problem and put "
    "your final answer inside \\boxed{{}}.\n"
    "\n"
    "<text>\n{context}\n</text>\n"
    "\n"
    "<problem>\n{problem}\n</problem>\n"
    "\n"
    "Your answer:\n"
)

_MEMORY_COMPACT = "Question:\n{problem}\nMemory:\n{memory}\nText:\n{chunk}\nNew memory:\n"

_FINAL_COMPACT = "Question:\n{problem}\nMemory:\n{memory}\nAnswer in \\boxed{{}}:\n"

_DIRECT_COMPACT = "Text:\n{context}\nQuestion:\n{problem}\nAnswer in \\boxed{{}}:\n"


def memory_prompt(problem: str, memory: str, chunk: str, compact: bool = False) -> str:
    """The memory-update prompt: old memory + one new section -> the new memory.

    >>> print(memory_prompt("Who?", "None.", "Ann did it.", compact=True))
    Question:
    Who?
    Memory:
    None.
    Text:
    Ann did it.
    New memory:
    <BLANKLINE>
    """
    template = _MEMORY_COMPACT if compact else _MEMORY_FULL
    return template.format(problem=problem, memory=memory, chunk=chunk)


def final_prompt(problem: str, memory: str, compact: bool = False) -> str:
    """The final prompt: the memory alone must be enough to answer, inside \\boxed{}.

    >>> print(final_prompt("Who?", "Ann did it.", compact=True))
    Question:
    Who?
    Memory:
    Ann did it.
    Answer in \\boxed{}:
    <BLANKLINE>
    """
    template = _FINAL_COMPACT if compact else _FINAL_FULL
    return template.format(problem=problem, memory=memory)


def direct_prompt(problem: str, context: str, compact: bool = False) -> str:
    """The full-attention baseline's prompt: the WHOLE document, then the problem (no memory).

    >>> print(direct_prompt("Who?", "Ann did it.", compact=True))
    Text:
    Ann did it.
    Question:
    Who?
    Answer in \\boxed{}:
    <BLANKLINE>
    """
    template = _DIRECT_COMPACT if compact else _DIRECT_FULL
    return template.format(problem=problem, context=context)


def initial_memory(compact: bool = False) -> str:
    """The memory before the first chunk: a fixed sentence meaning "nothing yet"."""
    return INITIAL_MEMORY_COMPACT if compact else INITIAL_MEMORY


def template_text(compact: bool = False) -> str:
    """The fixed part of the prompts: the memory prompt with every field left empty.

    Encode chat_prompt(template_text(compact)) once to learn the template's cost in tokens;
    it also bounds the final prompt's template, which is shorter (tests check this).
    """
    return memory_prompt("", "", "", compact=compact)
