"""Building a store: FASTA -> tiles -> embeddings -> Parquet shards -> FAISS index -> annotations.

:func:`build` runs a :class:`~genoembed.recipe.Recipe` (what `genoembed index`
does, genome after genome); :func:`index` adds one genome with objects the
caller already has (an embedder, a tiling). The embedding step goes through
the one engine boundary (:func:`genoembed.engine.embed_genome`), so memory stays
bounded by the queue depth, not the genome size, and a build interrupted at
any point resumes from the last complete shard. A genome appended to a store
is added to its FAISS index without a rebuild.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Callable, Iterable

from genoembed import schema
from genoembed.version import VERSION as __version__
from genoembed.annotate import add_annotations, annotation_target
from genoembed.embedders import Embedder, get_embedder
from genoembed.embedders.base import strand_invariant
from genoembed.engine import embed_genome, make_engine
from genoembed.errors import GenoembedError, InputError, command
from genoembed.genome import Genome, open_genome
from genoembed.indexing import update_store_index
from genoembed.names import check_genome_name
from genoembed.recipe import Recipe
from genoembed.store import Store
from genoembed.writers import store_holding, write_lock
from genoembed.tiles import Strands, TilingSpec, count_tiles, select_contigs
from genoembed.vector_index import IndexSpec

log = logging.getLogger("genoembed")
Progress = Callable[[str, int, int], None]


def index(
    fasta: str | Path | Genome,
    output: str | Path,
    embedder: Embedder | None = None,
    tiling: TilingSpec = TilingSpec(),
    index_spec: IndexSpec | None = IndexSpec(),
    annotations: Iterable[str | Path] = (),
    aliases: dict[str, str] | None = None,
    auto_alias: bool = False,
    genome_name: str | None = None,
    batch_rows: int = 1024,
    shard_rows: int = 65536,
    embedding_dtype: str = "float32",
    overwrite: bool = False,
    append: bool = False,
    progress: Callable[[int, int], None] | None = None,
    engine: str = "local",
    engine_options: dict | None = None,
    redundant_strands: bool = False,
    circular: Iterable[str] = (),
    cds_from: Iterable[str | Path] | None = None,
) -> Store:
    """Build (or resume) a store at ``output`` from one genome; returns it opened.

    Tiling both strands with an embedder whose vectors are the same on both is refused (every locus
    would be stored twice) unless ``redundant_strands`` (retrieval evaluation, which scores tile strands).

    ``fasta`` is a path or an already opened :class:`~genoembed.genome.Genome` (not re-read).
    ``circular`` names contigs to tile round their origin, beside those the FASTA headers and the
    ``annotations`` mark circular (:mod:`genoembed.topology`).
    With ``tiling.units == "cds"`` the units are the CDS of ``cds_from`` (default: ``annotations``).
    ``append`` adds the genome to an existing store built with the same model and tiling;
    its tile ids follow the store's, and its vectors are added to the existing index.
    ``index_spec=None`` builds no FAISS index (e.g. before appending more genomes).

    ``progress(done, total)`` is called after every embedded batch. ``engine="ray"``
    embeds on Ray actors (``engine_options``: address, num_workers, gpus_per_worker, ...;
    see :class:`genoembed.ray_engine.RayEngine`) into the same store, row for row.
    """
    if embedding_dtype not in schema.EMBEDDING_DTYPES:
        raise InputError(f"embedding_dtype {embedding_dtype!r}: use {' or '.join(schema.EMBEDDING_DTYPES)}")
    if shard_rows < 1 or batch_rows < 1:
        raise InputError(f"shard_rows={shard_rows}, batch_rows={batch_rows}: give positive numbers of rows")
    chosen = make_engine(engine, {**(engine_options or {}), "batch_rows": batch_rows} if engine == "ray" else engine_options)
    output = Path(output)
    genome = fasta if isinstance(fasta, Genome) else open_genome(fasta, name=genome_name)
    genome = with_topology([genome], circular, annotations)[0]
    check_genome_name(genome.name)
    embedder = embedder or get_embedder("default")
    if not redundant_strands:
        refuse_redundant_strands(embedder, tiling, output)
    provenance = {"genoembed_version": __version__, "embedder": embedder.describe(),
                  "tiling": tiling.describe(), "embedding_dtype": embedding_dtype}
    check_store_directory(output, [Path(genome.path), *map(Path, annotations)], overwrite)
    check_already_indexed(output, genome, append, overwrite)
    check_annotation_files(output, [genome], annotations, aliases, auto_alias, overwrite, owner=genome.name)
    genes = None
    if tiling.units == "cds":
        from genoembed.cds import annotated_genes

        genes = annotated_genes(genome, list(annotations if cds_from is None else cds_from),
                                select_contigs(genome, tiling), aliases, auto_alias)
    created = not output.exists()
    with write_lock(output):  # one writer from the first shard to the index: the store is swept once
        try:
            embed_genome(output, provenance=provenance, embedder=embedder, genome=genome, tiling=tiling,
                         batch_rows=batch_rows, shard_rows=shard_rows, overwrite=overwrite, append=append,
                         engine=chosen, progress=progress, total=count_tiles(genome, tiling, genes), genes=genes)
        except BaseException:
            if created and not any((output / "shards").glob("part-*.parquet")):
                shutil.rmtree(output, ignore_errors=True)  # failed before any shard: leave nothing behind
            raise
        store = Store.open(output)
        if index_spec is not None:
            update_store_index(store, index_spec)
        for path in annotations:  # this genome's (other genomes may share its contig names); a rerun replaces them
            add_annotations(store, path, aliases=aliases, auto_alias=auto_alias, replace=True,
                            genome=genome.name)
    return store


def with_topology(genomes: list[Genome], circular: Iterable[str], annotations: Iterable[str | Path]) -> list[Genome]:
    """The genomes with their circular contigs marked: those named in ``circular`` (each must be a contig of
    some genome) and those an annotation file marks circular (GenBank LOCUS, GFF3 Is_circular), in every
    genome holding a contig of that name."""
    from genoembed.topology import annotation_circular

    named = set(circular)
    unknown = sorted(named - {chrom for genome in genomes for chrom in genome.contigs})
    if unknown:
        raise InputError(f"--circular {unknown[0]!r}: no genome being indexed has that contig; known: "
                         f"{', '.join(list(genomes[0].contigs)[:5])}")
    for path in annotations:
        if Path(path).is_file():  # a missing file is reported when the annotations are added
            named |= annotation_circular(path)
    return [genome.with_circular(named & set(genome.contigs)) for genome in genomes]
def check_annotation_files(output: Path, genomes: list[Genome], annotations: Iterable[str | Path],
                           aliases: dict[str, str] | None, auto_alias: bool, overwrite: bool,
                           owner: str | None = None) -> None:
    """Check each annotation file's contigs against the genomes the store will hold (those it holds, unless
    ``overwrite``, and ``genomes``), or against genome ``owner``'s alone, before anything is embedded: a file
    that needs ``--alias`` fails in seconds with the fix, not after the whole genome was embedded."""
    from genoembed.features import opened_features

    annotations = list(annotations)
    if not annotations:
        return
    lengths: dict[str, dict[str, int]] = {}
    circular: dict[str, frozenset[str]] = {}
    if not overwrite and (output / "manifest.json").is_file():
        try:
            held = Store.open(output, require_complete=False)
        except GenoembedError:
            held = None  # a damaged store: embed_genome reports it
        for name, entry in (held.genomes if held else {}).items():
            lengths[name], circular[name] = dict(entry["contig_lengths"]), frozenset(entry.get("circular", ()))
    for genome in genomes:
        lengths[genome.name], circular[genome.name] = dict(genome.contigs), frozenset(genome.circular)
    for path in annotations:
        with opened_features(path) as parsed:
            annotation_target(parsed.extents(), Path(path), lengths, circular, aliases, auto_alias, genome=owner)


# What a directory may hold and still count as empty: what taking the writer lock or a lease leaves.
_EMPTY_STORE_ENTRIES = {".lock", ".readers"}


def check_store_directory(output: Path, inputs: list[Path], overwrite: bool) -> None:
    """A store is written only into a missing or empty directory or an existing store, never inside another
    store, and never over its own inputs: ``--overwrite`` deletes a store's shards and index, nothing else."""
    target = output.resolve()
    if target == Path(target.anchor) or target == Path.home().resolve():
        raise InputError(f"--output {output}: the file-system root or home directory cannot be a store; "
                         "name a new directory")
    if target.exists() and not target.is_dir():
        raise InputError(f"--output {output}: a file, not a directory; name a new directory for the store")
    holder = store_holding(target)
    if holder is not None and holder != target:
        raise InputError(f"--output {output}: inside the store {holder}; a store is written outside any other")
    if holder is None and target.is_dir() and set(entry.name for entry in target.iterdir()) - _EMPTY_STORE_ENTRIES:
        raise InputError(f"--output {output}: the directory holds other files and is not a genoembed store; "
                         "name a new or empty directory")
    if holder is not None and overwrite:
        inside = [path for path in inputs if path.resolve().is_relative_to(target)]
        if inside:
            raise InputError(f"{inside[0]}: an input inside the store that --overwrite would replace; "
                             "move it out of the store first")


