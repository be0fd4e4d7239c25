"""`genoembed eval`: retrieval quality of embedders (and minimap2) on real ground truth."""

from __future__ import annotations

import re
from enum import Enum
from pathlib import Path
from typing import Optional

import typer

from genoembed.cli.common import OutputFormat, configure_logging, console, emit_table, handle_errors, pick
from genoembed.errors import InputError


def index_configs(factories: list[str], nprobes: list[int], ef_searches: list[int]):
    """One IndexConfig per factory and search setting: every nprobe for IVF, every efSearch for HNSW."""
    from genoembed.eval import IndexConfig

    configs = []
    for factory in factories:
        if re.search(r"IVF\d+", factory) and nprobes:
            configs += [IndexConfig(factory, nprobe=n) for n in nprobes]
        elif "HNSW" in factory and ef_searches:
            configs += [IndexConfig(factory, ef_search=e) for e in ef_searches]
        else:
            configs.append(IndexConfig(factory))
    return configs


class Truth(str, Enum):
    """What counts as a correct hit: the aligned locus (same DNA) or the protein homolog's gene."""

    alignment = "alignment"
    protein = "protein"


class StrandChoice(str, Enum):
    plus = "+"
    both = "both"


@handle_errors
def eval_command(
    reference: Path = typer.Argument(..., exists=True, dir_okay=False, help="Reference genome FASTA to index (plain or gzip)."),
    queries: Path = typer.Argument(..., exists=True, dir_okay=False, help="Query FASTA: draft contigs or a related strain; query tiles are cut from it."),
    truth: Truth = typer.Option(Truth.alignment, "--truth", help="alignment: query tiles should find their aligned locus; protein: a query gene's central window should find the tiles of its protein homolog (pyrodigal genes, pyopal Smith-Waterman; needs genoembed[protein])."),
    strands: StrandChoice = typer.Option(StrandChoice.both, "--strands", help="Reference tiles on '+' only or on both strands (each locus is counted once either way)."),
    coords: Optional[Path] = typer.Option(None, "--coords", exists=True, dir_okay=False, help="NUCmer show-coords table placing the query contigs on the reference (plain or .gz); without it the truth is derived with minimap2."),
    model: Optional[list[str]] = typer.Option(None, "--model", "-m", help="Embedder: 'default' (shipped retrieval model), 'mlm' (shipped masked-LM model), 'kmer[:K]', 'aa:K[:orf]' or a local model directory (repeatable; default: kmer:4). With --truth protein also 'random' and 'aa:K:frames' (six rows per tile); default there: every baseline."),
    factory: Optional[list[str]] = typer.Option(None, "--index", help="FAISS index factory string, e.g. Flat, IVF64,Flat, HNSW32 (repeatable; Flat is always run as the exact reference)."),
    nprobe: Optional[list[int]] = typer.Option(None, "--nprobe", min=1, help="IVF lists to visit (repeatable: one run per value)."),
    ef_search: Optional[list[int]] = typer.Option(None, "--ef-search", min=1, help="HNSW search breadth (repeatable: one run per value)."),
    window: Optional[int] = typer.Option(None, "--window", min=50, help="Query and reference tile length in bases [default: 1000]."),
    tile: Optional[int] = typer.Option(None, "--tile", min=50, hidden=True, help="Old spelling of --window."),
    stride: Optional[int] = typer.Option(None, "--stride", min=1, help="Reference tile stride in bases (default: window / 2)."),
    n_queries: int = typer.Option(500, "--queries", "-n", min=1, help="Number of query tiles to sample."),
    seed: int = typer.Option(0, "--seed", help="Seed for sampling tiles, strands and mutations."),
    substitution_rate: Optional[list[float]] = typer.Option(None, "--substitution-rate", min=0.0, max=0.75, help="Injected substitution rate per base (repeatable; default 0)."),
    indel_rate: Optional[list[float]] = typer.Option(None, "--indel-rate", min=0.0, max=0.5, help="Injected indel rate per base (repeatable; default 0)."),
    k: Optional[list[int]] = typer.Option(None, "-k", min=1, help="Report recall@K (repeatable; default 1, 10, 100)."),
    minimap2: Optional[bool] = typer.Option(None, "--minimap2/--no-minimap2", help="Map the same tiles with minimap2 as the alignment upper bound (default: when installed)."),
    minimap2_preset: Optional[str] = typer.Option(None, "--minimap2-preset", help="minimap2 -x preset for the query tiles (default: sr up to 300 bp, else asm20)."),
    workdir: Optional[Path] = typer.Option(None, "--workdir", file_okay=False, help="Keep the reference stores here and reuse them on the next run (default: a temporary directory)."),
    format: OutputFormat = typer.Option(OutputFormat.table, "--format", "-f", help="Output format of the result rows."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Write the result rows to this file instead of stdout."),
    summary: Optional[Path] = typer.Option(None, "--summary", help="Also write a Markdown summary table to this file."),
    all_bins: bool = typer.Option(False, "--all-bins", help="Show the per-identity-bin rows too (files always get them)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress messages or warnings."),
):
    """Index the reference with each embedder, search tiles cut from the queries, score hits against the true loci."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from genoembed.eval import evaluate, summary_markdown
    from genoembed.embedders import get_embedder

    configure_logging(quiet)
    if model and len(set(model)) != len(model):
        raise InputError("--model: the same embedder is listed twice")
    say = None if quiet else (lambda message: console().print(message, style="dim", markup=False))
    if truth is Truth.protein:
        unused = [name for name, value in (("--coords", coords), ("--index", factory), ("--nprobe", nprobe),
                                           ("--ef-search", ef_search), ("--substitution-rate", substitution_rate),
                                           ("--indel-rate", indel_rate), ("--minimap2", minimap2)) if value]
        if unused:
            raise InputError(f"--truth protein does not use {', '.join(unused)}; drop them (protein truth comes from "
                             "pyrodigal genes and Smith-Waterman, searched exactly)")
        return protein_eval(reference, queries, list(model or []), window=pick(window, tile, "--window", "--tile"),
                            stride=stride, strands=strands.value, n_queries=n_queries, seed=seed, ks=list(k or []),
                            format=format, output=output, summary=summary, say=say)
    names = list(model or ["kmer:4"])
    embedders = {name: get_embedder(name) for name in names}
    ks = tuple(k or (1, 10, 100))
    rows = evaluate(
        reference, queries, coords=coords, embedders=embedders,
        index_configs=index_configs(list(factory or ["Flat"]), list(nprobe or []), list(ef_search or [])),
        tile=pick(window, tile, "--window", "--tile") or 1000, stride=stride, strands=strands.value, n_queries=n_queries,
        seed=seed,
        substitution_rates=tuple(substitution_rate or (0.0,)), indel_rates=tuple(indel_rate or (0.0,)),
        ks=ks, minimap2=minimap2, minimap2_preset=minimap2_preset, workdir=workdir,
        progress=say)
    if summary is not None:
        summary.write_text(summary_markdown(rows, ks=sorted(set(ks))))
    shown = rows
    if output is None and not all_bins and rows.num_rows:
        shown = rows.filter(pc.equal(rows["identity_bin"], pa.scalar("all")))
    emit_table(shown, format, output, title="retrieval quality")


def protein_eval(reference: Path, queries: Path, names: list[str], *, window, stride, strands, n_queries, seed, ks,
                 format, output, summary, say) -> None:
    """`genoembed eval --truth protein`: query genes of QUERIES against tiles of REFERENCE, one row per bin."""
    import pyarrow as pa

    from genoembed.eval.protein import DEFAULT_METHODS, evaluate_task, method_for, protein_summary, protein_task

    window = window or 1000
    ks = sorted(set(ks or (1, 10)))
    task = protein_task(queries, reference, n_queries=n_queries, window=window, stride=stride or window // 2,
                        strands=strands, seed=seed, say=say or (lambda message: None))
    methods = [method_for(name) for name in names or DEFAULT_METHODS]
    rows = evaluate_task(task, methods, ks=ks, say=say or (lambda message: None))
    if summary is not None:
        summary.write_text(protein_summary(rows, ks))
    emit_table(pa.Table.from_pylist(rows), format, output, title="protein homolog retrieval")
