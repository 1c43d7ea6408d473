"""A fuzz campaign: every target of ``harness.py`` at once, for a fixed time, and what its last hour found.

The smoke test proves the harness runs; a campaign is what says the readers are hard to break. This runs
the chosen targets side by side (lowest CPU priority, so the machine stays usable), keeps each target's
growing corpus in ``--work`` so a later campaign continues where this one stopped, stamps every libFuzzer
line with the wall time, and summarises per target: executions, coverage (``cov`` edges, ``ft``
features) at the start and the end, when coverage last grew, the crashes written, and the same numbers
for the campaign's last hour (the acceptance of issue 13: *the last hour-equivalent finds nothing new*).

    python tests/fuzz/campaign.py run --minutes 90                     # all four targets, ~/.cache/detconvert-fuzz
    python tests/fuzz/campaign.py run --targets weights cfg --minutes 60 --work /tmp/fz
    python tests/fuzz/campaign.py summarise /tmp/fz/logs/*.log         # again, from the logs
    python tests/fuzz/campaign.py summarise --json /tmp/fz/logs/*.log

Needs atheris (``pip install -e '.[fuzz]'``): the random engine has no coverage to report. Exit status of
``run``: 0 when no target crashed, 1 otherwise (the inputs are in ``<work>/crashes/<target>/``).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, List, Optional, Sequence

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
TARGETS = ("weights", "cfg", "config", "proposals")
DEFAULT_WORK = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "detconvert-fuzz"

# "#12345\tNEW    cov: 1628 ft: 6335 corp: 450/1288Kb ..." (libFuzzer's status lines)
_STATUS = re.compile(r"^#(\d+)\s+(INITED|NEW|REDUCE|pulse|DONE|RELOAD)\s+cov: (\d+) ft: (\d+)")
# its final count (-print_final_stats=1)
_FINAL = re.compile(r"^stat::number_of_executed_units: (\d+)")
# what libFuzzer prints when it writes a crashing, hanging or memory-hungry input
_ARTIFACT = re.compile(r"Test unit written to (\S+)")


@dataclass
class Sample:
    """One status line of one target: wall time (epoch s), executions so far, coverage edges, features."""

    time: float
    executions: int
    cov: int
    ft: int
    kind: str


@dataclass
class TargetSummary:
    target: str
    seconds: float
    cpu_seconds: Optional[float]  # the target's own CPU time (None: not in the log)
    executions: int
    cov_start: int
    cov_end: int
    ft_start: int
    ft_end: int
    crashes: List[str]
    last_growth_s: Optional[float]  # seconds after the start when cov or ft last grew (None: never after INITED)
    window_s: float  # the last-window length actually covered (<= the asked window when the run was shorter)
    window_executions: int
    window_cov_gain: int
    window_ft_gain: int
    window_crashes: List[str] = field(default_factory=list)

    @property
    def clean_window(self) -> bool:
        return not self.window_crashes


def parse_log(lines: Iterable[str]):
    """(start, end, samples, crashes as (time, path), CPU seconds or None) of a log written by :func:`run`.

    Every line is ``<epoch seconds> <libFuzzer's line>``; ``START <epoch>`` / ``END <epoch>`` bracket it.
    """
    start = end = cpu_s = None
    samples: List[Sample] = []
    crashes = []
    for raw in lines:
        head, _, rest = raw.rstrip("\n").partition(" ")
        if head == "START":
            start = float(rest.split()[0])
            continue
        if head == "END":
            end = float(rest.split()[0])
            cpu = re.search(r"cpu=(\d+)", rest)
            cpu_s = float(cpu[1]) if cpu else None
            continue
        try:
            stamp = float(head)
        except ValueError:
            continue
        match = _STATUS.match(rest)
        if match:
            samples.append(Sample(stamp, int(match[1]), int(match[3]), int(match[4]), match[2]))
        final = _FINAL.match(rest)
        if final and samples:
            samples.append(Sample(stamp, int(final[1]), samples[-1].cov, samples[-1].ft, "FINAL"))
        artifact = _ARTIFACT.search(rest)
        if artifact:
            crashes.append((stamp, artifact[1]))
    if samples:
        start = samples[0].time if start is None else start
        end = samples[-1].time if end is None else max(end, samples[-1].time)
    return start, end, samples, crashes, cpu_s


def summarise_log(target: str, lines: Iterable[str], window_s: float = 3600.0) -> TargetSummary:
    start, end, samples, crashes, cpu_s = parse_log(lines)
    if not samples:
        raise ValueError(f"{target}: no libFuzzer status line in the log (not a campaign log, or the target "
                         "never started)")
    first = next((s for s in samples if s.kind == "INITED"), samples[0])
    last = samples[-1]
    after_init = samples[samples.index(first):]  # loading the corpus raises coverage too: that is not growth
    growth = [b.time for a, b in zip(after_init, after_init[1:]) if b.cov > a.cov or b.ft > a.ft]
    window_start = max(start, end - window_s)
    before = [s for s in samples if s.time <= window_start]
    # Coverage at the window's start is exact: libFuzzer prints a line whenever it grows, so the last line
    # before the start holds it. Executions are printed only with those lines and at powers of two, so the
    # count at the start is interpolated between the lines around it.
    base = before[-1] if before else first
    after = next((s for s in samples if s.time > window_start), None)
    executions_at_start = base.executions
    if before and after is not None and after.time > base.time:
        fraction = (window_start - base.time) / (after.time - base.time)
        executions_at_start = round(base.executions + fraction * (after.executions - base.executions))
    return TargetSummary(
        target=target, seconds=end - start, cpu_seconds=cpu_s, executions=last.executions,
        cov_start=first.cov, cov_end=max(s.cov for s in samples), ft_start=first.ft,
        ft_end=max(s.ft for s in samples), crashes=[path for _, path in crashes],
        last_growth_s=(growth[-1] - start) if growth else None,
        window_s=end - window_start, window_executions=last.executions - executions_at_start,
        window_cov_gain=max(s.cov for s in samples) - base.cov, window_ft_gain=max(s.ft for s in samples) - base.ft,
        window_crashes=[path for stamp, path in crashes if stamp >= window_start])


def format_table(summaries: Sequence[TargetSummary]) -> str:
    rows = [("target", "minutes", "CPU min", "executions", "cov (edges)", "ft (features)", "last growth", "crashes",
             "last-window: min", "executions", "+cov", "+ft", "crashes")]
    for s in summaries:
        growth = "-" if s.last_growth_s is None else f"{s.last_growth_s / 60:.1f} min"
        cpu = "-" if s.cpu_seconds is None else f"{s.cpu_seconds / 60:.1f}"
        rows.append((s.target, f"{s.seconds / 60:.1f}", cpu, f"{s.executions:,}", f"{s.cov_start} -> {s.cov_end}",
                     f"{s.ft_start} -> {s.ft_end}", growth, str(len(s.crashes)), f"{s.window_s / 60:.1f}",
                     f"{s.window_executions:,}", str(s.window_cov_gain), str(s.window_ft_gain),
                     str(len(s.window_crashes))))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    out = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    total = sum(s.executions for s in summaries)
    window = sum(s.window_executions for s in summaries)
    crashed = sum(len(s.window_crashes) for s in summaries)
    out.append(f"total: {total:,} executions; last window {window:,} executions, "
               f"{'no crash' if not crashed else f'{crashed} crash(es)'}")
    return "\n".join(out)


def _pump(process: subprocess.Popen, log: Path) -> None:
    with open(log, "a", encoding="utf-8", errors="replace") as out:
        for line in process.stdout:
            out.write(f"{time.time():.0f} {line}")
            out.flush()


def run(targets: Sequence[str], minutes: float, work: Path, nice: int, window_s: float) -> List[TargetSummary]:
    seconds = int(minutes * 60)
    (work / "logs").mkdir(parents=True, exist_ok=True)
    processes, pumps, logs = [], [], []
    for target in targets:
        corpus = work / "corpus" / target
        crashes = work / "crashes" / target
        corpus.mkdir(parents=True, exist_ok=True)
        crashes.mkdir(parents=True, exist_ok=True)
        log = work / "logs" / f"{target}-{time.strftime('%Y%m%d-%H%M%S')}.log"
        log.write_text(f"START {time.time():.0f} corpus {sum(1 for _ in corpus.iterdir())}\n")
        command = [sys.executable, str(HERE / "harness.py"), target, "--engine", "atheris", "--runs", "-1",
                   "--max-time", str(seconds), "--corpus-dir", str(corpus), "--crash-dir", str(crashes)]
        process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                   errors="replace", preexec_fn=(lambda: os.nice(nice)) if nice else None)
        pump = threading.Thread(target=_pump, args=(process, log), daemon=True)
        pump.start()
        processes.append(process)
        pumps.append(pump)
        logs.append((target, log))
        print(f"{target}: pid {process.pid}, log {log}", flush=True)
    # libFuzzer stops itself at -max_total_time; the margin covers loading a large corpus
    deadline = threading.Timer(seconds + 600, lambda: [p.terminate() for p in processes])
    deadline.start()
    cpu_seconds = {}
    try:
        for process in processes:
            # wait4, not wait: each target's own CPU time says how much fuzzing a niced run really got
            _, status, usage = os.wait4(process.pid, 0)
            process.returncode = os.waitstatus_to_exitcode(status)
            cpu_seconds[process.pid] = usage.ru_utime + usage.ru_stime
    except KeyboardInterrupt:
        for process in processes:
            process.terminate()
    deadline.cancel()
    for pump in pumps:
        pump.join(timeout=30)
    for (target, log), process in zip(logs, processes):
        with open(log, "a") as out:
            cpu = cpu_seconds.get(process.pid)
            out.write(f"END {time.time():.0f} rc={process.returncode}"
                      f"{'' if cpu is None else f' cpu={cpu:.0f}'}\n")
    return [summarise_log(target, log.read_text().splitlines(), window_s) for target, log in logs]


def _target_of(log: Path) -> str:
    return log.name.split("-")[0].split(".")[0]


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run_p = sub.add_parser("run", help="fuzz the targets side by side, then summarise")
    run_p.add_argument("--targets", nargs="+", choices=TARGETS, default=list(TARGETS))
    run_p.add_argument("--minutes", type=float, default=60.0, help="wall time of each target (default 60)")
    run_p.add_argument("--work", type=Path, default=DEFAULT_WORK, help=f"corpus, crashes, logs (default {DEFAULT_WORK})")
    run_p.add_argument("--nice", type=int, default=19, help="CPU niceness of the fuzzers (default 19)")
    sum_p = sub.add_parser("summarise", help="summarise the logs of a campaign")
    sum_p.add_argument("logs", nargs="+", type=Path, help="<target>-*.log files written by run")
    sum_p.add_argument("--json", action="store_true")
    for p in (run_p, sum_p):
        p.add_argument("--window-minutes", type=float, default=60.0, help="the last window reported (default 60)")
    args = parser.parse_args(argv)
    window_s = args.window_minutes * 60
    if args.command == "run":
        summaries = run(args.targets, args.minutes, args.work, args.nice, window_s)
        print(format_table(summaries))
    else:
        try:
            summaries = [summarise_log(_target_of(log), log.read_text(errors="replace").splitlines(), window_s)
                         for log in args.logs]
        except (OSError, ValueError) as exc:
            print(f"campaign.py: {exc}", file=sys.stderr)
            return 2
        print(json.dumps([asdict(s) for s in summaries], indent=1) if args.json else format_table(summaries))
    return 0 if all(not s.crashes for s in summaries) else 1


if __name__ == "__main__":
    sys.exit(main())
