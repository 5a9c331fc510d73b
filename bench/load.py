"""Load test: many clients ask questions through the REST API of one server with one model.

    python bench/load.py --clients 50 --seconds 60 [--json]     # `make load`

Starts a real `pagerag serve` (a subprocess on a free port of 127.0.0.1) on the tiny random test
models, with a small library, then runs N clients that POST /api/v1/ask in a loop for a bounded
time, each waiting as long as a 429's `Retry-After` says before asking again (with a little
jitter, as a well-behaved client does). Reported: requests sent, accepted (200), refused (429,
with `Retry-After`), anything else (there must be nothing else: no 5xx, no 504 for a request
the server accepted), p50/p99 latency of the accepted ones, whether each finished within the
server's deadline, and the server's resident memory: its baseline after a warm-up, its peak
under load and its level once the load has stopped, which must come back near the baseline.

Traffic goes to 127.0.0.1 only. Writes nothing but its report (stdout; progress on stderr) and
a temporary folder it removes. Exit status 0 when every property holds, 1 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import _common  # noqa: F401 - puts the project on sys.path
import httpx
from _common import ROOT, emit, log, machine, percentile

QUESTIONS = [
    "What was the total in 2015?",
    "What were the costs in 2015?",
    "What does the budget say?",
    "Summarise the minutes.",
    "What was the revenue?",
]
# Memory is "back at its baseline" within this: Python's allocator keeps some freed memory
# (arenas, thread stacks), so a flat line is not expected, a leak would be far above it.
RSS_TOLERANCE_MIB = 48.0
RSS_TOLERANCE_FRACTION = 0.05


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--queue-size", type=int, default=16, help="PAGERAG_QUEUE_SIZE")
    parser.add_argument("--timeout", type=float, default=30.0, help="PAGERAG_REQUEST_TIMEOUT")
    parser.add_argument("--warmup", type=float, default=5.0, help="seconds of load first")
    parser.add_argument("--retriever", type=Path, help="tiny ColQwen2 folder (else built here)")
    parser.add_argument("--generator", type=Path, help="tiny Qwen2-VL folder (else built here)")
    parser.add_argument(
        "--url", help="load this running server instead (loopback only; the tests use it)"
    )
    parser.add_argument("--pid", type=int, help="with --url: the server's process, for memory")
    parser.add_argument("--json", action="store_true", help="one JSON object on stdout")
    args = parser.parse_args()

    if args.url:
        host = httpx.URL(args.url).host
        if host not in ("127.0.0.1", "localhost", "::1"):  # a flood is for our own server only
            parser.error("--url must be a server on this machine (127.0.0.1)")
        if args.pid is None:
            parser.error("--url needs --pid (the server process, whose memory is measured)")
        result = measure(args, Target(args.url.rstrip("/"), args.pid))
    else:
        work = Path(tempfile.mkdtemp(prefix="pagerag-load-"))
        try:
            result = start_and_measure(args, work)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    emit(result, args.json)
    return 0 if result["ok"] else 1


def start_and_measure(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    retriever, generator = args.retriever, args.generator
    if retriever is None or generator is None:
        from tests.tiny_models import build_tiny_colqwen, build_tiny_generator

        log("building the tiny test models ...")
        retriever = retriever or build_tiny_colqwen(work / "colqwen")
        generator = generator or build_tiny_generator(work / "generator")
    library = make_library(work / "library")
    began = time.monotonic()
    with Server(work, retriever, generator, args.queue_size, args.timeout, library) as server:
        log(f"server pid {server.pid} ready in {time.monotonic() - began:.1f} s")
        return measure(args, server)


def measure(args: argparse.Namespace, target: Target) -> dict[str, Any]:
    """Warm up, take the baseline, load, let the server settle, measure again."""
    deadline = float(target.queue()["timeout_seconds"])
    log(f"warming up {target.url} for {args.warmup:g} s")
    asyncio.run(load(target.url, args.clients, args.warmup, deadline))
    target.wait_idle()
    baseline = target.rss_settled()
    log(f"baseline RSS {baseline:.1f} MiB; {args.clients} clients for {args.seconds:g} s")
    sampler = Sampler(target)
    sampler.start()
    started = time.monotonic()
    outcome = asyncio.run(load(target.url, args.clients, args.seconds, deadline))
    duration = time.monotonic() - started
    sampler.stop()
    target.wait_idle()
    final = target.rss_settled()
    return report(args, outcome, duration, baseline, sampler.peak, final, target.queue())


class Target:
    """A running server: its URL and its process (for the memory)."""

    def __init__(self, url: str, pid: int) -> None:
        self.url = url
        self.pid = pid

    def queue(self) -> dict[str, Any]:
        return httpx.get(f"{self.url}/api/v1/status", timeout=30).json()["queue"]

    def wait_idle(self, seconds: float = 120.0) -> None:
        """Until nothing runs or waits at the model (the clients have stopped asking)."""
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            queue = self.queue()
            if queue["running"] == 0 and queue["waiting"] == 0:
                return
            time.sleep(0.2)

    def rss(self) -> float:
        """The server process's resident memory, MiB."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise RuntimeError("no VmRSS")

    def rss_settled(self, seconds: float = 2.0) -> float:
        """The median of a few samples once the server is idle: a single sample can catch a
        moment of a background thread (Gradio's, the job worker's)."""
        samples = []
        for _ in range(int(seconds / 0.2)):
            samples.append(self.rss())
            time.sleep(0.2)
        return statistics.median(samples)


