"""The whole benchmark suite in one run: echo servers, clients, serializers; report and chart.

Runs ``server_echo.py``, ``client_rtt.py``, ``dtls_echo.py``, ``dns_bench.py``, ``bulk.py`` and
``serializers.py`` one after the other, each in its own process (they pin their own children
to the CPUs), then:

- prints one Markdown report on stdout: the machine, then each suite's tables;
- writes ``benchmarks/results/latest.json`` (every suite's raw results and the machine) and
  ``latest.md`` (the report), and ``throughput.png``: echo server throughput at 64 B with 64
  datagrams in flight as a ratio to the raw blocking loop of the same round, per server and
  backend, with the contract's 0.7x line (matplotlib; skipped with a note when missing);
- with ``--update-docs``, puts the report into ``docs/benchmarks.md`` between its
  ``<!-- bench:start -->`` and ``<!-- bench:end -->`` markers and the chart into
  ``docs/_static/bench/throughput.png``.

``nox -s bench`` runs it (``nox -s bench -- --quick`` for a run of well under a minute); by
hand: ``python benchmarks/run_all.py [--quick] [--update-docs]``. A suite that fails is
reported, the others still run, and the exit status is 1.
"""

from __future__ import annotations

import argparse
import compileall
import importlib.util
import json
import math
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from _common import Summary, environment, paired_ratios, write_json

_HERE = Path(__file__).resolve().parent
ROOT = _HERE.parent
RESULTS = _HERE / "results"
DOCS_PAGE = ROOT / "docs" / "benchmarks.md"
DOCS_CHART = ROOT / "docs" / "_static" / "bench" / "throughput.png"
START_MARKER = "<!-- bench:start -->"
END_MARKER = "<!-- bench:end -->"

#: The load of the chart and of the performance contract.
CHART_LOAD = "64x64"
CONTRACT_RATIO = 0.7
TARGET_RATIO = 0.8
BACKEND_ORDER = ("blocking", "asyncio", "uvloop", "trio")


@dataclass(frozen=True)
class Suite:
    """One benchmark script and the arguments it gets in a full and in a quick run."""

    name: str
    script: str
    full: tuple[str, ...]
    quick: tuple[str, ...]
    #: Seconds it may run before it is killed (it bounds itself well before).
    budget_full: float
    budget_quick: float


SUITES = (
    Suite(
        "server_echo",
        "server_echo.py",
        # Five rounds of 1 s rather than the script's three of 2 s, in the same time: on a
        # shared machine a median of five shrugs off the round something else ran in.
        full=("--rounds=5", "--seconds=1"),
        # One short round of the contract's load and of ping-pong, on the main rows.
        quick=("--quick", "--seconds=0.5", "--warmup=0.2", "--loads=64x64,64x1"),
        budget_full=720,
        budget_quick=60,
    ),
    Suite(
        "client_rtt",
        "client_rtt.py",
        full=(),
        quick=("--quick", "--rounds=2", "--seconds=0.2"),
        budget_full=240,
        budget_quick=40,
    ),
    Suite(
        "dtls_echo",
        "dtls_echo.py",
        full=(),
        quick=("--quick",),
        budget_full=240,
        budget_quick=90,
    ),
    Suite(
        "dns",
        "dns_bench.py",
        # The rounds, then a 60 s soak per backend at 80% of its measured rate.
        full=("--rounds=3", "--seconds=3", "--soak-seconds=60"),
        quick=("--rounds=1", "--seconds=1", "--soak-seconds=3"),
        budget_full=420,
        budget_quick=60,
    ),
    Suite(
        "bulk",
        "bulk.py",
        full=("--rounds=3", "--seconds=1"),
        quick=("--quick", "--seconds=0.5"),
        budget_full=300,
        budget_quick=60,
    ),
    Suite(
        "serializers",
        "serializers.py",
        full=(),
        quick=("--quick",),
        budget_full=120,
        budget_quick=20,
    ),
)


# -- running the suites --------------------------------------------------------------------------

