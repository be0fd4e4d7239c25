"""Hostile FASTA: one chromosome on a single line. Index time and peak memory of open_genome.

A line-at-a-time indexer (pyfaidx's, samtools' in Python form) holds the whole
line in memory; genoembed's streamed indexer must not. Writes a seeded
single-line record (plus a short wrapped one after it, to check offsets) in
fixed-size pieces, then opens it in a fresh process with an empty cache and
reports wall time and peak RSS (VmHWM, Linux) above the process's RSS after imports.
Correctness first: the .fai row and slices at random positions (regenerated
from the seed, never held whole) must match. Prints one JSON line.

    python benchmarks/fasta_single_line.py --size small     # 10 Mbp
    python benchmarks/fasta_single_line.py --size large --compare-pyfaidx   # 1 Gbp, and pyfaidx's own build
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SIZES = {"small": 10_000_000, "medium": 100_000_000, "large": 1_000_000_000}
PIECE = 1 << 23  # bases generated (and written) at a time
LETTERS = np.frombuffer(b"ACGTACGTACGTacgN", dtype=np.uint8)
HEADER = b">chr1 one line\n"
TAIL = b">tail\nACGTACGTAC\nGGCC\n"


def piece(seed: int, index: int, length: int) -> bytes:
    """Bases ``[index * PIECE, ...)`` of the long record, the same every time they are asked for."""
    size = min(PIECE, length - index * PIECE)
    return LETTERS[np.random.default_rng([seed, index]).integers(0, 16, size)].tobytes()


def bases(seed: int, length: int, start: int, end: int) -> str:
    first, last = start // PIECE, (end - 1) // PIECE
    joined = b"".join(piece(seed, i, length) for i in range(first, last + 1))
    return joined[start - first * PIECE:end - first * PIECE].decode()


def write(path: Path, length: int, seed: int) -> float:
    began = time.perf_counter()
    with open(path, "wb") as handle:
        handle.write(HEADER)
        for index in range(-(-length // PIECE)):
            handle.write(piece(seed, index, length))
        handle.write(b"\n" + TAIL)
    return time.perf_counter() - began


def _status_mib(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status (Linux only)")


def reset_peak_rss() -> float:
    """Current RSS (MiB), after resetting the kernel's peak-RSS mark to it (ru_maxrss cannot be reset)."""
    Path("/proc/self/clear_refs").write_text("5")
    return _status_mib("VmRSS")


def peak_rss_mib() -> float:
    return _status_mib("VmHWM")


def measure_genoembed(path: Path, length: int, seed: int) -> dict:
    """In this (fresh) process: open twice (build, then cached), check, report seconds and RSS growth.

    Both opens checksum the file; the index build is their difference.
    """
    from genoembed.genome import cache_dir, file_checksum, open_genome

    baseline = reset_peak_rss()
    began = time.perf_counter()
    checksum = file_checksum(path)
    checksum_s = time.perf_counter() - began
    began = time.perf_counter()
    genome = open_genome(path)
    open_s = time.perf_counter() - began
    began = time.perf_counter()
    open_genome(path)
    reopen_s = time.perf_counter() - began
    slices = [genome.fetch("chr1", start, start + 1000) for start in (0, length // 2, length - 1000)]
    growth = peak_rss_mib() - baseline  # before the checks below, whose oracle regenerates whole pieces
    assert all(len(s) == 1000 for s in slices)
    fai = next((cache_dir() / "fai").glob(f"{checksum}*.fai")).read_text().splitlines()
    assert fai[0] == f"chr1\t{length}\t{len(HEADER)}\t{length}\t{length + 1}", fai[0]
    assert genome.contigs == {"chr1": length, "tail": 14}
    assert genome.fetch("tail", 0, 14) == "ACGTACGTACGGCC"
    rng = random.Random(seed)
    checks = [length - 1000] + [rng.randrange(length - 5000) for _ in range(50)]
    for start in checks:
        end = min(length, start + rng.randrange(1, 5000))
        assert genome.fetch("chr1", start, end) == bases(seed, length, start, end), (start, end)
    return {"checksum_s": round(checksum_s, 2), "open_s": round(open_s, 2), "index_s": round(open_s - reopen_s, 2),
            "reopen_s": round(reopen_s, 2), "fetches_checked": len(checks),
            "baseline_rss_mib": round(baseline), "peak_rss_growth_mib": round(growth, 1)}


def measure_pyfaidx(path: Path) -> dict:
    """pyfaidx building its own index of the same file: what open_genome did before."""
    import pyfaidx

    baseline = reset_peak_rss()
    began = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        pyfaidx.Faidx(str(path), indexname=str(Path(folder) / "x.fai")).close()
    return {"pyfaidx_index_s": round(time.perf_counter() - began, 2),
            "pyfaidx_peak_rss_growth_mib": round(peak_rss_mib() - baseline, 1)}


def in_child(*arguments: str) -> dict:
    """Run this script's ``--child`` mode in a fresh process with an empty cache; its JSON line."""
    with tempfile.TemporaryDirectory() as cache:
        result = subprocess.run([sys.executable, __file__, "--child", *arguments], check=True, capture_output=True,
                                text=True, env={**os.environ, "GENOEMBED_CACHE": cache})
    return json.loads(result.stdout.splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=SIZES, default="small")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()))
    parser.add_argument("--compare-pyfaidx", action="store_true", help="also time pyfaidx's own index build")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        mode, path, length = args.child[0], Path(args.child[1]), int(args.child[2])
        result = measure_genoembed(path, length, args.seed) if mode == "genoembed" else measure_pyfaidx(path)
        print(json.dumps(result))
        return
    length = SIZES[args.size]
    path = args.workdir / f"single-line-{args.size}.fa"
    try:
        write_s = write(path, length, args.seed)
        result = {"benchmark": "fasta_single_line", "size": args.size, "bases": length,
                  "file_mib": round(path.stat().st_size / 2**20), "write_s": round(write_s, 2),
                  **in_child("genoembed", str(path), str(length))}
        if args.compare_pyfaidx:
            result.update(in_child("pyfaidx", str(path), str(length)))
    finally:
        path.unlink(missing_ok=True)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
