"""Training and inference on two processes (gloo, CPU) through the launchers users run: `accelerate launch` (DDP),
`torchrun` (DDP, FSDP2 with a sharded checkpoint resumed, tensor parallelism). Each run is compared with one
process on the same global batch: same losses, same gradients, same weights after training, same logits and
generations. The scripts are the examples users run (examples/distributed_*.py); each launch takes ~10-20 s here.

Tolerances: two processes sum gradients in another order than one process does (all-reduce / reduce-scatter), so
gradients differ by float32 rounding (measured <= 4e-8 on gradients of ~1e-1); AdamW then moves weights by `lr`
per step whatever the gradient's size, which can turn a rounding difference on a near-zero gradient into a
visible one, hence 1e-5 on weights and losses.
"""

import importlib.util
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from reference_helpers import assert_close

ROOT = Path(__file__).resolve().parents[2]
TRAIN = ROOT / "examples" / "distributed_train.py"
GENERATE = ROOT / "examples" / "distributed_generate.py"
GRAD_TOL = 1e-6
TRAINED_TOL = 1e-5


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(args, cwd: Path, env_extra=None, expect_ok: bool = True, timeout: int = 240) -> subprocess.CompletedProcess:
    """Runs a command with one thread per process (two processes share the two cores), bounded in time."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", **(env_extra or {})}
    result = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True,
                            timeout=timeout)
    if expect_ok:
        assert result.returncode == 0, f"{args[:4]} exited {result.returncode}:\n{result.stderr[-3000:]}"
    return result


def _torchrun(script, *args, cwd):
    return _run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr",
                 "127.0.0.1", "--master-port", _free_port(), script, *args], cwd)


def _report(path: Path) -> dict:
    return json.loads(path.read_text())


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """A tiny perturbed model folder and the one-process run every multi-process run is compared with:
    3 AdamW steps on a global batch of 4 rows, the first step's gradients, the trained model."""
    spec = importlib.util.spec_from_file_location("distributed_train", TRAIN)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    root = tmp_path_factory.mktemp("distributed")
    example.tiny_model(seed=0).save_pretrained(root / "model")
    _run([sys.executable, TRAIN, "--model", "model", "--steps", "3", "--report", "one.json", "--output", "one"],
         root)
    return root


def _assert_same_training(work: Path, name: str, steps=slice(None)):
    one, many = _report(work / "one.json"), _report(work / f"{name}.json")
    assert many["processes"] == 2, many
    assert torch.allclose(torch.tensor(many["losses"]), torch.tensor(one["losses"][steps]), atol=TRAINED_TOL, rtol=0), \
        (many["losses"], one["losses"])
    grads_one, grads_many = (load_file(work / f"{n}.grads.safetensors") for n in ("one", name))
    assert grads_one.keys() == grads_many.keys()
    for key in grads_one:
        assert_close(grads_many[key], grads_one[key], tol=GRAD_TOL, what=f"{name} gradient of {key}")


def _assert_same_weights(work: Path, folder: str):
    one, many = load_file(work / "one" / "model.safetensors"), load_file(work / folder / "model.safetensors")
    assert one.keys() == many.keys()
    for key in one:
        assert_close(many[key], one[key], tol=TRAINED_TOL, what=f"{folder} weight {key}")


def test_ddp_through_accelerate_launch(work):
    _run([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
          "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_ip", "127.0.0.1",
          "--main_process_port", _free_port(), TRAIN, "--model", "model", "--steps", "3", "--report", "ddp.json",
          "--output", "ddp"], work)
    assert _report(work / "ddp.json")["engine"] == "MULTI_CPU"
    _assert_same_training(work, "ddp")
    _assert_same_weights(work, "ddp")


def test_ddp_through_torchrun(work):
    _torchrun(TRAIN, "--model", "model", "--steps", "1", "--report", "ddp_torchrun.json", cwd=work)
    assert _report(work / "ddp_torchrun.json")["engine"] == "MULTI_CPU"
    _assert_same_training(work, "ddp_torchrun", steps=slice(0, 1))


def test_fsdp2_matches_one_process_and_resumes_from_its_sharded_checkpoint(work):
    # Two steps, then a sharded checkpoint (model and AdamW state, one file per process)...
    _torchrun(TRAIN, "--fsdp2", "--model", "model", "--steps", "2", "--report", "fsdp.json",
              "--save-state", "fsdp_state", cwd=work)
    assert _report(work / "fsdp.json")["engine"] == "FSDP2"
    assert sorted(p.name for p in (work / "fsdp_state").glob("*.distcp")) == ["__0_0.distcp", "__1_0.distcp"]
    _assert_same_training(work, "fsdp", steps=slice(0, 2))
    # ...loaded back by a new launch for the third step: the loss and the final weights are the one-process run's.
    _torchrun(TRAIN, "--fsdp2", "--model", "model", "--resume", "fsdp_state", "--steps", "3",
              "--report", "fsdp_resumed.json", "--output", "fsdp", cwd=work)
    resumed = _report(work / "fsdp_resumed.json")
    assert resumed["steps"] == [3]
    assert abs(resumed["losses"][0] - _report(work / "one.json")["losses"][2]) <= TRAINED_TOL
    _assert_same_weights(work, "fsdp")
    # The gathered folder is an ordinary one: its auto_map names our model code, not FSDP's wrapper class.
    config = json.loads((work / "fsdp" / "config.json").read_text())
    assert config["auto_map"]["AutoModelForCausalLM"] == "modeling_griffin.GriffinForCausalLM", config["auto_map"]
    assert (work / "fsdp" / "modeling_griffin.py").is_file()


def test_accelerate_fsdp_on_cpu_is_refused_not_silently_ddp(work):
    """accelerate 1.x applies FSDP only on accelerators; on CPU the script says so instead of training with DDP."""
    result = _run([sys.executable, TRAIN, "--model", "model", "--steps", "1", "--cpu"], work,
                  env_extra={"ACCELERATE_USE_FSDP": "true"}, expect_ok=False)
    assert result.returncode != 0
    assert "--use_fsdp" in result.stderr and "--fsdp2" in result.stderr, result.stderr[-2000:]


def test_tensor_parallel_generation_matches_one_process(work):
    from hf_recurrentgemma import GriffinForCausalLM

    # Two prompts, left-padded, the first longer than the attention window (6): attention state rolls over.
    prompts = ["5,6,7,8,9,10,11,12,13,14", "20,21,22"]
    _torchrun(GENERATE, "model", *prompts, "--token-ids", "--max-new-tokens", "8", "--logits", "tp.safetensors",
              "--report", "tp.json", cwd=work)
    model = GriffinForCausalLM.from_pretrained(work / "model").eval()
    ids = torch.tensor([[5, 6, 7, 8, 9, 10, 11, 12, 13, 14], [0] * 7 + [20, 21, 22]])
    mask = torch.tensor([[1] * 10, [0] * 7 + [1] * 3])
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
    expected = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=8, do_sample=False)
    # Row-sharded projections sum partial products across processes: float32 rounding only.
    assert_close(load_file(work / "tp.safetensors")["logits"], logits, tol=5e-5, what="tensor-parallel logits")
    assert _report(work / "tp.json") == {"sequences": expected.tolist(), "processes": 2}
