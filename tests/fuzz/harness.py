"""Fuzzing detconvert's readers: any input either loads or raises a ``DetconvertError`` naming the file.

Targets (one reader path each; seeds in ``tests/fuzz/corpus/<target>/``, written by ``make_seeds.py``):

=========  ======================================================================================
weights    the bytes as a weight file: ``load_weights`` (restricted unpickler, sniffing, embedded cfg),
           then ``inspect_weights`` and both of its outputs (text and ``--json``)
cfg        the bytes as the cfg text embedded in a Detectron detector pickle (Python-2 str): the
           embedded-cfg YAML reader via ``load_weights`` + ``inspect_weights``, then
           ``translate_config(the pickle)`` + ``build_spec`` + ``explain`` + ``to_yaml`` (merger/translator)
config     the bytes as a user's Detectron YAML file: ``translate_config`` + ``build_spec`` + ``explain``
proposals  the bytes as a proposal file (``.json`` when it starts like JSON, else a pickle):
           ``read_proposals`` and ``file_proposal_source`` (ids matched to an image name)
=========  ======================================================================================

Engines: ``atheris`` (coverage-guided libFuzzer; ``pip install -e '.[fuzz]'``) or ``random`` (seeded byte
mutations of the seeds, no coverage feedback; used when atheris is not installed). Any other exception,
or a ``DetconvertError`` whose message lacks the file name, is a crash: atheris stops and writes the input
to ``--crash-dir``; the random engine writes it there too and exits 1.

    python tests/fuzz/harness.py weights --runs 20000 --seed 1            # atheris when installed
    python tests/fuzz/harness.py cfg --engine random --runs 2000 --seed 1
    python tests/fuzz/harness.py weights -- -max_total_time=900           # extra libFuzzer flags after --
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import resource
import signal
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Callable, Dict, List

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
CORPUS = HERE / "corpus"
TARGETS = ("weights", "cfg", "config", "proposals")
#: One input may take this long before it counts as a hang (the readers answer in milliseconds).
INPUT_TIMEOUT_S = 10

try:
    import atheris
except ImportError:  # the random engine needs nothing beyond the project
    atheris = None


#: Memory one input may take (libFuzzer's -rss_limit_mb), on top of what the process inherited (below).
RSS_BUDGET_MB = 2048


# libFuzzer checks getrusage().ru_maxrss, and Linux carries a parent's peak over fork + exec: started from a
# pytest process that holds 2.5 GB of models, the harness reads as 2.5 GB before its first input and every
# run ends in a false out-of-memory. So the budget counts from the peak this process started with, read
# here, before anything large is imported (kilobytes on Linux).
_STARTING_PEAK_MB = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024


def rss_limit_mb(budget_mb: int = RSS_BUDGET_MB) -> int:
    """libFuzzer's ``-rss_limit_mb``: ``budget_mb`` above the peak RSS this process started with."""
    return budget_mb + _STARTING_PEAK_MB


class InvariantBroken(AssertionError):
    """A ``DetconvertError`` whose one-line message does not name the file it is about."""


def _import_readers() -> Dict[str, Callable]:
    # Inside instrument_imports when atheris runs, so that detconvert's and PyYAML's branches guide it.
    from detconvert.config import build_spec, explain, translate_config
    from detconvert.errors import DetconvertError
    from detconvert.inference.proposals import file_proposal_source, read_proposals
    from detconvert.inspect.report import inspect_weights
    from detconvert.io.py2_pickle_writer import Py2PickleWriter
    from detconvert.io.weights import load_weights

    import numpy as np

    def inspect(path: Path):
        report = inspect_weights(load_weights(path))
        report.format_text()
        json.dumps(report.to_dict())
        return report

    def weights(path: Path) -> None:
        inspect(path)

    def cfg(path: Path) -> None:
        report = inspect(path)
        if report.cfg_summary is not None:
            translated = translate_config(path)
            explain(build_spec(translated.cfg, translated.source))
            translated.to_yaml()

    def config(path: Path) -> None:
        translated = translate_config(path)
        explain(build_spec(translated.cfg, translated.source))
        translated.to_yaml()

    def proposals(path: Path) -> None:
        read_proposals(path)
        file_proposal_source(path, [Path("000000397133.jpg")])

    blob = {"conv1_w": np.ones((2, 3, 1, 1), np.float32)}  # no cls_score: NUM_CLASSES comes from the cfg

    def write_cfg_pickle(handle, data: bytes) -> None:
        Py2PickleWriter(handle).dump({"blobs": blob, "cfg": data.decode("latin1")})

    return dict(weights=weights, cfg=cfg, config=config, proposals=proposals, DetconvertError=DetconvertError,
                write_cfg_pickle=write_cfg_pickle)


