"""`hf-recurrentgemma perplexity MODEL --dataset ...`: exact perplexity of whole documents in constant memory.

Each document goes through the model in chunks of `--chunk-size` tokens, the recurrent cache carrying everything
before the chunk; the last logits of one chunk predict the first token of the next. The result is the perplexity
of one forward over the whole document (not a sliding-window estimate), while the model's memory (cache,
activations, logits) depends on the chunk size only; the token ids of the current document (8 bytes per token)
are the only thing that grows with it.
"""

import glob
import json
import math
import resource
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ..griffin.cache_griffin import GriffinCache
from .loading import CommandError, add_model_arguments, load_model, load_tokenizer

# Local files by extension -> the `datasets` builder that reads them.
BUILDERS = {".txt": "text", ".text": "text", ".md": "text", ".json": "json", ".jsonl": "json", ".csv": "csv",
            ".parquet": "parquet"}
HEAD_BLOCK = 256  # positions per LM-head call: bounds the (positions, vocab) float32 logits in memory


@dataclass
class PerplexityResult:
    """Totals over the documents: `nll` summed in float64 over `tokens` predicted tokens (every token of a
    document but its first)."""

    documents: int = 0
    tokens: int = 0
    nll: float = 0.0
    seconds: float = 0.0

    @property
    def perplexity(self) -> float:
        return math.exp(self.nll / self.tokens) if self.tokens else float("nan")

    def as_dict(self) -> dict:
        return {**asdict(self), "nll_per_token": self.nll / self.tokens if self.tokens else None,
                "perplexity": self.perplexity,
                "tokens_per_second": self.tokens / self.seconds if self.seconds else None}


