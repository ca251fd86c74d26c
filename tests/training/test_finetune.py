"""examples/finetune.py: packed rows keep documents apart (a packed batch's loss and gradients equal the documents
run alone), the packing matches Transformers' DataCollatorWithFlattening conventions, and the script runs end to
end on a tiny model: full fine-tuning in-process, LoRA through a subprocess, each saving a folder that loads."""

import importlib.util
import json

import pytest
import torch
import torch.nn.functional as F
from command_helpers import REPO, ONE_THREAD, save_tiny_folder, tiny_model
from transformers import AutoModelForCausalLM, DataCollatorWithFlattening

pytestmark = pytest.mark.usefixtures("one_thread")
SCRIPT = REPO / "examples" / "finetune.py"
DATA = REPO / "examples" / "data" / "lighthouse_notes.txt"
IGNORE = -100


@pytest.fixture(scope="module")
def finetune():
    spec = importlib.util.spec_from_file_location("finetune_example", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _docs(lengths, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(6, 102, (n,), generator=generator).tolist() for n in lengths]


def test_pack_rows(finetune):
    docs = _docs([5, 13, 9, 20, 70])
    rows = finetune.pack({"input_ids": docs}, block_size=32, pad_id=0)
    assert all(len(r) == 32 for key in rows for r in rows[key])
    # [5, 13, 9] + 5 padding | [20] + 12 padding (the 32-token first piece of 70 does not fit) | 32 | 32 | 6 + pad
    assert [sum(m) for m in rows["attention_mask"]] == [27, 20, 32, 32, 6]
    first = rows["position_ids"][0]
    assert first == list(range(5)) + list(range(13)) + list(range(9)) + [0] * 5
    assert rows["labels"][0][:6] == [IGNORE] + docs[0][1:] + [IGNORE]
    assert rows["labels"][0][27:] == [IGNORE] * 5 and rows["input_ids"][0][27:] == [0] * 5
    assert rows["input_ids"][2] == docs[4][:32] and rows["position_ids"][2] == list(range(32))


def test_pack_follows_data_collator_with_flattening(finetune):
    """Where documents fill a row exactly, the row is what DataCollatorWithFlattening makes of them."""
    docs = _docs([7, 12, 13])
    rows = finetune.pack({"input_ids": docs}, block_size=32, pad_id=0)
    flat = DataCollatorWithFlattening(return_tensors="pt")([{"input_ids": d} for d in docs])
    for key in ("input_ids", "labels", "position_ids"):
        assert rows[key] == flat[key].tolist(), key


def test_packed_batch_loss_and_gradients_equal_documents_alone(finetune):
    """Documents in packed rows do not see each other through attention, the conv1d or the RG-LRU: the summed
    loss and every parameter's gradient equal those of the documents run one by one."""
    model = tiny_model(seed=6).train()  # attention window 8: documents longer than it and shorter
    docs = _docs([5, 13, 9, 20, 3, 17])
    rows = {k: torch.tensor(v) for k, v in finetune.pack({"input_ids": docs}, 32, pad_id=0).items()}
    assert rows["input_ids"].shape == (3, 32)

    def summed_loss(logits, labels):
        return F.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), ignore_index=IGNORE,
                               reduction="sum")

    out = model(**{k: rows[k] for k in ("input_ids", "position_ids", "attention_mask")}, labels=rows["labels"])
    packed = summed_loss(out.logits, rows["labels"])
    count = (rows["labels"][:, 1:] != IGNORE).sum()
    assert out.loss.item() == pytest.approx(packed.item() / count.item(), rel=1e-5)  # the model's loss agrees
    packed.backward()
    packed_grads = {n: p.grad.clone() for n, p in model.named_parameters()}

    model.zero_grad()
    alone = 0.0
    for doc in docs:
        ids = torch.tensor([doc])
        labels = ids.clone()
        labels[0, 0] = IGNORE
        loss = summed_loss(model(ids).logits, labels)
        loss.backward()
        alone += loss.item()
    assert packed.item() == pytest.approx(alone, rel=1e-5)
    worst = max((packed_grads[n] - p.grad).abs().max().item() / (p.grad.abs().max().item() + 1e-12)
                for n, p in model.named_parameters())
    assert worst < 1e-4, f"largest relative gradient difference {worst:.2e}"


def test_full_finetune_end_to_end(finetune, tmp_path):
    data = tmp_path / "docs.jsonl"
    paragraphs = [p for p in DATA.read_text().split("\n\n") if p.strip()]
    data.write_text("\n".join(json.dumps({"body": p}) for p in paragraphs))
    model_dir = save_tiny_folder(tmp_path / "model", seed=7)
    out = tmp_path / "out"
    status = finetune.main(["--model", str(model_dir), "--data", str(data), "--text-column", "body", "--output",
                            str(out), "--max-steps", "8", "--block-size", "128", "--batch-size", "4", "--lr", "3e-3",
                            "--eval-fraction", "0.25", "--no-bf16", "--logging-steps", "2"])
    assert status == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == 8 and metrics["eval_loss_after"] < metrics["eval_loss_before"]
    assert (out / "loss_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    trained = AutoModelForCausalLM.from_pretrained(out)
    original = AutoModelForCausalLM.from_pretrained(model_dir)
    assert type(trained).__name__ == "GriffinForCausalLM"
    changed = [n for n, p in trained.state_dict().items() if not torch.equal(p, original.state_dict()[n])]
    assert len(changed) > len(trained.state_dict()) // 2
    assert list(tmp_path.iterdir()).count(out) == 1 and not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]
    with pytest.raises(SystemExit, match="already exists; pass --force"):
        finetune.main(["--model", str(model_dir), "--data", str(data), "--output", str(out)])


def test_lora_finetune_script_runs_as_a_command(tmp_path):
    import os
    import subprocess
    import sys

    model_dir = save_tiny_folder(tmp_path / "model", seed=8)
    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--model", str(model_dir), "--data", str(DATA), "--output", str(out),
         "--max-steps", "4", "--block-size", "128", "--batch-size", "4", "--lora", "--eval-fraction", "0.2"],
        capture_output=True, text=True, timeout=300, cwd=REPO, env={**os.environ, **ONE_THREAD})
    assert result.returncode == 0, result.stderr[-2000:]
    assert "held-out loss" in result.stdout and "%|" in result.stderr  # the Trainer's progress bar
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["lora"] and metrics["steps"] == 4
    trained = AutoModelForCausalLM.from_pretrained(out)  # LoRA merged: a plain Griffin folder, no adapter files
    assert not any("lora" in n for n in trained.state_dict()) and not (out / "adapter_config.json").exists()
    original = AutoModelForCausalLM.from_pretrained(model_dir)
    moved = max((p - original.state_dict()[n]).abs().max().item() for n, p in trained.state_dict().items())
    assert moved > 0
