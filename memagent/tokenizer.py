"""A small sentencepiece tokenizer trained on our own task text, and the chat format.

Tiny CPU models cannot afford Qwen's 151,936-token vocabulary, so we train a 2048-piece BPE
on text from the task generators (plus the prompts, plus any text the user gives) in a few
seconds, and cache it on disk (out/tokenizer/ by default, beside the checkpoints).

Choices that make it fit MemAgent:
* digits are split one per token, so any 7-digit value is a sequence the model can copy;
* byte fallback: a character never seen in training becomes its UTF-8 bytes, never <unk>;
* no whitespace normalization and no dummy prefix, so decode(encode(text)) == text exactly,
  leading, repeated and trailing spaces included;
* the chat specials and "\\n" are single pieces, and encode() cuts the text at them before
  sentencepiece sees it. Pieces never cross a space either (sentencepiece's default), so
  token counts add up: encode(a + b) == encode(a) + encode(b) whenever b starts with a space,
  a newline or a special. The task generators rely on this to hit lengths fast;
* data is text, only our templates are chat: encode() (questions, documents, replies) writes
  a special-token string such as "<|im_end|>" as ordinary pieces, so a document cannot end a
  turn or fake a reply; encode_chat() (the chat template, built here) gives the control ids.

Special ids: <|im_start|> and <|im_end|> frame a chat turn; a reply ends with <|im_end|>, which
is therefore eos_id; <|endoftext|> also stops generation (stop_ids); <|pad|> pads batches.
control_ids holds them all: ids that only our templates put in a prompt, never data.

The chat rendering lives here and only here: chat_prompt() for text, render_prompt() and
render_reply() for ids; rollouts and the supervised warm start both call these.
"""
import io
import json
import os
import re

import sentencepiece as spm

SPECIAL_TOKENS = ["<|im_start|>", "<|im_end|>", "<|endoftext|>", "<|pad|>"]
NEWLINE = "\n"
DEFAULT_VOCAB_SIZE = 2048
DEFAULT_CACHE_DIR = os.path.join("out", "tokenizer")
CORPUS_VERSION = 5  # bump when the training text changes, so old caches are not reused

# sentencepiece shows spaces as U+2581 internally; a literal U+2581 in the input would come
# back as a space, so encode() writes it as its three UTF-8 byte pieces instead.
_SPACE_MARK = "\u2581"
_CUT = re.compile("(" + "|".join(re.escape(s) for s in SPECIAL_TOKENS + [NEWLINE, _SPACE_MARK])
                  + ")")


def chat_prompt(user_text: str, system: str | None = None) -> str:
    """One user turn, then the opening of the assistant's turn (ChatML style), after an optional
    system turn (Qwen2.5's chat template adds its default system turn when none is given; our own
    tokenizer has none).

    >>> chat_prompt("Hi")
    '<|im_start|>user\\nHi<|im_end|>\\n<|im_start|>assistant\\n'
    >>> chat_prompt("Hi", system="Be brief.")
    '<|im_start|>system\\nBe brief.<|im_end|>\\n<|im_start|>user\\nHi<|im_end|>\\n<|im_start|>assistant\\n'
    """
    turn = f"<|im_start|>user\n{user_text}<|im_end|>\n<|im_start|>assistant\n"
    return turn if system is None else f"<|im_start|>system\n{system}<|im_end|>\n" + turn


def chat_text(user_text: str, reply_text: str, system: str | None = None) -> str:
    """The whole conversation as text: chat_prompt(user_text) + reply + <|im_end|>."""
    return chat_prompt(user_text, system) + reply_text + "<|im_end|>"


class ChatRendering:
    """The chat rendering shared by both tokenizers (ours and a HF tokenizer.json): what the
    rollouts and the supervised warm start call. Subclasses give encode, decode, stop_ids,
    im_end_id and system_prompt."""

    system_prompt = None

    def render_prompt(self, user_text: str) -> list[int]:
        """Ids of chat_prompt(user_text): what the model sees before it replies. user_text is
        encoded as chat text, so it must be ours (rollout.encode_prompt splices data in as ids)."""
        return self.encode_chat(chat_prompt(user_text, self.system_prompt))

    def render_reply(self, reply_text: str) -> list[int]:
        """Ids of a reply (plain text), ending with im_end_id. render_prompt(u) + render_reply(r)
        equals encode_chat(chat_text(u, r)) when r holds no special-token string, because the
        prompt ends in a newline, where encoding cuts."""
        return self.encode(reply_text) + [self.im_end_id]

    def decode_reply(self, ids) -> str:
        """Text of a generated reply, up to (not including) its first stop id."""
        ids = [int(i) for i in ids]
        for k, i in enumerate(ids):
            if i in self.stop_ids:
                ids = ids[:k]
                break
        return self.decode(ids)


