"""Start-up cost of everyday CLI commands, as a ratio to a bare `python -c pass` in the same run.

    python bench/startup.py                          # JSON summary
    python bench/startup.py --markdown --before HEAD # the table in docs/BENCHMARKS.md

`--before REF` also times the same commands on the code of a git revision (its rag/, ingest/
and ui/ from `git archive`, imported ahead of the working tree), for a before/after table.

Each command runs as its own process (what the `pagerag` console script runs, as `python -c`)
on an empty temporary data directory with HF_HUB_OFFLINE=1, after one untimed warm-up run. The
commands are interleaved round by round, so a change in the machine's load hits them all alike;
the figure is the median wall time of `--rounds` runs. The reference rows time importing what the
commands no longer import (qdrant-client for a Qdrant server, torch for the models).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import emit, log, machine

# What the `pagerag` console script runs, as `python -c`: PYTHONPATH decides which code runs.
PAGERAG = [
    sys.executable,
    "-c",
    "import sys; sys.argv[0] = 'pagerag'; from rag.cli import app; app()",
]
COMMANDS: dict[str, list[str]] = {
    "python -c pass": [sys.executable, "-c", "pass"],
    "pagerag --help": [*PAGERAG, "--help"],
    "pagerag info": [*PAGERAG, "info"],
    "pagerag docs list": [*PAGERAG, "docs", "list"],
    "pagerag search --mode text": [*PAGERAG, "search", "total 2015", "--mode", "text"],
    # References: what the commands above no longer pay.
    "python -c 'import qdrant_client'": [sys.executable, "-c", "import qdrant_client"],
    "python -c 'import torch'": [sys.executable, "-c", "import torch"],
}
ROOT = Path(__file__).resolve().parents[1]


def run_once(command: list[str], env: dict[str, str], cwd: str) -> float:
    start = time.perf_counter()
    subprocess.run(command, env=env, cwd=cwd, capture_output=True, check=True)
    return time.perf_counter() - start


def measure(rounds: int, before: str | None) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="pagerag-startup-") as tmp:
        env = {**os.environ, "PAGERAG_DATA_DIR": str(Path(tmp) / "data"), "HF_HUB_OFFLINE": "1"}
        runs = {name: (command, env) for name, command in COMMANDS.items()}
        if before:
            old = Path(tmp) / "before"
            old.mkdir()
            archive = subprocess.run(
                ["git", "archive", before, "rag", "ingest", "ui"],
                cwd=ROOT,
                capture_output=True,
                check=True,
            )
            subprocess.run(["tar", "-x", "-C", str(old)], input=archive.stdout, check=True)
            # Its own data directory: the two versions may not share an index format.
            old_env = {**env, "PYTHONPATH": str(old), "PAGERAG_DATA_DIR": str(old / "data")}
            for name, command in COMMANDS.items():
                if name.startswith("pagerag"):
                    runs[f"{name} @ {before}"] = (command, old_env)
        for command, run_env in runs.values():  # warm-up: page cache, .pyc files, the index
            run_once(command, run_env, tmp)
        times: dict[str, list[float]] = {name: [] for name in runs}
        for i in range(rounds):
            log(f"round {i + 1}/{rounds}")
            for name, (command, run_env) in runs.items():
                times[name].append(run_once(command, run_env, tmp))
    bare = statistics.median(times["python -c pass"])
    rows = {
        name: {
            "median_s": round(statistics.median(t), 3),
            "min_s": round(min(t), 3),
            "ratio_to_bare_python": round(statistics.median(t) / bare, 1),
        }
        for name, t in times.items()
    }
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    return {
        "machine": machine(),
        "rounds": rounds,
        "before": before,
        "load_avg_1m": load,
        "commands": rows,
    }


def markdown(result: dict[str, Any]) -> str:
    rows, before = result["commands"], result["before"]
    head = "| command | median wall time | times `python -c pass` |"
    rule = "|---|---|---|"
    if before:
        head += f" at {before} | times `python -c pass` |"
        rule += "---|---|"
    lines = [head, rule]
    for name, row in rows.items():
        if " @ " in name:
            continue
        line = f"| `{name}` | {row['median_s'] * 1000:.0f} ms | {row['ratio_to_bare_python']:.0f} |"
        if before:
            old = rows.get(f"{name} @ {before}")
            line += (
                f" {old['median_s'] * 1000:.0f} ms | {old['ratio_to_bare_python']:.0f} |"
                if old
                else " | |"
            )
        lines.append(line)
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="timed runs of each command")
    parser.add_argument("--before", metavar="REF", help="also time this git revision's code")
    parser.add_argument("--json", action="store_true", help="one JSON line on stdout")
    parser.add_argument("--markdown", action="store_true", help="the table for BENCHMARKS.md")
    args = parser.parse_args()
    result = measure(args.rounds, args.before)
    if args.markdown:
        print(markdown(result))
        log(result["machine"], "load", result["load_avg_1m"])
    else:
        emit(result, args.json)


if __name__ == "__main__":
    main()
