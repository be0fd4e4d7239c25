"""Answers a minimap2 or BLAST user trusts: long queries mapped by chaining, short reads by minimizers, E-values.

    .venv/bin/python benchmarks/answers.py --size small     # ~1 min: 30 contigs, 300 reads, 100 null queries
    .venv/bin/python benchmarks/answers.py --size medium    # all 156 MG1655 draft contigs, 2000 reads, 300 null queries
    .venv/bin/python benchmarks/answers.py --size large     # + contigs and reads against E. coli 536 (another strain)

Blocks (one JSON line each):

* ``contigs``: MG1655 draft contigs (ragout-examples) searched with ``genoembed search --fasta`` (mapped blocks)
  against a store of a reference, and mapped by ``minimap2 -x asm5``. "placed as minimap2" = rank-1 block on
  minimap2's primary strand and overlapping its primary span by half the shorter one; "one of minimap2's" = the
  same against any of minimap2's mappings of that contig (repeats: minimap2 picks one copy at random, mapq 0).
  Unique = minimap2 mapq >= 30. NUCmer agreement of the rank-1 block is reported for MG1655 (the coords file).
* ``reads``: reads of 150 and 300 bp cut from MG1655 at seeded random places (half reverse-complemented), searched
  with genoembed (150 bp: seeds; 300 bp: seeds, under half a 1 kb window) and ``minimap2 -x sr``; agreement = rank-1
  placement overlapping minimap2's primary by half the read, same strand, over reads minimap2 placed; and against
  the true origin for the MG1655 store.
* ``calibration``: queries with no homolog in the MG1655 store (1 kb / 500 bp windows of H. pylori G27 and of the
  Arabidopsis chloroplast with no blastn hit at E <= 1e-3 to MG1655, and base-shuffled windows of E. coli DH1):
  hits with score_evalue <= E per query, against E (calibrated: equal; conservative: lower).
* ``cost``: seconds to build the seed index and one null bin (first use, then cached), and a 1000-query search
  with and without E-values.

Times are wall seconds on this machine, genoembed in-process (store already built, its build time reported)
and minimap2 as a subprocess including its index build (it has no separate step for one FASTA).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from genoembed.build import index
from genoembed.eval.truth import read_coords
from genoembed.mapping import answer
from genoembed.search import Query
from genoembed.seqio import read_fasta, reverse_complement
from genoembed.store import Store
from genoembed.tiles import TilingSpec

DATA = Path(os.environ.get("GENOEMBED_SHARED_DATA", Path(__file__).resolve().parent.parent.parent / "shared" / "data"))
MG1655 = DATA / "ecoli_k12" / "MG1655-K12.fasta.gz"
CONTIGS = DATA / "ecoli_k12" / "mg1655_contigs.fasta.gz"
COORDS = DATA / "ecoli_k12" / "mg1655.coords.gz"
E536 = DATA / "ecoli_536" / "NC_008253.fna.gz"
DH1 = DATA / "ecoli_k12" / "DH1.fasta.gz"
HPYLORI = DATA / "h_pylori" / "G27.fasta.gz"
CHLOROPLAST = Path(__file__).resolve().parent.parent / "genoembed" / "data" / "demo" / "NC_000932.fa"
SIZES = {"small": dict(contigs=30, reads=300, null=100, references=("mg1655",)),
         "medium": dict(contigs=None, reads=2000, null=300, references=("mg1655",)),
         "large": dict(contigs=None, reads=5000, null=300, references=("mg1655", "e536"))}


def emit(record: dict) -> None:
    print(json.dumps(record), flush=True)


def plain_fasta(source: Path, target: Path) -> Path:
    if not target.exists():
        target.write_text("".join(f">{name}\n{sequence}\n" for name, sequence in read_fasta(source)))
    return target


def store_of(name: str, fasta: Path, work: Path) -> tuple[Store, float]:
    root = work / name
    started = time.perf_counter()
    store = Store.open(root) if (root / "manifest.json").is_file() else \
        index(fasta, root, tiling=TilingSpec(window=1000, stride=500))
    return store, time.perf_counter() - started


def minimap2(preset: str, reference: Path, queries: Path) -> tuple[dict[str, list[tuple]], float]:
    started = time.perf_counter()
    out = subprocess.run(["minimap2", "-t", "1", "-x", preset, str(reference), str(queries)], capture_output=True,
                         text=True, check=True).stdout
    seconds = time.perf_counter() - started
    mappings: dict[str, list[tuple]] = {}
    for line in out.splitlines():
        f = line.split("\t")
        row = (f[5], int(f[7]), int(f[8]), f[4], int(f[11]), "tp:A:P" in line)
        mappings.setdefault(f[0], []).append(row)
    for rows in mappings.values():
        rows.sort(key=lambda row: not row[5])  # primary first
    return mappings, seconds


def overlaps(hit: tuple[str, int, int, str], mapping: tuple, fraction: float = 0.5) -> bool:
    chrom, start, end, strand = hit
    shorter = min(end - start, mapping[2] - mapping[1])
    return chrom == mapping[0] and strand == mapping[3] and min(end, mapping[2]) - max(start, mapping[1]) >= fraction * shorter


def top_hits(store: Store, queries: list[Query], k: int = 1) -> tuple[dict[str, tuple], float]:
    started = time.perf_counter()
    hits, blocks = answer(store, queries, k=k, evalue=None)
    seconds = time.perf_counter() - started
    top = {}
    for table in (hits, blocks):
        if table is None:
            continue
        for row in table.to_pylist():
            if row["rank"] == 1:
                top[row["query"]] = (row["chrom"], row["start"], row["end"], row["strand"])
    return top, seconds


def contigs_block(store: Store, reference_fasta: Path, name: str, size: dict, work: Path) -> None:
    records = list(read_fasta(CONTIGS))[:size["contigs"]]
    queries_path = work / f"contigs-{size['contigs']}.fa"
    queries_path.write_text("".join(f">{n}\n{s}\n" for n, s in records))
    queries = [Query(n, s.upper()) for n, s in records]
    top, ours = top_hits(store, queries)
    theirs, minimap_seconds = minimap2("asm5", reference_fasta, queries_path)
    window = store.provenance["tiling"]["window"]
    rows = {"placed": 0, "one_of": 0, "unique": 0, "unique_placed": 0, "minimap2_placed": 0}
    by_route = {"chain": [0, 0], "tiles": [0, 0], "seeds": [0, 0]}
    for query in queries:
        mappings = theirs.get(query.name)
        if not mappings:
            continue
        rows["minimap2_placed"] += 1
        hit = top.get(query.name)
        placed = hit is not None and overlaps(hit, mappings[0])
        one_of = hit is not None and any(overlaps(hit, m) for m in mappings)
        route = "chain" if len(query.sequence) > window else "seeds" if len(query.sequence) < window / 2 else "tiles"
        by_route[route][0] += placed
        by_route[route][1] += 1
        rows["placed"] += placed
        rows["one_of"] += one_of
        if mappings[0][4] >= 30:
            rows["unique"] += 1
            rows["unique_placed"] += placed
    nucmer = None
    if name == "mg1655":
        truth = {}
        for row in read_coords(COORDS).to_pylist():
            truth.setdefault(row["query_chrom"], []).append((row["ref_chrom"], row["ref_start"], row["ref_end"],
                                                             row["strand"]))
        hit_truth = [query.name for query in queries if query.name in truth and query.name in top]
        nucmer = sum(any(overlaps(top[n], m) for m in truth[n]) for n in hit_truth) / max(len(hit_truth), 1)
    assert rows["unique_placed"] >= 0.9 * rows["unique"], rows
    emit({"block": "contigs", "store": name, "contigs": len(queries), **rows,
          "fraction_placed_as_minimap2": round(rows["placed"] / rows["minimap2_placed"], 4),
          "fraction_one_of_minimap2": round(rows["one_of"] / rows["minimap2_placed"], 4),
          "fraction_unique_placed": round(rows["unique_placed"] / max(rows["unique"], 1), 4),
          "by_route_placed_of": by_route, "rank1_on_nucmer_alignment": nucmer and round(nucmer, 4),
          "genoembed_s": round(ours, 2), "minimap2_s": round(minimap_seconds, 2)})


def reads_block(store: Store, reference_fasta: Path, name: str, size: dict, work: Path, length: int) -> None:
    (_, genome), = read_fasta(MG1655)
    genome = genome.upper()
    rng = np.random.default_rng(length)
    queries, truth = [], {}
    for number in range(size["reads"]):
        start = int(rng.integers(0, len(genome) - length))
        read = genome[start:start + length]
        strand = "-" if number % 2 else "+"
        queries.append(Query(f"r{number}", reverse_complement(read) if strand == "-" else read))
        truth[f"r{number}"] = (start, strand)
    path = work / f"reads-{length}-{size['reads']}.fa"
    path.write_text("".join(f">{q.name}\n{q.sequence}\n" for q in queries))
    top, ours = top_hits(store, queries)
    theirs, minimap_seconds = minimap2("sr", reference_fasta, path)
    agree = sum(overlaps(top[n], m[0]) for n, m in theirs.items() if n in top)
    whole = [Query(q.name, q.sequence) for q in queries[:200]]  # the old way: one vector per read
    hits = __import__("genoembed.search", fromlist=["search"]).search(store, whole, k=1)
    old = {row["query"]: (row["chrom"], row["start"], row["end"], row["strand"]) for row in hits.to_pylist()}
    old_agree = sum(overlaps(old[n], theirs[n][0], 0.1) for n in old if n in theirs)
    true = None
    if name == "mg1655":
        true = sum(abs(top[n][1] - start) <= 5 and top[n][3] == strand for n, (start, strand) in truth.items()
                   if n in top) / len(truth)
    fraction = agree / max(len(theirs), 1)
    assert name != "mg1655" or fraction >= 0.9, fraction
    emit({"block": "reads", "store": name, "read_length": length, "reads": len(queries),
          "minimap2_placed": len(theirs), "genoembed_placed": len(top), "agree_with_minimap2": round(fraction, 4),
          "true_origin": true and round(true, 4), "whole_read_vector_agree_first200": round(old_agree /
                                                                                            max(sum(n in theirs for n in old), 1), 4),
          "genoembed_s": round(ours, 2), "minimap2_s": round(minimap_seconds, 2)})


def windows(path: Path, count: int, length: int, seed: int) -> list[str]:
    sequences = [s.upper() for _, s in read_fasta(path) if len(s) > length]
    rng = np.random.default_rng(seed)
    out = []
    while len(out) < count:
        sequence = sequences[int(rng.integers(len(sequences)))]
        start = int(rng.integers(0, len(sequence) - length))
        window = sequence[start:start + length]
        if "N" not in window:
            out.append(window)
    return out


def calibration_block(store: Store, reference_fasta: Path, size: dict, work: Path, length: int) -> None:
    from genoembed.search import search

    rng = np.random.default_rng(7)
    sets = {"h_pylori": windows(HPYLORI, size["null"], length, 1), "chloroplast": windows(CHLOROPLAST, size["null"], length, 2),
            "shuffled_dh1": ["".join(rng.permutation(list(w))) for w in windows(DH1, size["null"], length, 3)]}
    for name, sequences in sets.items():
        path = work / f"null-{name}-{length}.fa"
        path.write_text("".join(f">q{i}\n{s}\n" for i, s in enumerate(sequences)))
        homologs = set()
        if shutil.which("blastn"):
            homologs = set(subprocess.run(["blastn", "-query", str(path), "-subject", str(reference_fasta), "-evalue",
                                           "1e-3", "-outfmt", "6 qseqid", "-task", "blastn"], capture_output=True,
                                          text=True, check=True).stdout.split())
        queries = [Query(f"q{i}", s) for i, s in enumerate(sequences) if f"q{i}" not in homologs]
        hits, _ = answer(store, queries, k=50, evalue=1e12, by_length=False)
        evalues = hits.column("score_evalue").to_numpy()
        observed = {str(e): round(float((evalues <= e).sum() / len(queries)), 4) for e in (0.001, 0.01, 0.1, 1, 10)}
        emit({"block": "calibration", "set": name, "length": length, "queries": len(queries),
              "dropped_blastn_homologs": len(homologs), "hits_per_query_at_or_below_E": observed})


def cost_block(store: Store, work: Path) -> None:
    from genoembed.search import search
    from genoembed.seeds import SeedIndex
    from genoembed.significance import NULL_QUERIES, null_for

    started = time.perf_counter()
    SeedIndex.build(store)
    seeds = time.perf_counter() - started
    started = time.perf_counter()
    for path in (store.root / "cache").glob("null-*.npy"):
        path.unlink()
    null_for(store, 1000, 0.5, store.embedder())
    first = time.perf_counter() - started
    started = time.perf_counter()
    null_for(store, 1000, 0.5, store.embedder())
    cached = time.perf_counter() - started
    queries = [Query(f"w{i}", s) for i, s in enumerate(windows(MG1655, 1000, 1000, 9))]
    timings = {}
    for label, evalue in (("without_evalue", None), ("with_evalue", 10.0)):
        started = time.perf_counter()
        answer(store, queries, k=10, evalue=evalue)
        timings[label] = round(time.perf_counter() - started, 3)
    emit({"block": "cost", "store_tiles": store.num_tiles, "seed_index_build_s": round(seeds, 2),
          "null_bin_first_s": round(first, 3), "null_bin_cached_s": round(cached, 4), "null_queries": NULL_QUERIES,
          "search_1000_queries_s": timings})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=SIZES, default="small")
    parser.add_argument("--work", type=Path, default=Path("/tmp/genoembed-answers"))
    parser.add_argument("--only", default="contigs,reads,calibration,cost")
    args = parser.parse_args()
    if shutil.which("minimap2") is None:
        sys.exit("minimap2 is needed (apt install minimap2)")
    args.work.mkdir(parents=True, exist_ok=True)
    size = SIZES[args.size]
    emit({"block": "setup", "size": args.size, "machine": platform.processor() or platform.machine(),
          "python": platform.python_version()})
    fastas = {"mg1655": plain_fasta(MG1655, args.work / "mg1655.fa"), "e536": plain_fasta(E536, args.work / "e536.fa")}
    only = set(args.only.split(","))
    for name in size["references"]:
        store, seconds = store_of(name, fastas[name], args.work)
        emit({"block": "store", "store": name, "tiles": store.num_tiles, "build_or_open_s": round(seconds, 2)})
        if "contigs" in only:
            contigs_block(store, fastas[name], name, size, args.work)
        if "reads" in only:
            for length in (150, 300):
                reads_block(store, fastas[name], name, size, args.work, length)
        if name == "mg1655" and "calibration" in only:
            for length in (1000, 500):
                calibration_block(store, fastas[name], size, args.work, length)
        if name == "mg1655" and "cost" in only:
            cost_block(store, args.work)


if __name__ == "__main__":
    main()
