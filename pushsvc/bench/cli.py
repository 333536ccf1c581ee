"""``pushsvc-bench``: run the workloads against a pushsvc server and print the table."""

from __future__ import annotations

import argparse
import ipaddress
import math
import os
import resource
import shlex
import sys
import tempfile
import time
from urllib.parse import urlsplit

from .crossnode import parse_counts, run_counts
from .profile import Profiler
from .report import format_table
from .server import ChildServer, Server, http_status
from .workloads import Bench, Options, Progress

WORKLOADS = ("connect", "broadcast", "latency", "unicast", "batch")
PROTOCOLS = ("pushsvc", "pusher")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    o = Options()
    p = argparse.ArgumentParser(
        prog="pushsvc-bench",
        description="Load pushsvc over loopback: connect, broadcast, fixed-rate latency "
                    "and unicast workloads; live progress on stderr, a table on stdout. "
                    "Starts `twistd -n pushsvc` itself unless --url is given.")
    server = p.add_argument_group("the server")
    server.add_argument("--workers", default="2",
                        help="--workers for the server it starts (default 2)")
    server.add_argument("--server-args", default="",
                        help="more options for the server it starts, one string: "
                             "--server-args='--node bench'")
    server.add_argument("--server-log", default=os.path.join(tempfile.gettempdir(),
                                                             "pushsvc-bench-server.log"),
                        help="where the started server's output goes (default %(default)s)")
    server.add_argument("--url", help="bench a server already running on this loopback "
                                      "address instead, e.g. ws://127.0.0.1:8080/ws")
    server.add_argument("--server-pid", type=int,
                        help="with --url: the server's (master) process, for its CPU "
                             "and memory")
    server.add_argument("--api-key", help="bearer key for POST /api/push, if the server "
                                          "needs one")
    server.add_argument("--cross-node", metavar="COUNTS",
                        help="instead: for each number of Redis shards in COUNTS (such "
                             "as 1,3), start that many redis-servers and two nodes on "
                             "them, clients on one, pushes through the other; broadcast "
                             "and unicast across nodes, and each run's ratio to the "
                             "first's")
    load = p.add_argument_group("the load")
    load.add_argument("--workloads", default=",".join(WORKLOADS),
                      help="which to run, comma-separated, of "
                           f"{', '.join(WORKLOADS)} (default all; connect always runs, "
                           "and is profiled only when listed)")
    load.add_argument("--clients", type=int, default=o.clients,
                      help="WebSocket clients (default %(default)s)")
    load.add_argument("--protocol", choices=PROTOCOLS, default=o.protocol,
                      help="what the clients speak: pushsvc's own protocol at /ws, or "
                           "Pusher's at /app/bench-key (connect, broadcast and latency "
                           "only; default %(default)s)")
    load.add_argument("--generators", type=int, default=o.generators,
                      help="client processes sharing them (default %(default)s)")
    load.add_argument("--small-group", type=int, default=o.small_group,
                      help="members of the smaller broadcast group (default %(default)s)")
    load.add_argument("--messages", type=int, default=o.messages,
                      help="pushes per broadcast (default %(default)s)")
    load.add_argument("--rate", type=int, default=o.rate,
                      help="deliveries per second in the latency workload "
                           "(default %(default)s)")
    load.add_argument("--rate-seconds", type=float, default=o.rate_seconds,
                      help="how long the latency workload pushes (default %(default)s)")
    load.add_argument("--unicast", type=int, default=o.unicast,
                      help="pushes in the unicast workload (default %(default)s)")
    load.add_argument("--concurrency", type=int, default=o.concurrency,
                      help="handshakes in flight per generator while connecting "
                           "(default %(default)s)")
    load.add_argument("--timeout", type=float, default=o.timeout,
                      help="seconds a phase may take before it gives up "
                           "(default %(default)s)")
    load.add_argument("--push-connections", type=int, default=o.push_connections,
                      help="HTTP connections pushing (default %(default)s)")
    load.add_argument("--window", type=int, default=o.window,
                      help="messages in flight per push connection (a batch request: "
                           "at least one) (default %(default)s)")
    load.add_argument("--unicast-window", type=int, default=o.unicast_window,
                      help="requests in flight per push connection in the unicast workload, "
                           "one POST /api/push per message (default %(default)s: most HTTP "
                           "clients do not pipeline)")
    load.add_argument("--batch", type=int, default=o.batch,
                      help="messages per POST /api/batch in the batch workload (unicast "
                           "through the batch route, skipped if the server has none; "
                           "default %(default)s)")
    load.add_argument("--settle", type=float, default=0.0,
                      help="seconds to wait after the joins and logins before measuring; "
                           "0 checks that a push right after an ok is delivered "
                           "(default %(default)s)")
    load.add_argument("--sample-every", type=int, default=o.sample_every,
                      help="one client in N decodes its messages for latency "
                           "(default %(default)s)")
    p.add_argument("--profile", metavar="FILE",
                   help="attach py-spy to the server's processes during the workloads "
                        "(from the start if connect is listed, else once the clients "
                        "are connected and have joined their groups); collapsed stacks "
                        "go to FILE and a summary follows the table")
    args = p.parse_args(argv)
    if args.profile and args.url and not args.server_pid:
        p.error("--profile with --url needs --server-pid")
    if args.cross_node:
        if args.url or args.profile:
            p.error("--cross-node starts its own servers: no --url or --profile")
        try:
            args.cross_node = parse_counts(args.cross_node)
        except ValueError as e:
            p.error(str(e))
    unknown = set(filter(None, args.workloads.split(","))) - set(WORKLOADS)
    if unknown:
        p.error(f"unknown workload(s): {', '.join(sorted(unknown))}")
    if args.clients < args.small_group or min(args.generators, args.small_group,
                                                args.batch) < 1:
        p.error("need --clients >= --small-group >= 1, --generators >= 1, --batch >= 1")
    return args


