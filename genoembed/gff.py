"""GTF and GFF3 read by DuckDB, and the malformed-line report every annotation reader shares.

GENCODE's 3.4 M lines took ~4 min and ~14 GB read line by line into Python objects. Here DuckDB's CSV reader
splits the file into lines (``WITH ORDINALITY`` numbers them as the file does: empty and comment lines
count), SQL parses columns and attributes, merges multi-row features and lists parts, spilling to a private
temp directory under a memory limit (:data:`GFF_MEMORY_LIMIT`). Problems are found in SQL (which lines, how
many); the first :data:`MAX_REPORTED` are described by the per-line checks (:func:`gff_columns`,
:func:`gtf_attributes`, :func:`gff3_attributes`), so every message names ``file:line``, what is wrong and
the fix. :class:`FeatureFile` holds a parsed file (of any format) for a store to check and write.
"""

from __future__ import annotations

import functools
import re
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import unquote

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from genoembed import schema
from genoembed.errors import InputError
from genoembed.interrupts import interruptible
from genoembed.gff_sql import (FEATURE_SELECT, GTF_ATTRIBUTE, KEYED_SQL, gff_features_sql, gff_groups_sql,
                               gff_rows_sql, quoted)

MAX_REPORTED = 20
_GFF_STRANDS = {"+": "+", "-": "-", ".": ".", "?": "."}
_INTEGER = re.compile(r"-?[0-9]+")


def read_gtf(path: str | Path) -> pa.Table:
    """GTF (GENCODE/Ensembl style): every row needs ``gene_id``; ids give feature_id and parent.

    gene rows: feature_id = gene_id; transcript rows: transcript_id with parent gene_id; other rows (exon,
    CDS, UTR...): exon_id if any, parent transcript_id (gene_id when there is none). name = gene_name or
    gene_id. A repeated attribute (``tag``) keeps every value, comma-joined.

    Parts: a transcript's ``parts`` are its exons (each exon also stays a row of its own: exons have their
    own ids); the rows of any other type (CDS, UTR, start/stop codon) sharing one transcript_id are one
    feature, as a GenBank CDS ``join`` is: one row, in the place of the first, its parts in row order,
    attributes merged (see :func:`_gff_features_sql`).
    """
    with FeatureFile(Path(path), "gtf") as reader:
        return reader.table()


def read_gff3(path: str | Path) -> pa.Table:
    """GFF3: percent-decoded attributes; ID, Parent (raw, comma-joined if several), name (IGV's: Name/gene/locus_tag/ID).

    Parts: rows sharing one ID are one feature (the GFF3 way to write a CDS split by introns): one row, in
    the place of the first, its parts in row order, attributes merged (see :func:`_gff_features_sql`). A
    feature that is the Parent of ``exon`` rows (mRNA, tRNA...) has those exons as its parts; gene rows
    (types ending in ``gene``) stay the one span the file gives. A repeated tag keeps its last value.
    """
    with FeatureFile(Path(path), "gff3") as reader:
        return reader.table()


# the leaf columns of an ANNOTATIONS file; coordinates delta-coded, as DuckDB's writer does (file 8.5 -> 7.8 MB
# for 250 k GENCODE-like features, DuckDB's 5.6)
_LEAVES = ("genome", "chrom", "start", "end", "strand", "type", "name", "feature_id", "parent", "source",
           "attributes.key_value.key", "attributes.key_value.value", "parts.list.element.start",
           "parts.list.element.end", "parts.list.element.strand")
_DELTA_CODED = ("start", "end", "parts.list.element.start", "parts.list.element.end")
BATCH_ROWS = 1 << 16  # rows a batch streamed from DuckDB to Arrow/Parquet
GFF_MEMORY_LIMIT = "1GB"  # DuckDB's share of a reader's memory; beyond it, it spills to its temp directory
_NO_DELIMITER = "\x01"  # a byte no GTF/GFF3 line holds: each line is one value


@functools.cache
def _gff_database():
    """The process's DuckDB for reading GTF/GFF3 (memory limit, a private temp directory it spills to, removed
    with it); each read takes a cursor, whose temp tables are its own and go when it closes."""
    import shutil
    import tempfile

    import duckdb

    temp = tempfile.mkdtemp(prefix="genoembed-gff-")
    con = duckdb.connect(":memory:", config={"temp_directory": temp, "memory_limit": GFF_MEMORY_LIMIT,
                                             "preserve_insertion_order": False})
    weakref.finalize(con, shutil.rmtree, temp, ignore_errors=True)
    return con


