"""Ship a trained Griffin the way Google shipped RecurrentGemma: an Orbax checkpoint directory, in bfloat16, next
to the SentencePiece `tokenizer.model`, with a model card.

    python -m training.release runs/griffin/final src/hf_recurrentgemma/assets/griffin-austen \
        --metrics runs/griffin/metrics.json [--force]
    python -m training.release runs/hawk-draft/final src/hf_recurrentgemma/assets/griffin-austen \
        --metrics runs/hawk-draft/metrics.json --draft [--force]

OUT receives `6m/` (the Orbax checkpoint, written by our `export_orbax`) and `README.md` (the model card); the
tokenizer.model must already be in OUT (training/tokenizer.py writes it there). With `--draft` the model is the
speculative-decoding draft of the shipped model: it goes to `draft-1m/` beside `6m/`, sharing the tokenizer, and
only the model card's draft section is (re)written. Atomic per part: the checkpoint is staged and renamed by
`export_orbax`, the model card is written to a temporary file and renamed.
"""

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

import torch

from hf_recurrentgemma import GriffinForCausalLM
from hf_recurrentgemma.convert.orbax_release import export_orbax

CHECKPOINT_DIR = "6m"
DRAFT_DIR = "draft-1m"
DRAFT_PRESET = "griffin-austen-draft-1m"
DRAFT_HEADING = f"## Draft model for speculative decoding: `{DRAFT_DIR}/`"


def model_card(metrics: dict, corpus_manifest: dict) -> str:
    ppl = metrics["heldout_perplexity"]
    lines = [
        "# griffin-austen-6m",
        "",
        "A 6M-parameter **Griffin** (RecurrentGemma's architecture: RG-LRU recurrent blocks and local multi-query "
        "attention, two recurrent blocks to one attention block) trained by hf-recurrentgemma on Jane Austen's novels. "
        "It is laid out as the RecurrentGemma releases are: an Orbax checkpoint directory "
        f"(`{CHECKPOINT_DIR}/`, bfloat16, the parameter tree of `recurrentgemma.jax`) and a SentencePiece "
        "`tokenizer.model` with Gemma's special ids (<pad>=0, <eos>=1, <bos>=2, <unk>=3).",
        "",
        "```bash",
        "hf-recurrentgemma convert 6m/ griffin-austen-hf --preset griffin-austen-6m --tokenizer tokenizer.model",
        "python -m hf_recurrentgemma.demo          # converts, loads and continues a prompt",
        "```",
        "",
        "| | |",
        "|---|---|",
        f"| parameters | {metrics['parameters']:,} |",
        "| blocks | 6 (recurrent, recurrent, attention) x 2; width 256, MLP 768, 4 heads, 1 key/value head |",
        "| attention window | 128 tokens (a query sees itself and 128 previous tokens) |",
        f"| vocabulary | {metrics['vocab_size']} SentencePiece BPE pieces, byte fallback |",
        f"| training | {metrics['tokens_seen']:,} tokens ({metrics['steps']} steps of {metrics['batch_size']} x "
        f"{metrics['train_length']}), AdamW, peak lr {metrics['lr']}, cosine, bf16 autocast, CPU |",
        f"| held-out loss | {metrics['heldout_loss']:.3f} nats/token, perplexity {ppl:.1f} on *Persuasion* "
        f"({metrics['heldout_tokens']:,} tokens, never trained on) |",
        "",
        "## Data and license",
        "",
        "Trained on *Sense and Sensibility*, *Pride and Prejudice*, *Mansfield Park*, *Emma* and *Northanger Abbey*; "
        "*Persuasion* is held out. " + corpus_manifest["license"] + " The corpus is rebuilt from Debian's "
        f"`{corpus_manifest['source']['package']}` ({corpus_manifest['source']['file']}, SHA-256 "
        f"`{corpus_manifest['source']['sha256'][:16]}...`) by `training/corpus.py`. The weights are released "
        "under the package's license (Apache-2.0).",
        "",
        "## Retrain",
        "",
        "```bash",
        "python -m training.corpus --out corpus/",
        "python -m training.tokenizer corpus/train.txt src/hf_recurrentgemma/assets/griffin-austen/tokenizer.model",
        "python -m training.train griffin --tokenizer src/hf_recurrentgemma/assets/griffin-austen/tokenizer.model "
        f"--out runs/griffin --tokens {metrics['tokens_seen']}",
        "python -m training.release runs/griffin/final src/hf_recurrentgemma/assets/griffin-austen "
        "--metrics runs/griffin/metrics.json --force",
        "```",
        "",
        "It is a small model trained for about an hour on two CPU cores: it writes Austen-like sentences, not "
        "coherent stories. See docs/reproduction.md for its comparison with a Hawk and a Transformer.",
    ]
    return "\n".join(lines) + "\n"


