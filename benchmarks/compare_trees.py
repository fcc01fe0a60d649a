"""Compare two source trees of anydgram on the same benchmark, run interleaved.

For a change that must not cost speed (a refactor, say): each round runs the benchmark script
once with ``PYTHONPATH`` pointing at the first tree's ``src`` and once at the second's, in turn,
so both see the same machine drift. Every run reports its anydgram rows against the raw loop
of the same run; the table gives the median of those ratios per tree and their quotient.

    $ git worktree add /tmp/before <commit>
    $ .venv/bin/python benchmarks/compare_trees.py /tmp/before . --rounds 4 \\
          -- benchmarks/server_echo.py --servers raw,anydgram-server

Arguments after ``--`` are the benchmark and its options (``server_echo.py`` or
``client_rtt.py``); ``--rounds 1 --json PATH`` are added to each run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any

#: (benchmark, the row every other row is divided by, metrics: (label, field, higher is better))
_METRICS: dict[str, tuple[str, list[tuple[str, str, bool]]]] = {
    "server_echo": (
        "raw",
        [("x raw", "rate", True), ("CPU x raw", "server_cpu_us_per_datagram", False)],
    ),
    "client_rtt": (
        "raw",
        [("CPU x raw", "cpu_us_per_rtt", False), ("round trips x raw", "rtt_per_s", True)],
    ),
}


def _run(tree: Path, command: list[str], timeout: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch) / "result.json"
        env = dict(os.environ, PYTHONPATH=str(tree / "src"))
        subprocess.run(
            [sys.executable, *command, "--rounds", "1", "--json", str(out)],
            env=env,
            check=True,
            stdout=subprocess.DEVNULL,
            timeout=timeout,
        )
        result: dict[str, Any] = json.loads(out.read_text())
        return result


def _ratios(result: dict[str, Any]) -> dict[tuple[str, str, str], float]:
    """Each (row, load, metric) of one run, divided by the reference row of the same run."""
    reference, metrics = _METRICS[result["benchmark"]]
    rows = result["rows"]
    key = "server" if result["benchmark"] == "server_echo" else "client"
    base = next(row for row in rows if row[key] == reference)["rounds"][0]
    loads = base if result["benchmark"] == "server_echo" else {"": base}
    ratios: dict[tuple[str, str, str], float] = {}
    for row in rows:
        if row[key] == reference or not row["rounds"]:
            continue
        measured = (
            row["rounds"][0] if result["benchmark"] == "server_echo" else {"": row["rounds"][0]}
        )
        for load, values in measured.items():
            for label, field, _ in metrics:
                if values.get(field) and loads.get(load, {}).get(field):
                    name = f"{row[key]} on {row['backend']}"
                    ratios[(name, load, label)] = values[field] / loads[load][field]
    return ratios


def main() -> int:
    """Run the comparison and print a Markdown table; exit 1 if a run failed."""
    argv = sys.argv[1:]
    split = argv.index("--") if "--" in argv else len(argv)
    own, command = argv[:split], argv[split + 1 :]
    parser = argparse.ArgumentParser(description="Compare two trees on one benchmark.")
    parser.add_argument("before", type=Path, help="the first tree (its src/ is used)")
    parser.add_argument("after", type=Path, help="the second tree")
    parser.add_argument("--rounds", type=int, default=3, help="runs per tree, interleaved")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per run, at most")
    args = parser.parse_args(own)
    if not command:
        parser.error("give the benchmark after --")
    trees = {"before": args.before.resolve(), "after": args.after.resolve()}
    collected: dict[str, dict[tuple[str, str, str], list[float]]] = {
        name: defaultdict(list) for name in trees
    }
    higher_better: dict[str, bool] = {}
    for round_number in range(args.rounds):
        order = list(trees) if round_number % 2 == 0 else list(reversed(trees))
        for name in order:
            print(f"round {round_number + 1}/{args.rounds}: {name}", file=sys.stderr)
            result = _run(trees[name], command, args.timeout)
            for label, _, better in _METRICS[result["benchmark"]][1]:
                higher_better[label] = better
            for item, value in _ratios(result).items():
                collected[name][item].append(value)
    print(f"{args.rounds} interleaved runs per tree of `{' '.join(command)}`; medians.\n")
    print(f"before: `{trees['before']}`, after: `{trees['after']}`\n")
    print("| row | load | metric | before | after | after / before |")
    print("|---|---|---|--:|--:|--:|")
    for item in sorted(collected["before"]):
        before, after = collected["before"][item], collected["after"].get(item)
        if not after:
            continue
        b, a = statistics.median(before), statistics.median(after)
        row, load, label = item
        print(f"| {row} | {load or '-'} | {label} | {b:.3f} | {a:.3f} | {a / b:.3f} |")
    print("\nFor `x raw` higher is better; for `CPU x raw` lower is better.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