class Tokenizer(ChatRendering):
    """encode/decode with a trained sentencepiece model; see the module docstring."""

    def __init__(self, path: str):
        if not os.path.exists(path):
            raise FileNotFoundError(f"no tokenizer model at {path}")
        self.path = path
        try:
            self.sp = spm.SentencePieceProcessor(model_file=path)
        except (RuntimeError, OSError) as e:  # sentencepiece's own message, e.g. "unk is not defined"
            raise ValueError(f"{path} is not a sentencepiece model: {e}") from None
        self.vocab_size = self.sp.get_piece_size()
        piece_id = {}
        for piece in SPECIAL_TOKENS + [NEWLINE, "<0xE2>", "<0x96>", "<0x81>"]:
            i = self.sp.piece_to_id(piece)
            if self.sp.id_to_piece(i) != piece:
                raise ValueError(f"{path} is not a memagent tokenizer: no piece {piece!r}")
            piece_id[piece] = i
        self.im_start_id = piece_id["<|im_start|>"]
        self.im_end_id = piece_id["<|im_end|>"]
        self.endoftext_id = piece_id["<|endoftext|>"]
        self.pad_id = piece_id["<|pad|>"]
        self.newline_id = piece_id[NEWLINE]
        self.eos_id = self.im_end_id
        self.stop_ids = [self.im_end_id, self.endoftext_id]
        self.control_ids = frozenset(piece_id[s] for s in SPECIAL_TOKENS)  # never in data (see encode)
        self._cut_ids = {s: [piece_id[s]] for s in SPECIAL_TOKENS + [NEWLINE]}
        self._cut_ids[_SPACE_MARK] = [piece_id["<0xE2>"], piece_id["<0x96>"], piece_id["<0x81>"]]
        # a special-token string met in data: "<" and the rest as ordinary pieces, never the control id
        self._text_ids = {s: self.sp.encode(s[0]) + self.sp.encode(s[1:]) for s in SPECIAL_TOKENS}

    @classmethod
    def load(cls, path: str) -> "Tokenizer":
        return cls(path)

    def encode(self, text: str) -> list[int]:
        """Ids of text as data (a question, a document, a reply), no BOS/EOS added. A special-token
        string in it stays text: "<|im_end|>" becomes ordinary pieces (bytes where the vocabulary
        has none), not the control id, and decodes back to the same string."""
        return self._encode(text, chat=False)

    def encode_chat(self, text: str) -> list[int]:
        """Ids of chat-formatted text we build (chat_prompt): special-token strings become their ids."""
        return self._encode(text, chat=True)

    def _encode(self, text, chat):
        if not isinstance(text, str):
            raise TypeError(f"encode expects a str, got {type(text).__name__}")
        parts = _CUT.split(text)  # plain, cut, plain, cut, ..., plain
        # one call per plain stretch: sentencepiece's list form starts a thread pool on every call
        # (~100 us against ~4 us for a short string), and the task builders encode ~10^5 snippets
        try:
            encoded = [self.sp.encode(plain) for plain in parts[0::2]]
        except (RuntimeError, UnicodeEncodeError):  # sentencepiece takes UTF-8: a lone surrogate has none
            bad = next((i for i, c in enumerate(text) if 0xD800 <= ord(c) <= 0xDFFF), None)
            if bad is None:
                raise
            raise ValueError(f"encode: the text is not valid Unicode: a lone surrogate "
                             f"{ascii(text[bad])} at character {bad}") from None
        ids = list(encoded[0])
        for cut, plain_ids in zip(parts[1::2], encoded[1:]):
            ids += self._text_ids[cut] if cut in self._text_ids and not chat else self._cut_ids[cut]
            ids += plain_ids
        return ids

    def decode(self, ids) -> str:
        """Text of ids (special ids give back their strings); exact inverse of encode."""
        ids = [int(i) for i in ids]
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise ValueError(f"ids out of range 0..{self.vocab_size - 1}: {bad[:5]}")
        return self.sp.decode(ids)

    def files(self) -> list[str]:
        """What a checkpoint must copy to carry this tokenizer: the .model file."""
        return [self.path]

    def __repr__(self):
        return f"Tokenizer({self.path!r}, vocab_size={self.vocab_size})"


