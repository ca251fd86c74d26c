"""Fine-tune a Griffin / RecurrentGemma folder on local text or JSONL with `datasets` and `Trainer`.

    python examples/finetune.py --model MODEL --data examples/data/lighthouse_notes.txt --output finetuned \
        [--block-size 512] [--batch-size 8] [--epochs 1 | --max-steps N] [--lr 2e-4] [--lora] [--bf16]

1. Loads the documents with `datasets.load_dataset`: a `.txt`/`.md` file gives one document per paragraph
   (blank-line separated; `--sample-by document` for one per file), a `.jsonl`/`.json` file one per row
   (`--text-column`, default "text").
2. Holds out `--eval-fraction` of the documents (whole documents, so no held-out text is trained on).
3. Tokenizes with `.map` (<bos> + text + <eos> per document) and packs documents into rows of `--block-size`
   tokens with `.map`, position ids restarting at 0 at each document (Griffin's document semantics: the RG-LRU
   resets, the conv1d and local attention do not look back across a start) and no label on a document's first
   token, the conventions of Transformers' `DataCollatorWithFlattening`, in fixed-length rows. A document longer
   than a row is cut into row-sized documents; a row is closed with padding when the next document does not fit.
4. Trains with `Trainer` (progress bar; bf16 autocast on CPUs with bf16 instructions, or on a GPU; `--lora` for a
   PEFT LoRA adapter on every projection), evaluates the held-out loss before and after, writes `loss_curve.png`
   and `metrics.json`, and saves a model folder (LoRA merged in) that loads with `AutoModelForCausalLM`.

Nothing is left at `--output` unless the run completes (it is written to a temporary folder and renamed).
"""

import argparse
import json
import math
import shutil
import sys
import tempfile
from pathlib import Path

import torch

IGNORE = -100  # label of tokens that predict nothing (a document's first token, padding)
BUILDERS = {".txt": "text", ".md": "text", ".text": "text", ".json": "json", ".jsonl": "json"}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="our model folder or a recurrent_gemma folder")
    parser.add_argument("--data", required=True, nargs="+", help=".txt/.md or .jsonl/.json files")
    parser.add_argument("--output", required=True, help="folder for the fine-tuned model (must not exist)")
    parser.add_argument("--force", action="store_true", help="replace --output if it exists")
    parser.add_argument("--text-column", default="text", help="JSON field holding the text (default text)")
    parser.add_argument("--sample-by", choices=["paragraph", "document", "line"], default="paragraph",
                        help="what one document of a text file is (default: a paragraph)")
    parser.add_argument("--block-size", type=int, default=512, help="tokens per packed row (default 512)")
    parser.add_argument("--eval-fraction", type=float, default=0.1, help="documents held out (default 0.1)")
    parser.add_argument("--batch-size", type=int, default=8, help="rows per step (default 8)")
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--max-steps", type=int, default=-1, help="stop after N steps (overrides --epochs)")
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--warmup-steps", type=int, default=0)
    parser.add_argument("--logging-steps", type=int, default=1)
    parser.add_argument("--lora", action="store_true", help="train a LoRA adapter (merged into the saved model)")
    parser.add_argument("--lora-rank", type=int, default=8)
    parser.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None,
                        help="bf16 autocast (default: on where the device supports bfloat16 arithmetic)")
    parser.add_argument("--gradient-checkpointing", action="store_true", help="recompute activations in backward")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.block_size < 2:
        parser.error(f"--block-size must be at least 2, got {args.block_size}")
    if not 0 < args.eval_fraction < 1:
        parser.error(f"--eval-fraction must be in (0, 1), got {args.eval_fraction}")
    return args


