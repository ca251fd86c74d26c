"""The inference commands of `hf-recurrentgemma` (generate, chat, perplexity) as importable functions.

`cli.py` only parses arguments and calls `run_*` here; each module also has the Python API its command uses
(`ChatSession`, `stream_perplexity`) so that scripts and tests reach the same code without a shell.
"""