def loopback(url: str) -> tuple[str, int]:
    """host and port of a loopback URL; anything else is refused."""
    parts = urlsplit(url if "//" in url else f"//{url}")
    host = "127.0.0.1" if parts.hostname == "localhost" else parts.hostname
    try:
        if not ipaddress.IPv4Address(host).is_loopback:
            raise ValueError
    except ValueError:
        raise SystemExit(f"pushsvc-bench: --url must be an IPv4 loopback address, "
                         f"got {url!r}")
    return host, parts.port or 80


def check_fd_limit(clients: int, generators: int) -> None:
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    need = math.ceil(clients / generators) + 32
    if hard != resource.RLIM_INFINITY and need > hard:
        raise SystemExit(f"pushsvc-bench: {clients} clients over {generators} generators "
                         f"need {need} descriptors each, the limit is {hard}; "
                         f"use --generators {math.ceil(clients / (hard - 32))}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    options = Options(**{name: getattr(args, name) for name in (
        "clients", "generators", "small_group", "messages", "rate", "rate_seconds",
        "unicast", "timeout", "concurrency", "push_connections", "window", "unicast_window", "batch",
        "sample_every", "api_key", "protocol")})
    workloads = [w for w in WORKLOADS if w in args.workloads.split(",")]
    remarks = []
    if options.protocol == "pusher":  # its clients have no users
        skipped = [w for w in workloads if w in ("unicast", "batch")]
        workloads = [w for w in workloads if w not in skipped]
        if skipped:
            remarks.append(f"{', '.join(skipped)}: skipped, Pusher clients have no users")
    check_fd_limit(options.clients, options.generators)
    progress = Progress()
    if args.cross_node:
        return cross_node(args, options, progress)
    if args.url:
        server = Server(*loopback(args.url), pid=args.server_pid)
        described = f"the server at {args.url}"
    else:
        server = ChildServer(args.workers, shlex.split(args.server_args), args.server_log)
        described = " ".join(filter(None, ["twistd pushsvc --workers", args.workers,
                                           args.server_args]))
        progress.done(f"server: {' '.join(server.command)} (log: {args.server_log})")
    results, profile, error, processes = [], None, None, None
    bench = profiler = None
    started = time.monotonic()
    try:
        server.wait_healthy(60)
        bench = Bench(server, options, progress)
        if args.profile and server.pid and "connect" in workloads:
            profiler = Profiler(server.pid, args.profile)
        results.append(bench.connect())
        processes = len(server.pids())
        if bench.opened < options.clients:
            raise RuntimeError(f"only {bench.opened} of {options.clients} clients "
                               f"connected (the notes say why)")
        if "broadcast" in workloads or "latency" in workloads:
            bench.join_groups()
        if "batch" in workloads and http_status(server.host, server.port, "/api/batch",
                                                args.api_key) == 404:
            workloads.remove("batch")
            remarks.append("batch: skipped, the server has no POST /api/batch")
            progress.done(remarks[-1])
        if "unicast" in workloads or "batch" in workloads:
            bench.authenticate()
        time.sleep(args.settle)
        if args.profile and server.pid and not profiler:
            profiler = Profiler(server.pid, args.profile)
        if "broadcast" in workloads:
            results.append(bench.broadcast(options.small_group))
            results.append(bench.broadcast(options.clients))
        if "latency" in workloads:
            results.append(bench.latency())
        if "unicast" in workloads:
            results.append(bench.unicast())
        if "batch" in workloads:
            results.append(bench.unicast(options.batch))
    except (Exception, KeyboardInterrupt) as e:
        error = e
    finally:
        if profiler:
            profile = profiler.stop()
        if bench:
            bench.close()
        status = server.stop()
    if processes:
        described += f" ({processes} server process{'es' if processes > 1 else ''})"
    header = (f"pushsvc-bench: {described}; {options.clients:,} {options.protocol} clients over "
              f"{options.generators} generator processes; {time.monotonic() - started:.0f} s")
    if results:
        print(format_table(results, header, os.cpu_count() or 1))
    for remark in remarks:
        print(remark)
    if profile:
        print(f"\n{profile.format()}\n(collapsed stacks: {args.profile})")
    if status not in (None, 0):
        print(f"pushsvc-bench: the server exited with status {status}", file=sys.stderr)
    if error is not None:
        print(f"pushsvc-bench: {type(error).__name__}: {error}", file=sys.stderr)
        return 1
    return 0


def cross_node(args: argparse.Namespace, options: Options, progress: Progress) -> int:
    """``--cross-node``: a run per shard count, one table, the ratios."""
    started = time.monotonic()
    results, ratios, error = run_counts(args.cross_node, args.workers,
                                        shlex.split(args.server_args), args.server_log,
                                        options, progress)
    header = (f"pushsvc-bench --cross-node: nodes a and b (twistd pushsvc --workers "
              f"{args.workers} each) on {' then '.join(map(str, args.cross_node))} Redis "
              f"shard(s); {options.clients:,} clients on b over {options.generators} "
              f"generator processes, pushes through a; {time.monotonic() - started:.0f} s")
    if results:
        print(format_table(results, header, os.cpu_count() or 1))
    for line in ratios:
        print(line)
    if error is not None:
        print(f"pushsvc-bench: {type(error).__name__}: {error}", file=sys.stderr)
        return 1
    return 0
