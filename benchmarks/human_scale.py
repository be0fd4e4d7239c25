"""Human-size store (issue 24): build, a whole-chromosome query and joins at the size of a human genome.

A synthetic genome of 24 contigs with the lengths of GRCh38's chromosomes clipped to 50-250 Mbp (3.09 Gbp at
``large``; ``medium`` = 1/10, ``small`` = 1/100), random sequence with GC varying by 100 kb block and
interspersed copies (5-15 % diverged) of 200 repeat families, written as bgzip. Steps, each in a fresh
``genoembed`` process (wall time and peak RSS of the child):

1. ``index`` with the default model, 1 kb tiles every 500 bp, IVF-PQ with a float16 refine stage (recall@10
   tuned to 0.95 at build); disk of the store and of its sequence copy.
2. ``search --region chr1`` (the whole contig: answered tile by tile): every tile's top hit; the share that
   is the tile itself is checked, and peak RSS must stay far below the ~100 B/base of embedding the contig whole.
3. ``annotate`` a synthetic GTF (genes, transcripts, exons), then ``search --bed`` of 10^4 random 1 kb regions,
   k = 10; the hits' overlap and nearest joins (``hit_features`` / ``hit_nearest``) must give the same
   (hit, feature, bp / distance) rows as ``bedtools intersect -wo`` / ``closest -D b -t all`` over the stored
   annotations' parts.

Prints one JSON line per size after each step (``done``: index, whole-chromosome query, all), so a run stopped
early still reports what it measured.

    .venv/bin/python benchmarks/human_scale.py small medium      # large: ~1-2 h on 2 shared cores
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from genoembed.genome import write_bgzf_blocks  # noqa: E402
from genoembed.tiles import tile_starts  # noqa: E402

# GRCh38 chromosome lengths in Mbp (chr1-22, X, Y), chr21 raised to the 50 Mbp floor
HUMAN_MBP = [248.96, 242.19, 198.30, 190.21, 181.54, 170.81, 159.35, 145.14, 138.39, 133.80, 135.09, 133.28,
             114.36, 107.04, 101.99, 90.34, 83.26, 80.37, 58.62, 64.44, 50.00, 50.82, 156.04, 57.23]
NAMES = [f"chr{n}" for n in range(1, 23)] + ["chrX", "chrY"]
SCALES = {"small": 0.01, "medium": 0.1, "large": 1.0}
FACTORIES = {"small": "IVF256,PQ32,Refine(SQfp16)", "medium": "IVF1024,PQ32,Refine(SQfp16)",
             "large": "IVF4096,PQ32,Refine(SQfp16)"}
BASES = np.frombuffer(b"ACGT", dtype=np.uint8)
LINE = 60
QUERIES, K = 10_000, 10
# nprobe of the two searches: a tile's own vector sits in the lists probed first, and the joins take any hits,
# so these measure memory and join rows, not recall (the build's tuned setting is recorded as ``tuned``)
NPROBE = 16


def contig_lengths(size: str) -> dict[str, int]:
    return {name: int(mbp * 1e6 * SCALES[size]) for name, mbp in zip(NAMES, HUMAN_MBP)}


def write_genome(path: Path, lengths: dict[str, int], seed: int = 24) -> None:
    """Random sequence, GC by 100 kb block, with diverged repeat copies every ~20 kb; BGZF, 60 bases a line."""
    write_bgzf_blocks(path, genome_text(lengths, seed))


def genome_text(lengths: dict[str, int], seed: int):
    rng = np.random.default_rng(seed)
    families = [BASES[rng.integers(0, 4, int(rng.integers(200, 6000)), dtype=np.uint8)] for _ in range(200)]
    block = 1_000_020  # 100 kb GC blocks, a whole number of lines
    for name, length in lengths.items():
        yield f">{name}\n".encode()
        for first in range(0, length, block):
            size = min(block, length - first)
            gc = rng.uniform(0.35, 0.6, size // 100_000 + 1).repeat(100_000)[:size]
            strong = rng.random(size) < gc
            pick = rng.integers(0, 2, size, dtype=np.uint8)
            chunk = np.where(strong, np.where(pick, BASES[1], BASES[2]), np.where(pick, BASES[0], BASES[3]))
            for at in range(int(rng.integers(0, 20_000)), size - 6000, 20_000):
                copy = families[int(rng.integers(0, len(families)))].copy()
                mutated = rng.random(len(copy)) < rng.uniform(0.05, 0.15)
                copy[mutated] = BASES[rng.integers(0, 4, int(mutated.sum()), dtype=np.uint8)]
                chunk[at:at + len(copy)] = copy
            yield lines(chunk.astype(np.uint8))


def lines(chunk: np.ndarray) -> bytes:
    """FASTA lines of ``chunk`` (a contig's last chunk may end with a short line; others are whole lines)."""
    whole = len(chunk) // LINE * LINE
    text = np.hstack([chunk[:whole].reshape(-1, LINE), np.full((whole // LINE, 1), 10, np.uint8)]).tobytes()
    return text + (chunk[whole:].tobytes() + b"\n" if whole < len(chunk) else b"")


def write_gtf(path: Path, lengths: dict[str, int], seed: int = 25) -> int:
    """Genes every ~40 kb (each 1-3 transcripts of 2-8 exons within 5-80 kb); returns the line count."""
    rng = np.random.default_rng(seed)
    count = 0
    with open(path, "w") as handle:
        for name, length in lengths.items():
            lines = []
            for number, start in enumerate(range(int(rng.integers(1, 40_000)), length - 90_000, 40_000)):
                span = int(rng.integers(5_000, 80_000))
                strand = "+-"[int(rng.integers(0, 2))]
                gene = f"{name}_g{number}"
                ids = f'gene_id "{gene}"; gene_name "{gene}";'
                lines.append(f"{name}\tsynthetic\tgene\t{start + 1}\t{start + span}\t.\t{strand}\t.\t{ids}")
                for isoform in range(int(rng.integers(1, 4))):
                    transcript = f"{gene}.t{isoform}"
                    cuts = np.sort(rng.choice(np.arange(1, span // 100), size=int(rng.integers(2, 9)) * 2,
                                              replace=False)) * 100
                    exons = cuts.reshape(-1, 2)
                    first, last = start + int(exons[0, 0]), start + int(exons[-1, 1])
                    tid = f'{ids} transcript_id "{transcript}";'
                    lines.append(f"{name}\tsynthetic\ttranscript\t{first + 1}\t{last}\t.\t{strand}\t.\t{tid}")
                    for exon, (a, b) in enumerate(exons):
                        lines.append(f"{name}\tsynthetic\texon\t{start + int(a) + 1}\t{start + int(b)}\t.\t{strand}\t.\t"
                                     f'{tid} exon_id "{transcript}.e{exon}";')
            handle.write("".join(line + "\n" for line in lines))
            count += len(lines)
    return count


def run_child(*arguments: str, stdout: Path = Path(os.devnull)) -> tuple[float, float]:
    """(wall s, peak RSS MiB) of ``python -m genoembed ARGUMENTS`` in a fresh process (its own rusage, from wait4)."""
    began = time.perf_counter()
    with open(stdout, "w") as sink, open(f"{stdout}.stderr" if stdout != Path(os.devnull) else os.devnull, "w") as err:
        child = subprocess.Popen([sys.executable, "-m", "genoembed", *arguments], stdout=sink, stderr=err,
                                 env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)})
        _, status, usage = os.wait4(child.pid, 0)
    if status:
        raise SystemExit(f"`genoembed {' '.join(arguments)}` failed (status {status})")
    return time.perf_counter() - began, usage.ru_maxrss / 1024


def disk(path: Path) -> int:
    return sum(item.stat().st_size for item in path.rglob("*") if item.is_file())


def build(size: str, workdir: Path, record: dict) -> Path:
    lengths = contig_lengths(size)
    fasta, store = workdir / f"{size}.fa.gz", workdir / f"{size}-store"
    began = time.perf_counter()
    write_genome(fasta, lengths)
    record.update(bp=sum(lengths.values()), contigs=len(lengths), fasta_bgzip_bytes=fasta.stat().st_size,
                  write_genome_s=round(time.perf_counter() - began, 1))
    seconds, peak = run_child("index", "--fasta", str(fasta), "--output", str(store), "--window", "1000",
                              "--stride", "500", "--factory", FACTORIES[size], "--format", "json", "--overwrite",
                              stdout=workdir / "index.json")
    summary = json.loads((workdir / "index.json").read_text().strip().splitlines()[-1])
    manifest = json.loads((store / "manifest.json").read_text())
    record.update(tiles=summary["tiles"], factory=FACTORIES[size], index_s=round(seconds, 1),
                  index_peak_rss_mb=round(peak), store_bytes=disk(store), sequence_copy_bytes=disk(store / "sequences"),
                  shard_bytes=disk(store / "shards"), index_bytes=disk(store / "index"),
                  tuned=manifest["index"].get("search"))
    tuned = record["tuned"] or {}
    if tuned.get("recall_at_10", 0) < tuned.get("target", 0.95):
        raise SystemExit(f"{size}: the build tuned {FACTORIES[size]} to recall@10 {tuned.get('recall_at_10')} on "
                         f"held-out windows, below its target {tuned.get('target', 0.95)}")
    return store


def whole_chromosome(size: str, store: Path, workdir: Path, record: dict) -> None:
    output = workdir / f"{size}-chr1.tsv"
    length = contig_lengths(size)["chr1"]
    seconds, peak = run_child("search", str(store), "--region", "chr1", "-k", "1", "--tiles", "--no-annotate",
                              "--nprobe", str(NPROBE), "-f", "tsv", "-o", str(output), "--no-save", "-q")
    import pyarrow.csv as csv

    hits = csv.read_csv(output, parse_options=csv.ParseOptions(delimiter="\t")).to_pydict()
    pieces = len(tile_starts(length, 1000, 500))
    if len(hits["query"]) != pieces:
        raise SystemExit(f"{size}: chr1 gave {len(hits['query'])} hit rows, expected one per tile ({pieces})")
    itself = np.mean([s == qs and c == "chr1" for s, qs, c in zip(hits["start"], hits["query_start"], hits["chrom"])])
    if itself < 0.9:
        raise SystemExit(f"{size}: only {itself:.3f} of chr1's tiles found themselves first")
    whole_gib = 100 * length / 2**30  # ~100 B/base to embed the contig as one sequence (issue 24's figure)
    if peak / 1024 > max(2.0, whole_gib / 4):
        raise SystemExit(f"{size}: whole-chr1 query peaked at {peak:.0f} MiB, not bounded")
    record.update(chr1_bp=length, chr1_query_tiles=pieces, chr1_query_s=round(seconds, 1),
                  chr1_query_peak_rss_mb=round(peak), chr1_self_hit=round(float(itself), 4),
                  chr1_as_one_sequence_gib=round(whole_gib, 1))


def joins(size: str, store: Path, workdir: Path, record: dict) -> None:
    import duckdb

    from genoembed.sql import run_sql
    from genoembed.store import Store

    lengths = contig_lengths(size)
    gtf = workdir / f"{size}.gtf"
    record["gtf_lines"] = write_gtf(gtf, lengths)
    seconds, peak = run_child("annotate", str(store), str(gtf), "--name", "genes")
    record.update(annotate_s=round(seconds, 1), annotate_peak_rss_mb=round(peak))
    rng = np.random.default_rng(26)
    names, weights = list(lengths), np.array(list(lengths.values()), dtype=float)
    chosen = rng.choice(len(names), QUERIES, p=weights / weights.sum())
    with open(workdir / "queries.bed", "w") as handle:
        for number, contig in enumerate(chosen):
            start = int(rng.integers(0, lengths[names[contig]] - 1000))
            handle.write(f"{names[contig]}\t{start}\t{start + 1000}\tq{number}\n")
    seconds, _ = run_child("search", str(store), "--bed", str(workdir / "queries.bed"), "-k", str(K), "--tiles",
                           "--no-annotate", "--nprobe", str(NPROBE), "-f", "tsv", "-o", os.devnull, "--name", "q", "-q")
    record["bed_search_s"] = round(seconds, 1)
    opened = Store.open(store)
    began = time.perf_counter()
    ours_overlap = run_sql(opened, "SELECT query || '|' || rank AS hit, feature_feature_id AS feature, overlap_bp "
                                   "AS measure FROM hit_features_q", timeout=None)
    ours_nearest = run_sql(opened, "SELECT query || '|' || rank AS hit, feature_feature_id AS feature, "
                                   "abs(distance) AS measure FROM hit_nearest_q", timeout=None)
    record["join_s"] = round(time.perf_counter() - began, 2)
    hits = run_sql(opened, "SELECT chrom, start, \"end\", query || '|' || rank AS hit, 0 AS score, strand "
                           "FROM hits_q ORDER BY chrom, start", timeout=None)
    parts = run_sql(opened, "SELECT chrom, coalesce(p.start, a.start) AS start, coalesce(p.\"end\", a.\"end\") AS "
                            "\"end\", feature_id, 0 AS score, coalesce(p.strand, a.strand) AS strand FROM annotations a "
                            "LEFT JOIN LATERAL (SELECT unnest(a.parts) AS p) ON true ORDER BY 1, 2", timeout=None)
    con = duckdb.connect()
    for name, table in (("hits", hits), ("parts", parts), ("ours_overlap", ours_overlap),
                        ("ours_nearest", ours_nearest)):
        con.register(name, table)
    for name in ("hits", "parts"):
        con.execute(f"COPY {name} TO '{workdir / name}.bed' (FORMAT csv, DELIMITER '\t', HEADER false)")
    began = time.perf_counter()
    with open(workdir / "intersect.txt", "w") as sink:
        subprocess.run(["bedtools", "intersect", "-a", workdir / "hits.bed", "-b", workdir / "parts.bed", "-wo",
                        "-sorted"], stdout=sink, check=True)
    with open(workdir / "closest.txt", "w") as sink:
        subprocess.run(["bedtools", "closest", "-a", workdir / "hits.bed", "-b", workdir / "parts.bed", "-D", "b",
                        "-t", "all"], stdout=sink, check=True)
    record["bedtools_s"] = round(time.perf_counter() - began, 2)
    read = "read_csv('{}', delim='\t', header=false, all_varchar=true)"
    theirs_overlap = (f"SELECT column03 AS hit, column09 AS feature, CAST(sum(CAST(column12 AS BIGINT)) AS VARCHAR) "
                      f"AS measure FROM {read.format(workdir / 'intersect.txt')} GROUP BY 1, 2")
    theirs_nearest = (f"SELECT DISTINCT column03 AS hit, column09 AS feature, CAST(abs(CAST(column12 AS BIGINT)) AS "
                      f"VARCHAR) AS measure FROM {read.format(workdir / 'closest.txt')} WHERE column09 <> '.'")
    for join, theirs, ours in (("overlap", theirs_overlap, "ours_overlap"), ("nearest", theirs_nearest, "ours_nearest")):
        ours = f"SELECT hit, feature, CAST(measure AS VARCHAR) FROM {ours}"
        rows = con.execute(f"SELECT count(*) FROM ({ours})").fetchall()[0][0]
        differ = con.execute(f"SELECT (SELECT count(*) FROM ({theirs} EXCEPT ALL {ours})) + "
                             f"(SELECT count(*) FROM ({ours} EXCEPT ALL {theirs}))").fetchall()[0][0]
        if differ:
            raise SystemExit(f"{size}: {differ} of {rows} {join} rows differ from bedtools")
        record[f"{join}_rows"] = rows
    record.update(hits=hits.num_rows, feature_parts=parts.num_rows, checked_against="bedtools " + subprocess.run(
        ["bedtools", "--version"], capture_output=True, text=True).stdout.split()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sizes", nargs="*", default=["small"], choices=list(SCALES))
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/genoembed-human-scale"))
    parser.add_argument("--reuse-store", action="store_true", help="keep a store this script built before (its "
                        "build figures are in that run's first JSON line) and measure the query and joins on it")
    options = parser.parse_args()
    if not shutil.which("bedtools"):
        raise SystemExit("bedtools is needed (the joins' oracle)")
    for size in options.sizes:
        workdir = options.workdir / size
        reuse = options.reuse_store and (workdir / f"{size}-store" / "manifest.json").is_file()
        if not reuse:
            shutil.rmtree(workdir, ignore_errors=True)
            workdir.mkdir(parents=True)
        record = {"benchmark": "human_scale", "size": size, "date": dt.date.today().isoformat(),
                  "machine": f"{platform.machine()} {os.cpu_count()} cpus", "python": platform.python_version()}
        began = time.perf_counter()
        store = workdir / f"{size}-store" if reuse else build(size, workdir, record)
        print(json.dumps({**record, "done": "index", "reused_store": reuse}), flush=True)  # figures so far
        whole_chromosome(size, store, workdir, record)
        print(json.dumps({**record, "done": "whole-chromosome query"}), flush=True)
        joins(size, store, workdir, record)
        record["total_s"] = round(time.perf_counter() - began, 1)
        print(json.dumps({**record, "done": "all"}), flush=True)


if __name__ == "__main__":
    main()
