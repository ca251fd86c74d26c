"""A tiny model folder with a tokenizer and Gemma's chat template, for the command tests (generate, chat,
perplexity) and the fine-tuning example's test.

The tokenizer is character-level over printable ASCII and newline, with Gemma's special tokens at Gemma's ids
(<pad>=0, <eos>=1, <bos>=2, <unk>=3) and the turn tokens, so any text the model generates is printable.
"""

import os
import subprocess
import sys
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, processors
from transformers import PreTrainedTokenizerFast

from hf_recurrentgemma import GriffinConfig, GriffinForCausalLM
from hf_recurrentgemma.convert.tokenizer import GEMMA_CHAT_TEMPLATE

SPECIAL = ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"]
CHARS = ["\n"] + [chr(c) for c in range(32, 127)]
VOCAB_SIZE = len(SPECIAL) + len(CHARS)  # 102
REPO = Path(__file__).resolve().parents[1]


def tiny_tokenizer(chat_template: bool = True) -> PreTrainedTokenizerFast:
    """Character-level tokenizer: every character one token, <bos> added in front of each text."""
    vocab = {token: i for i, token in enumerate(SPECIAL + CHARS)}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    backend.decoder = decoders.Fuse()
    backend.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 2)])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", eos_token="<eos>", bos_token="<bos>", unk_token="<unk>",
        additional_special_tokens=SPECIAL[4:],
    )
    if chat_template:
        tokenizer.chat_template = GEMMA_CHAT_TEMPLATE
    return tokenizer


def tiny_config(**overrides) -> GriffinConfig:
    values = dict(vocab_size=VOCAB_SIZE, hidden_size=32, intermediate_size=48, num_attention_heads=4,
                  block_types=["recurrent", "recurrent", "attention"], attention_window_size=8)
    return GriffinConfig(**{**values, **overrides})


def tiny_model(seed: int = 0, **overrides) -> GriffinForCausalLM:
    """Random tiny Griffin with every parameter perturbed (norm scales and biases are not zero)."""
    torch.manual_seed(seed)
    model = GriffinForCausalLM(tiny_config(**overrides))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model.eval()


def save_tiny_folder(path: Path, seed: int = 0, chat_template: bool = True, **overrides) -> Path:
    """Writes a tiny model and its tokenizer to `path` (a model folder as `convert` writes it)."""
    tiny_model(seed, **overrides).save_pretrained(path)
    tiny_tokenizer(chat_template).save_pretrained(path)
    return path


# On a busy 2-core machine, OpenMP threads of a tiny model wait on each other: decoding was 30x slower with 2
# threads than with 1 (measured while other jobs ran). The tiny models here run on one thread.
ONE_THREAD = {"OMP_NUM_THREADS": "1"}


def run_command(*args, input: str | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    """`hf-recurrentgemma ARGS` in a fresh Python process (as a user runs it), on one thread."""
    return subprocess.run([sys.executable, "-m", "hf_recurrentgemma.cli", *map(str, args)], input=input,
                          capture_output=True, text=True, timeout=timeout, cwd=REPO, env={**os.environ, **ONE_THREAD})
