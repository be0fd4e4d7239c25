"""Retrieval quality on real ground truth: k-mers vs language models vs minimap2, and ANN cost.

    .venv/bin/python benchmarks/retrieval.py --size small            # ~1 min, k-mer 4 + minimap2
    .venv/bin/python benchmarks/retrieval.py --size medium           # ~25 min on a 2-core CPU
    .venv/bin/python benchmarks/retrieval.py --size large            # more queries and mutation rates
    .venv/bin/python benchmarks/retrieval.py --size medium --only hp-contigs,hp-cross --models default,kmer6

``--models`` picks the embedders (kmerK, ``random`` = random-init LM of the
default shape, ``default`` = the shipped model, or a model directory), so a
new model version is measured beside the same rows. ``--only`` picks blocks
(see ``BLOCKS``). Language models embed 1 kb tiles at ~15-25/s on one CPU
thread, so they only see the H. pylori blocks and the small chloroplast.

Ground truth: the NUCmer placements of the draft contigs (ragout-examples)
for same-strain retrieval; minimap2 placements of another strain (H. pylori
G27 on SJM180, E. coli DH1 on MG1655) for homologs; GenBank features of the
Arabidopsis chloroplast for the gene-family check. Before any timing the
script checks (1) that FAISS Flat returns the brute-force numpy top-k (ties
aside) and (2) that the truth mapping puts unmutated 100%-identity tiles on
their exact reference bases.

Prints one JSON line per configuration (method x index setting x mutation x
identity bin) and writes figures + a Markdown summary to ``--figures``.
Stores are kept in ``--workdir`` and reused by the next run.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import re
import sys
import time
from pathlib import Path

import numpy as np

from genoembed.embedders.kmer import KmerEmbedder
from genoembed.eval import (
    IndexConfig, evaluate, gene_family_agreement, minimap2_available, read_coords, sample_query_tiles,
    summary_markdown,
)
from genoembed.genome import open_genome

DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data"
HP = DATA / "h_pylori"
EC = DATA / "ecoli_k12"
CHLOROPLAST_FASTA = Path(__file__).resolve().parent.parent / "genoembed" / "data" / "demo" / "NC_000932.fa"
CHLOROPLAST_GENBANK = DATA / "chloroplast_arabidopsis" / "NC_000932.gb"

BLOCKS = ("hp-contigs", "hp-indels", "ec-contigs", "hp-cross", "ec-cross", "tile-sweep", "gene-family")
SIZES = {
    # lm_queries / kmer_queries: query tiles per H. pylori block with / without a language model
    "small": dict(lm_queries=50, kmer_queries=100, subs=(0.0, 0.1), indels=(), models="kmer4", ann=False,
                  sweep=(), cross=False),
    "medium": dict(lm_queries=300, kmer_queries=500, subs=(0.0, 0.05, 0.1, 0.2), indels=(0.01, 0.03),
                   models="kmer4,kmer5,kmer6,random,default", ann=True, sweep=(200, 500, 2000, 5000), cross=True),
    "large": dict(lm_queries=500, kmer_queries=2000, subs=(0.0, 0.05, 0.1, 0.15, 0.2), indels=(0.01, 0.03, 0.05),
                  models="kmer4,kmer5,kmer6,random,default", ann=True, sweep=(200, 500, 2000, 5000), cross=True),
}
ANN_CONFIGS = [IndexConfig("Flat")] + [IndexConfig("IVF64,Flat", nprobe=n) for n in (1, 4, 16)] \
    + [IndexConfig("HNSW32", ef_search=e) for e in (8, 32, 128)] \
    + [IndexConfig("IVF64,PQ16", nprobe=n) for n in (4, 16)]


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def random_init_model(directory: Path) -> Path:
    """A randomly initialised EsmForMaskedLM of the default model's shape, with the 6-mer tokenizer."""
    if (directory / "model.safetensors").is_file():
        return directory
    import torch

    from genoembed.train.pretrain import PretrainConfig, build_model
    from genoembed.embedders.tokenize import kmer_vocab, write_kmer_tokenizer

    torch.manual_seed(0)
    model = build_model(PretrainConfig(train_files=(), output_dir=directory), len(kmer_vocab()))
    model.save_pretrained(directory)
    write_kmer_tokenizer(directory)
    return directory