def load_documents(files: list[str], text_column: str, sample_by: str):
    """A `datasets.Dataset` with one column "text", one row per document."""
    import datasets

    kinds = {BUILDERS.get(Path(f).suffix) for f in files}
    missing = [f for f in files if not Path(f).is_file()]
    if missing:
        raise SystemExit(f"error: --data {missing[0]}: no such file")
    if None in kinds or len(kinds) != 1:
        raise SystemExit(f"error: --data files must all be text (.txt, .md, .text) or all JSON (.json, .jsonl); "
                         f"got {', '.join(files)}")
    (builder,) = kinds
    extra = {"sample_by": sample_by} if builder == "text" else {}
    ds = datasets.load_dataset(builder, data_files=files, split="train", **extra)
    if text_column not in ds.column_names:
        raise SystemExit(f"error: --text-column {text_column}: not a field of {files[0]} "
                         f"(fields: {', '.join(ds.column_names)})")
    ds = ds.select_columns([text_column]).rename_column(text_column, "text") if text_column != "text" else \
        ds.select_columns(["text"])
    return ds.filter(lambda row: bool(row["text"].strip()))


def tokenize(batch: dict, tokenizer) -> dict:
    """{"text": [str]} -> {"input_ids": [[bos, ..., eos]]}: each document ends with <eos> so the model learns
    where documents end."""
    ids = tokenizer(batch["text"], add_special_tokens=True)["input_ids"]
    return {"input_ids": [row + [tokenizer.eos_token_id] for row in ids]}


def pack(batch: dict, block_size: int, pad_id: int) -> dict:
    """Packs tokenized documents {"input_ids": [[int]]} into rows of exactly `block_size` tokens.

    Each row holds whole documents one after another: `position_ids` restart at 0 at every document (so the model
    keeps them apart), `labels` are the tokens except IGNORE on each document's first token (nothing before it
    in its document predicts it) and on padding, `attention_mask` is 0 on the padding that closes a row when the
    next document does not fit. A document longer than a row becomes row-sized documents.

    Returns {"input_ids", "position_ids", "labels", "attention_mask"}: lists of rows of length `block_size`.
    """
    rows = {"input_ids": [], "position_ids": [], "labels": [], "attention_mask": []}
    current = {key: [] for key in rows}

    def close_row():
        if not current["input_ids"]:
            return
        pad = block_size - len(current["input_ids"])
        for key, value in (("input_ids", pad_id), ("position_ids", 0), ("labels", IGNORE), ("attention_mask", 0)):
            rows[key].append(current[key] + [value] * pad)
            current[key] = []

    for ids in batch["input_ids"]:
        for start in range(0, len(ids), block_size):
            piece = ids[start:start + block_size]
            if len(current["input_ids"]) + len(piece) > block_size:
                close_row()
            current["input_ids"] += piece
            current["position_ids"] += list(range(len(piece)))
            current["labels"] += [IGNORE] + piece[1:]
            current["attention_mask"] += [1] * len(piece)
    close_row()
    return rows


def packed_dataset(docs, tokenizer, block_size: int):
    """Tokenized and packed rows of a documents dataset, both steps as `datasets` `.map` (cached, reproducible)."""
    tokenized = docs.map(tokenize, batched=True, remove_columns=["text"], fn_kwargs={"tokenizer": tokenizer},
                         desc="tokenizing")
    return tokenized.map(pack, batched=True, batch_size=1000, remove_columns=["input_ids"],
                         fn_kwargs={"block_size": block_size, "pad_id": tokenizer.pad_token_id}, desc="packing")


