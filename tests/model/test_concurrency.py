"""One model serving several requests: threads generating with separate caches give exactly the tokens and scores
of running the requests one after another, and a batch whose rows stop at different steps equals each row alone."""

import threading

import pytest
import torch
from reference_helpers import CASES, KERNEL_TOL, reference_and_ours

THREADS = 4
NEW = 8


# kernels: run again with the optional CPU kernels off and capped (.ci/run; docs/reliability.md)
pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.kernels]


def _run_in_threads(worker) -> None:
    """Runs worker(k) for k in range(THREADS), each on its own thread, and waits for all of them."""
    threads = [threading.Thread(target=worker, args=(k,)) for k in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def _prompts():
    gen = torch.Generator().manual_seed(5)
    return [torch.randint(4, 97, (1, n), generator=gen) for n in (3, 9, 1, 14, 6, 2, 11, 4)]


def _generate(model, prompt, **kwargs):
    out = model.generate(prompt, max_new_tokens=NEW, do_sample=False, output_scores=True,
                         return_dict_in_generate=True, **kwargs)
    return out.sequences, torch.stack(out.scores)


def test_threads_with_separate_caches_equal_sequential_runs():
    """Four threads, started together by a barrier, each generate a prompt of another length with one shared model;
    the results must equal the sequential ones to the last bit (nothing about a request lives on the model)."""
    _, model = reference_and_ours(CASES[0], seed=4)
    prompts = _prompts()[:THREADS]
    sequential = [_generate(model, p) for p in prompts]
    results, errors = [None] * len(prompts), []
    barrier = threading.Barrier(THREADS)

    def worker(k):
        try:
            barrier.wait()
            for i in range(k, len(prompts), THREADS):
                results[i] = _generate(model, prompts[i])
        except Exception as err:  # noqa: BLE001 - reported by the main thread
            errors.append(err)

    _run_in_threads(worker)
    assert not errors, errors
    for i, ((seq, scores), (ref_seq, ref_scores)) in enumerate(zip(results, sequential)):
        assert torch.equal(seq, ref_seq), f"prompt {i}: tokens differ"
        assert torch.equal(scores, ref_scores), f"prompt {i}: scores differ"


def test_interleaved_manual_decoding_in_threads():
    """Threads stepping their own caches token by token, interleaving at every step, equal one full forward.
    A step is a 2-row GEMM and the forward a 24-row one, which may sum in another order (KERNEL_TOL): what
    threads could break (a state written by another thread) moves logits by O(1)."""
    _, model = reference_and_ours(CASES[1], seed=6)
    gen = torch.Generator().manual_seed(9)
    sequences = [torch.randint(0, 97, (2, 12), generator=gen) for _ in range(THREADS)]
    with torch.no_grad():
        expected = [model(s, use_cache=False).logits for s in sequences]
    results, errors = [None] * THREADS, []
    barrier = threading.Barrier(THREADS)

    def worker(k):
        try:
            with torch.no_grad():
                out = model(sequences[k][:, :1], use_cache=True)
                logits = [out.logits]
                for t in range(1, sequences[k].shape[1]):
                    barrier.wait()  # every thread takes step t before any takes t + 1
                    out = model(sequences[k][:, t : t + 1], cache=out.cache, use_cache=True)
                    logits.append(out.logits)
            results[k] = torch.cat(logits, dim=1)
        except Exception as err:  # noqa: BLE001
            errors.append(err)
            barrier.abort()

    _run_in_threads(worker)
    assert not errors, errors
    for k in range(THREADS):
        err = (results[k] - expected[k]).abs().max().item()
        assert err <= KERNEL_TOL, f"thread {k}: max error {err:.3g}"


def test_rows_finishing_at_different_steps_equal_each_row_alone():
    """A left-padded batch with an eos that rows reach at different steps: each row's tokens up to its eos and
    its scores until then equal the row generated alone; finished rows are padded."""
    _, model = reference_and_ours(CASES[0], seed=4)
    prompts = _prompts()[:4]
    alone = [_generate(model, p) for p in prompts]
    # An eos that row 0 produces early, and that the other rows produce later or never.
    eos = int(alone[0][0][0, prompts[0].shape[1] + 2])
    width = max(p.shape[1] for p in prompts)
    ids = torch.zeros(len(prompts), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, p in enumerate(prompts):
        ids[i, width - p.shape[1] :], mask[i, width - p.shape[1] :] = p[0], 1
    seq, scores = _generate(model, ids, attention_mask=mask, eos_token_id=eos, pad_token_id=0)
    stops = []
    for i, (p, (ref_seq, ref_scores)) in enumerate(zip(prompts, alone)):
        new = ref_seq[0, p.shape[1] :].tolist()
        stop = new.index(eos) + 1 if eos in new else NEW
        stops.append(stop)
        assert seq[i, width : width + stop].tolist() == new[:stop], f"row {i}"
        assert (seq[i, width + stop :] == 0).all(), f"row {i} not padded after its eos"
        for step in range(stop):
            assert torch.equal(scores[step, i], ref_scores[step, 0]) or (
                (scores[step, i] - ref_scores[step, 0]).abs().max() <= 5e-5), f"row {i} step {step}"
    assert len(set(stops)) > 1, f"rows did not finish at different steps: {stops}"
