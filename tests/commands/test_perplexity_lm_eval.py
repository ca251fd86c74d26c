"""lm-eval-harness on a converted folder, as docs/evaluation.md shows it: `simple_evaluate(model="hf",
model_args="pretrained=FOLDER,...")` with the package imported, on a tiny local multiple-choice task. Every
log-likelihood lm-eval reports equals the one computed directly from our model's logits, and the accuracy is the
share of questions whose answer has the highest log-likelihood."""

import json

import pytest
import torch
from command_helpers import save_tiny_folder, tiny_model, tiny_tokenizer

lm_eval = pytest.importorskip("lm_eval")
pytestmark = pytest.mark.usefixtures("one_thread")

QUESTIONS = [
    {"question": "The sea is", "choices": ["blue", "loud", "green"], "answer": 0},
    {"question": "The lamp turns", "choices": ["slowly", "red"], "answer": 0},
    {"question": "Fog is", "choices": ["hard", "easy", "quiet", "grey"], "answer": 2},
    {"question": "Eight bells mark", "choices": ["a watch", "a garden"], "answer": 1},
]


def continuation_logprob(model, tokenizer, context: str, continuation: str) -> float:
    """log p(continuation | context), the tokens encoded as lm-eval's HFLM encodes them: with the tokenizer's
    special tokens, so <bos> first, as Gemma's tokenizer does."""
    context_ids = tokenizer(context)["input_ids"]
    whole = tokenizer(context + continuation)["input_ids"]
    assert whole[0] == tokenizer.bos_token_id
    ids = torch.tensor([whole])
    with torch.no_grad():
        logprobs = model(ids).logits[0].float().log_softmax(-1)
    return sum(logprobs[t - 1, whole[t]].item() for t in range(len(context_ids), len(whole)))


def test_lm_eval_hf_model_on_a_converted_folder(tmp_path):
    from lm_eval.tasks import TaskManager

    folder = save_tiny_folder(tmp_path / "model", seed=9)
    data = tmp_path / "questions.jsonl"
    data.write_text("\n".join(json.dumps(q) for q in QUESTIONS))
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "tiny_mc.yaml").write_text(
        f"task: griffin_tiny_mc\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data}\n"
        "test_split: test\noutput_type: multiple_choice\ndoc_to_text: '{{question}}'\n"
        "doc_to_choice: '{{choices}}'\ndoc_to_target: answer\nmetric_list:\n  - metric: acc\n"
    )
    results = lm_eval.simple_evaluate(
        model="hf", model_args=f"pretrained={folder},dtype=float32", tasks=["griffin_tiny_mc"], batch_size=4,
        device="cpu", task_manager=TaskManager(include_path=str(tmp_path / "tasks")), log_samples=True,
    )
    model, tokenizer = tiny_model(seed=9), tiny_tokenizer()
    samples = results["samples"]["griffin_tiny_mc"]
    assert len(samples) == len(QUESTIONS)
    correct = 0
    for sample in samples:
        scores = [resp[0][0] for resp in sample["resps"]]
        expected = [continuation_logprob(model, tokenizer, context, continuation)
                    for context, continuation in sample["arguments"]]
        assert scores == pytest.approx(expected, abs=1e-4)
        correct += max(range(len(scores)), key=scores.__getitem__) == sample["doc"]["answer"]
    assert results["results"]["griffin_tiny_mc"]["acc,none"] == pytest.approx(correct / len(QUESTIONS))
