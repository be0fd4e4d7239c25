"""Homolog search from DNA (issue 27): embeddings, embeddings + translated re-rank, and the tools users run
instead (tblastx, DIAMOND blastx against called proteins, MMseqs2 translated search), on the same queries
and protein-level truth as ``genoembed eval --truth protein``.

    OMP_NUM_THREADS=1 python benchmarks/homolog.py --size small     # SJM180 -> E. coli 536, 100 sampled genes
    OMP_NUM_THREADS=1 python benchmarks/homolog.py --size medium    # both directions, 1000 sampled genes
    OMP_NUM_THREADS=1 python benchmarks/homolog.py --size scale --genomes 1 --genomes 10 --genomes 100 --speed-queries 20
    OMP_NUM_THREADS=1 python benchmarks/homolog.py --cost default,kmer:6,aa:2:frames,protein,protein:DIR

Truth and queries: :func:`genoembed.eval.protein.protein_task` (pyrodigal genes, pyopal Smith-Waterman,
best hit with E <= 1e-5 and query coverage >= 0.5; query = the gene's central 999 bp on its coding
strand; target tiled 1 kb / stride 500; a hit is right when its tile overlaps the homolog gene).
Every method returns tiles best first, each locus once; R@1 / R@10 per protein identity bin.

- ``tblastx``: six frames both sides (``-seg no``, E <= 10), tiles ranked by their best HSP's bit score;
- ``diamond``: ``diamond blastx --sensitive`` of the query DNA against the target's pyrodigal proteins,
  tiles overlapping a hit gene ranked by its bit score (gene calling is the database build, not timed);
- ``mmseqs``: ``mmseqs easy-search --search-type 2`` (translated query against translated genome);
- embeddings (``--methods``): exact cosine search over the tiles (centred on the reference mean, as in
  ``genoembed eval``); ``+rerank K``: the top K tiles re-ranked by the translated Smith-Waterman score of
  the query against each tile (:mod:`genoembed.protein_evidence`; ``search --protein-rerank`` also
  aligns over flanks to report whole alignments, which this ranking does not need); ``+rerank K grouped``:
  near-identical tiles grouped by their vectors, K groups out of the top K x genomes tiles re-ranked (what
  ``search --protein-rerank`` does in a store of several genomes); ``[genes]``: the
  target's pyrodigal genes as units (``index --units genes``), a hit right when its gene overlaps the homolog.

Seconds per query: CPU seconds (user + system; the machine is shared, so wall time measures the
neighbours), one thread, the whole query set through each tool (start-up included; the tools' database
build and the embedding of the database are not counted), divided by the queries. ``--genomes N``
(repeatable) searches databases of the target plus N - 1 mutated copies (1 % substitutions, same
coordinates, so a hit on the homolog in any copy is right) with the first ``--speed-queries`` queries at
every size (same queries, side by side). Databases of more than ``--embed-up-to`` genomes are not
embedded: the first genome's vectors, each copy with a little noise, fill the index so that search time
is real; tools and the re-rank align to the real mutated copies. One JSON line per row; ``--summary``
writes the table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

from genoembed.embedders.translated import translate
from genoembed.eval.metrics import correct_ranks, distinct_loci
from genoembed.eval.protein import (ProteinTask, best_tiles, call_genes, centred_unit, method_for, protein_task,
                                    read_records, score_rows)

DATA = Path(os.environ.get("GENOEMBED_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
E536, SJM180 = DATA / "ecoli_536" / "NC_008253.fna.gz", DATA / "h_pylori" / "SJM180.fasta.gz"
SIZES = {"small": dict(queries=100, pairs=[(SJM180, E536)]),
         "medium": dict(queries=1000, pairs=[(SJM180, E536), (E536, SJM180)]),
         "scale": dict(queries=1000, pairs=[(E536, SJM180)])}  # with --genomes 10 --genomes 100
TOOLS = ("tblastx", "diamond", "mmseqs")


def mutated_copies(records: list[tuple[str, str]], copies: int, rate: float = 0.01, seed: int = 0):
    """The genome plus ``copies - 1`` copies with ``rate`` random substitutions (contigs ``cN_NAME``)."""
    rng = np.random.default_rng(seed)
    out = list(records)
    for copy in range(1, copies):
        for name, sequence in records:
            codes = np.frombuffer(sequence.encode(), dtype=np.uint8).copy()
            where = rng.random(len(codes)) < rate
            codes[where] = np.frombuffer(b"ACGT", dtype=np.uint8)[rng.integers(0, 4, where.sum())]
            out.append((f"c{copy}_{name}", codes.tobytes().decode()))
    return out


def copied_genes(records):
    """pyrodigal genes of the first genome, and the same spans translated from each mutated copy
    (``cN_NAME``: same coordinates), so a database of copies is not gene-called copy by copy."""
    from genoembed.genes import Gene
    from genoembed.seqio import reverse_complement

    names = {name for name, _ in records if not re.match(r"c\d+_", name)}
    original = [(name, sequence) for name, sequence in records if name in names]
    genes = call_genes(original)
    out = list(genes)
    for name, sequence in records:
        if name in names:
            continue
        source = name.split("_", 1)[1]
        for gene in (g for g in genes if g.contig == source):
            dna = sequence[gene.start:gene.end]
            dna = dna if gene.strand == "+" else reverse_complement(dna)
            out.append(Gene(name, gene.start, gene.end, gene.strand, dna, translate(dna).rstrip("*")))
    return out


def tiles_of(records, window: int = 1000, stride: int = 500):
    from genoembed.eval.protein import target_tiles

    return target_tiles(records, window, stride)


def copy_truth(truth, copies: int):
    return [[span for true in spans for span in
             [true, *((f"c{c}_{true[0]}", *true[1:]) for c in range(1, copies))]] for spans in truth]


def ranked_tiles(scored: dict[str, dict[tuple, float]], names: list[str], tile_index, k: int = 10):
    """Per query: tiles overlapping each scored target span, best score first, each locus once."""
    out = []
    for name in names:
        tile_score: dict[tuple, float] = {}
        for (contig, start, end), score in scored.get(name, {}).items():
            for span in tile_index(contig, start, end):
                tile_score[span] = max(tile_score.get(span, -np.inf), score)
        out.append(distinct_loci(sorted(tile_score, key=lambda s: -tile_score[s]))[:k])
    return out


def tile_lookup(spans):
    by_contig: dict[str, list[tuple]] = {}
    for span in spans:
        by_contig.setdefault(span[0], []).append(span)
    starts = {c: np.array([s[1] for s in v]) for c, v in by_contig.items()}

    def overlapping(contig: str, start: int, end: int):
        found = by_contig.get(contig, [])
        if not found:
            return []
        first = max(int(np.searchsorted(starts[contig], start - 1000, side="right")), 0)
        return [s for s in found[first:first + 2 + (end - start) // 400 + 4] if s[1] < end and start < s[2]]
    return overlapping


def run_tool(tool: str, queries_fa: Path, records, work: Path) -> tuple[dict, float]:
    """(query -> {(contig, start, end): bit score}, seconds) of one tool over all queries."""
    target_fa = work / "target.fa"  # contigs as c0, c1, ...: tools rewrite ids such as gi|1|ref|NC_1|
    target_fa.write_text("".join(f">c{i}\n{s}\n" for i, (_, s) in enumerate(records)))
    contig = {f"c{i}": name for i, (name, _) in enumerate(records)}
    scored: dict[str, dict] = {}
    if tool == "tblastx":
        subprocess.run(["makeblastdb", "-in", str(target_fa), "-dbtype", "nucl", "-out", str(work / "db")],
                       check=True, capture_output=True)
        command = ["tblastx", "-query", str(queries_fa), "-db", str(work / "db"), "-outfmt",
                   "6 qseqid sseqid sstart send bitscore", "-seg", "no", "-max_target_seqs", "500",
                   "-num_threads", "1", "-out", str(work / "out.tsv")]
    elif tool == "diamond":
        genes = copied_genes(records)
        number = {name: f"c{i}" for i, (name, _) in enumerate(records)}
        (work / "proteins.fa").write_text("".join(f">{number[g.contig]}|{g.start}|{g.end}\n{g.protein}\n"
                                                  for g in genes))
        subprocess.run(["diamond", "makedb", "--in", str(work / "proteins.fa"), "-d", str(work / "dmnd"), "--quiet"],
                       check=True)
        command = ["diamond", "blastx", "-q", str(queries_fa), "-d", str(work / "dmnd"), "--sensitive", "--quiet",
                   "-p", "1", "--max-target-seqs", "50", "-f", "6", "qseqid", "sseqid", "bitscore",
                   "-o", str(work / "out.tsv")]
    else:
        command = ["mmseqs", "easy-search", str(queries_fa), str(target_fa), str(work / "out.tsv"),
                   str(work / "tmp"), "--search-type", "2", "--threads", "1", "-v", "1",
                   "--format-output", "query,target,tstart,tend,bits"]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run(command, check=True, capture_output=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    seconds = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    for line in (work / "out.tsv").read_text().splitlines():
        fields = line.split("\t")
        if tool == "diamond":
            name, start, end = fields[1].rsplit("|", 2)
            span, bits = (contig[name], int(start), int(end)), float(fields[2])
        else:
            a, b = int(fields[2]), int(fields[3])
            span, bits = (contig[fields[1]], min(a, b) - 1, max(a, b)), float(fields[4])
        best = scored.setdefault(fields[0], {})
        best[span] = max(best.get(span, -np.inf), bits)
    return scored, seconds


def embedding_hits(name: str, task: ProteinTask, spans, sequences, rerank: int | None, reference=None,
                   copies: int = 0):
    """Top tiles of each query by cosine, optionally re-ranked by translated alignment; and seconds per query.
    ``copies``: group near-identical tiles (:func:`genoembed.protein_evidence.near_duplicate_groups` on the raw
    vectors, as ``search --protein-rerank`` does) and re-rank ``rerank`` groups out of ``rerank x copies`` tiles."""
    from genoembed.protein_evidence import TranslatedAligner, best_alignments, near_duplicate_groups

    method = method_for(name)
    if reference is None:
        reference = method.vectors(sequences)
    mean = reference.reshape(-1, reference.shape[-1]).mean(axis=0)
    tiles = centred_unit(reference, mean).reshape(reference.shape)
    raw = reference.reshape(len(reference), -1)
    began = time.process_time()
    queries = centred_unit(method.vectors(task.queries), mean).reshape(len(task.queries), reference.shape[1], -1)
    ids = best_tiles(tiles, queries, max((rerank or 0) * max(copies, 1), 20))
    out = []
    for q, row in enumerate(ids):
        row = [i for i in row if i >= 0]
        if rerank:
            groups = near_duplicate_groups(raw[row], rerank) if copies else None
            picked = best_alignments(TranslatedAligner(task.queries[q]), lambda i, row=row: sequences[row[i]],
                                     len(row) if copies else min(rerank, len(row)), 10, groups=groups)
            row = [row[i] for i, _ in picked]
        out.append(distinct_loci([spans[i] for i in row])[:10])
    return out, (time.process_time() - began) / len(task.queries), reference


def embed_cost(names, tiles, repeats: int = 3) -> dict[str, float]:
    """CPU seconds to embed 1000 of ``tiles`` with each method (one warm-up, best of ``repeats``)."""
    out = {}
    for name in names:
        method = method_for(name)
        method.vectors(tiles[:5])
        spent = []
        for _ in range(repeats):
            began = time.process_time()
            method.vectors(tiles)
            spent.append(time.process_time() - began)
        out[name] = min(spent) * 1000 / len(tiles)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="small")
    parser.add_argument("--methods", default="protein,aa:2:frames", help="comma-separated embedding methods")
    parser.add_argument("--rerank", type=int, action="append", default=[], help="re-rank depth K (repeatable)")
    parser.add_argument("--tools", default=",".join(TOOLS))
    parser.add_argument("--genomes", type=int, action="append", default=[],
                        help="database sizes in genomes: the target and N - 1 mutated copies (default: 1)")
    parser.add_argument("--speed-queries", type=int, default=20)
    parser.add_argument("--embed-up-to", type=int, default=10,
                        help="embed databases of up to this many genomes; larger ones reuse genome 1's vectors, noised")
    parser.add_argument("--genes", action="store_true", help="also embed the target's called genes (index --units genes)")
    parser.add_argument("--summary", type=Path)
    parser.add_argument("--cost", help="only measure CPU seconds per 1000 tiles of these comma-separated methods")
    args = parser.parse_args()
    size = SIZES[args.size]
    if args.cost:
        _, tiles = tiles_of(read_records(SJM180))
        print(json.dumps({"cpu_seconds_per_1000_tiles": embed_cost(args.cost.split(","), tiles[:300]),
                          "machine": f"{platform.machine()} {os.cpu_count()} cpu (shared)"}))
        return
    rows, say, first_genome = [], (lambda m: print(f"# {m}", flush=True)), {}
    for query_path, target_path in size["pairs"]:
        task = protein_task(query_path, target_path, n_queries=size["queries"], seed=0, say=say)
        records = read_records(target_path)
        for genomes in args.genomes or [1]:
            n_queries = min(args.speed_queries, len(task.queries)) if args.genomes else len(task.queries)
            sub = ProteinTask(task.direction, task.queries[:n_queries], copy_truth(task.truth[:n_queries], genomes),
                              task.identities[:n_queries], [], [])
            database = mutated_copies(records, genomes)
            spans, sequences = tiles_of(database)
            base = {"direction": task.direction, "genomes": genomes, "tiles": len(spans)}
            with tempfile.TemporaryDirectory() as directory:
                work = Path(directory)
                queries_fa = work / "queries.fa"
                queries_fa.write_text("".join(f">q{i}\n{s}\n" for i, s in enumerate(sub.queries)))
                lookup = tile_lookup(spans)
                for tool in [t for t in args.tools.split(",") if t and shutil.which(t)]:
                    say(f"{task.direction} x{genomes}: {tool}")
                    (work / tool).mkdir()
                    scored, seconds = run_tool(tool, queries_fa, database, work / tool)
                    hits = ranked_tiles(scored, [f"q{i}" for i in range(n_queries)], lookup)
                    rows += emit(dict(base, method=tool, seconds_per_query=seconds / n_queries), hits, sub)
            units = [("tiles", spans, sequences)]
            if args.genes:
                genes = call_genes(database)
                units.append(("genes", [(g.contig, g.start, g.end, g.strand) for g in genes], [g.dna for g in genes]))
            for unit, unit_spans, unit_sequences in units:
                for name in [m for m in args.methods.split(",") if m]:
                    reference, vectors = None, "embedded"
                    if genomes > args.embed_up_to:
                        # as many rows as the database, without embedding it: the first genome's vectors, each
                        # copy with noise of the size 1 % substitutions cause (search time is what is measured)
                        rng = np.random.default_rng(genomes)
                        if (name, unit) not in first_genome:
                            first_genome[(name, unit)] = method_for(name).vectors(tiles_of(records)[1])
                        one = first_genome[(name, unit)]
                        reference = np.concatenate([one] + [one + rng.normal(0, 0.01, one.shape).astype(np.float32)
                                                            for _ in range(genomes - 1)])
                        vectors = "noised copies of genome 1's"
                    for rerank, copies in [(None, 0), *((r, c) for r in args.rerank for c in (0, genomes))]:
                        say(f"{task.direction} x{genomes}: {name} {unit} rerank {rerank} grouped {bool(copies)}")
                        hits, seconds, reference = embedding_hits(name, sub, unit_spans, unit_sequences, rerank,
                                                                  reference, copies)
                        label = (name if unit == "tiles" else f"{name} [genes]") + \
                            ("" if rerank is None else f" +rerank {rerank}") + (" grouped" if copies else "")
                        rows += emit(dict(base, method=label, units=unit, vectors=vectors, seconds_per_query=seconds),
                                     hits, sub)
                        if genomes == 1:
                            first_genome[(name, unit)] = reference
    print(json.dumps({"machine": f"{platform.machine()} {os.cpu_count()} cpu (shared)", "size": args.size}))
    if args.summary:
        args.summary.write_text(summary(rows))


def emit(base: dict, hits, task: ProteinTask) -> list[dict]:
    out = score_rows(base, correct_ranks(hits, task.truth), task.identities, (1, 10))
    for row in out:
        print(json.dumps(row), flush=True)
    return out


def summary(rows) -> str:
    from genoembed.eval.run import significant

    lines = ["| direction | genomes | method | R@1 | R@10 | R@10 <40 | R@10 40-60 | R@10 >=60 | queries | s/query |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    groups: dict[tuple, dict] = {}
    for row in rows:
        groups.setdefault((row["direction"], row["genomes"], row["method"]), {})[row["identity_bin"]] = row
    for (direction, genomes, method), by_bin in groups.items():
        first = by_bin["all"]
        lines.append(f"| {direction} | {genomes} | {method} | {significant(first['recall_at_1'])} | "
                     f"{significant(first['recall_at_10'])} | "
                     + " | ".join(significant(by_bin[b]["recall_at_10"]) for b in ("<40", "40-60", ">=60"))
                     + f" | {first['queries']} | {first['seconds_per_query']:.3g} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
