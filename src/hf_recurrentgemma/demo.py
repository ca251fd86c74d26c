"""The main job until a trained model ships: build a small Griffin with RANDOM weights and stream a generation.

    python -m hf_recurrentgemma.demo [--prompt "..."] [--max-new-tokens N] [--seed S]

The output is gibberish by construction (the weights are random); what it shows is the whole path working:
config -> model -> tokenizer -> `generate()` with a GriffinCache, streamed token by token, in flat memory.
"""

import argparse
import sys
import time

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast, TextStreamer

from .configuration_griffin import GriffinConfig, griffin_block_pattern
from .modeling_griffin import GriffinForCausalLM

SPECIAL_TOKENS = ["<pad>", "<eos>", "<bos>", "<unk>"]  # Gemma's ids 0..3
WORDS = (
    "the a an of to in and or is was be it that this on for with as by at from griffin hawk gemma recurrent "
    "attention local window state memory token sequence model layer gate linear scan long short fast slow "
    "river stone light night day sun moon tree wind rain sea ship road city house door book word song time "
    "one two three four five six seven eight nine ten red blue green white black old new small large"
).split()


LETTERS = [chr(c) for c in range(ord("a"), ord("z") + 1)]


def build_demo_tokenizer() -> PreTrainedTokenizerFast:
    """A WordPiece tokenizer over a small built-in vocabulary (whole words, plus letters so that any lowercase
    word can be spelled), with Gemma's special-token ids."""
    pieces = SPECIAL_TOKENS + WORDS + [c for c in LETTERS if c not in WORDS] + ["##" + c for c in LETTERS]
    vocab = {token: i for i, token in enumerate(pieces)}
    backend = Tokenizer(models.WordPiece(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces and pieces without
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", eos_token="<eos>", bos_token="<bos>", unk_token="<unk>",
        padding_side="left",
    )


def build_demo_model(vocab_size: int, seed: int = 0) -> GriffinForCausalLM:
    """A 6-layer Griffin (recurrent, recurrent, attention, ...) of width 128 with random weights."""
    torch.manual_seed(seed)
    config = GriffinConfig(
        vocab_size=vocab_size, hidden_size=128, intermediate_size=384, num_attention_heads=4,
        block_types=griffin_block_pattern(6), attention_window_size=32,
    )
    return GriffinForCausalLM(config).eval()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompt", default="the recurrent model is a long sequence of state")
    parser.add_argument("--max-new-tokens", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    tokenizer = build_demo_tokenizer()
    model = build_demo_model(len(tokenizer), seed=args.seed)
    params = sum(p.numel() for p in model.parameters())
    print("NOTE: this model has RANDOM weights (no trained Griffin ships yet): expect gibberish.")
    print(f"model: Griffin, {model.config.num_hidden_layers} layers {model.config.block_types}, "
          f"{params / 1e6:.2f}M parameters, window {model.config.attention_window_size}")
    inputs = tokenizer(args.prompt, return_tensors="pt")
    print(f"prompt: {args.prompt!r}")
    print("generation: ", end="", flush=True)
    start = time.perf_counter()
    out = model.generate(
        **inputs, max_new_tokens=args.max_new_tokens, do_sample=True, top_k=20, pad_token_id=0, no_repeat_ngram_size=2,
        streamer=TextStreamer(tokenizer, skip_prompt=True), return_dict_in_generate=True,
    )
    elapsed = time.perf_counter() - start
    new_tokens = out.sequences.shape[1] - inputs["input_ids"].shape[1]
    print(f"{new_tokens} tokens in {elapsed:.2f}s; cache holds {out.cache.nbytes()} bytes whatever the length")
    return 0


if __name__ == "__main__":
    sys.exit(main())