class FeatureFile:
    """One annotation file parsed into the temp view ``ge_out`` of a cursor of :func:`_gff_database` (GTF/GFF3
    parsed there by SQL, into ``ge_features``, attributes as the lists ``attr_k``/``attr_v`` made a map on the way
    out; BED and GenBank parsed in Python and registered)."""

    def __init__(self, path: Path, dialect: str, parsed: pa.Table | None = None):
        self.path, self.dialect, self._parsed = path, dialect, parsed

    def __enter__(self) -> "FeatureFile":
        self.con = _gff_database().cursor()
        try:
            self._run(self._open)
        except BaseException:
            self.con.close()
            raise
        return self

    def __exit__(self, *_exc) -> None:
        self.con.close()

    def _run(self, work):
        """``work()`` off the main thread (:func:`genoembed.interrupts.interruptible`): a Ctrl-C while DuckDB
        parses GENCODE on the main thread came out of it as a failed query, not as an interrupt."""
        return interruptible(self.con, work, None)

    def _open(self) -> None:
        if self._parsed is None:
            self._parse()
            self.con.execute(f"CREATE TEMP VIEW ge_out AS SELECT line, {FEATURE_SELECT} FROM ge_features")
        else:  # BED and GenBank are read in Python; held here so a store writes every format one way
            self.con.register("ge_parsed", self._parsed.append_column(
                "line", pa.array(range(self._parsed.num_rows), pa.int64())))
            self.con.execute("CREATE TEMP VIEW ge_out AS SELECT * FROM ge_parsed")

    def table(self) -> pa.Table:
        """Every feature, in file order, as a ``FEATURES`` table."""
        columns = ", ".join(quoted(self._columns(schema.FEATURES.names)))
        return self._run(lambda: pa.Table.from_batches(
            self._batches(f"SELECT {columns} FROM ge_out ORDER BY line", schema.FEATURES), schema.FEATURES))

    def extents(self) -> pa.Table:
        """``chrom``, ``start`` and ``end`` of every feature: what checking contigs needs (bytes a feature)."""
        return self._run(lambda: self.con.sql('SELECT chrom, start, "end" FROM ge_out').to_arrow_table())

    def circular_rows(self, aliases: dict[str, str], circular: frozenset[str]) -> pa.Table:
        """``line``, ``chrom`` (renamed), ``start``, ``end``, ``parts`` of the multi-part features on ``circular``
        contigs (whose spans may go round the origin)."""
        self._aliases(aliases)
        self.con.register("ge_circular", pa.table({"chrom": pa.array(sorted(circular), pa.string())}))
        return self._run(lambda: self.con.sql(
            'SELECT f.line, coalesce(a.alias, f.chrom) AS chrom, f.start, f."end", f.parts '
            "FROM ge_out f LEFT JOIN ge_aliases a ON a.name = f.chrom "
            "WHERE f.parts IS NOT NULL AND coalesce(a.alias, f.chrom) IN (SELECT chrom FROM ge_circular)"
        ).to_arrow_table())

    def write_parquet(self, target: Path, genome: str, aliases: dict[str, str], spans: pa.Table | None = None) -> int:
        """Write the features as an ``ANNOTATIONS`` Parquet file (``genome``; contigs renamed by ``aliases``; the
        start/end of the rows ``spans`` lists by ``line`` replaced), streamed in file order; returns the rows."""
        self._aliases(aliases)
        self.con.register("ge_spans", (spans if spans is not None else pa.table(
            {"line": pa.array([], pa.int64()), "start": pa.array([], pa.int64()), "end": pa.array([], pa.int64())}))
            .select(["line", "start", "end"]))
        renamed = {"chrom": "coalesce(a.alias, f.chrom) AS chrom", "start": "coalesce(s.start, f.start) AS start",
                   "end": 'coalesce(s."end", f."end") AS "end"'}
        columns = ", ".join(renamed.get(name, f"f.{quoted([name])[0]}") for name in self._columns(schema.FEATURES.names))
        genome_sql = "'" + genome.replace("'", "''") + "'"
        return self._run(lambda: self._written(target, f"SELECT {genome_sql} AS genome, {columns} FROM ge_out f "
                                               "LEFT JOIN ge_aliases a ON a.name = f.chrom "
                                               "LEFT JOIN ge_spans s ON s.line = f.line ORDER BY f.line"))

    def _written(self, target: Path, query: str) -> int:
        """Stream ``query``'s rows into ``target`` (an ``ANNOTATIONS`` Parquet file); returns the rows."""
        rows = 0
        with pq.ParquetWriter(target, schema.ANNOTATIONS, compression="zstd", compression_level=3,
                              use_dictionary=[c for c in _LEAVES if c not in _DELTA_CODED],
                              column_encoding=dict.fromkeys(_DELTA_CODED, "DELTA_BINARY_PACKED")) as writer:
            for batch in self._batches(query, schema.ANNOTATIONS):
                writer.write_batch(batch)
                rows += batch.num_rows
        return rows

    def _columns(self, names: list[str]) -> list[str]:
        """``names`` as ``ge_out`` holds them: GTF/GFF3 attributes as two lists (:func:`attribute_maps`)."""
        return [column for name in names
                for column in (["attr_k", "attr_v"] if name == "attributes" and self._parsed is None else [name])]

    def _batches(self, query: str, target: pa.Schema) -> Iterator[pa.RecordBatch]:
        """The rows of ``query`` streamed as ``target`` batches, ``attr_k``/``attr_v`` made the attributes map."""
        for batch in self.con.sql(query).to_arrow_reader(BATCH_ROWS):
            names = batch.schema.names
            if "attr_k" in names:
                maps = attribute_maps(batch.column("attr_k"), batch.column("attr_v"))
                batch = pa.RecordBatch.from_arrays(
                    [maps if name == "attr_k" else batch.column(name) for name in names if name != "attr_v"],
                    [("attributes" if name == "attr_k" else name) for name in names if name != "attr_v"])
            yield batch.cast(target)

    def _aliases(self, aliases: dict[str, str]) -> None:
        self.con.register("ge_aliases", pa.table({"name": pa.array(list(aliases), pa.string()),
                                                  "alias": pa.array(list(aliases.values()), pa.string())}))

    def _parse(self) -> None:
        import duckdb

        try:
            with open(self.path, "rb") as handle:
                gzipped = handle.read(2) == b"\x1f\x8b"
        except OSError as error:
            raise InputError(f"{self.path}: cannot open ({error.strerror or error}); check the path") from None
        listed = "'" + str(self.path).replace("'", "''") + "'"
        lines = (f"SELECT ordinality AS line, text FROM read_csv({listed}, columns={{'text': 'VARCHAR'}}, "
                 f"delim='{_NO_DELIMITER}', quote='', escape='', header=false, auto_detect=false, "
                 f"compression='{'gzip' if gzipped else 'none'}') WITH ORDINALITY")
        try:
            self.con.execute(gff_rows_sql(lines, self.dialect))
        except duckdb.Error as error:
            raise self._unreadable(error) from None
        self._report(*self.con.execute(
            "SELECT count(*) FILTER (NOT ok), list(struct_pack(line, text) ORDER BY line) FILTER (NOT ok)[1:$n] "
            "FROM ge_rows", {"n": MAX_REPORTED}).fetchone(), self._line_problem)
        self.con.execute(KEYED_SQL)
        self.con.execute(gff_groups_sql())
        self._report(*self.con.execute(
            "SELECT count(*), list(c ORDER BY first_line)[1:$n] FROM ge_conflicts", {"n": MAX_REPORTED}).fetchone(),
                     self._group_problem)
        for statement in gff_features_sql(self.dialect, str(self.path)):
            self.con.execute(statement)

    def _report(self, count: int, examples: list | None, describe: Callable) -> None:
        if not count:
            return
        problems = Problems(self.path)
        for example in examples or []:
            describe(example, problems)
        more = [f"... and {count - MAX_REPORTED} more"] if count > MAX_REPORTED else []
        raise InputError("\n".join([f"{plural(count, 'malformed line')} in {self.path}"]
                                    + problems.items[:MAX_REPORTED] + more))

    def _line_problem(self, example: dict, problems: Problems) -> None:
        """The problem of one line the SQL found malformed, as the line-by-line reader words it."""
        number, line = example["line"], example["text"]
        before = len(problems.items)
        parsed = gff_columns(line, number, problems)
        if parsed is not None:
            if self.dialect == "gff3":
                gff3_attributes(parsed[-1], number, problems)
            elif (attributes := gtf_attributes(parsed[-1], number, problems)) is not None \
                    and "gene_id" not in attributes:
                problems.add(number, "no gene_id attribute", 'every GTF line needs gene_id "..."; (GFF3 files: use .gff3)')
        if len(problems.items) == before:
            problems.add(number, "cannot read this line", "check its columns and attributes")

    def _group_problem(self, conflict: dict, problems: Problems) -> None:
        group = (f"ID {conflict['group_id']!r}" if self.dialect == "gff3"
                 else f"transcript {conflict['group_id']!r} {conflict['first_kind']} rows")
        problems.add(conflict["other_line"], f"{group} are on {conflict['first_chrom']!r} as {conflict['first_kind']!r} "
                                             f"(line {conflict['first_line']}) but this one on "
                                             f"{conflict['other_chrom']!r} as {conflict['other_kind']!r}",
                     "give the rows of one feature the same seqid and type, or give them different ids")

    def _unreadable(self, error: Exception) -> InputError:
        message = str(error)
        line = re.search(r"Line: (\d+)", message)
        if "unicode" in message.lower() and line:
            return InputError(f"{self.path}:{line.group(1)}: not UTF-8 text; convert the file to UTF-8")
        if "gzip" in message.lower() or "decompress" in message.lower():
            return InputError(f"{self.path}: cannot read ({message.splitlines()[0]}); is the file truncated?")
        return InputError(f"{self.path}: cannot read ({message.splitlines()[0]})")