def make_models(names: list[str], workdir: Path, threads: int) -> dict:
    """Embedders by benchmark name. An LM's name carries its weights' fingerprint, so a new model
    version gets its own store and its own row instead of clashing with the old one."""
    from genoembed.embedders.hf import TransformersEmbedder
    from genoembed.resources import default_model_dir

    models = {}
    for name in names:
        kmer = re.fullmatch(r"kmer(\d+)", name)
        if kmer:
            models[f"kmer k={kmer.group(1)}"] = KmerEmbedder(int(kmer.group(1)))
        elif name == "random":
            models["random-init nt6"] = TransformersEmbedder(
                model_path=str(random_init_model(workdir / "random-nt6")), threads=threads)
        elif name == "default":
            shipped = default_model_dir()
            if shipped is None:
                log("the shipped default model is not installed: skipping it")
                continue
            model = TransformersEmbedder(model_path=str(shipped), threads=threads)
            models[f"{shipped.name} shipped ({model.fingerprint[:8]})"] = model
        elif Path(name).is_dir():
            model = TransformersEmbedder(model_path=name, threads=threads)
            models[f"{Path(name).name} ({model.fingerprint[:8]})"] = model
        else:
            raise SystemExit(f"--models: {name!r} is not kmerK, random, default or a model directory")
    return models


# --------------------------------------------------------------------------- correctness before timing


def check_flat_equals_numpy(workdir: Path) -> None:
    from genoembed.build import index
    from genoembed.tiles import TilingSpec
    from genoembed.vector_index import INDEX_FILE, load_index, prepare, search_index

    store = index(HP / "SJM180.fasta.gz", workdir / "check-kmer4", embedder=KmerEmbedder(4),
                  tiling=TilingSpec(window=1000, stride=1000))
    vectors = np.concatenate([v for _ids, v in store.iter_embeddings()])
    queries = prepare(vectors[::37] + np.random.default_rng(0).normal(0, 0.01, vectors[::37].shape), "ip")
    scores, ids = search_index(load_index(store.root / INDEX_FILE), queries, 10, "ip")
    exact = queries @ prepare(vectors, "ip").T
    top = -np.sort(-exact, axis=1)[:, :10]
    if not np.allclose(scores, top, atol=1e-4):
        raise SystemExit("correctness: FAISS Flat scores differ from brute-force numpy top-10")
    chosen = np.take_along_axis(exact, ids, axis=1)
    if not np.allclose(chosen, top, atol=1e-4):
        raise SystemExit("correctness: FAISS Flat ids are not a numpy top-10 (beyond ties)")
    log(f"check: Flat == numpy top-10 on {len(queries)} queries over {len(vectors)} tiles")


def check_truth_mapping() -> None:
    reference = open_genome(HP / "SJM180.fasta.gz")
    tiles, truth = sample_query_tiles(open_genome(HP / "SJM180_contigs.fasta.gz"), read_coords(HP / "SJM180.coords.gz"),
                                      tile=1000, n=200, seed=1)
    exact = checked = 0
    for row in truth.to_pylist():
        if row["identity"] < 100 or row["cover"] < 1:
            continue
        tile = tiles[row["query_index"]]
        true = reference.fetch(row["ref_chrom"], row["ref_start"], row["ref_end"], row["strand"]).upper()
        checked += 1
        exact += true == tile.sequence
    if checked < 50 or exact / checked < 0.9:
        raise SystemExit(f"correctness: only {exact}/{checked} 100%-identity tiles map onto their exact bases")
    log(f"check: {exact}/{checked} unmutated 100%-identity tiles map onto their exact reference bases")


# --------------------------------------------------------------------------- experiments


def emit(rows, experiment: str, out: list) -> None:
    for row in rows.to_pylist():
        row = {"benchmark": "retrieval", "experiment": experiment, **row}
        out.append(row)
        print(json.dumps(row, default=lambda x: None if isinstance(x, float) and math.isnan(x) else x), flush=True)


