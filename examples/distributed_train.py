"""Data-parallel training of a Griffin model: accelerate's DDP, FSDP or DeepSpeed (chosen by the launcher), or FSDP2.

The script is the same on one process, on two CPU processes and on a cluster; `accelerate launch` (or `torchrun`)
decides the engine (docs/scaling.md):

    python examples/distributed_train.py --model MODEL --data train.txt --output trained/       # one process
    torchrun --nproc-per-node 8 examples/distributed_train.py --model MODEL --data train.txt ...  # DDP
    accelerate launch --num_processes 8 --use_fsdp --fsdp_version 2 \\
        --fsdp_auto_wrap_policy TRANSFORMER_BASED_WRAP --fsdp_state_dict_type SHARDED_STATE_DICT \\
        examples/distributed_train.py --model MODEL --data train.txt ...                 # accelerate's FSDP2 (GPUs)
    torchrun --nproc-per-node 8 examples/distributed_train.py --fsdp2 --model MODEL ...  # FSDP2, GPUs or CPUs

Every step trains on one global batch of `--global-batch` rows of `--seq-len` tokens; process `r` of `n` takes
rows `[r * b, (r + 1) * b)` with `b = global_batch / n`, so the loss and the gradients of a step are those of the
global batch whatever `n` is (each row has the same number of labelled tokens, so the mean of the processes' mean
losses is the global mean). `--report` writes the losses and the first step's full gradients (gathered from the
shards under FSDP) so runs on different process counts can be compared; `--save-state` / `--resume` write and
read a checkpoint to continue a run where it stopped (accelerate's `save_state`; with `--fsdp2`, a sharded
`torch.distributed.checkpoint` of the model and optimizer, one file per process).

Data: `--data` takes local text files (read with `datasets`' "text" builder, tokenized with the model folder's
tokenizer, concatenated with EOS between lines and cut into rows); without it, a fixed random token stream
(`--seed`) stands in, which is what the tests use. `--tiny` builds a small random model instead of loading one.
"""

import argparse
import json
import math
import os
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

import hf_recurrentgemma  # noqa: F401  (registers "griffin" with the Auto classes)
from hf_recurrentgemma import GriffinConfig, GriffinForCausalLM


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="a model folder or Hub id (ours or a built-in recurrent_gemma one)")
    source.add_argument("--tiny", action="store_true", help="a small random Griffin (vocabulary 97, width 32)")
    parser.add_argument("--data", nargs="+", help="local text files; default: a fixed random token stream")
    parser.add_argument("--steps", type=int, default=2, help="optimizer steps (default 2)")
    parser.add_argument("--global-batch", type=int, default=4, help="rows per step over all processes")
    parser.add_argument("--seq-len", type=int, default=16, help="tokens per row")
    parser.add_argument("--optimizer", choices=("adamw", "sgd"), default="adamw")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fsdp2", action="store_true",
                        help="shard with FSDP2 (torch's fully_shard; launch with torchrun) instead of accelerate")
    parser.add_argument("--cpu", action="store_true",
                        help="train on CPU processes (gloo) even where an accelerator is present; the default "
                             "on a machine without one")
    parser.add_argument("--output", type=Path, help="save the trained model here (a from_pretrained folder)")
    parser.add_argument("--report", type=Path, help="JSON of the losses; the first step's gradients beside it")
    parser.add_argument("--save-state", type=Path, help="write a checkpoint to resume from here after the last step")
    parser.add_argument("--resume", type=Path, help="continue from a checkpoint written by --save-state")
    args = parser.parse_args(argv)
    for name, low in (("steps", 0), ("global_batch", 1), ("seq_len", 1)):
        if getattr(args, name) < low:
            parser.error(f"--{name.replace('_', '-')} must be >= {low}, got {getattr(args, name)}")

    if args.data and args.tiny:
        parser.error("--data needs --model (its tokenizer); --tiny has none")
    if args.output is not None and args.output.exists() and any(args.output.iterdir()):
        parser.error(f"--output {args.output} exists and is not empty; choose a new folder")
    return args


def tiny_model(seed: int) -> GriffinForCausalLM:
    """A small Griffin with every parameter perturbed (so zero-initialised norms and biases take part)."""
    config = GriffinConfig(
        vocab_size=97, hidden_size=32, intermediate_size=48, num_attention_heads=4, attention_window_size=6,
        block_types=["recurrent", "recurrent", "attention", "recurrent"],
    )
    torch.manual_seed(seed)
    model = GriffinForCausalLM(config)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    return model


