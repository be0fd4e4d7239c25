"""Queries by gene name (``genoembed search STORE --gene thrA``): a locus_tag, gene name or ID looked up in the
store's annotations, or a pyrodigal gene unit named as Prodigal names them (``CONTIG_N``, the Nth gene on
the contig).

A protein-homolog question starts from a gene, not from its coordinates. The name is matched exactly (then
ignoring case) against each feature's name, ID and the attributes that name genes (:data:`NAME_KEYS`),
keyed by (genome, chrom). The query is the gene's protein-coding DNA: its CDS (parts joined in reading
frame, as ``index --units cds`` reads it, :mod:`genoembed.cds`), found directly or as a child or grandchild
of the matched gene; a gene without CDS is queried as its span on its strand. Several transcripts of one
locus give one query (the longest CDS); a name on two loci or genomes is refused with the candidates, and a
name nowhere with the closest names (DuckDB's Jaro-Winkler similarity).
"""

from __future__ import annotations

import re

from genoembed.cds import CodingSequence, coding_genes, coding_sequences
from genoembed.errors import InputError
from genoembed.features import detect_format
from genoembed.regions import Query
from genoembed.store import Store

NAME_KEYS = ("locus_tag", "old_locus_tag", "gene", "gene_name", "gene_id", "Name", "ID", "protein_id",
             "transcript_id", "gene_synonym")
SHOWN = 5  # candidates listed in an error
_UNIT_NAME = re.compile(r"(.+)_([1-9][0-9]*)")
_COLUMNS = 'genome, chrom, start, "end", strand, type, name, feature_id, parent, attributes, parts, source'


def gene_query(store: Store, name: str, genome: str | None = None) -> Query:
    """The query for gene ``name`` of the store (in ``genome`` when given); a one-line InputError listing close
    matches when there is none, and the candidates when the name is on several loci."""
    if genome is not None and genome not in store.genomes:
        raise InputError(f"{store.root}: no genome {genome!r} in the store; it holds {', '.join(store.genomes)}")
    found = _annotated(store, name, genome)
    if found is not None:
        return found
    found = _gene_unit(store, name, genome)
    if found is not None:
        return found
    close = _close_names(store, name, genome)
    where = f"genome {genome!r} of {store.root}" if genome else str(store.root)
    hint = f"; did you mean {', '.join(map(repr, close))}?" if close else \
        ("; the store has no annotations (add them with `genoembed annotate`)" if not _sets(store) else "")
    raise InputError(f"--gene {name!r}: no gene of that name, locus_tag or ID in {where}{hint}")


def _sets(store: Store) -> dict[str, dict]:
    return store.manifest.get("annotations") or {}


def _annotated(store: Store, name: str, genome: str | None) -> Query | None:
    """The query of the annotated gene ``name``, None when no feature is named so."""
    rows = _matching_rows(store, name, genome, "{0} = $name") or \
        _matching_rows(store, name, genome, "lower({0}) = lower($name)")
    if not rows:
        return None
    coding = [row for row in rows if row["type"] == "CDS"]
    if coding:  # the proteins, each set's rows joined as its file format says (a set is one genome's)
        loci = _loci([(group[0]["genome"], c.contig, c.start, c.end, c) for group in _by_set(coding).values()
                      for c in coding_sequences(group, store.contig_lengths[group[0]["genome"]],
                                                file_order=_genbank(group[0]["source"]))])
    else:
        loci = _loci([(row["genome"], row["chrom"], row["start"], row["end"], row) for row in rows])
    if len(loci) > 1:
        listed = ", ".join(f"{g}:{chrom}:{start + 1}-{end}" for g, chrom, start, end, _ in
                           (locus[0] for locus in loci[:SHOWN]))
        more = f" and {len(loci) - SHOWN} more" if len(loci) > SHOWN else ""
        fix = "name its genome with --query-genome, or " if genome is None and \
            len({locus[0][0] for locus in loci}) > 1 else ""
        raise InputError(f"--gene {name!r} names {len(loci)} loci ({listed}{more}); {fix}query one by --region "
                         "chrom:start-end:strand")
    holder, chrom, start, end, chosen = max(loci[0], key=lambda item: _coding_length(item[4]))
    source = store.genome(holder)
    if isinstance(chosen, CodingSequence):
        [gene] = coding_genes(source, [chosen])
        return Query(name, gene.dna, chrom, start, end, chosen.strand if chosen.strand != "." else "+", holder)
    strand = chosen["strand"] if chosen["strand"] in "+-" else "+"
    return Query(name, source.fetch(chrom, start, end, strand).upper(), chrom, start, end, strand, holder)


def _coding_length(item) -> int:
    if isinstance(item, CodingSequence):
        return sum(end - start for start, end, _ in item.parts)
    return item["end"] - item["start"]


def _by_set(rows: list[dict]) -> dict[str, list[dict]]:
    grouped: dict[str, list[dict]] = {}
    for row in rows:
        grouped.setdefault(row["_set"], []).append(row)
    return grouped