def _nll_sum(model, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Summed next-token NLL (float64) of hidden states (T, D) against targets (T,), through the LM head and the
    soft cap in blocks of HEAD_BLOCK positions (`GriffinForCausalLM.compute_logits`, as `forward` makes them)."""
    total = torch.zeros((), dtype=torch.float64, device=hidden.device)
    for start in range(0, hidden.shape[0], HEAD_BLOCK):
        logits = model.compute_logits(hidden[start:start + HEAD_BLOCK])
        total += F.cross_entropy(logits.float(), targets[start:start + HEAD_BLOCK], reduction="sum").double()
    return total


@torch.no_grad()
def document_nll(model, ids: torch.Tensor, chunk_size: int = 2048, progress=None) -> tuple[float, int]:
    """(summed NLL, number of predicted tokens) of one document `ids` (T,) long, fed in chunks through the cache.

    Example:
        >>> nll, n = document_nll(model, tokenizer(text, return_tensors="pt")["input_ids"][0], chunk_size=1024)
        >>> math.exp(nll / n)  # the document's perplexity
    """
    if chunk_size <= 0:
        raise CommandError(f"--chunk-size must be positive, got {chunk_size}")
    ids = ids.to(model.device)
    cache = GriffinCache(model.config)
    carried = None  # (1, D): the last hidden state of the previous chunk, which predicts this chunk's first token
    total = torch.zeros((), dtype=torch.float64, device=model.device)
    for start in range(0, ids.shape[0], chunk_size):
        chunk = ids[start:start + chunk_size]
        hidden = model.model(chunk[None], cache=cache, use_cache=True).last_hidden_state[0]  # (c, D)
        if carried is not None:
            total += _nll_sum(model, torch.cat([carried, hidden[:-1]]), chunk)
        elif chunk.shape[0] > 1:
            total += _nll_sum(model, hidden[:-1], chunk[1:])
        carried = hidden[-1:]
        if progress is not None:
            progress.update(chunk.shape[0])
    return total.item(), max(ids.shape[0] - 1, 0)


def resolve_local_files(dataset: str) -> list[str] | None:
    """The files `--dataset` names when it is a local file, folder or glob; None when it is a dataset name."""
    path = Path(dataset)
    if path.is_file():
        return [str(path)]
    if path.is_dir():
        files = sorted(str(p) for p in path.rglob("*") if p.is_file() and p.suffix in BUILDERS)
        if not files:
            raise CommandError(f"--dataset {dataset}: no {', '.join(sorted(BUILDERS))} files in the folder")
        return files
    if any(c in dataset for c in "*?["):
        files = sorted(glob.glob(dataset, recursive=True))
        if not files:
            raise CommandError(f"--dataset {dataset}: the pattern matches no file")
        return files
    return None


def load_documents(dataset: str, split: str | None = None, text_column: str = "text", config: str | None = None,
                   sample_by: str = "document", streaming: bool = False):
    """An iterable of document strings from a `datasets` dataset name or local text/JSON/CSV/Parquet files.

    Local `.txt`/`.md` files are read whole, one document per file (`sample_by="line"` or "paragraph" splits them);
    `.jsonl`/`.json`/`.csv`/`.parquet` rows are documents, their text in `text_column`.
    """
    try:
        import datasets
    except ImportError:
        raise CommandError("the perplexity command reads documents with `datasets`: pip install datasets") from None

    files = resolve_local_files(dataset)
    if files is not None:
        kinds = {BUILDERS.get(Path(f).suffix) for f in files}
        if None in kinds or len(kinds) != 1:
            raise CommandError(f"--dataset {dataset}: files must all be one of {', '.join(sorted(BUILDERS))}, got "
                               f"{', '.join(sorted({Path(f).suffix or '(none)' for f in files}))}")
        (builder,) = kinds
        extra = {"sample_by": sample_by} if builder == "text" else {}
        if split not in (None, "train"):  # datasets puts files given as data_files in "train"
            raise CommandError(f"--split {split}: local files form one split, train")
        ds = datasets.load_dataset(builder, data_files=files, split="train", streaming=streaming, **extra)
    else:
        try:
            splits = datasets.get_dataset_split_names(dataset, config)
        except Exception as err:  # noqa: BLE001 - datasets raises many kinds; the message says what went wrong
            raise CommandError(f"--dataset {dataset}: not a local file and not a loadable dataset "
                               f"({str(err).splitlines()[0] if str(err) else type(err).__name__})") from None
        split = split or ("test" if "test" in splits else splits[0])
        if split not in splits:
            raise CommandError(f"--split {split}: {dataset} has splits {', '.join(splits)}")
        ds = datasets.load_dataset(dataset, config, split=split, streaming=streaming)
    columns = ds.column_names or []
    if text_column not in columns:
        raise CommandError(f"--text-column {text_column}: not a column of {dataset} (columns: {', '.join(columns)})")
    return (row[text_column] for row in ds)


def stream_perplexity(model, tokenizer, documents, chunk_size: int = 2048, max_documents: int | None = None,
                      progress: bool = True) -> PerplexityResult:
    """Perplexity over `documents` (an iterable of strings), each tokenized whole (with the tokenizer's <bos>) and
    run through `document_nll`; documents of fewer than two tokens predict nothing and are skipped."""
    from tqdm.auto import tqdm

    result = PerplexityResult()
    bar = tqdm(unit="tok", unit_scale=True, disable=not progress, file=sys.stderr, total=0)
    start = time.perf_counter()
    for index, text in enumerate(documents):
        if max_documents is not None and index >= max_documents:
            break
        if not isinstance(text, str):
            raise CommandError(f"document {index}: the text column holds {type(text).__name__}, not text")
        ids = tokenizer(text, return_tensors="pt")["input_ids"][0]
        if ids.shape[0] < 2:
            continue
        bar.total += ids.shape[0]
        nll, count = document_nll(model, ids, chunk_size, progress=bar)
        result.documents += 1
        result.tokens += count
        result.nll += nll
        bar.set_postfix(ppl=f"{result.perplexity:.3f}", docs=result.documents)
    result.seconds = time.perf_counter() - start
    bar.close()
    return result


def peak_memory_bytes(device: torch.device) -> int:
    """Peak memory of this process so far: CUDA's allocator peak on a GPU, the resident set size on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def run_perplexity(args) -> int:
    documents = load_documents(args.dataset, args.split, args.text_column, args.dataset_config, args.sample_by,
                               args.streaming)
    tokenizer = load_tokenizer(args.model, args.tokenizer)
    model = load_model(args.model, args.dtype, args.device, args.quantize, args.group_size)
    result = stream_perplexity(model, tokenizer, documents, args.chunk_size, args.max_documents,
                               progress=not args.quiet)
    if not result.tokens:
        raise CommandError(f"--dataset {args.dataset}: no document has two or more tokens")
    summary = {**result.as_dict(), "chunk_size": args.chunk_size, "peak_memory_bytes": peak_memory_bytes(model.device)}
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"perplexity {result.perplexity:.4f} (NLL {summary['nll_per_token']:.4f}/token) over {result.tokens} "
              f"tokens in {result.documents} documents; {summary['tokens_per_second']:.0f} tokens/s; peak memory "
              f"{summary['peak_memory_bytes'] / 2**20:.0f} MiB")
    return 0


def add_parser(commands) -> None:
    sub = commands.add_parser("perplexity", help="exact perplexity of whole documents, streamed through the cache",
                              description=__doc__.split("\n\n")[0])
    add_model_arguments(sub)
    sub.add_argument("--dataset", required=True, metavar="NAME_OR_PATH",
                     help="a datasets name (e.g. wikitext), or local .txt/.md (one document per file), "
                          ".jsonl/.json/.csv/.parquet files, a folder of them or a glob")
    sub.add_argument("--dataset-config", metavar="NAME", help="the dataset's configuration, e.g. wikitext-2-raw-v1")
    sub.add_argument("--split", help="split to read (default: test if the dataset has one, else the first; "
                                     "local files: train)")
    sub.add_argument("--text-column", default="text", metavar="COLUMN", help="column holding the text (default text)")
    sub.add_argument("--sample-by", choices=["document", "paragraph", "line"], default="document",
                     help="what one document of a local text file is (default: the whole file)")
    sub.add_argument("--streaming", action="store_true", help="read the dataset as it downloads (datasets streaming)")
    sub.add_argument("--chunk-size", type=int, default=2048, metavar="C",
                     help="tokens per forward; memory depends on C, not on the document's length (default 2048)")
    sub.add_argument("--max-documents", type=int, metavar="N", help="stop after N documents")
    sub.add_argument("--json", action="store_true", help="print the result as one JSON object")
    sub.add_argument("--quiet", action="store_true", help="no progress bar")
    sub.set_defaults(func=run_perplexity)


__all__ = ["PerplexityResult", "add_parser", "document_nll", "load_documents", "peak_memory_bytes",
           "stream_perplexity", "run_perplexity"]
