"""Train one of the three comparison models on the Austen corpus with `datasets` and `Trainer`.

    python -m training.train griffin --corpus corpus/ --tokenizer release/tokenizer.model --out runs/griffin \
        [--tokens 2500000] [--batch-size 8] [--lr 2e-3] [--teacher FOLDER [--distill-weight 1.0]]

Resumable: rerun the same command and it continues from the newest checkpoint in OUT. Every model sees the same
tokens in the same order (same seed, same data pipeline), with the same schedule. At the end OUT holds `final/`
(a `save_pretrained` folder) and `metrics.json` (tokens seen, held-out loss per evaluation, wall time).

With `--teacher` (a converted model folder with the same tokenizer) the training loss is distilled: the
Kullback-Leibler divergence from the teacher's next-token distribution to the student's, mixed with the usual
cross-entropy as `w * KL + (1 - w) * CE`. That is how the draft for speculative decoding is trained: what counts is
how often its guess equals the teacher's, not the corpus's (DistillSpec, arXiv 2310.08461). Held-out evaluation is
always the plain cross-entropy on the corpus, so held-out losses compare across models.
"""

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import torch
from datasets import Dataset
from transformers import Trainer, TrainingArguments, default_data_collator
from transformers.trainer_utils import get_last_checkpoint

from training.models import ARCHS, TRAIN_LENGTH, build_model, parameter_count

from hf_recurrentgemma import GriffinForCausalLM  # noqa: E402

from training.constants import BOS, DOCUMENT_SEPARATOR, EOS


def documents(path: Path) -> list[str]:
    return [d for d in Path(path).read_text().split(DOCUMENT_SEPARATOR) if d.strip()]


def token_blocks(texts: list[str], tokenizer_model: Path, length: int) -> Dataset:
    """Documents -> rows of `length` tokens: each document is <bos> text <eos>, documents are concatenated and cut
    into consecutive blocks (the last partial block is dropped). Tokenized with `datasets.map`."""
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(tokenizer_model))

    def tokenize(batch):
        return {"ids": [[BOS] + sp.encode(text) + [EOS] for text in batch["text"]]}

    def group(batch):
        stream = [t for ids in batch["ids"] for t in ids]
        n = len(stream) // length * length
        blocks = [stream[i:i + length] for i in range(0, n, length)]
        return {"input_ids": blocks, "labels": blocks}

    data = Dataset.from_dict({"text": texts})
    data = data.map(tokenize, batched=True, remove_columns=["text"])
    return data.map(group, batched=True, batch_size=len(texts), remove_columns=["ids"])