def bf16_supported(device: torch.device) -> bool:
    """Whether bfloat16 autocast runs at speed here: a CUDA GPU with bf16, or a CPU with AVX-512 BF16 or AMX."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()


def plot_losses(log_history: list[dict], path: Path, eval_before: float | None = None) -> None:
    """Training loss per logging step and held-out loss at each evaluation (and `eval_before`, the loss before
    training, at step 0), as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [(e["step"], e["loss"]) for e in log_history if "loss" in e]
    held_out = [(0, eval_before)] if eval_before is not None else []
    held_out += [(e["step"], e["eval_loss"]) for e in log_history if "eval_loss" in e]
    fig, ax = plt.subplots(figsize=(6, 4))
    if train:
        ax.plot(*zip(*train), label="training loss")
    if held_out:
        ax.plot(*zip(*held_out), "o--", label="held-out loss")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv=None) -> int:
    args = parse_args(argv)
    output = Path(args.output).absolute()
    if output.exists() and not args.force:
        raise SystemExit(f"error: --output {output} already exists; pass --force to replace it")

    import hf_recurrentgemma  # noqa: F401  (registers "griffin"; reads built-in recurrent_gemma folders)
    from transformers import AutoTokenizer, Trainer, TrainingArguments, default_data_collator, set_seed

    from hf_recurrentgemma import GriffinForCausalLM

    set_seed(args.seed)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    docs = load_documents(args.data, args.text_column, args.sample_by)
    if len(docs) < 2:
        raise SystemExit(f"error: --data has {len(docs)} document(s); at least 2 are needed to hold one out")
    split = docs.train_test_split(test_size=args.eval_fraction, seed=args.seed)
    train_rows = packed_dataset(split["train"], tokenizer, args.block_size)
    eval_rows = packed_dataset(split["test"], tokenizer, args.block_size)
    print(f"{len(split['train'])} training documents -> {len(train_rows)} rows of {args.block_size} tokens; "
          f"{len(split['test'])} held-out documents -> {len(eval_rows)} rows", flush=True)

    model = GriffinForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    if args.lora:
        from peft import LoraConfig, get_peft_model

        # Every projection is an nn.Linear; "all-linear" leaves out the LM head (tied to the embeddings).
        model = get_peft_model(model, LoraConfig(r=args.lora_rank, lora_alpha=2 * args.lora_rank,
                                                 target_modules="all-linear", task_type="CAUSAL_LM"))
        model.print_trainable_parameters()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    bf16 = bf16_supported(device) if args.bf16 is None else args.bf16

    staging = Path(tempfile.mkdtemp(prefix=f".{output.name}.tmp-", dir=output.parent))
    try:
        training_args = TrainingArguments(
            output_dir=str(staging / "checkpoints"), per_device_train_batch_size=args.batch_size,
            per_device_eval_batch_size=args.batch_size, num_train_epochs=args.epochs, max_steps=args.max_steps,
            learning_rate=args.lr, warmup_steps=args.warmup_steps, logging_steps=args.logging_steps,
            eval_strategy="steps", eval_steps=max(1, args.logging_steps * 5), save_strategy="no",
            report_to="none", bf16=bf16, use_cpu=device.type == "cpu", seed=args.seed,
            activation_checkpointing=args.gradient_checkpointing, disable_tqdm=False,
            dataloader_drop_last=False, remove_unused_columns=False,
        )
        trainer = Trainer(model=model, args=training_args, train_dataset=train_rows, eval_dataset=eval_rows,
                          data_collator=default_data_collator)
        before = trainer.evaluate()["eval_loss"]
        trainer.train()
        after = trainer.evaluate()["eval_loss"]
        print(f"held-out loss {before:.4f} -> {after:.4f} (perplexity {math.exp(before):.2f} -> "
              f"{math.exp(after):.2f}); bf16 autocast: {bf16}", flush=True)

        final = staging / output.name
        trained = trainer.model.merge_and_unload() if args.lora else trainer.model
        trained.save_pretrained(final)
        tokenizer.save_pretrained(final)
        plot_losses(trainer.state.log_history, final / "loss_curve.png", eval_before=before)
        metrics = {"eval_loss_before": before, "eval_loss_after": after, "bf16": bf16, "lora": args.lora,
                   "train_rows": len(train_rows), "eval_rows": len(eval_rows), "block_size": args.block_size,
                   "steps": trainer.state.global_step, "log_history": trainer.state.log_history}
        (final / "metrics.json").write_text(json.dumps(metrics, indent=1))
        if output.exists():
            shutil.rmtree(output)
        final.rename(output)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    print(f"saved {output} (loads with AutoModelForCausalLM.from_pretrained after `import hf_recurrentgemma`, or "
          "with trust_remote_code=True)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
