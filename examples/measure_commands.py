"""Measures the two claims of the chat and perplexity commands on a small random Griffin (CPU):

    python examples/measure_commands.py chat-latency [--lengths 100 1000 4000 16000 64000]
    python examples/measure_commands.py perplexity-memory [--lengths 4096 16384 65536]

chat-latency: a conversation is brought to each length (one long first turn), then three more turns are timed
(a user message of ~60 tokens, a reply of exactly 32 tokens); the median is reported beside the time a chat loop
without a recurrent cache would spend re-reading the whole conversation each turn (one forward over it).

perplexity-memory: for each document length, a fresh process scores a random document with `document_nll`
(2048-token chunks through the cache) and, where it fits, with one full forward; the growth of the peak resident
memory over the process's memory after loading the model is reported for both.

Numbers depend on the machine and its load; docs/commands.md and docs/evaluation.md give the ones measured here.
"""

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

import torch

from hf_recurrentgemma import GriffinConfig, GriffinForCausalLM
from hf_recurrentgemma.griffin.configuration_griffin import griffin_block_pattern


def small_model(vocab_size: int, seed: int = 0) -> GriffinForCausalLM:
    """A 6-layer Griffin of width 256 (recurrent, recurrent, attention, ...), window 512, random weights."""
    torch.manual_seed(seed)
    config = GriffinConfig(vocab_size=vocab_size, hidden_size=256, intermediate_size=768, num_attention_heads=4,
                           block_types=griffin_block_pattern(6), attention_window_size=512)
    return GriffinForCausalLM(config).eval()


def char_tokenizer():
    """Character-level tokenizer with Gemma's special ids and chat template (enough to time the chat loop)."""
    from tokenizers import Tokenizer, decoders, models, processors
    from transformers import PreTrainedTokenizerFast

    from hf_recurrentgemma.convert.tokenizer import GEMMA_CHAT_TEMPLATE

    special = ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"]
    vocab = {t: i for i, t in enumerate(special + ["\n"] + [chr(c) for c in range(32, 127)])}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    backend.decoder = decoders.Fuse()
    backend.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 2)])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", eos_token="<eos>",
                                        bos_token="<bos>", unk_token="<unk>", additional_special_tokens=special[4:])
    tokenizer.chat_template = GEMMA_CHAT_TEMPLATE
    return tokenizer


def chat_latency(lengths: list[int], turns: int = 3, reply: int = 32) -> list[dict]:
    from hf_recurrentgemma.commands.chat import ChatSession

    tokenizer = char_tokenizer()
    model = small_model(len(tokenizer))
    message = "Tell me again what the keeper wrote about the fog and the horn, briefly."  # ~70 tokens
    rows = []
    for length in lengths:
        session = ChatSession(model, tokenizer, max_new_tokens=reply, min_new_tokens=reply, do_sample=False)
        filler = ("the sea was grey and the wind came from the west. " * (length // 50 + 1))[:length]
        session.send(filler)  # brings the conversation to about `length` tokens
        times = []
        for _ in range(turns):
            start = time.perf_counter()
            session.send(message)
            times.append(time.perf_counter() - start)
        conversation = session.token_ids.shape[1]
        with torch.no_grad():  # what a cache-less chat loop pays before its first new token, every turn
            start = time.perf_counter()
            model(session.token_ids, use_cache=False, logits_to_keep=1)
            reread = time.perf_counter() - start
        rows.append({"conversation_tokens": conversation, "turn_seconds_median": statistics.median(times),
                     "turn_seconds": times, "reread_whole_conversation_seconds": reread})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def _peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def memory_one(length: int, mode: str, vocab_size: int = 4096, chunk_size: int = 2048) -> dict:
    """Runs in a fresh process: peak RSS growth while scoring one random document of `length` tokens."""
    import torch.nn.functional as F

    from hf_recurrentgemma.commands.perplexity import document_nll

    model = small_model(vocab_size)
    ids = torch.randint(4, vocab_size, (length,), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():  # warm-up: kernels built, allocator primed, so the baseline holds them
        document_nll(model, ids[:64], chunk_size=32)
    baseline = _peak_rss()
    start = time.perf_counter()
    if mode == "streamed":
        nll, count = document_nll(model, ids, chunk_size=chunk_size)
    else:
        with torch.no_grad():
            logits = model(ids[None], use_cache=False).logits[0]
            nll, count = F.cross_entropy(logits[:-1].float(), ids[1:], reduction="sum").item(), length - 1
    seconds = time.perf_counter() - start
    return {"mode": mode, "tokens": length, "peak_rss_growth_mib": (_peak_rss() - baseline) / 2**20,
            "nll_per_token": nll / count, "tokens_per_second": length / seconds}


def perplexity_memory(lengths: list[int]) -> list[dict]:
    rows = []
    for length in lengths:
        for mode in ("streamed", "full-forward"):
            out = subprocess.run([sys.executable, __file__, "_memory-one", str(length), mode], capture_output=True,
                                 text=True)
            if out.returncode != 0:
                rows.append({"mode": mode, "tokens": length, "error": out.stderr.strip().splitlines()[-1]})
            else:
                rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(json.dumps(rows[-1]), flush=True)
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="what", required=True)
    chat = sub.add_parser("chat-latency")
    chat.add_argument("--lengths", type=int, nargs="+", default=[100, 1000, 4000, 16000, 64000])
    memory = sub.add_parser("perplexity-memory")
    memory.add_argument("--lengths", type=int, nargs="+", default=[4096, 16384, 65536])
    one = sub.add_parser("_memory-one")  # internal: one measurement in a fresh process
    one.add_argument("length", type=int)
    one.add_argument("mode", choices=["streamed", "full-forward"])
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1: steadier when shared)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.what == "chat-latency":
        chat_latency(args.lengths)
    elif args.what == "perplexity-memory":
        perplexity_memory(args.lengths)
    else:
        print(json.dumps(memory_one(args.length, args.mode)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
