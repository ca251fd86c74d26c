"""`hf-recurrentgemma chat` and `ChatSession`: the conversation stays in the cache and each turn feeds only its own
tokens, yet every reply equals generating from the whole conversation without a cache; the template pieces compose
the tokenizer's chat template exactly; /save and /load round-trip the state (atomically, refusing to overwrite);
the command runs through a subprocess on a built-in recurrent_gemma folder."""

import os

import pytest
import torch
from command_helpers import run_command, save_tiny_folder, tiny_model, tiny_tokenizer

from hf_recurrentgemma.commands.chat import ChatSession
from hf_recurrentgemma.commands.loading import CommandError
from hf_recurrentgemma.convert.builtin import export_builtin

pytestmark = pytest.mark.usefixtures("one_thread")
NEW = 10
TURNS = ["hello there", "and a second, longer question?", "third"]


@pytest.fixture(scope="module")
def model():
    return tiny_model(seed=2)


def session(model, **kwargs) -> ChatSession:
    return ChatSession(model, tiny_tokenizer(), max_new_tokens=NEW, do_sample=False, **kwargs)


def test_turn_texts_compose_the_chat_template():
    """First turn + reply + next turn ... is exactly what the template renders for the whole conversation."""
    chat = session(tiny_model())
    replies = ["first reply", "second"]
    text, messages = "", []
    for user, reply in zip(TURNS, replies):
        text += chat.turn_text(user) + reply
        messages += [{"role": "user", "content": user}, {"role": "assistant", "content": reply}]
        chat.messages = list(messages)  # what send() records
    text += chat.turn_text(TURNS[2])
    expected = chat.tokenizer.apply_chat_template(messages + [{"role": "user", "content": TURNS[2]}], tokenize=False,
                                                  add_generation_prompt=True)
    assert text == expected
    assert text.startswith("<bos><start_of_turn>user\nhello there<end_of_turn>\n<start_of_turn>model\n")


def test_each_turn_feeds_only_its_tokens_and_replies_equal_generation_from_scratch(model):
    chat = session(model)
    fed = []
    hook = model.model.register_forward_pre_hook(lambda m, a, kw: fed.append(kw["input_ids"].shape[1]),
                                                 with_kwargs=True)
    try:
        first_calls = []
        for user in TURNS:
            first_calls.append(len(fed))
            chat.send(user)
    finally:
        hook.remove()
    # Every token of the conversation went through the model exactly once (the last one is fed next turn).
    assert sum(fed) == chat.token_ids.shape[1] - 1
    # A turn's first call holds the last reply token and the new turn, not the conversation.
    for turn, index in enumerate(first_calls[1:], start=1):
        turn_tokens = len(chat.tokenizer(chat.turn_text(TURNS[turn]), add_special_tokens=False)["input_ids"])
        assert fed[index] <= turn_tokens + 1
    # The last reply equals greedy decoding of the whole conversation without a cache.
    prompt = chat.token_ids[:, : chat.token_ids.shape[1] - chat.reply_ids.shape[0]]
    with torch.no_grad():
        scratch = model.generate(prompt, max_new_tokens=NEW, do_sample=False, use_cache=False,
                                 eos_token_id=chat.stop_ids, pad_token_id=0)
    assert torch.equal(scratch[0, prompt.shape[1]:], chat.reply_ids)
    assert [m["role"] for m in chat.messages] == ["user", "assistant"] * 3


def test_save_then_load_continues_identically(model, tmp_path):
    chat = session(model)
    for user in TURNS[:2]:
        chat.send(user)
    path = chat.save(tmp_path / "state.safetensors")
    assert os.listdir(tmp_path) == ["state.safetensors"]  # no temporary file left
    assert oct(path.stat().st_mode & 0o777) == oct(0o666 & ~_umask())
    reply = chat.send(TURNS[2])

    restored = session(model)
    restored.load(path)
    assert restored.messages == chat.messages[:4]
    assert restored.send(TURNS[2]) == reply
    assert torch.equal(restored.token_ids, chat.token_ids)

    restored.reset()
    assert restored.token_ids.shape[1] == 0 and not restored.messages and not restored.cache.is_initialized
    restored.send(TURNS[2])
    assert restored.token_ids.shape[1] < chat.token_ids.shape[1]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_save_refuses_to_overwrite_and_load_refuses_other_models(model, tmp_path):
    chat = session(model)
    chat.send("hi")
    path = tmp_path / "state.safetensors"
    path.write_text("user data")
    with pytest.raises(CommandError, match="already exists; use /save --force"):
        chat.save(path)
    assert path.read_text() == "user data"
    with pytest.raises(CommandError, match="not a safetensors file"):
        chat.load(path)
    chat.save(path, force=True)

    other = session(tiny_model(attention_window_size=5))
    with pytest.raises(CommandError, match="saved by a model with attention_window_size=8, this model has 5"):
        other.load(path)
    half = session(tiny_model(seed=2).to(torch.bfloat16))
    with pytest.raises(CommandError, match="saved from a float32 model, this one is bfloat16"):
        half.load(path)
    with pytest.raises(CommandError, match="no such file"):
        chat.load(tmp_path / "missing.safetensors")
    with pytest.raises(CommandError, match="folder .* does not exist"):
        chat.save(tmp_path / "nowhere" / "state.safetensors")