def token_rows(args, vocab_size: int, rows_needed: int) -> torch.Tensor:
    """(rows_needed, seq_len) long: the training rows, the same on every process."""
    if not args.data:
        generator = torch.Generator().manual_seed(args.seed + 1)
        return torch.randint(0, vocab_size, (rows_needed, args.seq_len), generator=generator)
    from datasets import load_dataset
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(args.model)
    lines = load_dataset("text", data_files=[str(p) for p in args.data], split="train")
    ids = lines.map(lambda batch: {"ids": [t + [tokenizer.eos_token_id] for t in tokenizer(batch["text"]).input_ids]},
                    batched=True, remove_columns=["text"])
    stream = torch.tensor([t for row in ids["ids"] for t in row], dtype=torch.long)
    usable = stream.numel() // args.seq_len
    if usable < rows_needed:
        raise SystemExit(f"error: --data holds {stream.numel()} tokens, {usable} rows of --seq-len {args.seq_len}; "
                         f"{rows_needed} rows are needed for --steps {args.steps} x --global-batch {args.global_batch}")
    return stream[: rows_needed * args.seq_len].view(rows_needed, args.seq_len)


def full_gradients(model) -> dict[str, torch.Tensor]:
    """Every parameter's whole gradient (gathered from the shards under FSDP2; every process must call this), on
    CPU, by parameter name."""
    grads = {}
    for name, p in model.named_parameters():
        if p.grad is None:
            continue
        grad = p.grad.full_tensor() if hasattr(p.grad, "full_tensor") else p.grad
        grads[name] = grad.detach().cpu().clone()
    return grads


class Engine:
    """What the training loop needs from a distributed engine: the process layout, the model and optimizer ready
    for training, backward, a mean over processes, and saving."""

    world: int
    rank: int
    is_main: bool

    def backward(self, loss): loss.backward()


