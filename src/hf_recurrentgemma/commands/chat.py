"""`hf-recurrentgemma chat MODEL`: talk to an instruction-tuned model in the shell.

The conversation lives in the recurrent cache: each turn feeds only the new user message (rendered by the
tokenizer's chat template, Gemma's turn format for RecurrentGemma) and then generates the reply from the cache,
so a turn costs the same whether the conversation is 10 or 10,000 tokens long (docs/commands.md measures it).

Commands typed at the prompt: `/reset` (new conversation), `/save [--force] PATH` (the conversation state as
safetensors: cache, token ids and messages; an existing file needs --force), `/load PATH`, `/help`, `/quit`.
"""

import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

from ..griffin.cache_griffin import GriffinCache
from .generate import (
    add_sampling_arguments,
    add_speculation_arguments,
    check_sampling_arguments,
    check_speculation_arguments,
    generation_kwargs,
    speculation_kwargs,
)
from .loading import CommandError, add_model_arguments, load_model, load_tokenizer

STATE_FORMAT = "hf-recurrentgemma-chat-state/1"
_SENTINEL = "GRIFFIN_REPLY_SENTINEL"  # stands in for a reply when the template renders the text between turns
END_OF_TURN = "<end_of_turn>"


class ChatSession:
    """A conversation kept in a `GriffinCache`, advanced one turn at a time.

    Args:
        model: a `GriffinForCausalLM` (eval mode).
        tokenizer: its tokenizer, with a chat template.
        generate_kwargs: extra `generate()` arguments (max_new_tokens, do_sample, ...).

    State: `token_ids` (1, N) long, every token of the conversation so far (the cache has seen all but possibly the
    last, which `generate` feeds first on the next turn); `cache`; `messages` ([{"role", "content"}]).

    Example:
        >>> session = ChatSession(model, tokenizer, max_new_tokens=64)
        >>> reply = session.send("What is Griffin?")
        >>> session.save("conversation.safetensors")
    """

    def __init__(self, model, tokenizer, **generate_kwargs):
        if not getattr(tokenizer, "chat_template", None):
            raise CommandError("the tokenizer has no chat template; use an instruction-tuned model's tokenizer "
                               "(convert with --chat-template) or pass --tokenizer")
        self.model, self.tokenizer = model, tokenizer
        self.generate_kwargs = generate_kwargs
        self.stop_ids = self._stop_ids()
        self.reset()

    def _stop_ids(self) -> list[int]:
        ids = self.model.generation_config.eos_token_id
        ids = [] if ids is None else [ids] if isinstance(ids, int) else list(ids)
        if self.tokenizer.eos_token_id is not None:
            ids.append(self.tokenizer.eos_token_id)
        end = self.tokenizer.convert_tokens_to_ids(END_OF_TURN)
        if isinstance(end, int) and end != self.tokenizer.unk_token_id:
            ids.append(end)
        return sorted(set(ids))

    def reset(self) -> None:
        """Forgets the conversation (a fresh cache)."""
        self.cache = GriffinCache(self.model.config)
        self.token_ids = torch.zeros(1, 0, dtype=torch.long, device=self.model.device)
        self.messages: list[dict] = []
        self.reply_ids = self.token_ids[0]

    def _render(self, messages: list[dict], add_generation_prompt: bool) -> str:
        return self.tokenizer.apply_chat_template(messages, tokenize=False,
                                                  add_generation_prompt=add_generation_prompt)

    def turn_text(self, message: str) -> str:
        """The text the template puts between the end of the last reply and this turn's reply: the previous
        model turn's closing, the user turn and the model turn's opening (everything, with <bos>, on turn one).

        It is rendered over a stand-in history of one exchange, so its cost does not grow with the conversation;
        this assumes, as Gemma's template does, that a turn renders the same whatever came before it (the tests
        check that the pieces compose the template's rendering of the whole conversation).
        """
        user = {"role": "user", "content": message}
        if not self.messages:
            return self._render([user], add_generation_prompt=True)
        history = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": _SENTINEL}]
        text = self._render(history + [user], add_generation_prompt=True)
        if text.count(_SENTINEL) != 1:
            raise CommandError("the chat template does not render assistant messages verbatim; cannot chat "
                               "incrementally with it")
        return text.split(_SENTINEL, 1)[1]

    @torch.no_grad()
    def send(self, message: str, streamer=None) -> str:
        """Feeds the user `message` and generates the reply; returns the reply text (special tokens removed)."""
        if not message.strip():
            raise CommandError("empty message")
        new_ids = self.tokenizer(self.turn_text(message), add_special_tokens=False, return_tensors="pt")["input_ids"]
        new_ids = new_ids.to(self.model.device)
        if self.token_ids.shape[1] and self.token_ids[0, -1].item() in self.stop_ids and new_ids.shape[1] and \
                new_ids[0, 0].item() == self.token_ids[0, -1].item():
            new_ids = new_ids[:, 1:]  # the reply already ended with the template's closing token
        ids = torch.cat([self.token_ids, new_ids], dim=1)
        # generate() feeds only the tokens the cache has not seen: the last reply token and this turn. It updates
        # the cache in place, so it gets a copy (fixed size): a turn interrupted by Ctrl-C or an error leaves
        # the conversation as it was before the turn.
        out = self.model.generate(
            input_ids=ids, attention_mask=torch.ones_like(ids), cache=self.cache.clone(),
            eos_token_id=self.stop_ids, streamer=streamer, return_dict_in_generate=True, **self.generate_kwargs,
        )
        self.cache = out.cache
        self.reply_ids = out.sequences[0, ids.shape[1]:]  # (R,) this turn's generated tokens, stop token included
        self.token_ids = out.sequences
        reply = self.tokenizer.decode(self.reply_ids, skip_special_tokens=True)
        self.messages += [{"role": "user", "content": message}, {"role": "assistant", "content": reply}]
        return reply

    # --- saving and loading -------------------------------------------------------------------------------------
    def save(self, path: str | Path, force: bool = False) -> Path:
        """Writes the conversation state to `path` as safetensors, atomically (a temporary file in the same
        folder renamed over it); an existing `path` needs `force`."""
        from safetensors.torch import save_file

        path = Path(path)
        if path.exists() and not force:
            raise CommandError(f"{path} already exists; use /save --force {path} to replace it")
        if not path.parent.is_dir():
            raise CommandError(f"{path}: folder {path.parent} does not exist")
        state = self.cache.state_dict()
        tensors = {name: t.detach().cpu().contiguous() for name, t in state["tensors"].items()}
        tensors["token_ids"] = self.token_ids.cpu().contiguous()
        metadata = {"format": STATE_FORMAT, "messages": json.dumps(self.messages, ensure_ascii=False),
                    "model": json.dumps(state["architecture"]),
                    "dtype": str(self.model.dtype).removeprefix("torch.")}
        handle, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(handle)
        try:
            save_file(tensors, temp, metadata=metadata)
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(temp, 0o666 & ~umask)  # mkstemp makes it private; the state is an ordinary file
            os.replace(temp, path)
        finally:
            if os.path.exists(temp):
                os.unlink(temp)
        return path

    def load(self, path: str | Path) -> None:
        """Restores a state written by `save`, after checking it was made by a model of this architecture and
        dtype (the weights themselves cannot be checked: load it into the model that saved it)."""
        from safetensors import SafetensorError, safe_open

        path = Path(path)
        if not path.is_file():
            raise CommandError(f"{path}: no such file")
        try:
            with safe_open(path, framework="pt") as f:
                metadata = f.metadata() or {}
                tensors = {key: f.get_tensor(key) for key in f.keys()}
        except (SafetensorError, OSError) as err:
            raise CommandError(f"{path}: not a safetensors file ({err})") from None
        if metadata.get("format") != STATE_FORMAT:
            raise CommandError(f"{path}: not a chat state (format {metadata.get('format')!r}, "
                               f"expected {STATE_FORMAT!r})")
        device = self.model.device
        token_ids = tensors.pop("token_ids", None)
        if token_ids is None:
            raise CommandError(f"{path}: lacks the tensor token_ids")
        # The model's dtype (not the cache's): a state saved before the first turn has no cache tensors.
        state = {"architecture": json.loads(metadata.get("model", "{}")), "dtype": metadata.get("dtype"),
                 "tensors": tensors}
        try:
            cache = GriffinCache.from_state_dict(self.model.config, state, dtype=self.model.dtype, device=device)
        except ValueError as err:
            message = str(err).removeprefix("state was ")
            hint = " (pass the same --dtype)" if "model, this one is" in message else ""
            raise CommandError(f"{path}: {message}{hint}") from None
        self.cache = cache
        self.token_ids = token_ids.to(device)
        self.messages = json.loads(metadata["messages"])


