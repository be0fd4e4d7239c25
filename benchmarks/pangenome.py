"""Pangenome: many genomes sharing contig names, added one `genoembed index --append` at a time (issue 24).

Genomes: the shared genomes in /work/shared/data (a ``--reference-kbp`` slice of each: the references, indexed
by the first `genoembed index`), then strains made from them: a random ``--strain-kbp`` region of a reference
with 0.5-5 % substitutions, indels (a tenth of the substitution rate), and a rearrangement (a block moved and
reverse-complemented), cut into 1-6 contigs named as assemblers name them (``contig_1``, ``NODE_1_length_...``),
so contig names repeat across genomes. Each strain is added by its own ``genoembed index --append`` process,
as a user would, with the default model into an IVF store (``IVF{n},Flat`` sized to the first build).

Reports (one JSON line): seconds per append (first 100 vs last 100: flat when appends cost the new genome,
not the store), total build time, store size and index parts, search p50/p99 (one region query, Python API
on an opened store, as `genoembed serve` runs it), and ``--genome X`` (1 of N) recall@10 against exact
search of that genome's tiles with its latency next to the unfiltered one; also a ``--chrom contig_1``
subset (large: searched through the FAISS selector, not exactly). Asserts the issue's bounds.

``--cli-genomes N`` also builds a second store of the first N genomes with one ``genoembed index --append``
process per strain (first 50 vs last 50 appends, wall and CPU of the child) and reports the CLI's start-up
(``genoembed --version``: interpreter and imports) on its own.

    python benchmarks/pangenome.py small|medium|large [--workdir DIR] [--measure-only] [--in-process]
        [--cli-genomes N]
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

SIZES = {"small": 20, "medium": 100, "large": 1000}
DATA = Path("/work/shared/data")
REFERENCES = {"ecoli_536": "ecoli_536/NC_008253.fna.gz", "mg1655": "ecoli_k12/MG1655-K12.fasta.gz",
              "dh1": "ecoli_k12/DH1.fasta.gz", "els37": "h_pylori/ELS37.fasta.gz", "g27": "h_pylori/G27.fasta.gz",
              "gambia94": "h_pylori/Gambia94_24.fasta.gz", "puno120": "h_pylori/Puno120.fasta.gz",
              "sjm180": "h_pylori/SJM180.fasta.gz", "pypcp1": "yersinia_plasmid/NC_005816.fna"}


def read_first_record(path: Path) -> str:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt") as handle:
        lines = []
        next(handle)
        for line in handle:
            if line.startswith(">"):
                break
            lines.append(line.strip())
    return "".join(lines).upper()


def contig_names(count: int, lengths: list[int], style: int) -> list[str]:
    if style == 0:
        return [f"contig_{n + 1}" for n in range(count)]
    return [f"NODE_{n + 1}_length_{lengths[n]}_cov_{10 + 3 * n}.5" for n in range(count)]


def make_strain(reference: str, kbp: int, rng: np.random.Generator) -> dict[str, str]:
    from genoembed.seqio import reverse_complement
    from genoembed.synthetic import mutate

    length = min(kbp * 1000, len(reference))
    start = int(rng.integers(0, len(reference) - length + 1))
    rate = float(rng.uniform(0.005, 0.05))
    sequence = mutate(reference[start:start + length], rate, rate / 10, seed=int(rng.integers(2 ** 31)))
    cut = sorted(rng.choice(np.arange(1, len(sequence)), size=2, replace=False))  # move one block, inverted
    block = reverse_complement(sequence[cut[0]:cut[1]])
    sequence = sequence[:cut[0]] + sequence[cut[1]:]
    at = int(rng.integers(0, len(sequence) + 1))
    sequence = sequence[:at] + block + sequence[at:]
    count = int(rng.integers(1, 7))
    edges = [0, *sorted(rng.choice(np.arange(1, len(sequence)), size=count - 1, replace=False)), len(sequence)]
    pieces = [sequence[a:b] for a, b in zip(edges, edges[1:])]
    names = contig_names(count, [len(piece) for piece in pieces], int(rng.integers(0, 2)))
    return dict(zip(names, pieces))


def write_genomes(workdir: Path, count: int, reference_kbp: int, strain_kbp: int, seed: int = 0) -> list[Path]:
    from genoembed.synthetic import write_fasta

    rng = np.random.default_rng(seed)
    (workdir / "genomes").mkdir(parents=True, exist_ok=True)
    references = {name: read_first_record(DATA / path) for name, path in REFERENCES.items()}
    paths = []
    for name, sequence in references.items():
        paths.append(write_fasta(workdir / "genomes" / f"{name}.fa", {"chromosome": sequence[:reference_kbp * 1000]}))
    names = list(references)
    for number in range(count - len(paths)):
        parent = names[number % len(names)]
        strain = make_strain(references[parent][:reference_kbp * 1000], strain_kbp, rng)
        paths.append(write_fasta(workdir / "genomes" / f"{parent}_s{number:04d}.fa", strain))
    return paths


def cpu_seconds() -> float:
    """CPU seconds of this process and its finished children: the work done, which other jobs on a shared
    machine do not inflate the way they inflate wall time."""
    import resource

    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def index_factory(reference_kbp: int) -> str:
    """``IVF{n},Flat`` with half the lists the first build (the references) can train: IVF{n} needs 39 n tiles."""
    tiles = sum(min(reference_kbp * 1000, len(read_first_record(DATA / path))) // 500 - 1
                for path in REFERENCES.values())
    return f"IVF{max(4, tiles // 39 // 2)},Flat"


def cli(*args: str) -> float:
    began = time.perf_counter()
    subprocess.run([sys.executable, "-m", "genoembed", *args], check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - began


def cli_appends(workdir: Path, genomes: list[Path], factory: str, log, window: int = 50) -> dict:
    """The first ``len(genomes)`` genomes into a store of their own, each strain by one `genoembed index --append`
    process: wall and CPU seconds of each (the child's, from rusage), first ``window`` vs last, and the CLI's
    start-up alone (median of 5 `genoembed --version`)."""
    store = workdir / "cli-store"
    if store.exists():
        raise SystemExit(f"{store} exists; remove it first")
    references = [path for path in genomes if path.stem in REFERENCES]
    cli("index", *(f"--fasta={path}" for path in references), "--output", str(store), "--factory", factory,
        "--strands", "+", "-q")
    wall, cpu = [], []
    for number, path in enumerate(genomes[len(references):]):
        used = cpu_seconds()
        wall.append(cli("index", "--fasta", str(path), "--output", str(store), "--append", "--factory", factory,
                        "--strands", "+", "-q"))
        cpu.append(cpu_seconds() - used)
        if number % 25 == 0:
            log(f"CLI append {number + 1}: {wall[-1]:.2f} s")
    startup, startup_cpu = [], []
    for _ in range(5):
        used = cpu_seconds()
        startup.append(cli("--version"))
        startup_cpu.append(cpu_seconds() - used)
    window = min(window, len(wall) // 2)
    mean = lambda values: round(float(np.mean(values)), 3)
    return {"genomes": len(genomes), "appends": len(wall), "window": window,
            "append_s_first": mean(wall[:window]), "append_s_last": mean(wall[-window:]),
            "append_last_vs_first": round(float(np.mean(wall[-window:]) / np.mean(wall[:window])), 2),
            "append_cpu_s_first": mean(cpu[:window]), "append_cpu_s_last": mean(cpu[-window:]),
            "append_cpu_last_vs_first": round(float(np.mean(cpu[-window:]) / np.mean(cpu[:window])), 2),
            "startup_s": round(float(np.median(startup)), 3), "startup_cpu_s": round(float(np.median(startup_cpu)), 3)}


def api_append(path: Path, store: Path, factory: str) -> float:
    """What `genoembed index --fasta PATH --output STORE --append --factory F --strands +` runs, in this process."""
    import dataclasses

    import genoembed
    from genoembed.recipe import Recipe
    from genoembed.tiles import Strands

    began = time.perf_counter()
    recipe = Recipe(fastas=(path,), output=store)
    recipe = dataclasses.replace(recipe, tiling=dataclasses.replace(recipe.tiling, strands=Strands("+")),
                                 index=dataclasses.replace(recipe.index, factory=factory))
    genoembed.build(recipe, embedder=_model(), append=True)
    return time.perf_counter() - began


_LOADED = []


def _model():
    """The default model, loaded once for in-process appends."""
    if not _LOADED:
        from genoembed.embedders import get_embedder

        _LOADED.append(get_embedder("default"))
    return _LOADED[0]


def build(workdir: Path, genomes: list[Path], factory: str, log, in_process: bool = False) -> dict:
    store = workdir / "store"
    references = [path for path in genomes if path.stem in REFERENCES]
    began = time.perf_counter()
    first = cli("index", *(f"--fasta={path}" for path in references), "--output", str(store), "--factory", factory,
                "--strands", "+", "-q")
    appends, cpu, retuned = [], [], []
    for number, path in enumerate(genomes[len(references):]):
        used, tuned = cpu_seconds(), tuned_tiles(store)
        appends.append(api_append(path, store, factory) if in_process else
                       cli("index", "--fasta", str(path), "--output", str(store), "--append", "--factory", factory,
                           "--strands", "+", "-q"))
        cpu.append(cpu_seconds() - used)
        retuned.append(tuned_tiles(store) != tuned)
        if number % 25 == 0:
            log(f"append {number + 1}: {appends[-1]:.2f} s")
    return {"first_build_s": round(first, 2), "appends": appends, "append_cpu": cpu, "retuned": retuned,
            "build_s": round(time.perf_counter() - began, 1)}


def tuned_tiles(store: Path) -> int | None:
    """The store size the index's search settings were last tuned at (a re-tune, after 50 % growth, is an
    append's one spike: an exact pass over the store, amortised over the appends that grew it)."""
    return (json.loads((store / "manifest.json").read_bytes()).get("index") or {}).get("tuned_tiles")


def without(values: list[float], dropped: list[bool], window: int) -> tuple[float, float]:
    """Mean of the first and of the last ``window`` values, leaving out the ``dropped`` ones."""
    first = [value for value, drop in zip(values[:window], dropped[:window]) if not drop]
    last = [value for value, drop in zip(values[-window:], dropped[-window:]) if not drop]
    return float(np.mean(first)), float(np.mean(last))


def measure(workdir: Path, queries: int = 200, seed: int = 1) -> dict:
    import genoembed
    from genoembed.store import Store
    from genoembed.subsets import filtered_search, resolve, tile_filter
    from genoembed.recall import exact_search, recall_at
    from genoembed.vector_index import index_parts

    store = Store.open(workdir / "store")
    rng = np.random.default_rng(seed)
    names = list(store.genomes)
    windows = []
    for _ in range(queries):  # regions of random genomes, as users search
        name = names[int(rng.integers(len(names)))]
        contigs = {chrom: length for chrom, length in store.genomes[name]["contig_lengths"].items() if length > 1000}
        if not contigs:
            continue
        chrom = list(contigs)[int(rng.integers(len(contigs)))]
        start = int(rng.integers(0, contigs[chrom] - 1000 + 1))
        windows.append(genoembed.Query(f"q{len(windows)}", store.genome(name).fetch(chrom, start, start + 1000), chrom,
                                       start, start + 1000))
    vectors = store.embedder().embed([query.sequence for query in windows])
    genoembed.search(store, windows[:2], k=10)  # open the index, the embedder and the loci once

    target = names[len(names) // 2]
    variants = {"unfiltered": {}, "genome": {"genome": target}, "chrom": {"chrom": "contig_1"},
                "where": {"where": "gc > 0.5"}}
    seconds = {name: [] for name in variants}
    for number, query in enumerate(windows):  # the variants in turn, query by query: load hits them alike
        for name, options in variants.items():
            if name == "where" and number >= 20:  # a SQL connection per search: 20 say enough
                continue
            began = time.perf_counter()
            genoembed.search(store, [query], k=10, **options)
            seconds[name].append(time.perf_counter() - began)
    unfiltered, filtered = seconds["unfiltered"], seconds["genome"]
    subset = resolve(store, tile_filter(genome=target))
    stats = {}
    _, found = filtered_search(store, vectors, 10, subset, stats=stats)
    from genoembed.subsets import subset_vectors

    _, exact = exact_search(subset_vectors(store, subset), vectors, 10, store.metric)
    chrom_subset = resolve(store, tile_filter(chrom="contig_1"))
    chrom_stats = {}
    _, chrom_found = filtered_search(store, vectors, 10, chrom_subset, stats=chrom_stats)
    _, chrom_exact = exact_search(subset_vectors(store, chrom_subset), vectors, 10, store.metric)
    chrom_latency, where_latency = seconds["chrom"], seconds["where"]
    selector_stats = {}
    _, through_selector = filtered_search(store, vectors, 10, chrom_subset, exact_below=0, stats=selector_stats)
    p = lambda values, q: round(1000 * float(np.percentile(values, q)), 2)
    return {"genomes": len(names), "tiles": store.num_tiles,
            "index_parts": len(index_parts(store.manifest["index"])),
            "store_mb": round(sum(f.stat().st_size for f in store.root.rglob("*") if f.is_file()) / 1e6, 1),
            "search_ms_p50": p(unfiltered, 50), "search_ms_p99": p(unfiltered, 99),
            "genome_filter": {"genome": target, "tiles": subset.size, "method": stats["method"],
                              "recall_at_10": round(recall_at(found, exact, 10), 4),
                              "ms_p50": p(filtered, 50), "ms_p99": p(filtered, 99),
                              "p50_vs_unfiltered": round(np.median(filtered) / np.median(unfiltered), 2)},
            "chrom_filter": {"chrom": "contig_1", "tiles": chrom_subset.size, "method": chrom_stats["method"],
                             "hits_per_query": float((chrom_found >= 0).sum(axis=1).mean()),
                             "recall_at_10": round(recall_at(chrom_found, chrom_exact, 10), 4),
                             "ms_p50": p(chrom_latency, 50),
                             "selector": {"hits_per_query": float((through_selector >= 0).sum(axis=1).mean()),
                                          "recall_at_10": round(recall_at(through_selector, chrom_exact, 10), 4),
                                          "queries_answered_exactly": selector_stats["exact_rows"]}},
            "where_filter": {"where": "gc > 0.5", "queries": len(where_latency), "ms_p50": p(where_latency, 50)},
            "search": store.manifest["index"].get("search")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("size", choices=SIZES)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/genoembed-pangenome"))
    parser.add_argument("--reference-kbp", type=int, default=200)
    parser.add_argument("--strain-kbp", type=int, default=20)
    parser.add_argument("--measure-only", action="store_true", help="measure searches on the store already built")
    parser.add_argument("--in-process", action="store_true",
                        help="append through the Python API in this process (what the CLI runs, without a Python "
                             "start-up and model load per genome: on a loaded machine those dominate)")
    parser.add_argument("--cli-genomes", type=int, default=0,
                        help="also time this many genomes appended by one CLI process each, in a store of their own")
    parser.add_argument("--cli-only", action="store_true",
                        help="only the --cli-genomes store (no API build, no search)")
    args = parser.parse_args()
    workdir = args.workdir / args.size
    log = lambda text: print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)
    result = {"benchmark": "pangenome", "size": args.size, "machine": os.uname().nodename,
              "date": time.strftime("%Y-%m-%d"), "reference_kbp": args.reference_kbp, "strain_kbp": args.strain_kbp,
              "load_average_start": [round(load, 1) for load in os.getloadavg()]}
    if args.cli_only:
        genomes = write_genomes(workdir, args.cli_genomes, args.reference_kbp, args.strain_kbp)
        result.update(cli=cli_appends(workdir, genomes, index_factory(args.reference_kbp), log),
                      load_average_end=[round(load, 1) for load in os.getloadavg()])
        print(json.dumps(result), flush=True)
        return
    if not args.measure_only:
        if (workdir / "store").exists():
            raise SystemExit(f"{workdir / 'store'} exists; remove it or pass --measure-only")
        genomes = write_genomes(workdir, SIZES[args.size], args.reference_kbp, args.strain_kbp)
        factory = index_factory(args.reference_kbp)
        built = build(workdir, genomes, factory, log, args.in_process)
        appends, cpu, retuned = built.pop("appends"), built.pop("append_cpu"), built.pop("retuned")
        window = min(100, len(appends) // 2)
        first_cpu, last_cpu = without(cpu, retuned, window)
        result.update(factory=factory, **built, appends=len(appends), appended_by="python" if args.in_process else "cli",
                      append_s_first=round(float(np.mean(appends[:window])), 3),
                      append_s_last=round(float(np.mean(appends[-window:])), 3),
                      append_last_vs_first=round(float(np.mean(appends[-window:]) / np.mean(appends[:window])), 2),
                      append_s_max=round(max(appends), 2),
                      append_cpu_s_first=round(float(np.mean(cpu[:window])), 3),
                      append_cpu_s_last=round(float(np.mean(cpu[-window:])), 3),
                      append_cpu_last_vs_first=round(float(np.mean(cpu[-window:]) / np.mean(cpu[:window])), 2),
                      retunes=[number for number, flag in enumerate(retuned) if flag],
                      append_cpu_last_vs_first_without_retunes=round(last_cpu / first_cpu, 2))
        (workdir / "appends.json").write_text(json.dumps({"wall_s": appends, "cpu_s": cpu, "retuned": retuned}))
        if args.cli_genomes:
            result["cli"] = cli_appends(workdir, genomes[:args.cli_genomes], factory, log)
    result.update(measure(workdir), load_average_end=[round(load, 1) for load in os.getloadavg()])
    print(json.dumps(result), flush=True)
    assert result["genome_filter"]["recall_at_10"] >= 0.95, result["genome_filter"]
    assert result["genome_filter"]["p50_vs_unfiltered"] <= 3, result["genome_filter"]
    assert result["chrom_filter"]["hits_per_query"] == 10, result["chrom_filter"]
    assert result["chrom_filter"]["selector"]["hits_per_query"] == 10, result["chrom_filter"]
    if "append_last_vs_first" in result and result["appends"] >= 200:
        assert result["append_last_vs_first"] <= 1.5, result


if __name__ == "__main__":
    main()
