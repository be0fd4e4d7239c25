"""`genoembed index`: build (or resume) a store from a recipe and/or options."""

from __future__ import annotations

import dataclasses
import json
import time
from enum import Enum
from pathlib import Path
from typing import Optional

import typer

from genoembed.cli.common import OutputFormat, console, configure_logging, handle_errors, pick, set_threads
from genoembed.embedders import EmbedderOptions, Pooling
from genoembed.errors import InputError
from genoembed.features import parse_alias_option
from genoembed.recipe import Recipe, load_recipe, model_name
from genoembed.tiles import TilingSpec
from genoembed.tiles import SoftMask, Strands
from genoembed.vector_index import Metric


class VectorDtype(str, Enum):
    float32 = "float32"
    float16 = "float16"


class TileUnits(str, Enum):
    tiles = "tiles"
    genes = "genes"


class Engine(str, Enum):
    local = "local"
    ray = "ray"


@handle_errors
def index(
    recipe: Optional[Path] = typer.Argument(None, help="Index recipe (TOML, e.g. indexes/demo.toml); options below override it."),
    fasta: Optional[list[Path]] = typer.Option(None, "--fasta", help="Genome FASTA (plain, gzip or bgzip); repeat to put several genomes in one store."),
    genome_name: Optional[str] = typer.Option(None, "--genome-name", help="Name of the genome in the store (default: the FASTA file name without extensions; one --fasta only)."),
    append: bool = typer.Option(False, "--append", help="Add the genome(s) to an existing store built with the same model and tiling: their vectors go into a new index part (nothing indexed is rewritten; `genoembed compact` folds parts into one)."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Store directory (default: recipe path without .toml)."),
    out: Optional[Path] = typer.Option(None, "--out", hidden=True, help="Old spelling of --output."),
    model: Optional[str] = typer.Option(None, "--model", help="'default' (shipped retrieval model), 'mlm' (shipped masked-LM model), 'kmer[:K]' (k-mer profile), 'aa:K' / 'aa:K:orf' (six-frame amino-acid k-mers), 'protein' (shipped protein-homolog model, 16x slower), or a local Hugging Face model directory [default: default]."),
    trust_remote_code: bool = typer.Option(False, "--trust-remote-code", help="Allow a model directory's own Python code to run (DNABERT-2, HyenaDNA, Caduceus, NT-v2)."),
    pooling: Optional[Pooling] = typer.Option(None, help="How token vectors become one tile vector (transformer models)."),
    layer: Optional[int] = typer.Option(None, help="Hidden layer to pool (-1 = last; transformer models)."),
    reverse_complement: Optional[bool] = typer.Option(None, "--rc/--no-rc", help="Average each tile with its reverse complement (default: on unless the model is RC-equivariant)."),
    frames: Optional[int] = typer.Option(None, min=1, help="Reading frames averaged per strand (default: k for non-overlapping k-mer models such as the shipped one, so a vector does not depend on where a tile starts; 1 = k times faster, frame-dependent)."),
    batch_size: Optional[int] = typer.Option(None, min=1, help="Sequences per model forward pass (transformer models)."),
    device: Optional[str] = typer.Option(None, help="auto (cuda when available), cpu, cuda or cuda:N."),
    dtype: Optional[str] = typer.Option(None, help="auto (bf16 on GPU, fp32 on CPU), float32, bfloat16 or float16; reduced precision is refused if it moves vectors (cosine < 0.999)."),
    compile_model: bool = typer.Option(False, "--compile", help="torch.compile the model (pays on long runs; ~1 min to compile)."),
    window: Optional[int] = typer.Option(None, min=1, help=f"Tile length in bases [default: {TilingSpec().window}, or the recipe's]."),
    stride: Optional[int] = typer.Option(None, min=1, help=f"Distance between tile starts in bases [default: {TilingSpec().stride}, or the recipe's]."),
    strands: Optional[Strands] = typer.Option(None, help="Tile the forward strand (+), reverse (-) or both."),
    max_n_fraction: Optional[float] = typer.Option(None, min=0.0, max=1.0, help="Skip tiles with more than this fraction of N/ambiguous bases."),
    soft_mask: Optional[SoftMask] = typer.Option(None, help="Soft-masked (lowercase) bases: upper = embed as normal, keep = pass case to the model, skip = drop masked tiles."),
    contig: Optional[list[str]] = typer.Option(None, "--contig", help="Only tile this contig (repeat for several)."),
    circular: Optional[list[str]] = typer.Option(None, "--circular", help="Contig to tile round its origin (a plasmid, a bacterial chromosome; repeat for several). FASTA headers with circular=true or [topology=circular], GenBank LOCUS ... circular and GFF3 Is_circular=true in --annotations mark them too."),
    units: Optional[TileUnits] = typer.Option(None, "--units", help="tiles = windows of --window/--stride; genes = one row per gene called by pyrodigal (prokaryotes; its coding-strand DNA is embedded, so a hit is a gene: use with --model protein)."),
    factory: Optional[str] = typer.Option(None, help="FAISS index factory string: Flat, IVF256,PQ16, HNSW32, ...; a refine stage re-ranks a compressed search with finer vectors (IVF256,PQ16,Refine(SQfp16)). An IVF layout needs 39 training tiles per list (IVFn needs 39*n tiles, FAISS's rule), else it is refused with a factory that fits."),
    metric: Optional[Metric] = typer.Option(None, help="ip = cosine on normalised vectors; l2 = Euclidean."),
    part_rows: Optional[int] = typer.Option(None, "--part-rows", min=1, help="At most this many vectors per index file: a store bigger than RAM is indexed in parts, each built on its own and opened memory-mapped (searches read only the pages they touch) [default: one file]."),
    recall_target: Optional[float] = typer.Option(None, "--recall-target", min=0.01, max=1.0, help="Approximate indexes (IVF, HNSW): tune nprobe/efSearch (and the refine stage's --k-factor) at build time until recall@10 against exact search reaches this [default: 0.95]; the setting is recorded and used by every search unless --nprobe/--ef-search/--k-factor is given."),
    annotations: Optional[list[Path]] = typer.Option(None, "--annotations", "-a", help="BED/GTF/GFF3/GenBank file to add (repeatable)."),
    alias: Optional[list[str]] = typer.Option(None, "--alias", help="Rename an annotation contig: FROM=TO (repeatable)."),
    auto_alias: bool = typer.Option(False, "--auto-alias", help="Apply the suggested contig renames (chr1->1, version suffixes)."),
    batch_rows: Optional[int] = typer.Option(None, min=1, help="Tiles handed to the embedder per call (recipe [store] batch_rows)."),
    shard_rows: Optional[int] = typer.Option(None, min=1, help="Rows per Parquet shard."),
    embedding_dtype: Optional[VectorDtype] = typer.Option(None, "--embedding-dtype", help="How vectors are stored in the shards: float32, or float16 for half the disk (search and the index use float32) [default: float32]."),
    engine: Engine = typer.Option(Engine.local, help="local = this machine; ray = Ray actors, one model copy each (pip install 'genoembed[dist]')."),
    address: Optional[str] = typer.Option(None, "--address", help="Ray cluster address (e.g. ray://head:10001 or auto); default: start a local cluster."),
    num_workers: int = typer.Option(2, "--num-workers", min=1, help="Ray embedding actors (one per GPU on a GPU cluster)."),
    gpus_per_worker: float = typer.Option(0.0, "--gpus-per-worker", min=0.0, help="GPUs per Ray actor (0 = CPU)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing store built with other settings (its readers finish on the old store, whose files are deleted once none is left)."),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, help="CPU threads for embedding (torch) and building the vector index (FAISS OpenMP); default: the libraries' own."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar or warnings."),
    format: OutputFormat = typer.Option(OutputFormat.table, "--format", "-f", help="table = one line of text; json = a JSON summary line."),
    json_output: bool = typer.Option(False, "--json", hidden=True, help="Old spelling of --format json."),
):
    """Tile a genome, embed every tile, write Parquet shards, build the FAISS index, add annotations."""
    as_json = json_output or format is OutputFormat.json
    configure_logging(quiet or as_json)
    set_threads(threads)
    output = pick(output, out, "--output", "--out")
    plan = load_recipe(recipe) if recipe else None
    if plan is None:
        if not fasta or output is None:
            raise InputError("give a recipe (e.g. indexes/demo.toml) or both --fasta and --output")
        plan = Recipe(fastas=tuple(fasta), output=output)
    tiling_overrides = {name: value for name, value in dict(
        window=window, stride=stride, strands=strands, max_n_fraction=max_n_fraction, soft_mask=soft_mask,
        units=units.value if units else None,
        contigs=tuple(contig) if contig else None).items() if value is not None}
    index_overrides = {name: value for name, value in dict(factory=factory, metric=metric, recall_target=recall_target,
                                                           part_rows=part_rows).items()
                       if value is not None}
    options = EmbedderOptions(pooling=pooling.value if pooling else None, layer=layer,
                              reverse_complement=reverse_complement, frames=frames, batch_size=batch_size,
                              device=device, dtype=dtype, compile=compile_model or None,
                              trust_remote_code=trust_remote_code or None)
    plan = dataclasses.replace(
        plan, fastas=tuple(fasta) if fasta else plan.fastas, output=output or plan.output,
        genome_name=genome_name or (plan.genome_name if not fasta else None),
        circular=plan.circular + tuple(circular or ()),
        model=model_name({"name": model}, None) if model else plan.model,
        model_options=plan.model_options.merged(options),
        tiling=dataclasses.replace(plan.tiling, **tiling_overrides),
        index=dataclasses.replace(plan.index, **index_overrides),
        annotations=plan.annotations + tuple(annotations or ()),
        aliases={**plan.aliases, **parse_alias_option(alias or [])},
        auto_alias=auto_alias or plan.auto_alias, shard_rows=shard_rows or plan.shard_rows,
        batch_rows=batch_rows or plan.batch_rows,
        embedding_dtype=embedding_dtype.value if embedding_dtype else plan.embedding_dtype)
    if append and recipe is None and not index_overrides:  # keep the store's own index (IVF stays IVF)
        from genoembed.indexing import stored_spec

        plan = dataclasses.replace(plan, index=stored_spec(plan.output) or plan.index)

    from rich.markup import escape
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    assigned = 0 if overwrite else _tiles_assigned(plan.output)
    started = time.perf_counter()
    with Progress(TextColumn("[bold]embedding {task.description}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("tiles"), TimeRemainingColumn(), console=console(), transient=True,
                  disable=quiet or as_json) as bar:
        from genoembed.build import build

        tasks: dict[str, int] = {}

        def report(genome: str, done: int, total: int) -> None:
            if genome not in tasks:
                tasks[genome] = bar.add_task(escape(genome), total=total)
            bar.update(tasks[genome], completed=done, total=total)

        store = build(plan, overwrite=overwrite, append=append, progress=report, engine=engine.value,
                      engine_options=_ray_options(engine, address, num_workers, gpus_per_worker,
                                                  trust_remote_code))
    summary = {"store": str(store.root), "genomes": list(store.genomes), "tiles": store.num_tiles,
               "indexed": store.id_limit - assigned, "dim": store.dim,
               "model": store.provenance["embedder"].get("model_id"), "index": plan.index.factory,
               "annotations": {name: entry["rows"] for name, entry in store.manifest.get("annotations", {}).items()},
               "seconds": round(time.perf_counter() - started, 2)}
    if as_json:
        typer.echo(json.dumps(summary))
    elif not quiet:
        held = (f"{summary['tiles']} tiles of {', '.join(summary['genomes'])} (dim {summary['dim']}, "
                f"model {summary['model']}, index {summary['index']})")
        typer.echo(f"up to date: nothing indexed; {summary['store']} holds {held}" if not summary["indexed"] else
                   f"indexed {summary['indexed']} tiles into {summary['store']} in {summary['seconds']} s; "
                   f"it holds {held}")


def _tiles_assigned(output: Path) -> int:
    """Tile ids a store at ``output`` has given out so far (0 where there is none yet): what this run embeds
    is what it adds past them, so a rerun on an up-to-date store says it indexed nothing."""
    from genoembed.errors import GenoembedError
    from genoembed.manifest import read_manifest

    if not (output / "manifest.json").is_file():
        return 0
    try:
        return int(read_manifest(output).get("next_tile_id", 0))
    except GenoembedError:
        return 0  # a damaged store: the build reports it


def _ray_options(engine: Engine, address, num_workers: int, gpus_per_worker: float, trust_remote_code: bool) -> dict:
    if engine is Engine.local:
        return {}
    options = {"address": address, "num_workers": num_workers, "gpus_per_worker": gpus_per_worker}
    if trust_remote_code:  # actors rebuild the model from its spec, which never records this flag
        from genoembed.embedders import load_embedder

        options["loader"] = lambda spec: load_embedder(spec, trust_remote_code=True)
    return options