class Server(Target):
    """`pagerag serve` on the tiny models in a subprocess, its log in `work`."""

    def __init__(
        self,
        work: Path,
        retriever: Path,
        generator: Path,
        queue_size: int,
        timeout: float,
        library: Path,
    ) -> None:
        super().__init__(f"http://127.0.0.1:{_free_port()}", 0)
        self.log_path = work / "server.log"
        self.env = {
            **os.environ,
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "CUDA_VISIBLE_DEVICES": "",
            "TOKENIZERS_PARALLELISM": "false",
            "PAGERAG_DATA_DIR": str(work / "data"),
            "PAGERAG_RETRIEVER_MODEL": str(retriever),
            "PAGERAG_GENERATOR_MODEL": str(generator),
            "PAGERAG_DEVICE": "cpu",
            "PAGERAG_DTYPE": "float32",
            "PAGERAG_MAX_VISUAL_TOKENS": "32",
            "PAGERAG_RENDER_DPI": "50",
            "PAGERAG_GEN_MIN_PIXELS": str(4 * 28 * 28),
            "PAGERAG_GEN_MAX_PIXELS": str(16 * 28 * 28),
            "PAGERAG_ASK_PAGES": "2",
            "PAGERAG_MAX_NEW_TOKENS": "8",
            "PAGERAG_QUEUE_SIZE": str(queue_size),
            "PAGERAG_REQUEST_TIMEOUT": str(timeout),
        }
        self.library = library
        self.proc: subprocess.Popen[bytes]

    def __enter__(self) -> Server:
        port = httpx.URL(self.url).port
        cmd = [sys.executable, "-m", "rag.cli", "serve", "--port", str(port)]
        cmd += ["--docs", str(self.library)]
        with self.log_path.open("wb") as out:
            self.proc = subprocess.Popen(
                cmd, cwd=ROOT, env=self.env, stdout=out, stderr=subprocess.STDOUT
            )
        self.pid = self.proc.pid
        try:
            self._wait_ready(180)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # uvicorn shuts down cleanly on SIGINT
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def _wait_ready(self, seconds: float) -> None:
        """Up, models loaded, the start-up library ingested."""
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                tail = self.log_path.read_text(errors="replace")[-3000:]
                raise RuntimeError(f"the server exited ({self.proc.returncode}):\n{tail}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=5).status_code == 200:
                    jobs = httpx.get(f"{self.url}/api/v1/jobs", timeout=5).json()["jobs"]
                    if jobs and all(j["state"] == "done" for j in jobs):
                        return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"the server was not ready in {seconds:g} s (log: {self.log_path})")


