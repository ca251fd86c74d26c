"""Generation with the model split over processes by tensor parallelism (Transformers' `tp_plan`).

    torchrun --nproc-per-node 4 examples/distributed_generate.py MODEL "The capital of France is" --max-new-tokens 32

Each process holds a slice of every sharded projection (GriffinConfig.base_model_tp_plan: the MLP, attention's
query and output projections by head, the recurrent block's input and output projections, the embedding and tied
head by vocabulary) and computes its share; the processes exchange activations after each sharded block. The
number of processes must divide `num_attention_heads` (10 for recurrentgemma-2b, 16 for 9b). What stays
replicated, and why, is in docs/scaling.md. Run without torchrun, the script loads the model whole.

Prompts are text (tokenized with the folder's tokenizer) or, with `--token-ids`, comma-separated token ids.
`--logits FILE` writes the prompt's logits (safetensors) so a run can be compared with one on another number of
processes; `--report FILE` writes the generated token ids as JSON.
"""

import argparse
import json
import os
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

import hf_recurrentgemma  # noqa: F401  (registers "griffin" with the Auto classes)
from hf_recurrentgemma import GriffinForCausalLM


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="a model folder or Hub id")
    parser.add_argument("prompts", nargs="+", help="prompts (text, or token ids with --token-ids)")
    parser.add_argument("--token-ids", action="store_true", help="prompts are comma-separated token ids")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--logits", type=Path, help="write the prompts' logits here (safetensors)")
    parser.add_argument("--report", type=Path, help="write the generated token ids here (JSON)")
    args = parser.parse_args(argv)
    if args.max_new_tokens < 1:
        parser.error(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
    return args


def load(model_path: str) -> GriffinForCausalLM:
    """The model, sharded by its tensor-parallel plan when launched on several processes."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return GriffinForCausalLM.from_pretrained(model_path).eval()
    from transformers.distributed import DistributedConfig

    return GriffinForCausalLM.from_pretrained(model_path, distributed_config=DistributedConfig(tp_plan="auto")).eval()


def prompt_batch(args) -> dict[str, torch.Tensor]:
    """input_ids and attention_mask (B, T), left-padded."""
    if not args.token_ids:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(args.model, padding_side="left")
        return dict(tokenizer(args.prompts, return_tensors="pt", padding=True))
    try:
        rows = [[int(t) for t in prompt.split(",")] for prompt in args.prompts]
    except ValueError as error:
        raise SystemExit(f"error: --token-ids prompts must be comma-separated integers: {error}") from None
    width = max(len(r) for r in rows)
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, width - len(row):] = torch.tensor(row)
        mask[i, width - len(row):] = 1
    return {"input_ids": ids, "attention_mask": mask}


def main(argv=None) -> int:
    args = parse_args(argv)
    model = load(args.model)
    batch = prompt_batch(args)
    rank = int(os.environ.get("RANK", "0"))
    with torch.no_grad():
        logits = model(**batch, use_cache=False).logits
    sequences = model.generate(**batch, max_new_tokens=args.max_new_tokens, do_sample=False)
    if rank == 0:
        if args.logits is not None:
            save_file({"logits": logits.contiguous()}, str(args.logits))
        if args.report is not None:
            args.report.write_text(json.dumps({"sequences": sequences.tolist(),
                                               "processes": int(os.environ.get("WORLD_SIZE", "1"))}))
        if not args.token_ids:
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(args.model)
            for text in tokenizer.batch_decode(sequences, skip_special_tokens=True):
                print(text)
        else:
            for row in sequences.tolist():
                print(",".join(map(str, row)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