#: What the measured child processes import (with anyio's and trio's dependencies).
CHILD_IMPORTS = (
    "anydgram",
    "anyio",
    "idna",
    "sniffio",
    "typing_extensions",
    "trio",
    "outcome",
    "attr",
    "attrs",
    "sortedcontainers",
    "uvloop",
    "msgpack",
    "cbor2",
    "msgspec",
    "prometheus_client",
    "easynetwork",
    "OpenSSL",
    "cryptography",
    "dnslib",
)


def compile_child_imports() -> None:
    """Write the bytecode of what the children import, where it is missing (about 1 s).

    ``nox -s bench`` installs with ``pip --no-compile``: byte-compiling numpy and matplotlib
    would take half of a quick run's minute. Without this, with ``PYTHONDONTWRITEBYTECODE``
    set, each of the run's few hundred children would compile anyio and trio again (~0.2 s).
    """
    for name in CHILD_IMPORTS:
        try:
            spec = importlib.util.find_spec(name)
        except ImportError:
            continue
        if spec is None:
            continue
        # quiet=2: not even errors, as stdout carries the report.
        for location in spec.submodule_search_locations or ():
            compileall.compile_dir(location, quiet=2)
        if not spec.submodule_search_locations and spec.origin and spec.origin.endswith(".py"):
            compileall.compile_file(spec.origin, quiet=2)


def run_suite(suite: Suite, *, quick: bool, extra: Sequence[str] = ()) -> dict[str, Any]:
    """Run one suite; return its JSON results plus its Markdown (``"markdown"``) and timing.

    A failure is returned as ``{"error": ...}``; progress goes to stderr as the suite runs.
    """
    RESULTS.mkdir(parents=True, exist_ok=True)
    json_path = RESULTS / f"{suite.name}.json"
    json_path.unlink(missing_ok=True)
    argv = [sys.executable, str(_HERE / suite.script), *(suite.quick if quick else suite.full)]
    argv += [*extra, f"--json={json_path}"]
    budget = suite.budget_quick if quick else suite.budget_full
    print(f"== {suite.name}: {' '.join(argv[1:])}", file=sys.stderr, flush=True)
    start = time.monotonic()
    try:
        completed = subprocess.run(
            argv, stdout=subprocess.PIPE, text=True, timeout=budget, check=False, cwd=ROOT
        )
    except subprocess.TimeoutExpired:
        return {"error": f"ran past its budget of {budget:.0f} s and was killed"}
    wall = time.monotonic() - start
    print(f"== {suite.name}: {wall:.1f} s", file=sys.stderr, flush=True)
    if completed.returncode != 0 or not json_path.exists():
        return {"error": f"exited with {completed.returncode}", "wall_s": wall}
    result: dict[str, Any] = json.loads(json_path.read_text(encoding="utf-8"))
    result["markdown"] = completed.stdout.strip()
    result["wall_s"] = wall
    return result


def raw_loop_cpu_us(server: dict[str, Any]) -> float | None:
    """The raw blocking loop's median server CPU microseconds per datagram at 64 B, window 64."""
    for row in server.get("rows", []):
        if row["server"] == "raw":
            values = [
                float(r[CHART_LOAD]["server_cpu_us_per_datagram"])
                for r in row["rounds"]
                if "server_cpu_us_per_datagram" in r.get(CHART_LOAD, {})
            ]
            median = Summary.of(values).median
            return None if math.isnan(median) else median
    return None


# -- the chart -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Bar:
    label: str
    backend: str
    ratio: Summary


def throughput_bars(server: dict[str, Any]) -> list[Bar]:
    """Per server row: throughput at the chart's load over the raw loop's of the same round."""

    def rates(row: dict[str, Any]) -> list[float]:
        return [float(r.get(CHART_LOAD, {}).get("rate", math.nan)) for r in row["rounds"]]

    rows = server.get("rows", [])
    reference = next((row for row in rows if row["server"] == "raw"), None)
    if reference is None:
        return []
    base = rates(reference)
    bars = []
    for row in rows:
        label = row["label"]
        ratio = Summary.of(paired_ratios(rates(row), base))
        if not math.isnan(ratio.median):
            bars.append(Bar(label, row["backend"], ratio))
    return bars