class Sampler(threading.Thread):
    """Samples the server's RSS while the load runs: the peak."""

    def __init__(self, target: Target) -> None:
        super().__init__(daemon=True)
        self.target = target
        self.peak = 0.0
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            self.peak = max(self.peak, self.target.rss())
            self._halt.wait(0.1)

    def stop(self) -> None:
        self._halt.set()
        self.join()


async def load(url: str, clients: int, seconds: float, deadline: float) -> dict[str, Any]:
    """`clients` concurrent askers for `seconds`; every request and its outcome."""
    outcome: dict[str, Any] = {"statuses": Counter(), "accepted_s": [], "no_retry_after": 0}
    end = time.monotonic() + seconds
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    # The client waits a little longer than the server's deadline: a 504 must come from the
    # server, not from here.
    async with httpx.AsyncClient(
        base_url=url, limits=limits, timeout=httpx.Timeout(deadline + 30)
    ) as http:
        await asyncio.gather(*(client(http, end, outcome, seed) for seed in range(clients)))
    return outcome


async def client(http: httpx.AsyncClient, end: float, outcome: dict[str, Any], seed: int) -> None:
    rng = random.Random(seed)
    while time.monotonic() < end:
        started = time.monotonic()
        try:
            response = await http.post("/api/v1/ask", json={"question": rng.choice(QUESTIONS)})
        except httpx.HTTPError as exc:
            outcome["statuses"][f"error: {type(exc).__name__}"] += 1
            continue
        elapsed = time.monotonic() - started
        outcome["statuses"][response.status_code] += 1
        if response.status_code == 200:
            outcome["accepted_s"].append(elapsed)
        elif response.status_code == 429:
            retry_after = response.headers.get("retry-after", "")
            if not retry_after.isdigit():
                outcome["no_retry_after"] += 1
                retry_after = "1"
            # Told when to come back: do, with jitter so the refused do not return in step.
            pause = int(retry_after) * rng.uniform(1.0, 1.5)
            await asyncio.sleep(max(0.0, min(pause, end - time.monotonic())))


def report(
    args: argparse.Namespace,
    outcome: dict[str, Any],
    duration: float,
    baseline: float,
    peak: float,
    final: float,
    queue: dict[str, Any],
) -> dict[str, Any]:
    statuses: Counter[Any] = outcome["statuses"]
    accepted: list[float] = outcome["accepted_s"]
    other = {str(k): v for k, v in statuses.items() if k not in (200, 429)}
    tolerance = max(RSS_TOLERANCE_MIB, RSS_TOLERANCE_FRACTION * baseline)
    deadline = float(queue["timeout_seconds"])
    within_deadline = all(s <= deadline for s in accepted)
    result = {
        "clients": args.clients,
        "seconds": round(duration, 1),
        "queue_size": queue["max_waiting"],
        "request_timeout_s": deadline,
        "sent": sum(statuses.values()),
        "accepted": statuses[200],
        "refused_429": statuses[429],
        "refused_without_retry_after": outcome["no_retry_after"],
        "other": other,
        "accepted_per_s": round(statuses[200] / duration, 1),
        "p50_ms": round(percentile([s * 1000 for s in accepted], 50), 1),
        "p99_ms": round(percentile([s * 1000 for s in accepted], 99), 1),
        "max_ms": round(max(accepted, default=float("nan")) * 1000, 1),
        "all_within_deadline": within_deadline,
        "rss_baseline_mib": round(baseline, 1),
        "rss_peak_mib": round(peak, 1),
        "rss_final_mib": round(final, 1),
        "rss_tolerance_mib": round(tolerance, 1),
        "server_queue": queue,
        "machine": machine(),
    }
    result["ok"] = bool(
        statuses[200] > 0
        and not other
        and outcome["no_retry_after"] == 0
        and within_deadline
        and final - baseline <= tolerance
    )
    return result


def make_library(folder: Path) -> Path:
    """Two small PDFs with a text layer (the test suite's library)."""
    from tests.pdfs import make_pdf  # reportlab only: this process needs no model libraries

    make_pdf(folder / "report.pdf", ["Revenue 2015", "Costs 2015", "Total 2015"], title="Report")
    make_pdf(folder / "minutes.pdf", ["Minutes", "Budget"])
    return folder


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


if __name__ == "__main__":
    sys.exit(main())
