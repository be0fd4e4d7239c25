"""Add annotation files to a store (checked against one genome's contigs) and annotate hits.

An annotation set belongs to one genome of the store: contig names repeat across genomes (``chr1``,
``contig_1``), so a file's features are keyed by (genome, chrom) like tiles and hits. Without
``genome`` the set goes to the one genome holding every contig the file names; a file that fits
several genomes, or none of a several-genome store, is refused with the candidates named.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa

if TYPE_CHECKING:
    import duckdb
from genoembed import features
from genoembed.errors import InputError, command
from genoembed.files import atomic_file, version_name
from genoembed.manifest import file_sha256
from genoembed.names import check_identifier, identifier_from
from genoembed.store import Store


def annotation_set_name(path: Path) -> str:
    """SQL-friendly name from a file name: ``NC_000932.gb`` -> ``NC_000932``."""
    stem = path.name
    for suffix in (".gz", ".gb", ".gbk", ".genbank", ".gff3", ".gff", ".gtf", ".bed"):
        if stem.lower().endswith(suffix):
            stem = stem[: -len(suffix)]
    return identifier_from(stem, "annotations")


def add_annotations(store: Store, path: str | Path, name: str | None = None, format: str | None = None,
                    aliases: dict[str, str] | None = None, auto_alias: bool = False,
                    genome: str | None = None, replace: bool = False) -> dict:
    """Parse, check contigs against ``genome`` (default: :func:`matching_genome`), and save as
    ``annotations/NAME.VERSION.parquet`` (a new file for every version) with a ``genome`` column.

    NAME defaults to the file's name; when a set of another genome already has it (two strains'
    ``genes.gff3``), ``NAME_GENOME``, so one genome's annotations never replace another's. The file is
    parsed before, and written only under, the writer lock; a set of that name is replaced only with
    ``replace``, by a new file the manifest switches to: a reader of the old snapshot (an annotated search, a
    running ``sql``) keeps the old file until it is done (:meth:`genoembed.store.Store.transaction`).
    """
    path = Path(path)
    if name is not None:
        check_identifier(name, "annotation set")
    if genome is not None and genome not in store.genomes:
        raise InputError(f"{store.root}: no genome {genome!r} in the store; it holds {', '.join(store.genomes)}")
    with features.opened_features(path, format) as parsed:  # held in DuckDB: GENCODE never sits in Arrow whole
        circular_of = {held: frozenset(entry.get("circular", ())) for held, entry in store.genomes.items()}
        genome, renames = annotation_target(parsed.extents(), path, store.contig_lengths, circular_of, aliases,
                                            auto_alias, genome)
        lengths, circular = store.contig_lengths[genome], circular_of[genome]
        spans = spans_round_origin(parsed.circular_rows(renames, circular), lengths, circular) if circular else None
        with store.transaction() as manifest:
            name = name or _default_name(manifest, path, genome)
            previous = (manifest.get("annotations") or {}).get(name)
            if previous is not None and not replace:
                raise InputError(f"{store.root}: annotation set {name!r} exists; pass --replace to replace it, "
                                 "or --name another")
            relative = f"annotations/{version_name(name)}"  # a new file: readers of the old set keep reading it
            (store.root / "annotations").mkdir(exist_ok=True)
            with atomic_file(store.root / relative, "annotation set") as partial:
                rows = parsed.write_parquet(partial, genome, renames, spans)
            entry = {"path": relative, "genome": genome, "source": str(path), "rows": rows,
                     "sha256": file_sha256(store.root / relative),
                     "added": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
            manifest.setdefault("annotations", {})[name] = entry
    # the replaced set's file is retired by the commit: deleted once no reader of an older snapshot is left
    return entry


def annotation_target(extents: pa.Table, path: Path, contig_lengths: dict[str, dict[str, int]],
                      circular: dict[str, frozenset[str]], aliases: dict[str, str] | None = None,
                      auto_alias: bool = False, genome: str | None = None) -> tuple[str, dict[str, str]]:
    """(genome, contig renames) of an annotation file whose features' ``chrom``/``start``/``end`` are ``extents``,
    against genomes' ``contig_lengths`` (genome -> {contig: length}) and ``circular`` contigs: ``genome``, or the
    one holding every contig the file names (:func:`matching_genome`), with ``aliases`` and, with ``auto_alias``,
    the suggested renames applied; a one-line InputError naming the file, a contig and the fix when its contigs
    are not that genome's (or run past their ends, except round a circular contig's origin). Needs no store, so
    `genoembed index` checks its annotations before it embeds anything."""
    renames = dict(aliases or {})
    named = features.apply_aliases(extents, renames)
    genome = genome if genome is not None else matching_genome(contig_lengths, named, path, auto_alias)
    lengths = contig_lengths[genome]
    if auto_alias:
        suggested = features.suggest_aliases(named, lengths)
        renames = {chrom: suggested.get(renames.get(chrom, chrom), renames.get(chrom, chrom))
                   for chrom in extents.column("chrom").unique().to_pylist()}
    extents = features.apply_aliases(extents, renames)
    features.require_known_contigs(extents.filter(pa.array(~across_origin(extents, lengths, circular[genome]))),
                                   lengths, path)
    return genome, renames


def matching_genome(contig_lengths: dict[str, dict[str, int]], table: pa.Table, path: Path,
                    auto_alias: bool = False) -> str:
    """The one genome (of ``contig_lengths``: genome -> {contig: length}) holding every contig ``table`` names (after
    the suggested renames with ``auto_alias``); a one-line InputError naming the candidates when several do, or
    when none of several genomes does (a lone genome is returned, so the contig report says what differs)."""
    if len(contig_lengths) == 1:
        return next(iter(contig_lengths))
    names = set(table.column("chrom").unique().to_pylist())
    fitting = []
    for genome, lengths in contig_lengths.items():
        renamed = {features.suggest_aliases(table, lengths).get(chrom, chrom) for chrom in names} \
            if auto_alias else names
        if renamed <= lengths.keys():
            fitting.append(genome)
    if len(fitting) == 1:
        return fitting[0]
    if fitting:
        raise InputError(f"{path}: its contigs are in {len(fitting)} genomes of the store ({', '.join(fitting)}); "
                         f"contig names repeat across genomes: name one with --genome")
    example = sorted(names)[0] if names else "(none)"
    raise InputError(f"{path}: no genome of the store holds all its contigs (e.g. {example!r}; genomes: "
                     f"{', '.join(contig_lengths)}); name one with --genome to see which contigs differ")


def _default_name(manifest: dict, path: Path, genome: str) -> str:
    name = annotation_set_name(path)
    taken = (manifest.get("annotations") or {}).get(name)
    return name if taken is None or taken.get("genome") == genome else identifier_from(f"{name}_{genome}", name)


def check_feature_types(store: Store, types: tuple[str, ...]) -> list[str]:
    """The ``types`` the store's annotations hold; an error when none of them is there (it would join nothing),
    naming the types that are."""
    from genoembed.interrupts import interruptible
    from genoembed.sql import connect

    if not store.manifest.get("annotations"):
        raise InputError(f"--feature-type {', '.join(types)}: {store.root} has no annotations; add some with "
                         f"{command('annotate', store.root, 'genes.gff3')}")
    con = connect(store)
    present = [row[0] for row in interruptible(
        con, lambda: con.execute("SELECT DISTINCT type FROM annotations ORDER BY 1").fetchall(), None)]
    found = [kind for kind in types if kind in present]
    if not found:
        raise InputError(f"--feature-type {', '.join(types)} matches no feature of {store.root}; its types: "
                         f"{', '.join(present[:20])}")
    return found

def across_origin(table: pa.Table, lengths: dict[str, int], circular: frozenset[str]):
    """Rows crossing a circular contig's origin the GFF3 way (``start < length < end <= start + length``): rows
    past the end that are not errors."""
    import numpy as np

    chrom = table["chrom"].to_numpy(zero_copy_only=False)
    length = np.array([lengths.get(c, 0) if c in circular else 0 for c in chrom], dtype=np.int64)
    start, end = table["start"].to_numpy(), table["end"].to_numpy()
    return (length > 0) & (start < length) & (end > length) & (end <= start + length)


def spans_round_origin(table: pa.Table, lengths: dict[str, int], circular: frozenset[str]) -> pa.Table:
    """Multi-part features of circular contigs spanning their parts the short way round: parts given on both
    sides of the origin (GFF3 rows sharing an ID) span the origin (``end`` past the length), not the molecule."""
    import numpy as np
    import pyarrow.compute as pc

    from genoembed.topology import covering_arc

    rows = np.flatnonzero(pc.and_(pc.is_in(table["chrom"], pa.array(sorted(circular), pa.string())),
                                  pc.is_valid(table["parts"])).to_numpy(zero_copy_only=False)) if circular else []
    if not len(rows):
        return table
    starts, ends = table["start"].to_numpy().copy(), table["end"].to_numpy().copy()
    for row, chrom, parts in zip(rows, table["chrom"].take(rows).to_pylist(), table["parts"].take(rows).to_pylist()):
        starts[row], ends[row] = covering_arc([p["start"] for p in parts], [p["end"] for p in parts], lengths[chrom])
    return table.set_column(table.schema.get_field_index("start"), "start", pa.array(starts)) \
        .set_column(table.schema.get_field_index("end"), "end", pa.array(ends))


def annotate_hits(store: Store, hits: pa.Table, strand: str = "ignore", types: tuple[str, ...] | None = None) \
        -> pa.Table:
    """Hits plus the names of overlapping features (``overlapping``) and one nearest feature (``nearest``,
    ``nearest_type``, ``nearest_distance``: signed, 0 when overlapping), in the order given.

    The store's annotations are indexed once per snapshot (and feature types), so a served store or a
    many-batch CLI search pays for reading them once (:class:`genoembed.feature_index.FeatureIndex`).
    """
    from genoembed.feature_index import FeatureIndex

    index = store.derived(("feature_index", types),
                          lambda: FeatureIndex.from_table(annotation_intervals(store, types)))
    columns = index.overlapping_and_nearest(one_turn_ahead(store, hits), strand)
    return pa.Table.from_arrays([*hits.columns, *columns.columns], names=[*hits.column_names, *columns.column_names])


def one_turn_ahead(store: Store, hits: pa.Table) -> pa.Table:
    """``hits`` with those on circular contigs moved one turn ahead (+length), where the index's copies of those
    contigs' features lie on both sides of them (``genoembed.sql.AHEAD_ANNOTATIONS``)."""
    import numpy as np

    lengths = {(genome, chrom): entry["contig_lengths"][chrom] for genome, entry in store.genomes.items()
               for chrom in entry.get("circular", ())}
    if not lengths or not hits.num_rows:
        return hits
    turn = np.array([lengths.get(key, 0) for key in zip(hits["genome"].to_pylist(), hits["chrom"].to_pylist())],
                    dtype=np.int64)
    for column in ("start", "end"):
        moved = pa.array(hits[column].combine_chunks().to_numpy() + turn, hits.schema.field(column).type)
        hits = hits.set_column(hits.schema.get_field_index(column), hits.schema.field(column), moved)
    return hits


def annotation_intervals(store: Store, types: tuple[str, ...] | None = None) -> pa.Table:
    """The columns of the store's ``annotations`` view a join needs (of ``types`` only, when given)."""
    import duckdb

    from genoembed.interrupts import interruptible
    from genoembed.sql import AHEAD_ANNOTATIONS, connect

    con: duckdb.DuckDBPyConnection = connect(store)

    def read() -> pa.Table:
        present = con.sql(f"SELECT * FROM {AHEAD_ANNOTATIONS} LIMIT 0").columns
        wanted = [c for c in ("genome", "chrom", "start", "end", "strand", "type", "name", "parts") if c in present]
        return con.sql(f"SELECT {', '.join(f'{chr(34)}{c}{chr(34)}' for c in wanted)} FROM {AHEAD_ANNOTATIONS}"
                       + (" WHERE type IN (SELECT unnest($types))" if types else ""),
                       params={"types": list(types)} if types else None).to_arrow_table()

    try:  # on a worker thread: a Ctrl-C stops it and is raised as such (DuckDB would report a failed query)
        return interruptible(con, read, None)
    except duckdb.Error as error:
        raise InputError(f"reading the store's annotations failed: {str(error).splitlines()[0]}") from None
