"""memagent: the data side of MemAgent, with no model code.

tokenizer.py  sentencepiece tokenizer trained on generated task text + the chat rendering
tasks.py      seeded long-context task generators (RULER needles, variable tracking, two-hop QA)
prompts.py    the memory-update and final-answer prompts
reward.py     answer extraction, normalization and the training reward

Sample sets from the command line:
    python -m memagent.tasks --task niah_multikey --length 32k --n 128 --seed 0 --out data.jsonl
"""