class Target:
    """One fuzz target: writes each input where its reader expects a file, runs it, checks the invariant."""

    def __init__(self, name: str, readers: Dict[str, Callable], workdir: Path):
        self.name = name
        self.check = readers[name]
        self.error_type = readers["DetconvertError"]
        self.write_cfg_pickle = readers["write_cfg_pickle"]
        self.workdir = workdir

    def path_for(self, data: bytes) -> Path:
        if self.name == "proposals":
            return self.workdir / ("proposals.json" if data.lstrip()[:1] in (b"{", b"[") else "proposals.pkl")
        return self.workdir / {"weights": "model_final.pkl", "cfg": "model_final.pkl", "config": "config.yaml"}[
            self.name]

    def __call__(self, data: bytes) -> None:
        path = self.path_for(data)
        with open(path, "wb") as handle:
            if self.name == "cfg":
                self.write_cfg_pickle(handle, data)
            else:
                handle.write(data)
        try:
            self.check(path)
        except self.error_type as exc:
            if str(path) not in str(exc):
                raise InvariantBroken(f"{type(exc).__name__} does not name the file: {exc}") from exc


def seeds(name: str) -> List[bytes]:
    return [p.read_bytes() for p in sorted((CORPUS / name).iterdir()) if p.is_file()]


# ---------------------------------------------------------------------------------------------------
# the random engine: seeded structure-blind mutations (no coverage feedback)

_INTERESTING = [0, 1, 0x7F, 0x80, 0xFF, 0x7FFF, 0x8000, 0xFFFF, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, 1 << 40]


def _tokens(name: str) -> List[bytes]:
    path = HERE / f"{'pickle' if name in ('weights', 'proposals') else 'yaml'}.dict"
    out = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if line.startswith('"') and line.endswith('"'):
            out.append(line[1:-1].encode("latin1").decode("unicode_escape").encode("latin1"))
    return out


def mutate(data: bytes, rng: random.Random, pool: List[bytes], tokens: List[bytes]) -> bytes:
    buf = bytearray(data)
    for _ in range(rng.randint(1, 6)):
        op = rng.randrange(8)
        pos = rng.randrange(len(buf) + 1)
        if op == 0 and buf:  # flip a bit
            i = rng.randrange(len(buf))
            buf[i] ^= 1 << rng.randrange(8)
        elif op == 1 and buf:  # random byte
            buf[rng.randrange(len(buf))] = rng.randrange(256)
        elif op == 2:  # an interesting little-endian integer
            width = rng.choice((1, 2, 4, 8))
            value = rng.choice(_INTERESTING) & ((1 << (8 * width)) - 1)
            buf[pos:pos + width] = value.to_bytes(width, "little")
        elif op == 3 and buf:  # delete a chunk
            buf[pos:pos + rng.randint(1, 64)] = b""
        elif op == 4 and buf:  # duplicate a chunk
            start = rng.randrange(len(buf))
            chunk = buf[start:start + rng.randint(1, 256)]
            buf[pos:pos] = chunk * rng.randint(1, 4)
        elif op == 5:  # a format token (opcode, global name, YAML tag/anchor)
            buf[pos:pos] = rng.choice(tokens)
        elif op == 6:  # splice with another seed
            other = rng.choice(pool)
            cut = rng.randrange(len(other) + 1)
            buf[pos:] = other[cut:]
        elif op == 7 and buf:  # truncate
            del buf[pos:]
    return bytes(buf)


class _Hang(Exception):
    pass


def _alarm(signum, frame):
    raise _Hang(f"one input ran longer than {INPUT_TIMEOUT_S} s")


def _signature(exc: BaseException) -> str:
    """Exception type and the innermost frame in detconvert (or the innermost frame): one per bug."""
    frames = traceback.extract_tb(exc.__traceback__)
    ours = [f for f in frames if "/detconvert/" in f.filename] or frames
    where = f"{Path(ours[-1].filename).name}:{ours[-1].lineno}" if ours else "?"
    return f"{type(exc).__name__} at {where}"