def gff_columns(line: str, number: int, problems: Problems) -> tuple | None:
    """The nine columns with coordinates made 0-based half-open; None for comments and bad lines."""
    if not line.strip() or line.startswith("#"):
        return None
    fields = line.split("\t")
    if len(fields) != 9:
        return fail(problems, number, f"{len(fields)} tab-separated columns", "GTF/GFF3 lines have exactly 9") or None
    start, end = integer(fields[3]), integer(fields[4])
    if start is None or end is None:
        return fail(problems, number, f"start/end {fields[3]!r}/{fields[4]!r} are not integers",
                     "columns 4 and 5 are 1-based integer coordinates") or None
    if start < 1 or start > end:
        return fail(problems, number, f"start {start}, end {end}",
                     "GTF/GFF3 coordinates are 1-based closed: 1 <= start <= end") or None
    if fields[6] not in _GFF_STRANDS:
        return fail(problems, number, f"strand {fields[6]!r}", "use +, -, . or ?") or None
    return (fields[0], fields[1], fields[2], start - 1, end, fields[5], _GFF_STRANDS[fields[6]], fields[7],
            fields[8])


def gtf_attributes(text: str, number: int, problems: Problems) -> dict[str, str] | None:
    """``key "value";`` pairs; a repeated key (``tag``) keeps every value, comma-joined."""
    attributes: dict[str, str] = {}
    text = text.strip()
    position = 0 if text != "." else 1  # '.' is an empty column, as in GFF3
    while position < len(text):
        match = GTF_ATTRIBUTE.match(text, position)
        if match is None:
            return fail(problems, number, f"cannot read attributes at {text[position:position + 30]!r}",
                         'write key "value"; pairs') or None
        key, value = match.group(1), match.group(2) if match.group(2) is not None else match.group(3)
        attributes[key] = f"{attributes[key]},{value}" if key in attributes else value
        position = match.end()
    return attributes


