"""Helpers shared by the benchmark scripts: machine description, timing summaries, output."""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
# `python bench/ingest.py` puts bench/ first on sys.path, where this script would shadow the
# `ingest` package: the project goes first, bench/ (for _common, synthetic) last.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() not in (ROOT, BENCH)]
sys.path[:0] = [str(ROOT)]
sys.path.append(str(BENCH))


def machine() -> dict[str, Any]:
    """What the figures were measured on (`nproc`, `lscpu` model name, RAM, versions)."""
    model = platform.processor() or platform.machine()
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        for line in lscpu.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
    except OSError:
        pass
    info: dict[str, Any] = {
        "cpu": model,
        "nproc": nproc(),
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d"),
    }
    try:
        import psutil

        info["ram_gib"] = round(psutil.virtual_memory().total / 2**30, 1)
    except ImportError:
        pass
    return info


def nproc() -> int:
    """CPUs this process may use (`nproc`), not the host's count."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100) with linear interpolation; NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def latency_ms(seconds: Sequence[float]) -> dict[str, float]:
    ms = [s * 1000 for s in seconds]
    return {
        "p50_ms": round(percentile(ms, 50), 2),
        "p95_ms": round(percentile(ms, 95), 2),
        "mean_ms": round(statistics.fmean(ms), 2) if ms else float("nan"),
    }


def memory_mb() -> dict[str, float]:
    """Resident memory of this process: anonymous (heap) and file-backed (mmapped index files)."""
    out: dict[str, float] = {}
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
                out[key] = round(int(value.split()[0]) / 1024, 1)  # kB -> MB
    except OSError:
        pass
    return out


def log(*parts: object) -> None:
    """Progress on stderr, so stdout stays one JSON object with --json."""
    print(*parts, file=sys.stderr, flush=True)


def emit(result: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(result, default=str))
    else:
        print(json.dumps(result, indent=2, default=str))