class DistillationTrainer(Trainer):
    """`Trainer` whose training loss is `w * KL(teacher || student) + (1 - w) * CE`; evaluation is plain CE."""

    def __init__(self, *args, teacher, distill_weight: float, **kwargs):
        super().__init__(*args, **kwargs)
        self.teacher = teacher.eval().requires_grad_(False)
        self.distill_weight = distill_weight

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if not model.training:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        input_ids, labels = inputs["input_ids"], inputs["labels"]
        outputs = model(input_ids=input_ids)
        with torch.no_grad():
            teacher_logits = self.teacher(input_ids=input_ids).logits[:, :-1].float()
        student_logp = torch.log_softmax(outputs.logits[:, :-1].float(), dim=-1)  # (B, T-1, V) float32
        teacher_logp = torch.log_softmax(teacher_logits, dim=-1)
        kl = (teacher_logp.exp() * (teacher_logp - student_logp)).sum(-1).mean()
        ce = torch.nn.functional.nll_loss(student_logp.flatten(0, 1), labels[:, 1:].flatten())
        loss = self.distill_weight * kl + (1 - self.distill_weight) * ce
        return (loss, outputs) if return_outputs else loss


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("arch", choices=ARCHS)
    parser.add_argument("--corpus", type=Path, default=Path("corpus"))
    parser.add_argument("--tokenizer", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--tokens", type=int, default=2_500_000, help="training tokens (sets the step count)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--eval-every", type=int, default=50, help="steps between held-out evaluations")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--teacher", type=Path, help="converted model folder to distil from (same tokenizer)")
    parser.add_argument("--distill-weight", type=float, default=1.0, help="w in w * KL + (1 - w) * CE")
    args = parser.parse_args(argv)
    if not 0.0 <= args.distill_weight <= 1.0:
        parser.error(f"--distill-weight must be in [0, 1], got {args.distill_weight}")
    torch.set_num_threads(args.threads)

    import sentencepiece as spm

    vocab_size = spm.SentencePieceProcessor(model_file=str(args.tokenizer)).GetPieceSize()
    train = token_blocks(documents(args.corpus / "train.txt"), args.tokenizer, TRAIN_LENGTH)
    heldout = token_blocks(documents(args.corpus / "heldout.txt"), args.tokenizer, TRAIN_LENGTH)
    tokens_per_step = args.batch_size * TRAIN_LENGTH
    steps = math.ceil(args.tokens / tokens_per_step)

    torch.manual_seed(args.seed)
    model = build_model(args.arch, vocab_size)
    print(f"{args.arch}: {parameter_count(model):,} parameters; {len(train)} training rows of {TRAIN_LENGTH} tokens "
          f"({len(train) * TRAIN_LENGTH:,} tokens), {len(heldout)} held-out rows; {steps} steps of "
          f"{tokens_per_step} tokens = {steps * tokens_per_step:,} tokens ({steps * tokens_per_step / (len(train) * TRAIN_LENGTH):.2f} epochs)",
          flush=True)
    training_args = TrainingArguments(
        output_dir=str(args.out), max_steps=steps, per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=16, learning_rate=args.lr, lr_scheduler_type="cosine",
        warmup_steps=max(1, steps // 20), weight_decay=0.1, adam_beta1=0.9, adam_beta2=0.95, max_grad_norm=1.0,
        bf16=True, use_cpu=True, eval_strategy="steps", eval_steps=args.eval_every, logging_steps=10,
        save_steps=args.eval_every, save_total_limit=2, report_to=[], seed=args.seed, data_seed=args.seed,
        dataloader_num_workers=0, disable_tqdm=False,
    )
    data = dict(model=model, args=training_args, train_dataset=train, eval_dataset=heldout,
                data_collator=default_data_collator)
    if args.teacher is None:
        trainer = Trainer(**data)
    else:
        teacher = GriffinForCausalLM.from_pretrained(args.teacher, dtype=torch.float32)
        if teacher.config.vocab_size != vocab_size:
            parser.error(f"--teacher {args.teacher}: vocabulary of {teacher.config.vocab_size}, the tokenizer has "
                         f"{vocab_size}")
        print(f"distilling from {args.teacher} ({parameter_count(teacher):,} parameters), weight {args.distill_weight}")
        trainer = DistillationTrainer(**data, teacher=teacher, distill_weight=args.distill_weight)
    start = time.time()
    last = get_last_checkpoint(str(args.out)) if args.out.is_dir() else None
    trainer.train(resume_from_checkpoint=last)
    final_eval = trainer.evaluate()
    wall = time.time() - start
    trainer.save_model(str(args.out / "final"))
    history = trainer.state.log_history
    evals = [{"step": h["step"], "tokens": h["step"] * tokens_per_step, "loss": h["eval_loss"]}
             for h in history if "eval_loss" in h]
    metrics = {
        "arch": args.arch, "parameters": parameter_count(model), "vocab_size": vocab_size,
        "train_length": TRAIN_LENGTH, "batch_size": args.batch_size, "steps": trainer.state.global_step,
        "tokens_seen": trainer.state.global_step * tokens_per_step, "lr": args.lr,
        "heldout_loss": final_eval["eval_loss"], "heldout_perplexity": math.exp(final_eval["eval_loss"]),
        "teacher": str(args.teacher) if args.teacher else None,
        "distill_weight": args.distill_weight if args.teacher else None,
        "heldout_tokens": len(heldout) * TRAIN_LENGTH, "wall_seconds_this_run": wall, "resumed_from": last,
        "evals": evals, "train_loss": [{"step": h["step"], "loss": h["loss"]} for h in history if "loss" in h],
    }
    (args.out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    print(json.dumps({k: v for k, v in metrics.items() if k not in ("evals", "train_loss")}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