def test_tokenizer_without_chat_template_is_refused():
    with pytest.raises(CommandError, match="no chat template"):
        ChatSession(tiny_model(), tiny_tokenizer(chat_template=False))


def test_chat_command_on_a_builtin_folder(tmp_path):
    """The command's whole output, replies and /commands included, equals what ChatSession gives in-process."""
    ours = save_tiny_folder(tmp_path / "ours", seed=3)
    builtin = export_builtin(ours, tmp_path / "builtin")
    state = tmp_path / "conversation.safetensors"
    lines = [TURNS[0], f"/save {state}", f"/save {state}", TURNS[1], "/reset", f"/load {state}", TURNS[1],
             "/nonsense", "/quit"]
    result = run_command("chat", builtin, "--max-new-tokens", NEW, input="\n".join(lines) + "\n")
    assert result.returncode == 0, result.stderr

    chat = session(tiny_model(seed=3))
    first = chat.send(TURNS[0])
    tokens = chat.token_ids.shape[1]
    second = chat.send(TURNS[1])
    assert first.strip() and second.strip()
    expected = [
        "Chat with the model; /help lists the commands, Ctrl-D or /quit leaves.",
        f"> {first}",
        f"> [saved {tokens} tokens, 1 turns to {state}]",
        f"> error: {state} already exists; use /save --force {state} to replace it",
        f"> {second}",
        "> [conversation reset]",
        f"> [loaded {tokens} tokens, 1 turns from {state}]",
        f"> {second}",  # the same reply as before /reset: the loaded state is the one that was saved
        "> error: unknown command /nonsense; /help lists them",
        "> ",
    ]
    assert result.stdout == "\n".join(expected)


def test_an_interrupted_turn_leaves_the_conversation_as_it_was(model):
    """Ctrl-C in the middle of a reply (here: a streamer that raises after three tokens) drops the turn."""

    class Interrupt:
        def __init__(self):
            self.calls = 0

        def put(self, value):
            self.calls += 1
            if self.calls > 3:
                raise KeyboardInterrupt

        def end(self):
            pass

    chat, reference = session(model), session(model)
    chat.send(TURNS[0])
    reference.send(TURNS[0])
    with pytest.raises(KeyboardInterrupt):
        chat.send(TURNS[1], streamer=Interrupt())
    assert torch.equal(chat.token_ids, reference.token_ids) and chat.messages == reference.messages
    assert chat.send(TURNS[2]) == reference.send(TURNS[2])
    assert torch.equal(chat.token_ids, reference.token_ids)


@pytest.mark.parametrize("speculation", ["assistant", "prompt_lookup"])
def test_speculative_replies_equal_plain_replies(model, speculation):
    """Each turn's reply with a draft model (a tiny Hawk) or prompt lookup is the plain greedy reply, and the
    conversation's cache continues exactly (turn after turn)."""
    kwargs = ({"assistant_model": tiny_model(seed=4, block_types=["recurrent"] * 2)} if speculation == "assistant"
              else {"prompt_lookup_num_tokens": 3})
    plain, fast = session(model), session(model, **kwargs)
    for turn in TURNS:
        assert fast.send(turn) == plain.send(turn)
        assert torch.equal(fast.token_ids, plain.token_ids)


def test_chat_command_takes_the_speculation_flags(tmp_path, monkeypatch):
    import io

    from reference_helpers import run_cli

    folder = save_tiny_folder(tmp_path / "ours", seed=3)
    draft = save_tiny_folder(tmp_path / "draft", seed=4, block_types=["recurrent"] * 2)
    outputs = []
    for flags in ([], ["--assistant", draft, "--num-assistant-tokens", "3"], ["--prompt-lookup", "3"]):
        monkeypatch.setattr("sys.stdin", io.StringIO("\n".join(TURNS[:2]) + "\n/quit\n"))
        status, out, err = run_cli("chat", folder, "--max-new-tokens", NEW, *flags)
        assert status == 0, err
        outputs.append(out)
    assert outputs[0] == outputs[1] == outputs[2] and outputs[0].count("> ") == 3
    status, _, err = run_cli("chat", folder, "--num-assistant-tokens", "3")
    assert status == 2 and "--num-assistant-tokens only applies with --assistant" in err
