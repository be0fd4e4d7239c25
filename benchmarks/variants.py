"""Variants per second (`score_variants`) and explain time per hit, on real DH1 vs MG1655 variants.

MG1655 is indexed with the shipped default model (1 kb tiles every 500 bp, one strand; cached under
--work). DH1 is aligned with ``minimap2 -cx asm5 --cs`` and its SNVs / small indels are called from the
cs tags (`genoembed.variants.calls_from_cs`; 267 of them). Each size scores N variants (REFs checked
against MG1655): the real ones first, then seeded random SNVs on MG1655 to make up N, and explains M hits (rank 1..M of the first variant windows); correctness is asserted: every
variant shifts its window (> 0), and every explanation's contributions sum to its cosine within 1e-5.
Prints one JSON line per size.

    .venv/bin/python benchmarks/variants.py small medium large
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from genoembed.build import index  # noqa: E402
from genoembed.embedders import get_embedder  # noqa: E402
from genoembed.explain import explain_pair, resolve_hit  # noqa: E402
from genoembed.search import Query, query_source  # noqa: E402
from genoembed.store import Store  # noqa: E402
from genoembed.tiles import TilingSpec  # noqa: E402
from genoembed.variants import Variant, calls_from_cs, read_variants, score_variants, window_pair, write_vcf  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "ecoli_k12"
SIZES = {"small": (100, 5), "medium": (2_000, 20), "large": (20_000, 50)}  # (variants, explained hits)


def prepare(work: Path) -> tuple[Store, Path]:
    """The MG1655 default-model store and the DH1 VCF (built once)."""
    work.mkdir(parents=True, exist_ok=True)
    root = work / "mg1655-default"
    store = Store.open(root) if (root / "manifest.json").is_file() else index(
        DATA / "MG1655-K12.fasta.gz", root, embedder=get_embedder("default"), tiling=TilingSpec(window=1000, stride=500))
    vcf = work / "dh1.vcf"
    if not vcf.is_file():
        paf = subprocess.run(["minimap2", "-t", "1", "-cx", "asm5", "--cs", str(DATA / "MG1655-K12.fasta.gz"),
                              str(DATA / "DH1.fasta.gz")], check=True, capture_output=True, text=True).stdout
        genome = query_source(store)
        write_vcf(vcf, calls_from_cs(paf.splitlines(), genome.fetch), genome.contigs, source="minimap2 asm5 cs")
    return store, vcf


def random_snvs(genome, count: int, seed: int = 0) -> list[Variant]:
    """``count`` seeded SNVs at random positions of the store's contig (ALT != REF)."""
    rng = np.random.default_rng(seed)
    chrom = next(iter(genome.contigs))
    snvs = []
    for pos in np.sort(rng.choice(genome.contigs[chrom], size=count, replace=False)):
        ref = genome.fetch(chrom, int(pos), int(pos) + 1).upper()
        snvs.append(Variant(chrom, int(pos), ref, str(rng.choice([b for b in "ACGT" if b != ref]))))
    return snvs


def run(store: Store, vcf: Path, size: str) -> dict:
    count, hits = SIZES[size]
    genome = query_source(store)
    started = time.perf_counter()
    variants = (read_variants(vcf, genome=genome) + random_snvs(genome, count))[:count]
    report = score_variants(store, variants)
    variant_seconds = time.perf_counter() - started
    shifts = np.array(report.column("shift").to_pylist())
    assert (shifts > 0).all(), "a variant inside its window left the embedding unchanged"
    embedder = store.embedder()
    row = report.to_pylist()[0]
    query = Query("alt", window_pair(genome, variants[:1], row["chrom"], row["window_start"], row["window_end"])[1])
    started, worst = time.perf_counter(), 0.0
    for rank in range(1, hits + 1):
        result = explain_pair(embedder, query, resolve_hit(store, query, rank, embedder))
        worst = max(worst, abs(result.query_contributions.sum() - result.cosine),
                    abs(result.hit_contributions.sum() - result.cosine))
    explain_seconds = time.perf_counter() - started
    assert worst < 1e-5, f"contributions miss the cosine by {worst}"
    ranks = report.column("ref_rank").to_pylist()
    return {"benchmark": "variants", "size": size, "variants": len(variants), "variants_per_s": round(len(variants) / variant_seconds, 1),
            "median_shift": float(np.median(shifts)), "ref_rank_1": sum(r == 1 for r in ranks) / len(ranks),
            "explained_hits": hits, "explain_s_per_hit": round(explain_seconds / hits, 4),
            "max_sum_error": worst, "date": dt.date.today().isoformat()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sizes", nargs="*", default=["small", "medium"], choices=list(SIZES))
    parser.add_argument("--work", type=Path, default=Path("/tmp/genoembed-bench-variants"))
    arguments = parser.parse_args()
    store, vcf = prepare(arguments.work)
    for size in arguments.sizes:
        print(json.dumps(run(store, vcf, size)), flush=True)


if __name__ == "__main__":
    main()