def run(size: str, workdir: Path, figures: Path, models: dict, blocks: set[str], name: str) -> list[dict]:
    plan = SIZES[size]
    workdir.mkdir(parents=True, exist_ok=True)
    check_flat_equals_numpy(workdir)
    check_truth_mapping()
    if not minimap2_available():
        log("minimap2 is not installed: no alignment upper bound (apt-get install minimap2)")
    rows: list[dict] = []
    kmers = {label: model for label, model in models.items() if isinstance(model, KmerEmbedder)}
    n = plan["lm_queries"] if len(kmers) < len(models) else plan["kmer_queries"]
    common = dict(tile=1000, stride=1000, strands="+", seed=0, progress=log)
    configs = ANN_CONFIGS if plan["ann"] else [IndexConfig("Flat")]
    hp = dict(reference=HP / "SJM180.fasta.gz", queries_fasta=HP / "SJM180_contigs.fasta.gz",
              coords=HP / "SJM180.coords.gz", embedders=models, n_queries=n, workdir=workdir / "hp", **common)

    # 1. same-strain retrieval on H. pylori: every embedder, substitutions, then indels
    if "hp-contigs" in blocks:
        emit(evaluate(index_configs=configs, substitution_rates=plan["subs"], **hp), "hpylori-contigs", rows)
    if "hp-indels" in blocks and plan["indels"]:
        emit(evaluate(indel_rates=plan["indels"], **hp), "hpylori-contigs-indels", rows)
    # 2. same-strain retrieval on E. coli K-12 (k-mers only: CPU time)
    if "ec-contigs" in blocks and kmers:
        emit(evaluate(EC / "MG1655-K12.fasta.gz", EC / "mg1655_contigs.fasta.gz", EC / "mg1655.coords.gz", kmers,
                      configs, n_queries=plan["kmer_queries"], substitution_rates=plan["subs"],
                      workdir=workdir / "ec", **common), "ecoli-contigs", rows)
    # 3. homologs in another strain, truth from minimap2: H. pylori G27 -> SJM180, E. coli DH1 -> MG1655
    if "hp-cross" in blocks and plan["cross"] and minimap2_available():
        emit(evaluate(**{**hp, "queries_fasta": HP / "G27.fasta.gz", "coords": None}),
             "hpylori-G27-vs-SJM180", rows)
    if "ec-cross" in blocks and plan["cross"] and minimap2_available() and kmers:
        emit(evaluate(EC / "MG1655-K12.fasta.gz", EC / "DH1.fasta.gz", None, kmers,
                      n_queries=plan["kmer_queries"], substitution_rates=plan["subs"], workdir=workdir / "ec",
                      **common), "ecoli-DH1-vs-MG1655", rows)
    # 4. tile length sweep, k=5, 10% substitutions
    for tile in plan["sweep"] if "tile-sweep" in blocks else ():
        emit(evaluate(HP / "SJM180.fasta.gz", HP / "SJM180_contigs.fasta.gz", HP / "SJM180.coords.gz",
                      {"kmer k=5": KmerEmbedder(5)}, n_queries=plan["kmer_queries"], tile=tile, stride=tile,
                      strands="+", substitution_rates=(0.0, 0.1), workdir=workdir / f"hp-tile{tile}", seed=0,
                      progress=log), f"hpylori-tile-{tile}", rows)
    # 5. gene-family agreement: chloroplast gene tiles against the annotated chloroplast (self-retrieval)
    if "gene-family" in blocks:
        emit(gene_family_agreement(CHLOROPLAST_FASTA, CHLOROPLAST_GENBANK, models, tile=300,
                                   substitution_rates=plan["subs"], workdir=workdir / "chloroplast", progress=log),
             "chloroplast-gene-family", rows)
    write_figures(rows, figures, name)
    return rows


