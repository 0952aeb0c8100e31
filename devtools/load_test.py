"""A bounded load test of the app: ``python -m devtools.load_test --help``.

Starts ``python app.py`` on a free 127.0.0.1 port (or uses ``--url``, which must be a loopback
address), sends a fixed number of /generate requests through gradio_client like any API user, prints
one table, and stops by itself (``--max-seconds`` bounds the whole run). It never talks to another host.

Scenarios:
    sequential  N requests one after another: latency, errors, server RSS at start and end (after
                ``--warmup`` requests, which no figure counts).
    burst       N requests at once: how many were queued, how many refused as "queue full".
    speedup     the same N requests sent together, then one at a time: the wall-clock speedup and the
                compute saved each reports (they should agree however the requests arrive).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from urllib.parse import urlparse

from ui.callbacks import OUTPUT_FIELDS
from .local_server import LocalApp

PROMPT = "a large red circle at the center on a striped blue background"
CLIENT_FIELDS = [f for f in OUTPUT_FIELDS if f != "scrub_state"]  # State outputs stay on the server
LOOPBACK = {"127.0.0.1", "localhost", "::1"}


@dataclass
class Outcome:
    seconds: float
    error: str | None = None
    speedup: float | None = None
    compute_saved: float | None = None

    @property
    def refused(self) -> bool:
        return self.error is not None and "queue is full" in self.error.lower()


@dataclass
class Report:
    name: str
    outcomes: list[Outcome] = field(default_factory=list)
    rss_start_mb: float | None = None
    rss_end_mb: float | None = None
    wall_seconds: float = 0.0
    rss_trace: list[tuple[int, float]] = field(default_factory=list)  # (requests done, MB), sequential runs

    def rows(self) -> list[tuple[str, str]]:
        ok = [o for o in self.outcomes if o.error is None]
        refused = sum(o.refused for o in self.outcomes)
        errors = len(self.outcomes) - len(ok) - refused
        latencies = sorted(o.seconds for o in ok)
        rows = [("requests", str(len(self.outcomes))), ("completed", str(len(ok))),
                ("refused (queue full)", str(refused)), ("other errors", str(errors)),
                ("p50 latency", _fmt_s(_quantile(latencies, 0.50))), ("p95 latency", _fmt_s(_quantile(latencies, 0.95))),
                ("wall time", _fmt_s(self.wall_seconds))]
        speedups = [o.speedup for o in ok if o.speedup is not None]
        saved = [o.compute_saved for o in ok if o.compute_saved is not None]
        if speedups:
            rows.append(("median wall-clock speedup", f"{statistics.median(speedups):.2f}x"))
        if saved:
            rows.append(("compute saved (min..max)", f"{min(saved):.1%}..{max(saved):.1%}"))
        if self.rss_start_mb is not None:
            rows.append(("server RSS start -> end", f"{self.rss_start_mb:.0f} MB -> {self.rss_end_mb:.0f} MB "
                                                    f"({self.rss_end_mb - self.rss_start_mb:+.0f} MB)"))
        if self.rss_trace:
            rows.append(("server RSS along the run", ", ".join(f"{n}: {mb:.0f}" for n, mb in self.rss_trace) + " MB"))
        for o in self.outcomes:
            if o.error and not o.refused:
                rows.append(("first other error", o.error[:160]))
                break
        return rows


def _quantile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


def _fmt_s(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f} s"


def rss_mb(pid: int | None) -> float | None:
    """Resident memory of process `pid` in MB (Linux /proc), or None if unknown."""
    if pid is None:
        return None
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def one_request(client, seed: int, args: argparse.Namespace) -> Outcome:
    start = time.perf_counter()
    try:
        values = client.predict(PROMPT, "embedded", seed, args.steps, args.size, args.size, args.tau1, args.tau2,
                                args.pool1, args.pool2, api_name="/generate")
    except Exception as exc:  # each failure is counted and shown, never fatal to the run
        return Outcome(time.perf_counter() - start, error=f"{type(exc).__name__}: {exc}")
    details = dict(zip(CLIENT_FIELDS, values))["details"]
    return Outcome(time.perf_counter() - start, speedup=details["speedup"], compute_saved=1 - details["blocks_share"])


def run_scenario(name: str, url: str, pid: int | None, seeds: list[int], parallel: int, args: argparse.Namespace,
                 deadline: float) -> Report:
    from gradio_client import Client

    report = Report(name, rss_start_mb=rss_mb(pid))
    start = time.perf_counter()
    done = iter(range(1, len(seeds) + 1))

    def task(seed: int) -> Outcome:
        if time.monotonic() > deadline:
            return Outcome(0.0, error="skipped: --max-seconds reached")
        # One client per request, as independent API users would have (each has its own session).
        outcome = one_request(Client(url, verbose=False), seed, args)
        count = next(done)
        if parallel == 1 and args.rss_every and count % args.rss_every == 0:
            report.rss_trace.append((count, rss_mb(pid) or 0.0))
        return outcome

    with ThreadPoolExecutor(max_workers=parallel) as pool:
        report.outcomes = list(pool.map(task, seeds))
    report.wall_seconds = time.perf_counter() - start
    report.rss_end_mb = rss_mb(pid)
    return report


def print_reports(reports: list[Report], args: argparse.Namespace) -> None:
    print(f"\nload test: {args.size}x{args.size}, {args.steps} steps, tau1={args.tau1}, tau2={args.tau2}")
    for report in reports:
        print(f"\n[{report.name}]")
        for label, value in report.rows():
            print(f"  {label:<28} {value}")
    if len(reports) == 2 and reports[0].name.startswith("together"):
        together, alone = (statistics.median([o.speedup for o in r.outcomes if o.speedup is not None] or [float("nan")])
                           for r in reports)
        print(f"\n  together / one at a time: {together / alone:.3f} (wall-clock speedup ratio; 1.0 is ideal)")
        saved = [[round(o.compute_saved, 6) for o in r.outcomes if o.compute_saved is not None] for r in reports]
        print(f"  compute saved identical per request: {saved[0] == saved[1]}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m devtools.load_test", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("scenario", choices=("sequential", "burst", "speedup"))
    p.add_argument("--requests", type=int, default=20, help="requests to send (default: 20)")
    p.add_argument("--size", type=int, default=64, help="width and height (default: 64)")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--tau1", type=float, default=0.15)
    p.add_argument("--tau2", type=float, default=0.22)
    p.add_argument("--pool1", type=int, default=2048)
    p.add_argument("--pool2", type=int, default=384)
    p.add_argument("--warmup", type=int, default=3,
                   help="requests sent first and left out of every figure, RSS included: the first calls at a "
                        "new size fill caches that a leak test must not count (default: 3)")
    p.add_argument("--rss-every", type=int, default=25,
                   help="in one-at-a-time runs, sample the server's RSS after every N requests (default: 25; 0: off)")
    p.add_argument("--url", default=None, help="a running app on 127.0.0.1 (default: start one)")
    p.add_argument("--pid", type=int, default=None, help="that app's process id, for its RSS")
    p.add_argument("--max-seconds", type=float, default=1800, help="stop sending after this long (default: 1800)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.requests < 1 or args.requests > 1000:
        raise SystemExit("--requests must be from 1 to 1000")
    deadline = time.monotonic() + args.max_seconds
    app = None
    if args.url:
        if urlparse(args.url).hostname not in LOOPBACK:
            raise SystemExit(f"--url must be a loopback address (127.0.0.1), got {args.url!r}")
        url, pid = args.url, args.pid
    else:
        app = LocalApp(env={"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}).start()
        url, pid = app.url, app.process.pid
    try:
        if args.warmup:
            run_scenario("warm-up", url, pid, [10_000 + i for i in range(args.warmup)], 1, args, deadline)
        seeds = list(range(args.requests))
        if args.scenario == "sequential":
            reports = [run_scenario("sequential", url, pid, seeds, 1, args, deadline)]
        elif args.scenario == "burst":
            reports = [run_scenario("burst", url, pid, seeds, len(seeds), args, deadline)]
        else:
            reports = [run_scenario("together", url, pid, seeds, len(seeds), args, deadline),
                       run_scenario("one at a time", url, pid, seeds, 1, args, deadline)]
    finally:
        if app is not None:
            app.stop()
    print_reports(reports, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