class AccelerateEngine(Engine):
    """accelerate's engines: DDP, FSDP or DeepSpeed, whichever `accelerate launch` (or its config) chose; DDP under
    plain torchrun. `--save-state` / `--resume` are accelerate's save_state / load_state."""

    def __init__(self, args, model, optimizer):
        from accelerate import Accelerator
        from accelerate.utils import DistributedType

        # Under torchrun / `accelerate launch --multi_gpu` accelerate sets up CPU processes (gloo) only when asked;
        # DeepSpeed picks its own (CPU) accelerator and process group, and accelerate hands over to it only when
        # not told to use the CPU.
        deepspeed = os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"
        self.accelerator = Accelerator(cpu=not deepspeed and (args.cpu or not torch.accelerator.is_available()))
        if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true" and \
                self.accelerator.distributed_type != DistributedType.FSDP:
            # accelerate applies FSDP only on accelerators; on CPU processes it would silently run DDP instead.
            kind = self.accelerator.distributed_type
            raise SystemExit(f"error: `accelerate launch --use_fsdp` on {kind}: accelerate "
                             "runs FSDP on accelerators only; on CPU use --fsdp2 (torch's FSDP2) under torchrun")
        self.world, self.rank = self.accelerator.num_processes, self.accelerator.process_index
        self.is_main = self.accelerator.is_main_process
        self.name = str(self.accelerator.distributed_type).split(".")[-1]
        self.deepspeed = self.accelerator.distributed_type == DistributedType.DEEPSPEED
        if self.deepspeed and torch.distributed.is_initialized():
            # On CPU processes accelerate 1.15 reports one process, main on every rank, under DeepSpeed (measured);
            # the process group DeepSpeed set up knows the layout.
            self.world, self.rank = torch.distributed.get_world_size(), torch.distributed.get_rank()
            self.is_main = self.rank == 0
        if self.deepspeed:  # DeepSpeed wants the per-process batch, which it otherwise reads off a DataLoader
            config = self.accelerator.state.deepspeed_plugin.deepspeed_config
            config.update(train_micro_batch_size_per_gpu=max(1, args.global_batch // self.world),
                          train_batch_size=args.global_batch, gradient_accumulation_steps=1)
        self.model, self.optimizer = self.accelerator.prepare(model, optimizer)

    def backward(self, loss):
        self.accelerator.backward(loss)

    def mean(self, value: torch.Tensor) -> float:
        if self.world > 1 and self.accelerator.num_processes != self.world:  # the DeepSpeed-on-CPU case above
            value = value.detach().clone()
            torch.distributed.all_reduce(value)
            return (value / self.world).item()
        return self.accelerator.reduce(value.detach(), reduction="mean").item()

    def gradients(self):
        if self.deepspeed:  # accelerate's backward already ran DeepSpeed's step, which consumed the gradients
            return None
        return full_gradients(self.accelerator.unwrap_model(self.model))

    def save_state(self, path: Path):
        self.accelerator.save_state(str(path))

    def load_state(self, path: Path):
        self.accelerator.load_state(str(path))

    def save_model(self, path: Path):
        # The whole model, gathered on the main process, as a from_pretrained folder (with the model code).
        state_dict = self.accelerator.get_state_dict(self.model)
        self.accelerator.unwrap_model(self.model).save_pretrained(
            path, state_dict=state_dict, is_main_process=self.is_main, save_function=self.accelerator.save)

    def barrier(self):
        self.accelerator.wait_for_everyone()


class FSDP2Engine(Engine):
    """FSDP2 (`torch.distributed.fsdp.fully_shard`) as Transformers applies it: one shard group per decoder layer
    (`_no_split_modules`), the rest (embedding, tied head, final norm) in the root group. Runs on CPU processes
    (gloo) as on GPUs (NCCL). `--save-state` writes a sharded distributed checkpoint (model and optimizer) with
    `torch.distributed.checkpoint`, which `--resume` loads back."""

    name = "FSDP2"

    def __init__(self, args, model, optimizer_factory):
        import torch.distributed as dist
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        self.dist = dist
        use_gpu = torch.cuda.is_available() and not args.cpu
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0"))) if use_gpu else torch.device("cpu")
        if use_gpu:
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if use_gpu else "gloo")
        self.world, self.rank = dist.get_world_size(), dist.get_rank()
        self.is_main = self.rank == 0
        mesh = init_device_mesh(device.type, (self.world,))
        model.to(device)
        for module in model.modules():
            if type(module).__name__ in model._no_split_modules:
                fully_shard(module, mesh=mesh)
        fully_shard(model, mesh=mesh)
        self.model, self.optimizer = model, optimizer_factory(model)

    def mean(self, value: torch.Tensor) -> float:
        value = value.detach().clone()
        self.dist.all_reduce(value)
        return (value / self.world).item()

    def gradients(self):
        return full_gradients(self.model)

    def save_state(self, path: Path):
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_state_dict

        model_state, optimizer_state = get_state_dict(self.model, self.optimizer)
        dcp.save({"model": model_state, "optimizer": optimizer_state}, checkpoint_id=str(path))

    def load_state(self, path: Path):
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

        model_state, optimizer_state = get_state_dict(self.model, self.optimizer)
        state = {"model": model_state, "optimizer": optimizer_state}
        dcp.load(state, checkpoint_id=str(path))
        set_state_dict(self.model, self.optimizer, model_state_dict=state["model"],
                       optim_state_dict=state["optimizer"])

    def save_model(self, path: Path):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        # Every process takes part in gathering; the main one gets the whole state dict on CPU.
        state = get_model_state_dict(self.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if self.is_main:
            # Saved through a plain model: the sharded one's class is torch's `FSDPGriffinForCausalLM` subclass,
            # which save_pretrained (Transformers 5.24) would record in auto_map with torch's files as the model code.
            plain = GriffinForCausalLM(self.model.config)
            plain.load_state_dict(state)
            plain.save_pretrained(path)

    def barrier(self):
        self.dist.barrier()


def train(args) -> list[float]:
    def make_optimizer(model):
        optimizer = torch.optim.AdamW if args.optimizer == "adamw" else torch.optim.SGD
        return optimizer(model.parameters(), lr=args.lr)

    model = tiny_model(args.seed) if args.tiny else GriffinForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    if args.fsdp2:
        engine = FSDP2Engine(args, model, make_optimizer)
    else:
        engine = AccelerateEngine(args, model, make_optimizer(model))
    torch.manual_seed(args.seed)
    if args.global_batch % engine.world:
        raise SystemExit(f"error: --global-batch {args.global_batch} is not divisible by {engine.world} processes")
    rows = token_rows(args, model.config.vocab_size, args.steps * args.global_batch)
    first_step = 0
    if args.resume is not None:
        engine.load_state(args.resume)
        first_step = json.loads((args.resume / "progress.json").read_text())["steps_done"]

    local = args.global_batch // engine.world
    losses = []
    engine.model.train()
    for step in range(first_step, args.steps):
        global_batch = rows[step * args.global_batch : (step + 1) * args.global_batch]
        batch = global_batch[engine.rank * local : (engine.rank + 1) * local]  # this process's share
        loss = engine.model(input_ids=batch, labels=batch, use_cache=False).loss
        engine.backward(loss)
        if step == first_step and args.report is not None:
            grads = engine.gradients()
            if engine.is_main and grads is not None:
                save_file(grads, str(args.report.with_suffix(".grads.safetensors")))
        engine.optimizer.step()
        engine.optimizer.zero_grad()
        # The global batch's loss: the mean of the processes' means (equal token counts per process).
        losses.append(engine.mean(loss))
        if engine.is_main:
            print(f"step {step + 1}/{args.steps}  loss {losses[-1]:.6f}  processes {engine.world}  {engine.name}")

    if args.save_state is not None:
        engine.save_state(args.save_state)
        if engine.is_main:
            (args.save_state / "progress.json").write_text(json.dumps({"steps_done": args.steps}))
    if args.output is not None:
        engine.save_model(args.output)
    if args.report is not None and engine.is_main:
        args.report.write_text(json.dumps({"losses": losses, "processes": engine.world, "engine": engine.name,
                                           "steps": list(range(first_step + 1, args.steps + 1))}))
    engine.barrier()
    return losses


def main(argv=None) -> int:
    args = parse_args(argv)
    losses = train(args)
    return 0 if all(math.isfinite(x) for x in losses) else 1


if __name__ == "__main__":
    sys.exit(main())
