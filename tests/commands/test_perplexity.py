"""`hf-recurrentgemma perplexity`: streaming a document through the cache in chunks gives the NLL of one full
forward (any chunk size, across the attention window and the LM-head blocks); documents come from local files
through `datasets`; the command prints the same numbers as the Python API."""

import json
import math

import pytest
import torch
import torch.nn.functional as F
from command_helpers import run_command, save_tiny_folder, tiny_model, tiny_tokenizer

from hf_recurrentgemma.commands import perplexity
from hf_recurrentgemma.commands.loading import CommandError
from hf_recurrentgemma.commands.perplexity import document_nll, load_documents, stream_perplexity

pytestmark = pytest.mark.usefixtures("one_thread")
TEXT = ("Griffin mixes gated linear recurrences with local attention. The recurrence carries the past in a state\n"
        "of fixed size, so a document of any length costs the same memory per token. ")


def full_forward_nll(model, ids: torch.Tensor) -> float:
    with torch.no_grad():
        logits = model(ids[None], use_cache=False).logits[0]
    return F.cross_entropy(logits[:-1].double(), ids[1:], reduction="sum").item()


@pytest.mark.parametrize("chunk_size", [1, 5, 8, 33, 1000])
def test_streamed_nll_equals_one_full_forward(chunk_size, monkeypatch):
    monkeypatch.setattr(perplexity, "HEAD_BLOCK", 7)  # several LM-head blocks per chunk, boundaries anywhere
    model = tiny_model(seed=4)  # attention window 8: chunks shorter and longer than it
    ids = tiny_tokenizer()(TEXT, return_tensors="pt")["input_ids"][0]  # (T,) with <bos>, T = 186
    nll, count = document_nll(model, ids, chunk_size)
    expected = full_forward_nll(model, ids)
    assert count == ids.shape[0] - 1
    # float32 logits, summed over 185 tokens: the two orders of summation differ by ~1e-5 relative.
    assert nll == pytest.approx(expected, rel=1e-5), f"chunk {chunk_size}: {nll} vs {expected}"


def test_documents_are_independent_and_the_total_is_their_sum():
    model, tokenizer = tiny_model(seed=4), tiny_tokenizer()
    docs = [TEXT, "short one", "x", TEXT[::-1]]  # "x" is <bos> x: one predicted token
    result = stream_perplexity(model, tokenizer, docs, chunk_size=16, progress=False)
    expected = [full_forward_nll(model, tokenizer(d, return_tensors="pt")["input_ids"][0]) for d in docs]
    assert result.documents == 4 and result.tokens == sum(len(d) for d in docs)
    assert result.nll == pytest.approx(sum(expected), rel=1e-5)
    assert result.perplexity == pytest.approx(math.exp(sum(expected) / result.tokens), rel=1e-5)
    limited = stream_perplexity(model, tokenizer, docs, chunk_size=16, max_documents=1, progress=False)
    assert limited.documents == 1 and limited.nll == pytest.approx(expected[0], rel=1e-5)


def test_local_files_through_datasets(tmp_path):
    (tmp_path / "a.txt").write_text("line one\nline two\n\nnext paragraph\n")
    (tmp_path / "b.txt").write_text("second file")
    assert sorted(load_documents(str(tmp_path))) == ["line one\nline two\n\nnext paragraph\n", "second file"]
    assert list(load_documents(str(tmp_path / "a.txt"), sample_by="line")) == [
        "line one", "line two", "", "next paragraph"]
    assert list(load_documents(str(tmp_path / "*.txt"))) == list(load_documents(str(tmp_path)))
    rows = [{"text": "first doc", "id": 1}, {"text": "second doc", "id": 2}]
    (tmp_path / "data.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    assert list(load_documents(str(tmp_path / "data.jsonl"))) == ["first doc", "second doc"]


@pytest.mark.parametrize("kwargs, message", [
    (dict(dataset="data.jsonl", text_column="body"), "--text-column body: not a column of .* \\(columns: text, id\\)"),
    (dict(dataset="*.nothing"), "the pattern matches no file"),
    (dict(dataset="mixed"), "files must all be one of"),
    (dict(dataset="data.jsonl", split="test"), "--split test: local files form one split, train"),
])
def test_bad_dataset_arguments_are_named(tmp_path, monkeypatch, kwargs, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data.jsonl").write_text(json.dumps({"text": "a", "id": 1}))
    (tmp_path / "mixed").mkdir()
    (tmp_path / "mixed" / "a.txt").write_text("a")
    (tmp_path / "mixed" / "b.csv").write_text("text\nb\n")
    with pytest.raises((CommandError, ValueError), match=message):
        list(load_documents(**kwargs))


def test_perplexity_command_prints_the_api_result(tmp_path):
    folder = save_tiny_folder(tmp_path / "model", seed=5)
    docs = [TEXT * 3, "a much shorter document"]
    (tmp_path / "docs.jsonl").write_text("\n".join(json.dumps({"body": d}) for d in docs))
    result = run_command("perplexity", folder, "--dataset", tmp_path / "docs.jsonl", "--text-column", "body",
                         "--chunk-size", "64", "--json")
    assert result.returncode == 0, result.stderr
    printed = json.loads(result.stdout)
    expected = stream_perplexity(tiny_model(seed=5), tiny_tokenizer(), docs, chunk_size=64, progress=False)
    assert printed["documents"] == 2 and printed["tokens"] == expected.tokens
    assert printed["perplexity"] == pytest.approx(expected.perplexity, rel=1e-5)
    assert printed["tokens_per_second"] > 0 and printed["peak_memory_bytes"] > 0
    assert "tok/s" in result.stderr  # the progress bar shows the rate
