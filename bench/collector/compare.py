"""Compare the collector's CPU cost at two git revisions, measured in one run on this machine.

Usage: .venv/bin/python bench/collector/compare.py REVISION_A REVISION_B [--duration-s 8] [--rounds 5]

Each revision is exported with `git archive` into a temporary folder and runs as its own
`weir collector` process (one process, uvloop, as run.py starts it) on 127.0.0.1, both writing
to one private redis-server. wrk then loads them in turns, single events and batches of 50
in every round, with the order reversed every other round. Because the two collectors share
every minute of the machine's other load, their requests per server CPU-second can be compared
even on a busy machine, where requests/s cannot. The figures are medians over the rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import orjson

from run import (CONNECTIONS, EVENT, ROOT, free_port, prepare_redis, reset_streams, run_wrk, start, stop,
                 wait_for_port)


def export_revision(revision: str, folder: Path) -> None:
    """Write the files of `revision` into `folder`; raise CalledProcessError for an unknown revision."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", revision], capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive, check=True)


def compare(revisions: list[str], duration_s: int, rounds: int) -> dict[str, dict[str, list[float]]]:
    workdir = Path(tempfile.mkdtemp(prefix="weir-compare-"))
    single_file = workdir / "single.json"
    single_file.write_bytes(orjson.dumps(EVENT))
    batch_file = workdir / "batch50.json"
    batch_file.write_bytes(orjson.dumps({"events": [EVENT] * 50}))
    redis_port = free_port()
    redis_url = f"redis://127.0.0.1:{redis_port}/0"
    processes = [start(["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "",
                        "--appendonly", "no"])]
    try:
        wait_for_port(redis_port)
        asyncio.run(prepare_redis(redis_url))
        collectors = []
        for number, revision in enumerate(revisions):
            tree = workdir / f"tree{number}"
            tree.mkdir()
            export_revision(revision, tree)
            port = free_port()
            env = {**os.environ, "NODE_ENV": "production", "REDIS_URL": redis_url, "LOG_LEVEL": "warning",
                   "STREAM_MAX_LENGTH": "100000000", "PYTHONPATH": str(tree)}
            # cwd: `python -m` puts the working folder first on sys.path, ahead of PYTHONPATH.
            process = subprocess.Popen([sys.executable, "-m", "ops.cli", "collector", "--host", "127.0.0.1",
                                        "--port", str(port)], env=env, cwd=tree, stdout=subprocess.DEVNULL,
                                       stderr=subprocess.PIPE)
            processes.append(process)
            collectors.append((revision, process, port))
        for _revision, _process, port in collectors:
            wait_for_port(port)

        results = {revision: {"single": [], "batch50_events": [], "non_2xx": []} for revision in revisions}
        for _revision, process, port in collectors:  # warm-up
            run_wrk(f"http://127.0.0.1:{port}/collect", single_file, 2, CONNECTIONS, process.pid)
        for number in range(rounds):
            asyncio.run(reset_streams(redis_url))
            order = collectors if number % 2 == 0 else list(reversed(collectors))
            for revision, process, port in order:
                url = f"http://127.0.0.1:{port}/collect"
                single = run_wrk(url, single_file, duration_s, CONNECTIONS, process.pid)
                batch = run_wrk(url, batch_file, duration_s, CONNECTIONS, process.pid)
                results[revision]["single"].append(single["requests_per_cpu_s"])
                results[revision]["batch50_events"].append(batch["requests_per_cpu_s"] * 50)
                results[revision]["non_2xx"].append(single["non_2xx"] + batch["non_2xx"])
                print(f"round {number + 1} {revision}: {single['requests_per_cpu_s']:,.0f} single requests and "
                      f"{batch['requests_per_cpu_s'] * 50:,.0f} batched events per CPU-second", file=sys.stderr)
        return results
    finally:
        for process in reversed(processes):
            stop(process)
        shutil.rmtree(workdir, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("revisions", nargs=2, help="two git revisions, e.g. a commit id and HEAD")
    parser.add_argument("--duration-s", type=int, default=8, help="seconds of load per measurement (default 8)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds of measurements; medians are reported")
    args = parser.parse_args()
    for tool in ("wrk", "redis-server"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is not installed (apt-get install wrk redis-server)")
    if args.revisions[0] == args.revisions[1]:
        sys.exit("give two different revisions")

    results = compare(args.revisions, args.duration_s, args.rounds)
    print("| revision | single-event requests per server CPU-second | events per server CPU-second, "
          "batches of 50 | non-2xx |")
    print("|---|---|---|---|")
    for revision, figures in results.items():
        print(f"| {revision} | {statistics.median(figures['single']):,.0f} | "
              f"{statistics.median(figures['batch50_events']):,.0f} | {sum(figures['non_2xx'])} |")
    print(f"1-minute load average at the end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
