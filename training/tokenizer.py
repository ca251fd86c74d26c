"""Train the SentencePiece `tokenizer.model` shipped with our Griffin, the way the RecurrentGemma releases ship theirs.

    python -m training.tokenizer corpus/train.txt release/tokenizer.model [--vocab-size 4096]

A BPE model with Gemma's conventions, so that `hf-recurrentgemma convert --tokenizer` handles it exactly as it
handles a real release: ids 0-3 are <pad>, <eos>, <bos>, <unk>; <start_of_turn>/<end_of_turn> exist (unused by a
base model, present so chat templating is possible later); byte fallback (any UTF-8 text encodes, no <unk>); digits
split; no normalization, no dummy prefix, whitespace kept as written.
"""

import argparse
import os
import sys
import tempfile
from pathlib import Path

GEMMA_IDS = dict(pad_id=0, eos_id=1, bos_id=2, unk_id=3,
                 pad_piece="<pad>", eos_piece="<eos>", bos_piece="<bos>", unk_piece="<unk>")
from training.constants import DOCUMENT_SEPARATOR


def train_tokenizer(corpus: Path, out: Path, vocab_size: int = 4096) -> Path:
    """Trains on the paragraphs of `corpus` (documents split on \\f, paragraphs on blank lines); writes `out` atomically."""
    import sentencepiece as spm

    text = Path(corpus).read_text()
    paragraphs = [p for doc in text.split(DOCUMENT_SEPARATOR) for p in doc.split("\n\n") if p.strip()]
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        prefix = Path(tmp) / "tokenizer"
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(paragraphs), model_prefix=str(prefix), vocab_size=vocab_size, model_type="bpe",
            byte_fallback=True, user_defined_symbols=["<start_of_turn>", "<end_of_turn>"], add_dummy_prefix=False,
            remove_extra_whitespaces=False, normalization_rule_name="identity", split_digits=True,
            allow_whitespace_only_pieces=True, character_coverage=1.0, max_sentence_length=1 << 16,
            num_threads=os.cpu_count() or 1, minloglevel=2, **GEMMA_IDS)
        os.replace(f"{prefix}.model", out)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("corpus", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--vocab-size", type=int, default=4096)
    parser.add_argument("--force", action="store_true", help="replace OUT if it exists")
    args = parser.parse_args(argv)
    if args.out.exists() and not args.force:
        print(f"error: {args.out} exists (pass --force to replace it)", file=sys.stderr)
        return 2
    train_tokenizer(args.corpus, args.out, args.vocab_size)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
