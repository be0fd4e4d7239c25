"""Annotation ingest at GENCODE scale, and what annotations add to a search (issue 24).

(a) ingest: a seeded GENCODE-like GTF (genes, transcripts, exons, CDS, UTR, start/stop codons with
GENCODE's attributes: ids with versions, types, names, levels, tags; 24 contigs of a 3.1 Gbp human-like
layout), ~34 k / ~340 k / ~3.4 M lines for small / medium / large, added with `genoembed annotate` to a
store whose genome has those contigs (the store's vectors are a stand-in: ingest never reads them).
Reports wall time, CPU time (user + system, all threads) and the peak RSS of the annotate process (a
child process, so earlier steps do not count), and the machine's load average: on a shared machine the
wall time is the CPU time spread over the cores this process got. Correctness: the stored table has exactly the features the generator wrote (per type, with
every transcript's exon parts and every CDS/UTR/codon group merged into one feature with its parts).

(b) search cost: the demo store (chloroplast, GenBank features; `indexes/demo.toml`) searched through
the Python API (`genoembed.search` + the feature columns `genoembed search` and `serve` add), side by
side with the same store without annotations, one region query at a time (k=10), p50 over repeats;
FAISS on one thread (a one-query Flat search gains nothing from a second, and on a busy machine the
second thread's wake-up becomes the measurement). Then the same over HTTP: `genoembed serve` with both
stores, `POST /search` to each in turn. Correctness: the columns name the features a pure-Python overlap
of the hits with the GenBank parts names; the served hits carry the same columns.

    PYTHONPATH=. .venv/bin/python benchmarks/annotation_scale.py small            # or medium, large
    PYTHONPATH=. .venv/bin/python benchmarks/annotation_scale.py large --data /tmp/gencode_like

Prints one JSON line per size.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

# Human (GRCh38) contig lengths: 22 autosomes, X, Y (3.09 Gbp)
LAYOUT = {f"chr{n}": length for n, length in zip(
    [*range(1, 23), "X", "Y"],
    [248956422, 242193529, 198295559, 190214555, 181538259, 170805979, 159345973, 145138636, 138394717,
     133797422, 135086622, 133275309, 114364328, 107043718, 101991189, 90338345, 83257441, 80373285,
     58617616, 64444167, 46709983, 50818468, 156040895, 57227415])}
GENES = {"small": 620, "medium": 6_200, "large": 62_000}  # ~55 lines a gene, as GENCODE comprehensive
GENE_TYPES = ["protein_coding", "lncRNA", "processed_pseudogene", "misc_RNA", "snRNA"]


def write_gtf(path: Path, genes: int, seed: int = 24) -> dict:
    """A GENCODE-like GTF; returns the features genoembed must read from it ({type: count}, parts)."""
    rng = np.random.default_rng(seed)
    names = list(LAYOUT)
    weights = np.array(list(LAYOUT.values()), dtype=float)
    contig_of_gene = np.sort(rng.choice(len(names), size=genes, p=weights / weights.sum()))
    expected = {"types": {}, "transcript_parts": 0, "group_parts": 0}

    def count(kind: str, number: int = 1) -> None:
        expected["types"][kind] = expected["types"].get(kind, 0) + number

    with open(path, "w") as out:
        out.write("##description: genoembed benchmark, GENCODE-like\n##format: gtf\n")
        for g in range(genes):
            chrom = names[contig_of_gene[g]]
            strand = "+-"[rng.integers(2)]
            start = int(rng.integers(1, LAYOUT[chrom] - 3_000_000))
            gene_type = GENE_TYPES[rng.integers(len(GENE_TYPES))] if rng.random() < 0.6 else "protein_coding"
            gid, gname = f"ENSG{g:011d}.{rng.integers(1, 20)}", f"GENE{g}"
            common = (f'gene_id "{gid}"; gene_type "{gene_type}"; gene_name "{gname}"; level 2; '
                      f'hgnc_id "HGNC:{g}"; havana_gene "OTTHUMG{g:011d}.1";')
            transcripts = []
            for t in range(int(rng.integers(1, 8))):
                exons, position = [], start + int(rng.integers(0, 2_000))
                for _ in range(int(rng.integers(1, 14))):
                    length = int(rng.integers(50, 400))
                    exons.append((position, position + length - 1))
                    position += length + int(rng.integers(200, 6_000))
                transcripts.append((t, exons))
            gene_end = max(exons[-1][1] for _, exons in transcripts)
            out.write(f"{chrom}\tHAVANA\tgene\t{start}\t{gene_end}\t.\t{strand}\t.\t{common}\n")
            count("gene")
            for t, exons in transcripts:
                tid = f"ENST{g:09d}{t:02d}.1"
                coding = gene_type == "protein_coding" and len(exons) > 2
                attributes = (f'{common[:-1]}; transcript_id "{tid}"; transcript_type "{gene_type}"; '
                              f'transcript_name "{gname}-{201 + t}"; transcript_support_level "1"; tag "basic"; '
                              f'tag "Ensembl_canonical"; havana_transcript "OTTHUMT{g:09d}{t:02d}.1";')
                out.write(f"{chrom}\tHAVANA\ttranscript\t{exons[0][0]}\t{exons[-1][1]}\t.\t{strand}\t.\t{attributes}\n")
                count("transcript")
                expected["transcript_parts"] += len(exons) if len(exons) > 1 else 0
                groups: dict[str, int] = {}
                for number, (s, e) in enumerate(exons, 1):
                    exon = f'{attributes} exon_number {number}; exon_id "ENSE{g:09d}{t:02d}{number:02d}.1";'
                    out.write(f"{chrom}\tHAVANA\texon\t{s}\t{e}\t.\t{strand}\t.\t{exon}\n")
                    count("exon")
                    if not coding:
                        continue
                    rows = [("UTR", s, e)] if number in (1, len(exons)) else [("CDS", s, e)]
                    if number == 2:
                        rows.append(("start_codon", s, s + 2))
                    if number == len(exons) - 1:
                        rows.append(("stop_codon", e - 2, e))
                    for kind, rs, re_ in rows:
                        extra = f' protein_id "ENSP{g:09d}{t:02d}.1"; ccdsid "CCDS{g}.1";' if kind == "CDS" else ""
                        phase = str(number % 3) if kind == "CDS" else "."
                        out.write(f"{chrom}\tHAVANA\t{kind}\t{rs}\t{re_}\t.\t{strand}\t{phase}\t{exon}{extra}\n")
                        groups[kind] = groups.get(kind, 0) + 1
                for kind, rows in groups.items():
                    count(kind)
                    expected["group_parts"] += rows if rows > 1 else 0
    return expected


def lines_of(path: Path) -> int:
    with open(path, "rb") as handle:
        return sum(block.count(b"\n") for block in iter(lambda: handle.read(1 << 24), b""))


def stand_in_store(root: Path) -> Path:
    """A one-tile store whose genome has the human-like contigs (a real build of 3.1 Gbp is not the point)."""
    from genoembed.build import index
    from genoembed.embedders.kmer import KmerEmbedder
    from genoembed.manifest import MANIFEST
    from genoembed.synthetic import random_genome, write_fasta
    from genoembed.tiles import TilingSpec

    fasta = write_fasta(root / "layout.fa", random_genome({"chr1": 600}, seed=1))
    store = root / "store"
    index(fasta, store, embedder=KmerEmbedder(k=3), tiling=TilingSpec(window=300, stride=300))
    manifest = json.loads((store / MANIFEST).read_text())
    manifest["genomes"]["layout"]["contig_lengths"] = LAYOUT
    (store / MANIFEST).write_text(json.dumps(manifest))
    return store


INGEST = """
import json, resource, sys, time
from genoembed.annotate import add_annotations
from genoembed.store import Store
started = time.perf_counter()
entry = add_annotations(Store.open(sys.argv[1]), sys.argv[2])
usage = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"seconds": time.perf_counter() - started, "rows": entry["rows"],
                  "cpu_seconds": usage.ru_utime + usage.ru_stime, "peak_rss_mb": usage.ru_maxrss / 1024}))
