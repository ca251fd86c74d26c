"""Peak memory and time of `hf-recurrentgemma convert` on a synthetic checkpoint of at least 1 GB.

    python -m benchmarks conversion [--formats torch,orbax] [--max-shard-size 256MB] [--layers 16]

Writes a random float32 Griffin checkpoint (by default vocabulary 65536, width 1024, 16 blocks: 1.07 GB) as the
PyTorch release stores it (a `recurrentgemma.torch` state dict) and/or as the JAX release does (an Orbax
checkpoint of `{"params": <Flax tree>}`), then converts each in a fresh subprocess and reports its RSS high-water
mark (`VmHWM` of /proc/self/status, i.e. the peak of anonymous memory plus resident pages of mapped files; on
Linux `ru_maxrss` would also count the parent's RSS at fork time) and wall time.
The same subprocess minus the conversion (imports only) gives the baseline, so `peak - baseline` is what the
conversion itself held. The ratio to the checkpoint size is the figure the streaming design is about: near
`max-shard-size / checkpoint size`, not 1 (everything in memory) or 2 (a copy of everything).
"""

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MEASURE = r"""
import json, resource, sys, time
argv = json.loads(sys.argv[1])
fmt = sys.argv[2]
if fmt == "orbax":
    import jax, orbax.checkpoint  # what reading Orbax loads anyway
    jax.devices()
from hf_recurrentgemma.cli import main
import hf_recurrentgemma.convert.writer, hf_recurrentgemma.convert.sources, tqdm.auto  # noqa: F401
start = time.perf_counter()
status = main(argv) if argv else 0
seconds = time.perf_counter() - start
try:  # VmHWM belongs to this process's own memory map; ru_maxrss also counts the parent's at fork/exec time.
    with open("/proc/self/status") as f:
        maxrss = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))
except OSError:
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"status": status, "seconds": seconds, "maxrss": maxrss}))
"""