def check_already_indexed(output: Path, genome: Genome, append: bool, overwrite: bool) -> None:
    """Say what a rerun does instead of doing it silently: appending a FASTA the store already holds (same
    sha256, under any name) is refused; re-indexing a genome the store holds complete says "up to date", and
    names the store's other genomes, which the returned store also holds."""
    if overwrite or not (output / "manifest.json").is_file():
        return
    try:
        held = Store.open(output, require_complete=False).manifest.get("genomes", {})
    except GenoembedError:
        return  # a damaged store: embed_genome reports it
    same = [name for name, entry in held.items() if entry.get("sha256") == genome.checksum]
    if append and same and same[0] != genome.name:
        raise InputError(f"{output}: {genome.path} is already present (same sha256) as genome {same[0]!r}; "
                         "nothing appended (to replace it, remove it first: "
                         f"{command('remove', output, '--genome', same[0])})")
    entry = held.get(genome.name)
    if entry and entry.get("sha256") == genome.checksum and entry.get("status") == "complete":
        others = sorted(name for name in held if name != genome.name)
        log.warning("%s: genome %r is already indexed (same sha256): up to date%s", output, genome.name,
                    f"; the store also holds {', '.join(others)}" if others else "")


def refuse_redundant_strands(embedder: Embedder, tiling: TilingSpec, output: Path) -> None:
    """Refuse tiling both strands when the vectors cannot tell them apart: every locus would be stored
    twice with one vector, and every hit come back as a +/- pair (search reads the strand from sequence)."""
    if tiling.strands is Strands.both and strand_invariant(embedder, tiling.window):
        raise InputError(f"{output}: tiling strands=both with {embedder.describe().get('model_id', 'this model')}, whose "
                         "vectors are the same on both strands, stores every locus twice; tile one strand with "
                         "--strands + (recipe [tiling] strands = \"+\"): search reports the strand each query matches")