class HFTokenizer(ChatRendering):
    """A HF `tokenizer.json` (Qwen2.5's byte-level BPE with its pre-tokenizer and special tokens)
    behind the same interface as Tokenizer. Needs the optional `tokenizers` package.

    The default system prompt is read from the chat template in tokenizer_config.json (Qwen2.5's
    adds "You are Qwen, created by Alibaba Cloud. ..." when a conversation has no system turn),
    so render_prompt matches transformers' apply_chat_template(..., add_generation_prompt=True).
    """

    def __init__(self, directory: str):
        try:
            from tokenizers import Tokenizer as HFFastTokenizer
        except ImportError:
            raise ImportError("reading a HF tokenizer.json needs the `tokenizers` package: "
                              "pip install tokenizers") from None
        path = os.path.join(directory, "tokenizer.json")
        if not os.path.exists(path):
            raise FileNotFoundError(f"no tokenizer.json in {directory}")
        self.path = directory
        try:
            self.hf = HFFastTokenizer.from_file(path)  # chat text: "<|im_end|>" is the control id
            self.hf_data = HFFastTokenizer.from_file(path)  # data: special-token strings stay text
        except Exception as e:  # (tokenizers raises a plain Exception for a malformed file)
            raise ValueError(f"{path} is not a HF tokenizer file: {e}") from None
        try:
            self.hf_data.encode_special_tokens = True
        except AttributeError:  # an old `tokenizers` without the switch
            raise ImportError("reading documents as text needs a newer `tokenizers` (one with "
                              "encode_special_tokens): pip install -U tokenizers") from None
        self.vocab_size = self.hf.get_vocab_size(with_added_tokens=True)
        ids = {}
        for token in ("<|im_start|>", "<|im_end|>", "<|endoftext|>"):
            ids[token] = self.hf.token_to_id(token)
            if ids[token] is None:
                raise ValueError(f"{path} has no {token} token: not a Qwen2-style chat tokenizer")
        self.im_start_id, self.im_end_id = ids["<|im_start|>"], ids["<|im_end|>"]
        self.endoftext_id = self.pad_id = ids["<|endoftext|>"]  # Qwen pads with <|endoftext|>
        self.eos_id = self.im_end_id
        self.stop_ids = [self.im_end_id, self.endoftext_id]
        # the ChatML three, and every other added token tokenizer.json marks special
        self.control_ids = frozenset({i for i, t in self.hf.get_added_tokens_decoder().items() if t.special}
                                     | {self.im_start_id, self.im_end_id, self.endoftext_id})
        self.system_prompt = default_system_prompt(directory)

    def encode(self, text: str) -> list[int]:
        """Ids of text as data, no special tokens added; a special-token string in it stays text."""
        return self._encode(self.hf_data, text)

    def encode_chat(self, text: str) -> list[int]:
        """Ids of chat-formatted text we build (chat_prompt): special-token strings become their ids."""
        return self._encode(self.hf, text)

    @staticmethod
    def _encode(hf, text):
        if not isinstance(text, str):
            raise TypeError(f"encode expects a str, got {type(text).__name__}")
        return hf.encode(text, add_special_tokens=False).ids

    def decode(self, ids) -> str:
        return self.hf.decode([int(i) for i in ids], skip_special_tokens=False)

    def files(self) -> list[str]:
        """What a checkpoint must copy to carry this tokenizer: tokenizer.json and its config."""
        names = ("tokenizer.json", "tokenizer_config.json")
        return [os.path.join(self.path, n) for n in names if os.path.exists(os.path.join(self.path, n))]

    def __repr__(self):
        return f"HFTokenizer({self.path!r}, vocab_size={self.vocab_size})"


_DEFAULT_SYSTEM = re.compile(r"<\|im_start\|>system(?:\\n|\n)([^'\"{}]+?)<\|im_end\|>")


