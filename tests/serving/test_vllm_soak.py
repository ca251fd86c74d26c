"""A slice of the serving soak (`benchmarks/bench_soak.py`, the same code): the OpenAI-compatible vLLM server on the
shipped griffin-austen-6m, 60 requests from 8 loopback clients with disconnects mid-stream and every kind of
malformed request. Asserts what the full soak asserts: no 5xx, 4xx for each malformed request, greedy replies equal
to the same request run alone, the server's RSS within 10% after the warm-up, nothing left running, still serving.
About 30 s of requests after a 30-70 s server start."""

import collections

import pytest

from benchmarks.bench_soak import DISCONNECT, MALFORMED, NORMAL, plan

REQUESTS, CLIENTS = 60, 8


def test_plan_holds_every_kind_and_is_seeded():
    """Runs without vLLM: the slice's plan has at least one disconnect and one of each malformed kind, and the same
    seed gives the same requests."""
    specs = plan(REQUESTS, seed=0, vocab=4096, max_model_len=256, max_prompt=128, max_new=16, model="m")
    kinds = collections.Counter(s.kind for s in specs)
    assert kinds[DISCONNECT] >= 1 and all(kinds[k] >= 1 for k in MALFORMED), kinds
    assert kinds[NORMAL] == REQUESTS - sum(v for k, v in kinds.items() if k != NORMAL)
    again = plan(REQUESTS, seed=0, vocab=4096, max_model_len=256, max_prompt=128, max_new=16, model="m")
    assert [(s.kind, s.payload, s.raw) for s in specs] == [(s.kind, s.payload, s.raw) for s in again]
    too_long = [s for s in specs if s.kind == "too_long"]
    assert all(len(s.payload["prompt"]) > 256 or len(s.payload["prompt"]) + s.payload["max_tokens"] > 256
               for s in too_long)
    with pytest.raises(ValueError, match="cannot hold"):
        plan(3, seed=0, vocab=4096, max_model_len=256, max_prompt=8, max_new=4)


def test_soak_slice(tmp_path):
    pytest.importorskip("vllm", reason="vLLM is not installed (pip install -e '.[vllm]' in a clone of hf-recurrentgemma; docs/serving.md)")
    pytest.importorskip("aiohttp", reason="the soak's clients use aiohttp (a dependency of vLLM)")
    from benchmarks.bench_soak import soak
    from hf_recurrentgemma.shipped import MODEL, shipped_folder

    fig = soak(str(shipped_folder(MODEL, progress=False)), requests=REQUESTS, clients=CLIENTS, seed=0,
               max_model_len=256, max_prompt=128, max_new=16,
               server_args=["--dtype", "float32", "--enforce-eager", "--max-num-seqs", str(CLIENTS)],
               log=tmp_path / "server.log")
    assert fig["failures"] == [], "\n".join(fig["failures"]) + f"\nserver log: {tmp_path / 'server.log'}"
    kinds = fig["by_kind"]
    assert kinds[DISCONNECT]["count"] >= 1 and all(kinds[k]["count"] >= 1 for k in MALFORMED), kinds
    for k in MALFORMED:
        assert all(400 <= int(status) < 500 for status in kinds[k]["statuses"]), (k, kinds[k])
    assert fig["compared_alone"] == fig["completed_greedy"] > 0
    assert fig["equal_alone"] == fig["compared_alone"]
    assert fig["serving_after"]
    assert fig["engine_after_soak"]["running"] == 0 and fig["engine_after_soak"]["waiting"] == 0