def _genbank(source: str) -> bool:
    try:
        return detect_format(source) == "genbank"
    except InputError:
        return False


def _loci(items: list[tuple]) -> list[list[tuple]]:
    """Items (genome, chrom, start, end, payload) grouped into loci: overlapping spans on one (genome, chrom)."""
    loci: list[list[tuple]] = []
    for item in sorted(items, key=lambda item: (item[0], item[1], item[2])):
        last = loci[-1][-1] if loci else None
        if last is not None and last[:2] == item[:2] and item[2] < max(i[3] for i in loci[-1]):
            loci[-1].append(item)
        else:
            loci.append([item])
    return loci


def _matching_rows(store: Store, name: str, genome: str | None, compare: str) -> list[dict]:
    """Rows of every annotation set (of ``genome``) whose name, ID or gene attribute matches ``name``, with the CDS
    that are children or grandchildren of a matched non-CDS feature; each row with its set (``_set``)."""
    import duckdb

    rows = []
    keys = ", ".join(f"'{key}'" for key in NAME_KEYS)
    named = (f"({compare.format('name')} OR {compare.format('feature_id')} OR len(list_filter(map_entries(attributes), "
             f"lambda e: e.key IN ({keys}) AND {compare.format('e.value')})) > 0)")
    with duckdb.connect() as con:
        for set_name, entry in _sets(store).items():
            if genome is not None and entry.get("genome") != genome:
                continue
            path = str(store.root / entry["path"])
            found = con.execute(f"""
                WITH features AS (SELECT {_COLUMNS} FROM read_parquet($path)),
                     matched AS (SELECT * FROM features WHERE {named}),
                     children AS (SELECT f.* FROM features f JOIN matched m
                                  ON f.chrom = m.chrom AND f.parent = m.feature_id AND m.type <> 'CDS'),
                     grandchildren AS (SELECT f.* FROM features f JOIN children c
                                       ON f.chrom = c.chrom AND f.parent = c.feature_id)
                SELECT DISTINCT * FROM (SELECT * FROM matched UNION ALL
                                        SELECT * FROM children WHERE type = 'CDS' UNION ALL
                                        SELECT * FROM grandchildren WHERE type = 'CDS')""",
                                {"path": path, "name": name})
            columns = [column[0] for column in found.description]
            rows += [dict(zip(columns, row), _set=set_name) for row in found.fetchall()]
    return rows


def _gene_unit(store: Store, name: str, genome: str | None) -> Query | None:
    """The pyrodigal gene unit named ``CONTIG_N`` (the Nth gene unit on the contig, Prodigal's numbering)."""
    match = _UNIT_NAME.fullmatch(name)
    if store.provenance["tiling"].get("units") != "genes" or match is None:
        return None
    chrom, number = match.group(1), int(match.group(2))
    holders = [g for g, lengths in store.contig_lengths.items() if chrom in lengths and genome in (None, g)]
    if not holders:
        return None
    if len(holders) > 1:
        raise InputError(f"--gene {name!r}: contig {chrom!r} is in genomes {', '.join(holders)}; name one with "
                         "--query-genome")
    import numpy as np
    import pyarrow.compute as pc

    shards = [s for s in store.shards if s["genome"] == holders[0]]
    ids = np.concatenate([np.arange(s["first_tile_id"], s["last_tile_id"] + 1) for s in shards])
    tiles = store.tiles(ids)
    tiles = tiles.filter(pc.equal(tiles["chrom"], chrom)).sort_by("tile_id")
    if number > tiles.num_rows:
        raise InputError(f"--gene {name!r}: contig {chrom!r} has {tiles.num_rows} gene units; number them 1 to "
                         f"{tiles.num_rows}")
    unit = tiles.slice(number - 1, 1).to_pylist()[0]
    source = store.genome(holders[0])
    sequence = source.fetch(chrom, unit["start"], unit["end"], unit["strand"]).upper()
    return Query(name, sequence, chrom, unit["start"], unit["end"], unit["strand"], holders[0])


def _close_names(store: Store, name: str, genome: str | None) -> list[str]:
    """The names, IDs and gene attributes of the store's annotations closest to ``name`` (Jaro-Winkler)."""
    import duckdb

    paths = [str(store.root / entry["path"]) for entry in _sets(store).values()
             if genome is None or entry.get("genome") == genome]
    if not paths:
        return []
    keys = ", ".join(f"'{key}'" for key in NAME_KEYS)
    with duckdb.connect() as con:
        found = con.execute(f"""
            WITH names AS (
                SELECT name AS value FROM read_parquet($paths) UNION
                SELECT feature_id FROM read_parquet($paths) UNION
                SELECT e.value FROM (SELECT unnest(map_entries(attributes)) AS e FROM read_parquet($paths))
                WHERE e.key IN ({keys}))
            SELECT value FROM names WHERE value IS NOT NULL
            ORDER BY jaro_winkler_similarity(lower(value), lower($name)) DESC, value LIMIT {SHOWN}""",
                            {"paths": paths, "name": name}).fetchall()
    return [value for (value,) in found]
