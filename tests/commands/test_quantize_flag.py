"""`--quantize {int8,int4}` on `generate`, `chat` and `perplexity` (one shared flag, `commands/loading.py`): each
command's output equals what the same quantized model gives in-process (`quantization.load_quantized`), the
head is quantized and the embedding left exact; a bad group size is a one-line error."""

import json

import pytest
import torch
from command_helpers import run_command, save_tiny_folder, tiny_tokenizer

pytest.importorskip("torchao")
from hf_recurrentgemma.commands.perplexity import stream_perplexity  # noqa: E402
from hf_recurrentgemma.quantization import load_quantized  # noqa: E402

NEW = 10
# int4 packs outputs in multiples of 16 and inputs in groups of 32: a tiny model whose every linear (and the head:
# vocabulary 112 >= the tokenizer's 102) fits.
SHAPE = dict(hidden_size=64, intermediate_size=128, vocab_size=112)
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return save_tiny_folder(tmp_path_factory.mktemp("quantized") / "model", seed=4, **SHAPE)


@pytest.mark.parametrize("fmt", ["int8", "int4"])
def test_generate_with_quantize_equals_the_quantized_model_in_process(folder, fmt):
    result = run_command("generate", folder, "the cat sat", "--max-new-tokens", NEW, "--quantize", fmt,
                         "--group-size", "32")
    assert result.returncode == 0, result.stderr
    model, tokenizer = load_quantized(folder, fmt, 32), tiny_tokenizer()
    assert type(model.lm_head.weight).__module__.startswith("torchao")  # the head is quantized ...
    assert type(model.model.embed_tokens.weight) is torch.nn.Parameter  # ... the lookup is not
    ids = tokenizer("the cat sat", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=NEW, do_sample=False, pad_token_id=0)
    assert result.stdout == tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True) + "\n"


def test_perplexity_and_chat_take_the_flag(folder, tmp_path):
    docs = ["It is a truth universally acknowledged, that a single man in possession of a good fortune."]
    (tmp_path / "docs.jsonl").write_text(json.dumps({"text": docs[0]}))
    result = run_command("perplexity", folder, "--dataset", tmp_path / "docs.jsonl", "--json", "--quantize", "int8")
    assert result.returncode == 0, result.stderr
    expected = stream_perplexity(load_quantized(folder, "int8"), tiny_tokenizer(), docs, progress=False)
    assert json.loads(result.stdout)["perplexity"] == pytest.approx(expected.perplexity, rel=1e-5)

    chat = run_command("chat", folder, "--max-new-tokens", NEW, "--quantize", "int4", "--group-size", "32",
                       input="hello\n/quit\n")
    assert chat.returncode == 0, chat.stderr
    assert chat.stdout.count("> ") >= 2


def test_bad_group_size_is_named(folder):
    result = run_command("generate", folder, "x", "--quantize", "int4", "--group-size", "48")
    assert result.returncode == 2 and "--group-size" in result.stderr