def build(recipe: Recipe, embedder: Embedder | None = None, overwrite: bool = False, append: bool = False,
          progress: Progress | None = None, engine: str = "local", engine_options: dict | None = None) -> Store:
    """Run a recipe: every genome into one store (the FAISS index trained once over all of them), then
    the annotations. ``embedder`` replaces the recipe's model (tests inject tiny ones).

    ``progress(genome_name, done, total)`` is called after every embedded batch.
    """
    if recipe.genome_name and len(recipe.fastas) > 1:
        raise InputError("a genome name names a single genome; with several FASTA files each is named after its file")
    genomes = [open_genome(path, name=recipe.genome_name) for path in recipe.fastas]  # fail early, before the model
    genomes = with_topology(genomes, recipe.circular, recipe.annotations)
    for genome in genomes:
        check_genome_name(genome.name)
    names = [genome.name for genome in genomes]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise InputError(f"two FASTA files give the genome name {repeated[0]!r}; rename one of the files")
    check_store_directory(Path(recipe.output), [*map(Path, recipe.fastas), *map(Path, recipe.annotations)], overwrite)
    check_annotation_files(Path(recipe.output), genomes, recipe.annotations, recipe.aliases, recipe.auto_alias,
                           overwrite)
    embedder = embedder or get_embedder(recipe.model, recipe.model_options)
    store = None
    for number, genome in enumerate(genomes):
        last = number == len(genomes) - 1  # the vector index once every genome is in (trained on all)
        report = (lambda done, total, name=genome.name: progress(name, done, total)) if progress else None
        store = index(genome, recipe.output, embedder=embedder, tiling=recipe.tiling,
                      index_spec=recipe.index if last else None, batch_rows=recipe.batch_rows,
                      shard_rows=recipe.shard_rows, embedding_dtype=recipe.embedding_dtype,
                      overwrite=overwrite and number == 0, append=append or number > 0, progress=report,
                      engine=engine, engine_options=engine_options, cds_from=recipe.annotations,
                      aliases=recipe.aliases, auto_alias=recipe.auto_alias)
    for path in recipe.annotations:  # checked above; the recipe owns these sets: a rerun replaces them
        add_annotations(store, path, aliases=recipe.aliases, auto_alias=recipe.auto_alias, replace=True)
    return store