HELP = ("/reset  start a new conversation\n/save [--force] PATH  write the conversation state (safetensors)\n"
        "/load PATH  continue a saved conversation\n/help  this text\n/quit  leave (also Ctrl-D)")


def _command(session: ChatSession, line: str) -> bool:
    """Runs a /command; returns False to quit."""
    name, _, rest = line.partition(" ")
    rest = rest.strip()
    if name in ("/quit", "/exit"):
        return False
    if name == "/reset":
        session.reset()
        print("[conversation reset]")
    elif name == "/save":
        force = rest.startswith("--force")
        target = rest.removeprefix("--force").strip()
        if not target:
            raise CommandError("usage: /save [--force] PATH")
        path = session.save(target, force=force)
        print(f"[saved {session.token_ids.shape[1]} tokens, {len(session.messages) // 2} turns to {path}]")
    elif name == "/load":
        if not rest:
            raise CommandError("usage: /load PATH")
        session.load(rest)
        print(f"[loaded {session.token_ids.shape[1]} tokens, {len(session.messages) // 2} turns from {rest}]")
    elif name == "/help":
        print(HELP)
    else:
        raise CommandError(f"unknown command {name}; /help lists them")
    return True


def run_chat(args) -> int:
    from transformers import TextStreamer

    check_sampling_arguments(args)
    check_speculation_arguments(args)
    tokenizer = load_tokenizer(args.model, args.tokenizer)
    model = load_model(args.model, args.dtype, args.device, args.quantize, args.group_size)
    session = ChatSession(model, tokenizer, **generation_kwargs(args, tokenizer), **speculation_kwargs(args, model))
    if args.load:
        session.load(args.load)
    if sys.stdin.isatty():
        import readline  # noqa: F401  (line editing and history for input())
    print("Chat with the model; /help lists the commands, Ctrl-D or /quit leaves.", flush=True)
    while True:
        try:
            line = input("> ").strip()
        except (EOFError, KeyboardInterrupt):  # Ctrl-D or Ctrl-C at the prompt leaves
            print()
            return 0
        if not line:
            continue
        try:
            if line.startswith("/"):
                if not _command(session, line):
                    return 0
                continue
            start = time.perf_counter()
            streamer = TextStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
            session.send(line, streamer=streamer)
            if args.stats:
                print(f"[{session.token_ids.shape[1]} tokens in the conversation; turn took "
                      f"{time.perf_counter() - start:.2f}s]", file=sys.stderr, flush=True)
        except CommandError as err:
            print(f"error: {err}", flush=True)
        except KeyboardInterrupt:  # Ctrl-C during a reply: the turn is dropped, the conversation goes on
            print("\n[interrupted; this turn was discarded]", flush=True)


def add_parser(commands) -> None:
    sub = commands.add_parser("chat", help="talk to an instruction-tuned model (conversation kept in the cache)",
                              description=__doc__.split("\n\n")[0])
    add_model_arguments(sub)
    add_sampling_arguments(sub)
    add_speculation_arguments(sub)
    sub.add_argument("--load", metavar="PATH", help="start from a conversation saved with /save")
    sub.add_argument("--stats", action="store_true", help="print the conversation length and turn time")
    sub.set_defaults(func=run_chat)


__all__ = ["ChatSession", "add_parser", "run_chat"]