def render_chart(bars: Sequence[Bar], path: Path, subtitle: str) -> str | None:
    """Draw the throughput ratios as grouped bars; return why not when it cannot."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        return f"no chart: matplotlib does not import ({exc})"
    if not bars:
        return "no chart: the echo server suite has no throughput ratios"
    # Colours and legend in the order of the rows; bars grouped by backend.
    labels = list(dict.fromkeys(bar.label for bar in bars))
    order = {backend: i for i, backend in enumerate(BACKEND_ORDER)}
    backends = sorted({bar.backend for bar in bars}, key=lambda b: order.get(b, len(order)))
    colors = plt.get_cmap("tab10")
    fig, ax = plt.subplots(figsize=(11, 5.5), layout="constrained")
    x = 0.0
    ticks, tick_labels = [], []
    in_legend: set[str] = set()
    for backend in backends:
        group = [bar for bar in bars if bar.backend == backend]
        first = x
        for bar in group:
            color = colors(labels.index(bar.label) % 10)
            error = [[bar.ratio.median - bar.ratio.low], [bar.ratio.high - bar.ratio.median]]
            legend = bar.label if bar.label not in in_legend else "_nolegend_"
            in_legend.add(bar.label)
            ax.bar(x, bar.ratio.median, width=0.8, color=color, yerr=error, capsize=3, label=legend)
            ax.annotate(
                f"{bar.ratio.median:.2f}",
                (x, bar.ratio.high),
                textcoords="offset points",
                xytext=(0, 3),
                ha="center",
                fontsize=8,
            )
            x += 1
        ticks.append((first + x - 1) / 2)
        tick_labels.append(backend)
        x += 1  # a gap between backends
    ax.axhline(1.0, color="0.3", linewidth=1, label="raw blocking loop (1.0x)")
    ax.axhline(
        CONTRACT_RATIO,
        color="tab:red",
        linestyle="--",
        linewidth=1.2,
        label=f"contract: >= {CONTRACT_RATIO}x",
    )
    ax.axhline(
        TARGET_RATIO,
        color="tab:orange",
        linestyle=":",
        linewidth=1.2,
        label=f"target: >= {TARGET_RATIO}x",
    )
    handles, names = ax.get_legend_handles_labels()
    rank = {name: i for i, name in enumerate(labels)}  # rows first, in their order; then lines
    entries = sorted(zip(handles, names, strict=True), key=lambda e: rank.get(e[1], len(rank)))
    ax.legend(
        [handle for handle, _ in entries],
        [name for _, name in entries],
        fontsize=8,
        loc="upper left",
        bbox_to_anchor=(1.01, 1.0),
    )
    ax.set_xticks(ticks, tick_labels)
    ax.set_xlabel("backend (whiskers: min-max over the rounds)")
    ax.set_ylabel("throughput / raw blocking loop (same round)")
    ax.set_title(f"Echo server throughput, 64 B, 64 datagrams in flight\n{subtitle}", fontsize=10)
    ax.set_ylim(0, max(1.3, max(bar.ratio.high for bar in bars) * 1.12))
    ax.grid(axis="y", alpha=0.3)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None


# -- the report ----------------------------------------------------------------------------------


def machine_lines(env: dict[str, Any]) -> list[str]:
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    versions = ", ".join(
        f"{name} {version}" for name, version in env["versions"].items() if version is not None
    )
    missing = [name for name, version in env["versions"].items() if version is None]
    lines = [
        f"- CPU: {env['cpu_model']}, {env['cpu_count']} logical CPUs"
        + (f" ({usable} usable here)" if usable is not None and usable != env["cpu_count"] else ""),
        f"- Kernel: {env['kernel']}",
        f"- Python: {env['implementation']} {env['python']}",
        f"- Packages: {versions}" + (f" (not installed: {', '.join(missing)})" if missing else ""),
        "- Load average (1, 5, 15 min) before the run: "
        + ", ".join(f"{value:.2f}" for value in env["loadavg_before"])
        + "; after: "
        + ", ".join(f"{value:.2f}" for value in env["loadavg_after"]),
    ]
    return lines


def report(env: dict[str, Any], suites: dict[str, dict[str, Any]], *, quick: bool) -> str:
    """The Markdown report, starting at a level-2 heading (the docs page embeds it)."""
    command = "nox -s bench -- --quick" if quick else "nox -s bench"
    wall = sum(float(result.get("wall_s", 0.0)) for result in suites.values())
    out = [
        "## Latest run",
        "",
        f"{env['timestamp']}, `{command}`"
        + (" (a quick run: one short round, fewer rows and loads)" if quick else "")
        + f"; the suites took {wall:.0f} s.",
        "",
        "### Machine",
        "",
        *machine_lines(env),
    ]
    for name, result in suites.items():
        out.append("")
        if "error" in result:
            out += [f"### {name}", "", f"Failed: {result['error']} (see stderr)."]
        else:
            out.append(result["markdown"])
    return "\n".join(out) + "\n"


def update_docs(body: str, chart: Path | None) -> None:
    text = DOCS_PAGE.read_text(encoding="utf-8")
    start, end = text.find(START_MARKER), text.find(END_MARKER)
    if start < 0 or end < start:
        raise SystemExit(f"{DOCS_PAGE}: the {START_MARKER} ... {END_MARKER} markers are missing")
    head, tail = text[: start + len(START_MARKER)], text[end:]
    DOCS_PAGE.write_text(f"{head}\n\n{body}\n{tail}", encoding="utf-8")
    if chart is not None:
        DOCS_CHART.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(chart, DOCS_CHART)
    print(f"updated {DOCS_PAGE.relative_to(ROOT)}", file=sys.stderr)


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a short run (under a minute)")
    parser.add_argument(
        "--update-docs", action="store_true", help="write the report and chart into docs/"
    )
    parser.add_argument(
        "--suites",
        default=",".join(suite.name for suite in SUITES),
        help="comma-separated subset of " + ", ".join(suite.name for suite in SUITES),
    )
    args = parser.parse_args(argv)
    wanted = [name for name in args.suites.split(",") if name]
    unknown = set(wanted) - {suite.name for suite in SUITES}
    if unknown:
        parser.error(f"unknown suite: {', '.join(sorted(unknown))}")
    env = environment()
    started = time.monotonic()
    compile_child_imports()
    suites: dict[str, dict[str, Any]] = {}
    for suite in SUITES:
        if suite.name not in wanted:
            continue
        extra: list[str] = []
        if suite.name == "serializers":
            raw_us = raw_loop_cpu_us(suites.get("server_echo", {}))
            if raw_us is not None:
                extra.append(f"--raw-loop-us={raw_us:.4f}")
        suites[suite.name] = run_suite(suite, quick=args.quick, extra=extra)
    env["loadavg_after"] = list(os.getloadavg())
    body = report(env, suites, quick=args.quick)
    print("# anydgram benchmarks\n\n" + body)

    subtitle = f"{env['cpu_model']}, Python {env['python']}, {env['timestamp']}"
    chart_path = RESULTS / "throughput.png"
    problem = render_chart(throughput_bars(suites.get("server_echo", {})), chart_path, subtitle)
    if problem is not None:
        print(problem, file=sys.stderr)
    chart = chart_path if problem is None else None
    latest = {
        "benchmark": "anydgram",
        "quick": args.quick,
        "wall_s": time.monotonic() - started,
        "environment": env,
        "chart": str(chart.relative_to(ROOT)) if chart else None,
        "suites": suites,
    }
    write_json(RESULTS / "latest.json", latest)
    (RESULTS / "latest.md").write_text("# anydgram benchmarks\n\n" + body, encoding="utf-8")
    print(f"wrote {RESULTS.relative_to(ROOT)}/latest.json, latest.md", file=sys.stderr)
    if chart is not None:
        print(f"wrote {chart.relative_to(ROOT)}", file=sys.stderr)
    failed = [name for name, result in suites.items() if "error" in result]
    if failed:
        print(f"failed suites: {', '.join(failed)}; docs/ left as it was", file=sys.stderr)
        return 1
    if args.update_docs:
        update_docs(body, chart)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
