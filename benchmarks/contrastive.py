"""Retrieval of the contrastive model vs the MLM model, random init, k-mers and minimap2, on held-out genomes.

    .venv/bin/python benchmarks/contrastive.py --methods kmer4,kmer6,minimap2 --out /tmp/c/base.jsonl
    .venv/bin/python benchmarks/contrastive.py --methods random,mlm,contrastive \\
        --contrastive genoembed/data/models/genoembed-nt6-contrastive --out /tmp/c/lm.jsonl
    .venv/bin/python benchmarks/contrastive.py --summary /tmp/c/base.jsonl /tmp/c/lm.jsonl

Tasks (1 kb query tiles, reference tiled 1 kb / stride 1 kb / forward strand, exact search, scored by
:func:`genoembed.eval.run.evaluate`; every genome here is outside the contrastive training set):

- ``dh1-draft``: simulated draft contigs of E. coli DH1 (20-150 kb pieces cut at random offsets, half of
  them reverse-complemented) -> DH1, substitutions 0/10/20 %. DH1 is held out of both pretraining and
  fine-tuning. Truth: where each piece was cut.
- ``sjm180-draft``: the real SJM180 draft contigs -> SJM180 (NUCmer placements), 0/10/20 %. SJM180 is
  held out of fine-tuning but was in the MLM pretraining corpus (both LMs saw its sequence as text).
- ``gambia-vs-sjm180``: H. pylori Gambia94_24 tiles -> SJM180 (a related strain; truth minimap2 -x asm20).
  Gambia94_24 is held out of everything.

Prints one JSON line per method x task x mutation (``identity_bin == 'all'`` and per bin) and appends it to
``--out``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parent))

DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data"
HP = DATA / "h_pylori"
EC = DATA / "ecoli_k12"


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def simulated_draft(reference: Path, out_dir: Path, seed: int = 0) -> tuple[Path, pa.Table]:
    """Cut a genome into 20-150 kb 'contigs' at random offsets (half reverse-complemented) + their truth."""
    from genoembed.eval import ALIGNMENTS
    from genoembed.genome import open_genome
    from genoembed.seqio import reverse_complement
    from genoembed.synthetic import write_fasta

    genome = open_genome(reference)
    rng = np.random.default_rng(seed)
    records, rows = {}, {name: [] for name in ALIGNMENTS.names}
    for chrom, length in genome.contigs.items():
        position = int(rng.integers(0, 5000))
        while position + 20_000 <= length:
            size = min(int(rng.integers(20_000, 150_000)), length - position)
            sequence = genome.fetch(chrom, position, position + size).upper()
            minus = bool(rng.random() < 0.5)
            name = f"piece{len(records)}"
            records[name] = reverse_complement(sequence) if minus else sequence
            for key, value in (("ref_chrom", chrom), ("ref_start", position), ("ref_end", position + size),
                               ("query_chrom", name), ("query_start", 0), ("query_end", size),
                               ("strand", "-" if minus else "+"), ("identity", 100.0)):
                rows[key].append(value)
            position += size + int(rng.integers(1, 5000))  # gaps between contigs, random frames
    out_dir.mkdir(parents=True, exist_ok=True)
    path = write_fasta(out_dir / f"{reference.name.split('.')[0]}-pieces.fa", records)
    return path, pa.Table.from_pydict(rows, schema=ALIGNMENTS)


def embedders(methods: list[str], workdir: Path, contrastive: Path | None, mlm: Path | None = None,
              frames: int | None = None) -> dict:
    """Named embedders; the LMs average ``frames`` reading frames (None: the embedder's default, k)."""
    from genoembed.embedders.kmer import KmerEmbedder

    lm_options = {"frames": frames} if frames else {}
    suffix = f" frames={frames}" if frames else ""
    out = {}
    for method in methods:
        if method.startswith("kmer"):
            out[f"k-mer k={method[4:]}"] = KmerEmbedder(int(method[4:]))
        elif method == "random":
            from genoembed.embedders.hf import TransformersEmbedder
            from retrieval import random_init_model

            out["random-init nt6" + suffix] = TransformersEmbedder(str(random_init_model(workdir / "random-nt6")),
                                                                  **lm_options)
        elif method == "mlm":
            from genoembed.embedders.hf import TransformersEmbedder
            from genoembed.resources import default_model_dir

            shipped = mlm or default_model_dir("mlm")
            if shipped is None:
                raise SystemExit("the shipped genoembed-nt6 masked-LM model is not installed")
            out[f"MLM ({Path(shipped).name})" + suffix] = TransformersEmbedder(str(shipped), **lm_options)
        elif method == "contrastive":
            from genoembed.embedders.hf import TransformersEmbedder

            if contrastive is None:
                raise SystemExit("--contrastive DIR is needed for method 'contrastive'")
            out[f"contrastive ({contrastive.name})" + suffix] = TransformersEmbedder(str(contrastive), **lm_options)
        elif method != "minimap2":
            raise SystemExit(f"unknown method {method}")
    return out


def run(methods: list[str], tasks: list[str], n: int, workdir: Path, contrastive: Path | None, out: Path,
        mlm: Path | None = None, frames: int | None = None) -> None:
    from genoembed.eval import IndexConfig, evaluate, read_coords

    chosen = embedders(methods, workdir, contrastive, mlm, frames)
    use_minimap2 = "minimap2" in methods
    common = dict(index_configs=[IndexConfig("Flat")], tile=1000, stride=1000, strands="+", seed=0, n_queries=n,
                  minimap2=use_minimap2, progress=log, repeats=1)
    subs = (0.0, 0.1, 0.2)
    for task in tasks:
        began = time.perf_counter()
        if task == "dh1-draft":
            pieces, truth = simulated_draft(EC / "DH1.fasta.gz", workdir / "pieces")
            rows = evaluate(EC / "DH1.fasta.gz", pieces, truth, chosen, substitution_rates=subs,
                            workdir=workdir / "dh1", **common)
        elif task == "sjm180-draft":
            rows = evaluate(HP / "SJM180.fasta.gz", HP / "SJM180_contigs.fasta.gz", read_coords(HP / "SJM180.coords.gz"),
                            chosen, substitution_rates=subs, workdir=workdir / "sjm180", **common)
        elif task == "gambia-vs-sjm180":
            rows = evaluate(HP / "SJM180.fasta.gz", HP / "Gambia94_24.fasta.gz", None, chosen,
                            workdir=workdir / "sjm180", **common)
        else:
            raise SystemExit(f"unknown task {task}")
        with open(out, "a") as handle:
            for row in rows.to_pylist():
                row = {"benchmark": "contrastive", "task": task, **row}
                line = json.dumps(row, default=lambda x: None if isinstance(x, float) and math.isnan(x) else x)
                print(line, flush=True)
                handle.write(line + "\n")
        log(f"{task}: {time.perf_counter() - began:.0f} s")


def summary(paths: list[Path]) -> str:
    rows = [json.loads(line) for p in paths for line in p.read_text().splitlines() if line.strip()]
    rows = [r for r in rows if r["identity_bin"] == "all"]
    lines = ["| task | method | dim | subst | R@1 | R@10 | MRR |", "|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: (r["task"], r["substitution_rate"], r["method"])):
        lines.append(f"| {r['task']} | {r['method']} | {r['dim'] or ''} | {r['substitution_rate']:.2f} | "
                     f"{r['recall_at_1']:.3f} | {r['recall_at_10']:.3f} | {r['mrr']:.3f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default="kmer4,kmer6,minimap2",
                        help="comma list of kmer4, kmer6, minimap2, random, mlm, contrastive")
    parser.add_argument("--tasks", default="dh1-draft,sjm180-draft,gambia-vs-sjm180")
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--contrastive", type=Path, default=None)
    parser.add_argument("--mlm", type=Path, default=None, help="MLM model dir (default: the shipped genoembed-nt6)")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/genoembed-bench-contrastive"))
    parser.add_argument("--out", type=Path, default=Path("/tmp/genoembed-bench-contrastive/results.jsonl"))
    parser.add_argument("--summary", type=Path, nargs="*", help="print a Markdown table of these result files")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--frames", type=int, default=None,
                        help="reading frames the LMs average (default: the embedder's, k for k-mer models)")
    args = parser.parse_args()
    if args.summary:
        print(summary(args.summary))
        return
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    args.workdir.mkdir(parents=True, exist_ok=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    began = time.perf_counter()
    run(args.methods.split(","), args.tasks.split(","), args.queries, args.workdir, args.contrastive, args.out,
        args.mlm, args.frames)
    log(f"done in {time.perf_counter() - began:.0f} s")


if __name__ == "__main__":
    main()