def draft_section(metrics: dict, config) -> str:
    """The model card's section on the draft (`config`: its GriffinConfig)."""
    kinds = sorted(set(config.block_types))
    arch = "Hawk (every block recurrent)" if kinds == ["recurrent"] else "Griffin"
    distilled = (f"distilled from `6m/` (loss: {metrics['distill_weight']:g} x KL(6m || draft) + "
                 f"{1 - metrics['distill_weight']:g} x cross-entropy)" if metrics.get("teacher") else "cross-entropy")
    lines = [
        DRAFT_HEADING,
        "",
        f"A {metrics['parameters'] / 1e6:.1f}M-parameter **{arch}** trained on the same corpus with the same "
        "tokenizer, to propose tokens that `6m/` then checks in one forward (assisted decoding: the output is the "
        "one `6m/` alone would give; docs/speculative.md).",
        "",
        "```bash",
        f"hf-recurrentgemma convert {DRAFT_DIR}/ draft-hf --preset {DRAFT_PRESET} --tokenizer tokenizer.model",
        "python -m hf_recurrentgemma.demo --assistant            # the shipped model, with this draft",
        "```",
        "",
        "| | |",
        "|---|---|",
        f"| parameters | {metrics['parameters']:,} |",
        f"| blocks | {config.num_hidden_layers} ({', '.join(config.block_types)}); width {config.hidden_size}, MLP "
        f"{config.intermediate_size}, {config.num_attention_heads} heads |",
        f"| training | {metrics['tokens_seen']:,} tokens ({metrics['steps']} steps of {metrics['batch_size']} x "
        f"{metrics['train_length']}), {distilled}, AdamW, peak lr {metrics['lr']}, cosine, bf16 autocast, one CPU "
        "thread |",
        f"| held-out loss | {metrics['heldout_loss']:.3f} nats/token, perplexity {metrics['heldout_perplexity']:.1f} "
        f"on *Persuasion* ({metrics['heldout_tokens']:,} tokens; cross-entropy on the text) |",
        "",
        "Retrain (after the corpus step above):",
        "",
        "```bash",
        "hf-recurrentgemma convert src/hf_recurrentgemma/assets/griffin-austen/6m runs/6m-hf --preset "
        "griffin-austen-6m --tokenizer src/hf_recurrentgemma/assets/griffin-austen/tokenizer.model",
        "python -m training.train hawk-draft --tokenizer src/hf_recurrentgemma/assets/griffin-austen/tokenizer.model "
        f"--out runs/hawk-draft --tokens {metrics['tokens_seen']} --threads 1"
        + (" --teacher runs/6m-hf" if metrics.get("teacher") else ""),
        "python -m training.release runs/hawk-draft/final src/hf_recurrentgemma/assets/griffin-austen "
        "--metrics runs/hawk-draft/metrics.json --draft --force",
        "```",
    ]
    return "\n".join(lines) + "\n"


def split_card(card: str) -> tuple[str, str]:
    """(the main model's card, the draft section or "")."""
    at = card.find(DRAFT_HEADING)
    return (card, "") if at < 0 else (card[:at].rstrip("\n") + "\n", card[at:])


def write_atomic(path: Path, text: str) -> None:
    staged = path.with_name(f".{path.name}.tmp")
    staged.write_text(text)
    staged.replace(path)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("trained", type=Path, help="the trained model folder (save_pretrained)")
    parser.add_argument("out", type=Path, help="release folder holding tokenizer.model")
    parser.add_argument("--metrics", type=Path, required=True, help="metrics.json written by training/train.py")
    parser.add_argument("--corpus-manifest", type=Path, default=Path("corpus/manifest.json"))
    parser.add_argument("--force", action="store_true", help="replace an existing checkpoint and model card")
    parser.add_argument("--draft", action="store_true",
                        help=f"the speculative draft: write {DRAFT_DIR}/ and only the model card's draft section")
    args = parser.parse_args(argv)
    if not (args.out / "tokenizer.model").is_file():
        print(f"error: {args.out / 'tokenizer.model'} is missing", file=sys.stderr)
        return 2
    readme = args.out / "README.md"
    if args.draft and not readme.is_file():
        print(f"error: {readme} is missing: release the main model first", file=sys.stderr)
        return 2
    checkpoint_dir = DRAFT_DIR if args.draft else CHECKPOINT_DIR
    model = GriffinForCausalLM.from_pretrained(args.trained, dtype=torch.float32).to(torch.bfloat16)
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)
        export_orbax(tmp, args.out / checkpoint_dir, force=args.force)
    metrics = json.loads(args.metrics.read_text())
    main_card, draft_card = split_card(readme.read_text()) if readme.is_file() else ("", "")
    if args.draft:
        draft_card = draft_section(metrics, model.config)
    else:
        main_card = model_card(metrics, json.loads(args.corpus_manifest.read_text()))
    write_atomic(readme, main_card + ("\n" + draft_card if draft_card else ""))
    size = sum(p.stat().st_size for p in (args.out / checkpoint_dir).rglob("*") if p.is_file())
    print(f"wrote {args.out / checkpoint_dir} ({size / 2**20:.1f} MiB) and {readme}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