def run_random(target: Target, runs: int, seed: int, max_time: float, crash_dir: Path,
               keep_going: bool = False) -> int:
    """``keep_going``: record each distinct crash (by :func:`_signature`) and go on (triage runs)."""
    rng = random.Random(seed)
    found: Dict[str, int] = {}
    pool = seeds(target.name)
    tokens = _tokens(target.name)
    signal.signal(signal.SIGALRM, _alarm)
    start = time.monotonic()
    done = 0
    for done in range(1, runs + 1):
        data = rng.choice(pool) if done <= len(pool) else mutate(rng.choice(pool), rng, pool, tokens)
        signal.alarm(INPUT_TIMEOUT_S)
        try:
            target(data)
        except BaseException as exc:  # noqa: B902 - every escape is the finding
            signal.alarm(0)
            if isinstance(exc, KeyboardInterrupt):
                raise
            signature = _signature(exc)
            found[signature] = found.get(signature, 0) + 1
            if found[signature] == 1:
                crash_dir.mkdir(parents=True, exist_ok=True)
                out = crash_dir / f"crash-{target.name}-{hashlib.sha1(data).hexdigest()}"
                out.write_bytes(data)
                traceback.print_exc()
                print(f"CRASH after {done} executions: {type(exc).__name__}: {str(exc)[:300]}; input written to {out}")
            if not keep_going:
                return 1
        signal.alarm(0)
        if time.monotonic() - start > max_time:
            break
    elapsed = time.monotonic() - start
    print(f"random engine: {done} executions of {target.name} in {elapsed:.1f} s, "
          f"{sum(found.values())} crashing input(s), {len(found)} distinct")
    for signature, count in sorted(found.items(), key=lambda kv: -kv[1]):
        print(f"  {count:6d}  {signature}")
    return 1 if found else 0


# ---------------------------------------------------------------------------------------------------


def main(argv: List[str]) -> int:
    split = argv.index("--") if "--" in argv else len(argv)
    own, libfuzzer = argv[:split], argv[split + 1:]
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("target", choices=TARGETS)
    parser.add_argument("--engine", choices=("atheris", "random"), default="atheris" if atheris else "random")
    parser.add_argument("--runs", type=int, default=10000, help="executions (atheris: -runs; -1: unbounded)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--max-time", type=float, default=110.0, help="seconds, a cap on top of --runs")
    parser.add_argument("--crash-dir", type=Path, default=Path(tempfile.gettempdir()) / "detconvert-fuzz-crashes")
    parser.add_argument("--keep-going", action="store_true", help="random engine: list every distinct crash")
    parser.add_argument("--corpus-dir", type=Path, help="atheris: where new inputs go (default: a temp folder)")
    parser.add_argument("--rss-budget-mb", type=int, default=RSS_BUDGET_MB,
                        help=f"atheris: memory an input may take above the starting peak (default {RSS_BUDGET_MB})")
    args = parser.parse_args(own)
    if args.engine == "atheris" and atheris is None:
        parser.error("atheris is not installed (pip install -e '.[fuzz]'), use --engine random")

    workdir = Path(tempfile.mkdtemp(prefix="detconvert-fuzz-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None))
    if args.engine == "random":
        target = Target(args.target, _import_readers(), workdir)
        return run_random(target, args.runs if args.runs > 0 else 1 << 62, args.seed, args.max_time, args.crash_dir,
                          args.keep_going)

    with atheris.instrument_imports(include=["detconvert", "yaml"]):
        readers = _import_readers()
    target = Target(args.target, readers, workdir)
    corpus = args.corpus_dir or Path(tempfile.mkdtemp(prefix=f"detconvert-corpus-{args.target}-"))
    corpus.mkdir(parents=True, exist_ok=True)
    args.crash_dir.mkdir(parents=True, exist_ok=True)
    dict_file = HERE / f"{'pickle' if args.target in ('weights', 'proposals') else 'yaml'}.dict"
    flags = [f"-runs={args.runs}", f"-seed={args.seed}", f"-max_total_time={int(args.max_time)}",
             f"-timeout={INPUT_TIMEOUT_S}", f"-rss_limit_mb={rss_limit_mb(args.rss_budget_mb)}", f"-dict={dict_file}",
             f"-artifact_prefix={args.crash_dir}/crash-{args.target}-", "-print_final_stats=1", *libfuzzer,
             str(corpus), str(CORPUS / args.target)]
    atheris.Setup([sys.argv[0], *flags], target)
    atheris.Fuzz()
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main(sys.argv[1:]))