def default_system_prompt(directory: str) -> str | None:
    """The system turn a chat template adds when the conversation has none, or None.

    Looks in tokenizer_config.json's `chat_template` for a literal system turn, as in Qwen2.5's
    template: '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. ...<|im_end|>'.
    """
    path = os.path.join(directory, "tokenizer_config.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        try:
            config = json.load(f)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{path} is not valid JSON ({e})") from None
    template = (config.get("chat_template") if isinstance(config, dict) else None) or ""
    if isinstance(template, list):  # several named templates: use the default one
        template = next((t.get("template") for t in template if isinstance(t, dict) and t.get("name") == "default"), "")
    match = _DEFAULT_SYSTEM.search(template) if isinstance(template, str) else None
    return match.group(1) if match else None


def load_tokenizer(path: str):
    """Our sentencepiece .model (a file, or a checkpoint directory holding one), or a HF directory
    with tokenizer.json."""
    if os.path.isfile(path):
        return Tokenizer(path)
    if os.path.isdir(path):
        models = sorted(n for n in os.listdir(path) if n.endswith(".model"))
        if len(models) > 1:  # (which one the weights were trained with cannot be told)
            raise ValueError(f"{path} holds {len(models)} tokenizer models ({', '.join(models)}); keep the "
                             f"one the weights were trained with")
        if models:
            return Tokenizer(os.path.join(path, models[0]))
        if os.path.exists(os.path.join(path, "tokenizer.json")):
            return HFTokenizer(path)
    raise FileNotFoundError(f"no tokenizer at {path} (expected a .model file or a tokenizer.json)")


def _training_lines(seed: int, n_chars: int, extra_text):
    """Lines of training text: every task family, every prompt, a few chat turns, user text."""
    from memagent import prompts, tasks  # tasks imports nothing of ours; no cycle
    corpus = tasks.tokenizer_corpus(seed=seed, n_chars=n_chars)
    examples = [chat_prompt(prompts.memory_prompt("Question?", prompts.initial_memory(c),
                                                  "Some text.", compact=c))
                + "The memory.<|im_end|>" for c in (False, True)]
    examples += [chat_prompt(prompts.final_prompt("Question?", "Notes.", compact=c))
                 + "The answer is \\boxed{1234567}.<|im_end|>" for c in (False, True)]
    texts = [corpus] + examples * 20
    if extra_text is not None:
        texts += [extra_text] if isinstance(extra_text, str) else list(extra_text)
    return [line for text in texts for line in text.split("\n") if line.strip()]


def model_path(folder: str, vocab_size: int) -> str:
    """Where the cached model of this vocab size lives: {folder}/memagent-v5-2048.model."""
    return os.path.join(folder, f"memagent-v{CORPUS_VERSION}-{vocab_size}.model")


def train_tokenizer(out_dir: str, vocab_size: int = DEFAULT_VOCAB_SIZE, extra_text=None,
                    seed: int = 0, n_chars: int = 300_000) -> Tokenizer:
    """Train a BPE on generated task text (+ extra_text: a str or list of str) and save it.

    Writes model_path(out_dir, vocab_size) atomically (temp file, then rename) and returns
    the loaded Tokenizer. Takes a few seconds for the default 300K characters.
    """
    if vocab_size < 400:
        raise ValueError(f"vocab_size {vocab_size} is too small: 256 byte pieces, "
                         f"{len(SPECIAL_TOKENS) + 2} specials and the alphabet need ~400")
    lines = _training_lines(seed, n_chars, extra_text)
    model = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(lines), model_writer=model, model_type="bpe",
            vocab_size=vocab_size, character_coverage=1.0, byte_fallback=True,
            split_digits=True, user_defined_symbols=SPECIAL_TOKENS + [NEWLINE],
            normalization_rule_name="identity", remove_extra_whitespaces=False,
            add_dummy_prefix=False, unk_id=0, bos_id=-1, eos_id=-1, pad_id=-1,
            max_sentence_length=1 << 16, input_sentence_size=0, shuffle_input_sentence=False,
            num_threads=2, minloglevel=2)
    except RuntimeError as e:
        raise ValueError(f"sentencepiece could not train a {vocab_size}-piece vocabulary "
                         f"(try a smaller vocab_size or more text): {e}") from None
    os.makedirs(out_dir, exist_ok=True)
    path = model_path(out_dir, vocab_size)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(model.getvalue())
    os.replace(tmp, path)
    return Tokenizer(path)


def get_tokenizer(cache_dir: str = DEFAULT_CACHE_DIR,
                  vocab_size: int = DEFAULT_VOCAB_SIZE) -> Tokenizer:
    """The cached tokenizer of this vocab size from cache_dir, trained and saved if absent."""
    path = model_path(cache_dir, vocab_size)
    if os.path.exists(path):
        tok = Tokenizer(path)
        if tok.vocab_size == vocab_size:
            return tok
    return train_tokenizer(cache_dir, vocab_size=vocab_size)