def synthetic_state(vocab: int, width: int, layers: int, seed: int = 0) -> dict:
    """A reference torch state dict (float32, random values) of a Griffin with the usual 2:1 block pattern."""
    import torch

    from hf_recurrentgemma.griffin.configuration_griffin import griffin_block_pattern

    torch.manual_seed(seed)
    heads, mlp, lru = 8, 3 * width, width
    shapes = {"embedder.input_embedding": (vocab, width), "final_norm.scale": (width,)}
    for i, kind in enumerate(griffin_block_pattern(layers)):
        p = f"blocks.{i}."
        shapes.update({p + "temporal_pre_norm.scale": (width,), p + "channel_pre_norm.scale": (width,),
                       p + "mlp_block.ffw_up.w": (2, width, mlp), p + "mlp_block.ffw_up.b": (2, 1, 1, mlp),
                       p + "mlp_block.ffw_down.weight": (width, mlp), p + "mlp_block.ffw_down.bias": (width,)})
        if kind == "attention":
            a = p + "attention_block."
            shapes.update({a + "proj_q.weight": (width, width), a + "proj_k.weight": (width // heads, width),
                           a + "proj_v.weight": (width // heads, width), a + "proj_final.weight": (width, width),
                           a + "proj_final.bias": (width,)})
        else:
            r = p + "recurrent_block."
            shapes.update({r + "linear_x.weight": (lru, width), r + "linear_x.bias": (lru,),
                           r + "linear_y.weight": (lru, width), r + "linear_y.bias": (lru,),
                           r + "linear_out.weight": (width, lru), r + "linear_out.bias": (width,),
                           r + "conv_1d.w": (4, lru), r + "conv_1d.b": (lru,), r + "rg_lru.a_param": (lru,),
                           r + "rg_lru.input_gate.w": (heads, lru // heads, lru // heads),
                           r + "rg_lru.input_gate.b": (heads, lru // heads),
                           r + "rg_lru.a_gate.w": (heads, lru // heads, lru // heads),
                           r + "rg_lru.a_gate.b": (heads, lru // heads)})
    return {k: torch.randn(s) * 0.02 for k, s in shapes.items()}


WRITE_ORBAX = r"""
import sys, torch, numpy as np, orbax.checkpoint as ocp
state = torch.load(sys.argv[1], mmap=True, weights_only=True)
params = {}
for key, value in state.items():
    parts = key.split(".")
    if parts[0] == "blocks":
        parts = ["blocks." + parts[1]] + parts[2:]
    array = value.numpy()
    if parts[-1] == "weight":  # torch Linear weight -> Flax Dense kernel
        parts[-1], array = "kernel", np.ascontiguousarray(array.T)
    node = params
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = array
ocp.PyTreeCheckpointer().save(sys.argv[2], {"params": params})  # what recurrentgemma's save_parameters does
"""


def measure(argv: list[str], fmt: str) -> dict:
    result = subprocess.run([sys.executable, "-c", MEASURE, json.dumps(argv), fmt], capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"measurement failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def directory_size(path: Path) -> int:
    return path.stat().st_size if path.is_file() else sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--formats", default="torch,orbax", help="comma-separated: torch, orbax")
    parser.add_argument("--vocab", type=int, default=65536)
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=16)
    parser.add_argument("--max-shard-size", default="256MB")
    parser.add_argument("--workdir", type=Path, default=None, help="where to write (default: a temporary folder)")
    parser.add_argument("--write-synthetic", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.write_synthetic:
        import torch

        torch.save(synthetic_state(args.vocab, args.width, args.layers), args.write_synthetic)
        return

    import torch

    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench-conversion-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        src = work / "griffin.pt"
        # In a subprocess, so that this parent (whose children are measured) never holds the checkpoint.
        subprocess.run([sys.executable, __file__, "--write-synthetic", str(src), "--vocab", str(args.vocab),
                        "--width", str(args.width), "--layers", str(args.layers)], check=True)
        params = sum(t.numel() for t in torch.load(src, mmap=True, weights_only=True).values())
        size = directory_size(src)
        if size < 10**9:
            print(f"warning: checkpoint is {size / 1e9:.2f} GB (< 1 GB); raise --layers or --vocab")
        flags = ["--embeddings-scale-by-sqrt-dim", "true", "--attention-window-size", "2048",
                 "--logits-soft-cap", "30", "--max-shard-size", args.max_shard_size, "--quiet"]
        print(f"synthetic Griffin: {params / 1e6:.0f}M parameters, float32, {args.layers} blocks; "
              f"max shard {args.max_shard_size}; python {sys.version.split()[0]}, torch {torch.__version__}")
        for fmt in args.formats.split(","):
            source = src
            if fmt == "orbax":
                source = work / "orbax"
                shutil.rmtree(source, ignore_errors=True)
                subprocess.run([sys.executable, "-c", WRITE_ORBAX, str(src), str(source)], check=True,
                               capture_output=True)
            out = work / f"out-{fmt}"
            shutil.rmtree(out, ignore_errors=True)
            baseline = measure([], fmt)
            run = measure(["convert", str(source), str(out), *flags], fmt)
            if run["status"] != 0:
                raise SystemExit(f"conversion of {fmt} failed with status {run['status']}")
            size = directory_size(source)
            shards = [p for p in out.iterdir() if p.suffix == ".safetensors"]
            largest = max(p.stat().st_size for p in shards)
            held = run["maxrss"] - baseline["maxrss"]
            print(f"\n[{fmt}] {source.name}: {size / 1e9:.3f} GB -> {len(shards)} shards (largest "
                  f"{largest / 1e6:.0f} MB)")
            print(f"  time                 {run['seconds']:.1f} s ({size / 1e6 / run['seconds']:.0f} MB/s)")
            print(f"  peak RSS             {run['maxrss'] / 1e9:.3f} GB")
            print(f"  baseline RSS         {baseline['maxrss'] / 1e9:.3f} GB (same process, imports only)")
            print(f"  peak - baseline      {held / 1e9:.3f} GB")
            print(f"  peak / checkpoint    {run['maxrss'] / size:.2f}")
            print(f"  (peak - baseline) / checkpoint   {held / size:.2f}")
            print(f"  (peak - baseline) / largest shard {held / largest:.2f}")
            shutil.rmtree(out, ignore_errors=True)
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    start = time.time()
    main()
    if "--write-synthetic" not in sys.argv:
        print(f"\n(benchmark total {time.time() - start:.0f} s)")