def gff3_attributes(text: str, number: int, problems: Problems) -> dict[str, str] | None:
    """``tag=value`` pairs split on ``;``, then percent-decoded (``%3B`` -> ``;``, ``%2C`` -> ``,``)."""
    attributes: dict[str, str] = {}
    if text.strip() in ("", "."):
        return attributes
    for item in text.strip().split(";"):
        if not item.strip():
            continue
        if "=" not in item:
            return fail(problems, number, f"attribute {item.strip()!r} has no '='",
                         "GFF3 attributes are tag=value pairs separated by ';' (GTF files: use .gtf)") or None
        tag, value = item.split("=", 1)
        attributes[unquote(tag.strip())] = ",".join(unquote(part) for part in value.split(","))
    return attributes


def attribute_maps(keys: pa.ListArray, values: pa.ListArray) -> pa.MapArray:
    """Row by row, the map of ``keys`` (distinct: the SQL merged repeated keys) to ``values`` (as long), built
    from the lists' buffers: DuckDB's ``map()`` checks every key, half the cost of writing GENCODE's table."""
    offsets = keys.offsets
    if offsets[0].as_py():
        offsets = pc.subtract(offsets, offsets[0])
    return pa.MapArray.from_arrays(offsets, keys.flatten(), values.flatten())


class Problems:
    """Malformed lines of one file, raised together with a one-line summary first."""

    def __init__(self, path: Path):
        self.path, self.items = path, []

    def add(self, line: int, problem: str, fix: str) -> None:
        self.items.append(f"{self.path}:{line}: {problem}; {fix}")

    def add_record(self, record: int, problem: str, fix: str) -> None:
        self.items.append(f"{self.path}: record {record}: {problem}; {fix}")

    def raise_if_any(self) -> None:
        if not self.items:
            return
        shown = self.items[:MAX_REPORTED]
        more = [f"... and {len(self.items) - len(shown)} more"] if len(self.items) > len(shown) else []
        raise InputError("\n".join([f"{plural(len(self.items), 'malformed line')} in {self.path}"] + shown + more))


def fail(problems: Problems, line: int, problem: str, fix: str) -> bool:
    problems.add(line, problem, fix)
    return False


def plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def integer(text: str) -> int | None:
    """ASCII digits with an optional '-', else None: int() would also take ``1_000``, ``+5`` or ``٣``."""
    text = text.strip()
    return int(text) if _INTEGER.fullmatch(text) and len(text) <= schema.MAX_COORDINATE_DIGITS else None
