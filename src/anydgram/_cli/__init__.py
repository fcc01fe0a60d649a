"""The ``anydgram`` command line: ``serve``, ``ping``, ``send``, ``listen``, ``bench``, ``demo``.

Each command lives in its own module and uses only anydgram's public API, so each doubles as
an example. Exit status: 0 on success, 1 when the network did not answer (``ping`` got no
reply, a ``send --wait-reply`` went unanswered), 2 for bad input or set-up (an unknown host, a
port out of range, a backend that is not installed), reported in one line without a traceback.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from ._args import build_parser, family_of, loopback_hosts
from ._output import write_line
from ._runner import Backend, CLIError, resolve_backend

__all__ = ("main",)

_COMMANDS = ("serve", "ping", "send", "listen", "bench", "demo")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line with ``argv`` (default: ``sys.argv[1:]``); return the exit status."""
    try:
        return _dispatch(argv)
    except CLIError as exc:
        write_line(f"anydgram: {exc}", error=True)
        return 2
    except KeyboardInterrupt:  # Ctrl-C before a command started (or after it ended)
        return 130
    except BrokenPipeError:  # the reader went away (`anydgram ping ... | head -3`)
        return 1
    except OSError as exc:
        write_line(f"anydgram: {exc}", error=True)
        return 2


def _dispatch(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    try:
        args, extra = parser.parse_known_args(argv)
    except SystemExit as exc:  # --help and --version print, then "exit" 0
        return exc.code if isinstance(exc.code, int) else 0
    if extra:
        owner: argparse.ArgumentParser = getattr(args, "parser", parser)
        owner.error(f"unrecognized arguments: {' '.join(extra)}")
    if args.command is None:
        raise CLIError(
            f"missing command: choose from {', '.join(_COMMANDS)} (see 'anydgram --help')"
        )
    backend = resolve_backend(args.backend)
    return _run_command(args, backend)


def _run_command(args: argparse.Namespace, backend: Backend) -> int:
    # Each command is imported when used: `anydgram --version` stays instant.
    command: str = args.command
    if command == "serve":
        from ._serve import ServeOptions, run_serve

        return run_serve(
            ServeOptions(
                hosts=loopback_hosts() if args.host is None else [args.host],
                port=args.port,
                mode=args.mode,
                loss=args.loss,
                delay=args.delay / 1000,
                protocol=args.protocol,
                workers=args.workers,
                max_concurrent=args.max_concurrent,
                verbose=args.verbose,
                seed=args.seed,
                metrics=args.metrics,
                stats_interval=args.stats_interval,
            ),
            backend,
        )
    if command == "ping":
        from ._ping import PingOptions, run_ping

        return run_ping(
            PingOptions(
                host=args.host,
                port=args.port,
                count=args.count,
                interval=args.interval,
                timeout=args.timeout,
                size=args.size,
                family=family_of(args),
                protocol=args.protocol,
            ),
            backend,
        )
    if command == "send":
        from ._send import SendOptions, run_send

        return run_send(
            SendOptions(
                host=args.host,
                port=args.port,
                message=args.message,
                raw=args.raw,
                wait_reply=args.wait_reply,
                timeout=args.timeout,
                family=family_of(args),
                protocol=args.protocol,
            ),
            backend,
        )
    if command == "listen":
        from ._listen import ListenOptions, run_listen

        return run_listen(
            ListenOptions(
                hosts=loopback_hosts() if args.host is None else [args.host],
                port=args.port,
                echo=args.echo,
                count=args.count,
                protocol=args.protocol,
            ),
            backend,
        )
    if command == "bench":
        from ._bench import BenchOptions, run_bench

        return run_bench(
            BenchOptions(
                host=args.host,
                port=args.port,
                duration=args.duration,
                window=args.window,
                size=args.size,
                timeout=args.timeout,
                json=args.json,
                quiet=args.quiet,
                family=family_of(args),
            ),
            backend,
        )
    from ._demo import run_demo

    return run_demo(backend)