"""


def ingest(size: str, data: Path) -> dict:
    data.mkdir(parents=True, exist_ok=True)
    gtf = data / f"gencode_like_{size}.gtf"
    summary = data / f"gencode_like_{size}.json"
    if not summary.is_file() or not gtf.is_file():
        expected = write_gtf(gtf, GENES[size])
        summary.write_text(json.dumps(expected))
    expected = json.loads(summary.read_text())
    with tempfile.TemporaryDirectory() as temp:
        store = stand_in_store(Path(temp))
        run = subprocess.run([sys.executable, "-c", INGEST, str(store), str(gtf)], capture_output=True, text=True)
        if run.returncode:
            raise SystemExit(run.stderr)
        measured = json.loads(run.stdout.strip().splitlines()[-1])
        check_ingested(store, expected)
    return {"lines": lines_of(gtf), "bytes": gtf.stat().st_size, "ingest_s": round(measured["seconds"], 1),
            "ingest_cpu_s": round(measured["cpu_seconds"], 1), "load_average": round(os.getloadavg()[0], 1),
            "ingest_lines_per_s": int(lines_of(gtf) / measured["seconds"]),
            "ingest_peak_rss_mb": round(measured["peak_rss_mb"]), "features": measured["rows"]}


def check_ingested(store: Path, expected: dict) -> None:
    import duckdb

    table = next((store / "annotations").glob("*.parquet"))
    con = duckdb.connect()
    types = dict(con.execute("SELECT type, count(*) FROM read_parquet(?) GROUP BY type", [str(table)]).fetchall())
    assert types == expected["types"], (types, expected["types"])
    parts = dict(con.execute("SELECT type = 'transcript', coalesce(sum(len(parts)), 0) FROM read_parquet(?) "
                             "GROUP BY ALL", [str(table)]).fetchall())
    assert parts.get(True, 0) == expected["transcript_parts"], (parts, expected)
    assert parts.get(False, 0) == expected["group_parts"], (parts, expected)


def search_cost(repeats: int) -> dict:
    """p50 of search alone vs search + feature columns on the demo store, same process, interleaved."""
    import genoembed
    from genoembed.annotate import annotate_hits
    from genoembed.features import read_annotations
    from genoembed.search import search
    from genoembed.store import Store

    with tempfile.TemporaryDirectory() as temp:
        recipe = genoembed.load_recipe(Path(__file__).resolve().parent.parent / "indexes" / "demo.toml")
        annotated = genoembed.build(dataclasses.replace(recipe, output=Path(temp) / "demo"))
        plain_root = Path(temp) / "plain"
        shutil.copytree(annotated.root, plain_root)
        manifest = json.loads((plain_root / "manifest.json").read_text())
        manifest["annotations"] = {}
        (plain_root / "manifest.json").write_text(json.dumps(manifest))
        shutil.rmtree(plain_root / "annotations")
        plain = Store.open(plain_root)
        region = ["NC_000932.1:90001-91000"]
        import faiss

        faiss.omp_set_num_threads(1)
        timings = {"plain": [], "annotated": []}
        for _ in range(repeats):
            started = time.perf_counter()
            search(plain, region, k=10)
            timings["plain"].append(time.perf_counter() - started)
            started = time.perf_counter()
            hits = annotate_hits(annotated, search(annotated, region, k=10))
            timings["annotated"].append(time.perf_counter() - started)
        features = read_annotations(recipe.annotations[0]).to_pylist()
        for row in hits.to_pylist():
            names = {f["name"] or f["type"] for f in features for s, e in
                     [(p["start"], p["end"]) for p in (f["parts"] or [f])] if s < row["end"] and row["start"] < e}
            assert set((row["overlapping"] or "").split(", ")) - {""} == names, (row, names)
        served = serve_cost(annotated.root, plain_root, region[0], repeats)
    p50 = {key: statistics.median(values[repeats // 10:]) * 1000 for key, values in timings.items()}
    return {"api_search_p50_ms": round(p50["plain"], 2), "api_annotated_search_p50_ms": round(p50["annotated"], 2),
            "api_annotated_over_plain": round(p50["annotated"] / p50["plain"], 2), **served}


def serve_cost(annotated: Path, plain: Path, region: str, repeats: int) -> dict:
    """p50 of POST /search (k=10) on the annotated and the plain store of one `genoembed serve`, interleaved."""
    import socket

    import httpx

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-c", "from genoembed.cli import main; main()", "serve",
                               f"annotated={annotated}", f"plain={plain}", "--port", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60)
        for _ in range(300):
            try:
                client.get("/healthz").raise_for_status()
                break
            except httpx.HTTPError:
                time.sleep(0.2)
        timings = {"plain": [], "annotated": []}
        for _ in range(repeats):
            for store in timings:
                started = time.perf_counter()
                reply = client.post("/search", json={"store": store, "regions": [region], "k": 10})
                timings[store].append(time.perf_counter() - started)
                reply.raise_for_status()
                assert ("overlapping" in reply.json()["columns"]) == (store == "annotated")
    finally:
        server.terminate()
        server.wait()
    p50 = {key: statistics.median(values[repeats // 10:]) * 1000 for key, values in timings.items()}
    return {"serve_search_p50_ms": round(p50["plain"], 2), "serve_annotated_search_p50_ms": round(p50["annotated"], 2),
            "serve_annotated_over_plain": round(p50["annotated"] / p50["plain"], 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sizes", nargs="*", default=["small"], choices=list(GENES))
    parser.add_argument("--data", type=Path, default=Path(tempfile.gettempdir()) / "genoembed_gencode_like")
    parser.add_argument("--repeats", type=int, default=200)
    args = parser.parse_args()
    cost = search_cost(args.repeats)
    for size in args.sizes:
        print(json.dumps({"benchmark": "annotation_scale", "size": size, **ingest(size, args.data), **cost,
                          "machine": f"{platform.machine()} {os.cpu_count()} CPUs",
                          "date": dt.date.today().isoformat()}), flush=True)


if __name__ == "__main__":
    main()