def write_figures(rows: list[dict], figures: Path, name: str) -> None:
    """Plots of whichever blocks ran, and ``{name}-summary.md`` with their tables."""
    from genoembed.plot import plot_recall_vs_mutation, plot_recall_vs_qps

    figures.mkdir(parents=True, exist_ok=True)
    pick = lambda experiment: [r for r in rows if r["experiment"] == experiment]  # noqa: E731
    hp, ec = pick("hpylori-contigs"), pick("ecoli-contigs")
    if hp:
        plot_recall_vs_mutation(hp, figures / f"{name}-hpylori-subst-r1.png", k=1,
                                title="H. pylori SJM180 contigs -> SJM180: recall@1 vs substitutions")
        plot_recall_vs_mutation(hp, figures / f"{name}-hpylori-subst-r10.png", k=10,
                                title="H. pylori SJM180 contigs -> SJM180: recall@10 vs substitutions")
    if hp and pick("hpylori-contigs-indels"):
        indels = pick("hpylori-contigs-indels") + [r for r in hp if not r["substitution_rate"]]
        plot_recall_vs_mutation(indels, figures / f"{name}-hpylori-indel-r1.png", k=1, rate="indel_rate",
                                title="H. pylori SJM180 contigs -> SJM180: recall@1 vs indels")
    if ec:
        plot_recall_vs_mutation(ec, figures / f"{name}-ecoli-subst-r1.png", k=1,
                                title="E. coli MG1655 contigs -> MG1655: recall@1 vs substitutions")
    if pick("ecoli-DH1-vs-MG1655"):
        plot_recall_vs_mutation(pick("ecoli-DH1-vs-MG1655"), figures / f"{name}-ecoli-dh1-subst-r1.png", k=1,
                                title="E. coli DH1 tiles -> MG1655: recall@1 vs substitutions")
    for experiment, label, tiles in (("hpylori-contigs", "hpylori", "1.6k"), ("ecoli-contigs", "ecoli", "4.6k")):
        if any(r["index"] not in (None, "Flat") for r in pick(experiment)):
            plot_recall_vs_qps(pick(experiment), figures / f"{name}-{label}-ann.png",
                               title=f"{label}, {tiles} tiles: ANN recall@10 vs QPS (2-core CPU)")
    experiments = list(dict.fromkeys(r["experiment"] for r in rows))
    text = [f"{name}, {platform.node()}, {time.strftime('%Y-%m-%d')}\n"]
    for experiment in experiments:
        if experiment == "chloroplast-gene-family":
            text.append(f"\n### {experiment}\n\n" + family_markdown(pick(experiment)))
            continue
        chosen = [r for r in pick(experiment)
                  if r["index"] in (None, "Flat") or experiment in ("hpylori-contigs", "ecoli-contigs")
                  and not r["substitution_rate"]]
        text.append(f"\n### {experiment}\n\n" + summary_markdown(chosen))
        bins = [r for r in pick(experiment) if r["identity_bin"] != "all" and r["index"] in (None, "Flat")
                and not r["substitution_rate"] and not r["indel_rate"]]
        if bins and "-vs-" in experiment:
            text.append("\nper identity bin (recall@1 / recall@10 / queries):\n\n| method | bin | R@1 | R@10 | n |\n"
                        "|---|---|---|---|---|\n" + "".join(
                            f"| {r['method']} | {r['identity_bin']} | {r['recall_at_1']:.3f} | "
                            f"{r['recall_at_10']:.3f} | {r['queries']} |\n" for r in bins))
    (figures / f"{name}-summary.md").write_text("".join(text))


def family_markdown(rows: list[dict]) -> str:
    """Gene-family agreement: one line per method x substitution rate x own-gene mode."""
    lines = ["| method | subst | own gene | genes | family@1 | family@10 | chance@1 |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['method']} | {r['substitution_rate']:.2f} | {r['own_gene']} | {r['query_genes']} | "
              f"{r['family_at_1']:.3f} | {r['family_at_10']:.3f} | {r['chance_at_1']:.3f} |" for r in rows]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="small")
    parser.add_argument("--models", help="comma-separated: kmerK, random, default, or a model directory "
                                         "(default: the size's set)")
    parser.add_argument("--only", help=f"comma-separated blocks to run, of {','.join(BLOCKS)} (default: all)")
    parser.add_argument("--threads", type=int, default=1, help="torch and FAISS threads")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/genoembed-bench-retrieval"),
                        help="stores are built here once and reused")
    parser.add_argument("--figures", type=Path, default=Path(__file__).resolve().parent / "figures")
    parser.add_argument("--name", help="prefix of the figure and summary files "
                                       "(default: retrieval-SIZE, retrieval-SIZE-partial with --only)")
    args = parser.parse_args()
    blocks = set(args.only.split(",")) if args.only else set(BLOCKS)
    if blocks - set(BLOCKS):
        raise SystemExit(f"--only: unknown block(s) {', '.join(sorted(blocks - set(BLOCKS)))}; use {', '.join(BLOCKS)}")
    set_threads(args.threads)
    models = make_models((args.models or SIZES[args.size]["models"]).split(","), args.workdir, args.threads)
    name = args.name or f"retrieval-{args.size}" + ("-partial" if args.only else "")
    began = time.perf_counter()
    run(args.size, args.workdir, args.figures, models, blocks, name)
    log(f"done in {time.perf_counter() - began:.0f} s")


def set_threads(threads: int) -> None:
    import faiss
    import torch

    torch.set_num_threads(threads)
    faiss.omp_set_num_threads(threads)


if __name__ == "__main__":
    main()
