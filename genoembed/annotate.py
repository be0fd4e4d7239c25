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
from genoembed.files import atomic_file
from genoembed.genome import remembered_checksum
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
    ``annotations/NAME.parquet`` with a ``genome`` column.

    NAME defaults to the file's name; when a set of another genome already has it (two strains'
    ``genes.gff3``), ``NAME_GENOME``, so one genome's annotations never replace another's. The file is
    parsed before, and written only under, the writer lock; a set of that name is replaced only with
    ``replace``.
    """
    path = Path(path)
    if name is not None:
        check_identifier(name, "annotation set")
    with features.opened_features(path, format) as parsed:  # held in DuckDB: GENCODE never sits in Arrow whole
        extents = parsed.extents()
        renames = dict(aliases or {})
        named = features.apply_aliases(extents, renames)
        genome = genome if genome is not None else matching_genome(store, named, path, auto_alias)
        if genome not in store.genomes:
            raise InputError(f"{store.root}: no genome {genome!r} in the store; it holds {', '.join(store.genomes)}")
        lengths = store.contig_lengths[genome]
        if auto_alias:
            suggested = features.suggest_aliases(named, lengths)
            renames = {chrom: suggested.get(renames.get(chrom, chrom), renames.get(chrom, chrom))
                       for chrom in extents.column("chrom").unique().to_pylist()}
        extents = features.apply_aliases(extents, renames)
        circular = frozenset(store.genomes[genome].get("circular", ()))
        features.require_known_contigs(extents.filter(pa.array(~across_origin(extents, lengths, circular))), lengths,
                                       path)
        spans = spans_round_origin(parsed.circular_rows(renames, circular), lengths, circular) if circular else None
        with store.transaction() as manifest:
            name = name or _default_name(manifest, path, genome)
            previous = (manifest.get("annotations") or {}).get(name)
            if previous is not None and not replace:
                raise InputError(f"{store.root}: annotation set {name!r} exists; pass --replace to replace it, "
                                 "or --name another")
            target = store.root / "annotations" / f"{name}.parquet"
            target.parent.mkdir(exist_ok=True)
            with atomic_file(target, "annotation set") as partial:
                rows = parsed.write_parquet(partial, genome, renames, spans)
            entry = {"path": f"annotations/{name}.parquet", "genome": genome, "source": str(path), "rows": rows,
                     "sha256": remembered_checksum(target),  # remembered: the next SQL connection does not re-read it
                     "added": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
            manifest.setdefault("annotations", {})[name] = entry
    # a set `genoembed remove` rewrote under another name: its old file goes with the next sweep
    return entry


def matching_genome(store: Store, table: pa.Table, path: Path, auto_alias: bool = False) -> str:
    """The one genome of the store holding every contig ``table`` names (after the suggested renames with
    ``auto_alias``); a one-line InputError naming the candidates when several do, or when none of several
    genomes does (a one-genome store returns its genome, so the contig report says what differs)."""
    if len(store.genomes) == 1:
        return next(iter(store.genomes))
    names = set(table.column("chrom").unique().to_pylist())
    fitting = []
    for genome, lengths in store.contig_lengths.items():
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
                     f"{', '.join(store.genomes)}); name one with --genome to see which contigs differ")


def _default_name(manifest: dict, path: Path, genome: str) -> str:
    name = annotation_set_name(path)
    taken = (manifest.get("annotations") or {}).get(name)
    return name if taken is None or taken.get("genome") == genome else identifier_from(f"{name}_{genome}", name)


def check_feature_types(store: Store, types: tuple[str, ...]) -> list[str]:
    """The ``types`` the store's annotations hold; an error when none of them is there (it would join nothing),
    naming the types that are."""
    from genoembed.sql import connect

    if not store.manifest.get("annotations"):
        raise InputError(f"--feature-type {', '.join(types)}: {store.root} has no annotations; add some with "
                         f"{command('annotate', store.root, 'genes.gff3')}")
    present = [row[0] for row in connect(store).execute("SELECT DISTINCT type FROM annotations ORDER BY 1").fetchall()]
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

    from genoembed.sql import AHEAD_ANNOTATIONS, connect

    con: duckdb.DuckDBPyConnection = connect(store)
    present = con.sql(f"SELECT * FROM {AHEAD_ANNOTATIONS} LIMIT 0").columns
    wanted = [c for c in ("genome", "chrom", "start", "end", "strand", "type", "name", "parts") if c in present]
    try:
        return con.sql(f"SELECT {', '.join(f'{chr(34)}{c}{chr(34)}' for c in wanted)} FROM {AHEAD_ANNOTATIONS}"
                       + (" WHERE type IN (SELECT unnest($types))" if types else ""),
                       params={"types": list(types)} if types else None).to_arrow_table()
    except duckdb.Error as error:
        raise InputError(f"reading the store's annotations failed: {str(error).splitlines()[0]}") from None
