"""Read BED / GTF / GFF3 / GenBank features into one table, and reconcile contig names with a genome.

Every reader returns a table with exactly :data:`genoembed.schema.FEATURES` (a store adds ``genome``),
in the 0-based half-open convention stated there: BED is already so; GTF,
GFF3 and GenBank text are 1-based closed, so ``start - 1`` (Biopython has
already converted GenBank locations). Multi-part features become one row
with their ``parts`` (see schema.py for which rows are parts of what). Readers collect every malformed line
(the first :data:`MAX_REPORTED` are listed) and raise one :class:`InputError`
led by a one-line summary, each problem naming ``file:line``, what is wrong
and the fix.

This file is long because the four formats share one row builder, one problem collector and one
contig check, and their parsers read best side by side (each states how it maps parts and strands).
"""

from __future__ import annotations

import contextlib
import functools
import io
import re
import weakref
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote

import pyarrow as pa

from genoembed import schema
from genoembed.errors import InputError
from genoembed.seqio import open_text

FORMATS = ("bed", "gtf", "gff3", "genbank")
MAX_REPORTED = 20
BED_TYPE = "region"

_EXTENSIONS = {".bed": "bed", ".gtf": "gtf", ".gff": "gff3", ".gff3": "gff3",
               ".gb": "genbank", ".gbk": "genbank", ".genbank": "genbank"}
_BED_EXTRA = ("score", "strand", "thickStart", "thickEnd", "itemRgb", "blockCount", "blockSizes", "blockStarts")
_GFF_STRANDS = {"+": "+", "-": "-", ".": ".", "?": "."}
_INTEGER = re.compile(r"-?[0-9]+")
_GTF_ATTRIBUTE = re.compile(r'\s*([^\s;"]+)\s+(?:"((?:[^"\\]|\\.)*)"|([^;\s"][^;\s]*))\s*(?:;|$)')


def detect_format(path: str | Path) -> str:
    """Format named by the file's extension (a trailing ``.gz`` is ignored)."""
    name = Path(path).name.lower()
    if name.endswith(".gz"):
        name = name[:-3]
    suffix = Path(name).suffix
    if suffix not in _EXTENSIONS:
        raise InputError(f"{path}: cannot tell the annotation format from the extension {suffix or '(none)'!r}; "
                         f"rename it (.bed, .gtf, .gff3, .gb) or pass the format ({', '.join(FORMATS)})")
    return _EXTENSIONS[suffix]


def read_annotations(path: str | Path, format: str | None = None, aliases: dict[str, str] | None = None) -> pa.Table:
    """Features of a BED, GTF, GFF3 or GenBank file (optionally gzipped) as a ``FEATURES`` table.

    ``aliases`` renames contigs (``{"chr1": "1"}``) after parsing.
    """
    with opened_features(path, format) as features:
        table = features.table()
    return apply_aliases(table, aliases) if aliases else table


@contextlib.contextmanager
def opened_features(path: str | Path, format: str | None = None) -> Iterator["FeatureFile"]:
    """A parsed annotation file held in DuckDB (temp table ``ge_out``: ``line`` plus the ``FEATURES``
    columns), so a store can check its contigs (:meth:`FeatureFile.extents`) and write it
    (:meth:`FeatureFile.write_parquet`) without holding GENCODE in memory as Arrow."""
    path = Path(path)
    format = format or detect_format(path)
    if format not in FORMATS:
        raise InputError(f"{path}: unknown annotation format {format!r}; use one of {', '.join(FORMATS)}")
    if format in ("gtf", "gff3"):
        with FeatureFile(path, format) as reader:
            yield reader
        return
    table = read_bed(path) if format == "bed" else read_genbank(path)
    with FeatureFile(path, format, parsed=table) as reader:
        yield reader


# ---------------------------------------------------------------- BED

def read_bed(path: str | Path) -> pa.Table:
    """BED3 to BED12; ``track``/``browser``/``#`` lines skipped; columns 5-12 kept as attributes."""
    path = Path(path)
    rows, problems = _Rows(path), _Problems(path)
    width = None
    for number, line in _lines(path):
        if not line.strip() or _is_bed_header(line):
            continue
        fields = line.split("\t") if "\t" in line else line.split()
        if not 3 <= len(fields) <= 12:
            problems.add(number, f"{len(fields)} columns", "a BED line has 3 to 12 tab-separated columns")
            continue
        if width is None:
            width = len(fields)
        elif len(fields) != width:
            problems.add(number, f"{len(fields)} columns but the first feature line has {width}",
                         "give every line the same columns")
            continue
        start, end = _bed_interval(fields[1], fields[2], number, problems)
        if start is None:
            continue
        strand = fields[5] if len(fields) > 5 else "."
        if strand not in schema.STRANDS:
            problems.add(number, f"strand {strand!r}", "use +, - or .")
            continue
        blocks = _bed_blocks(fields, start, end, number, problems)
        if blocks is False:
            continue
        name = fields[3] if len(fields) > 3 and fields[3] != "." else None
        rows.add(fields[0], start, end, strand, BED_TYPE, name, None, None,
                 {key: value for key, value in zip(_BED_EXTRA, fields[4:]) if key != "strand"},
                 _parts([(start + at, start + at + size, strand) for at, size in blocks or ()]))
    problems.raise_if_any()
    return rows.table()


def _is_bed_header(line: str) -> bool:
    """A comment, or a UCSC ``track``/``browser`` line: the keyword is a whole word (contig ``track1`` is data)."""
    return line.startswith("#") or line.split(None, 1)[0] in ("track", "browser")


def _integer(text: str) -> int | None:
    """ASCII digits with an optional '-', else None: int() would also take ``1_000``, ``+5`` or ``٣``."""
    text = text.strip()
    return int(text) if _INTEGER.fullmatch(text) else None


def _bed_interval(start_text: str, end_text: str, number: int, problems: _Problems) -> tuple[int | None, int | None]:
    start, end = _integer(start_text), _integer(end_text)
    if start is None or end is None:
        problems.add(number, f"start/end {start_text!r}/{end_text!r} are not integers",
                     "columns 2 and 3 are 0-based integer coordinates")
        return None, None
    if start < 0:
        problems.add(number, f"negative start {start}", "BED coordinates are 0-based and start at 0")
        return None, None
    if start > end:
        problems.add(number, f"start {start} > end {end}", "swap them (BED is 0-based half-open, start <= end)")
        return None, None
    return start, end


def _bed_blocks(fields: list[str], start: int, end: int, number: int,
                problems: _Problems) -> list[tuple[int, int]] | None | bool:
    """BED12 blocks as (offset from chromStart, size); None without blocks, False (reported) when malformed.

    Blocks are the parts the joins match, so each must lie inside chromStart-chromEnd.
    """
    if len(fields) < 12:
        return None if len(fields) <= 9 else _fail(problems, number, f"{len(fields)} columns",
                                                   "BED with blocks needs all of columns 10-12 (BED12)")
    count = _integer(fields[9])
    if count is None or count < 1:
        return _fail(problems, number, f"blockCount {fields[9]!r} is not a positive integer",
                     "column 10 counts the blocks")
    sizes = [_integer(s) for s in fields[10].split(",") if s.strip()]
    starts = [_integer(s) for s in fields[11].split(",") if s.strip()]
    if len(sizes) != count or len(starts) != count:
        return _fail(problems, number, f"blockCount {count} but {len(sizes)} blockSizes and {len(starts)} blockStarts",
                     "list one size and one start per block")
    if None in sizes or None in starts:
        return _fail(problems, number, f"blockSizes {fields[10]!r} / blockStarts {fields[11]!r} are not integer lists",
                     "write comma-separated integers, e.g. 100,200,")
    outside = [i for i, (at, size) in enumerate(zip(starts, sizes), 1) if at < 0 or size < 0 or start + at + size > end]
    if outside:
        return _fail(problems, number, f"block {outside[0]} lies outside chromStart-chromEnd",
                     "blockStarts are offsets from chromStart and each block must end by chromEnd")
    return list(zip(starts, sizes))


# ---------------------------------------------------------------- GTF / GFF3
#
# GTF and GFF3 are read by DuckDB, a columnar engine, not line by line in Python: GENCODE's 3.4 M lines took
# ~4 min and ~14 GB as Python objects. DuckDB's CSV reader splits the file into lines (``WITH ORDINALITY``
# numbers them as the file does: empty and comment lines count), SQL parses columns and attributes, merges
# multi-row features and lists parts, spilling to a private temp directory under a memory limit. Problems
# are found in SQL (which lines, how many); the first MAX_REPORTED are described by the same per-line
# checks as always (:func:`_gff_columns`, :func:`_gtf_attributes`, :func:`_gff3_attributes`), so every
# message still names ``file:line``, what is wrong and the fix.

def read_gtf(path: str | Path) -> pa.Table:
    """GTF (GENCODE/Ensembl style): every row needs ``gene_id``; ids give feature_id and parent.

    gene rows: feature_id = gene_id; transcript rows: transcript_id with parent
    gene_id; other rows (exon, CDS, UTR...): exon_id if any, parent
    transcript_id (gene_id when there is none). name = gene_name or gene_id.
    A repeated attribute (``tag``) keeps every value, comma-joined.

    Parts: a transcript's ``parts`` are its exons (each exon also stays a row
    of its own: exons have their own ids); the rows of any other type (CDS,
    UTR, start/stop codon) sharing one transcript_id are one feature, as a
    GenBank CDS ``join`` is: one row, in the place of the first, its parts
    in row order, attributes merged (see :func:`_gff_features`).
    """
    with FeatureFile(Path(path), "gtf") as reader:
        return reader.table()


def read_gff3(path: str | Path) -> pa.Table:
    """GFF3: percent-decoded attributes; ID, Parent (raw, comma-joined if several), Name; stops at ##FASTA.

    Parts: rows sharing one ID are one feature (the GFF3 way to write a CDS
    split by introns): one row, in the place of the first, its parts in row
    order, attributes merged (see :func:`_gff_features`). A feature that is
    the Parent of ``exon`` rows (mRNA, tRNA...) has those exons as its parts;
    gene rows (types ending in ``gene``) stay the one span the file gives.
    A repeated tag keeps its last value.
    """
    with FeatureFile(Path(path), "gff3") as reader:
        return reader.table()


# DuckDB's share of a reader's memory; beyond it, it spills to its temp directory
GFF_MEMORY_LIMIT = "1GB"
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
    parsed there by SQL, into ``ge_features``; BED and GenBank parsed in Python and registered)."""

    def __init__(self, path: Path, dialect: str, parsed: pa.Table | None = None):
        self.path, self.dialect, self._parsed = path, dialect, parsed

    def __enter__(self) -> "FeatureFile":
        self.con = _gff_database().cursor()
        try:
            if self._parsed is None:
                self._parse()
                self.con.execute(f"CREATE TEMP VIEW ge_out AS SELECT line, {_FEATURE_SELECT} FROM ge_features")
            else:  # BED and GenBank are read in Python; held here so a store writes every format one way
                self.con.register("ge_parsed", self._parsed.append_column(
                    "line", pa.array(range(self._parsed.num_rows), pa.int64())))
                self.con.execute("CREATE TEMP VIEW ge_out AS SELECT * FROM ge_parsed")
        except BaseException:
            self.con.close()
            raise
        return self

    def __exit__(self, *_exc) -> None:
        self.con.close()

    def table(self) -> pa.Table:
        """Every feature, in file order, as a ``FEATURES`` table."""
        return self.con.sql(f"SELECT {', '.join(_quoted(schema.FEATURES.names))} FROM ge_out ORDER BY line") \
            .to_arrow_table().cast(schema.FEATURES)

    def extents(self) -> pa.Table:
        """``chrom`` and ``end`` of every feature: what checking contigs needs (a few bytes a feature)."""
        return self.con.sql('SELECT chrom, "end" FROM ge_out').to_arrow_table()

    def write_parquet(self, target: Path, genome: str, aliases: dict[str, str]) -> int:
        """Write the features as an ``ANNOTATIONS`` Parquet file (``genome``; contigs renamed by ``aliases``),
        streamed in file order; returns the number of rows."""
        self.con.register("ge_aliases", pa.table({"name": pa.array(list(aliases), pa.string()),
                                                  "alias": pa.array(list(aliases.values()), pa.string())}))
        columns = ", ".join("coalesce(a.alias, f.chrom) AS chrom" if name == "chrom" else f"f.{_quoted([name])[0]}"
                            for name in schema.FEATURES.names)
        listed = "'" + str(target).replace("'", "''") + "'"
        self.con.execute(f"COPY (SELECT $genome AS genome, {columns} FROM ge_out f "
                         f"LEFT JOIN ge_aliases a ON a.name = f.chrom ORDER BY f.line) "
                         f"TO {listed} (FORMAT parquet, COMPRESSION zstd)", {"genome": genome})
        return self.con.execute("SELECT count(*) FROM ge_out").fetchone()[0]

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
            self.con.execute(_gff_rows_sql(lines, self.dialect))
        except duckdb.Error as error:
            raise self._unreadable(error) from None
        self._report(*self.con.execute(
            "SELECT count(*) FILTER (NOT ok), list(struct_pack(line, text) ORDER BY line) FILTER (NOT ok)[1:$n] "
            "FROM ge_rows", {"n": MAX_REPORTED}).fetchone(), self._line_problem)
        self.con.execute(_gff_keyed_sql(self.dialect))
        self.con.execute(_gff_groups_sql())
        self._report(*self.con.execute(
            "SELECT count(*), list(c ORDER BY first_line)[1:$n] FROM ge_conflicts", {"n": MAX_REPORTED}).fetchone(),
                     self._group_problem)
        self.con.execute(_gff_features_sql(self.dialect, str(self.path)))

    def _report(self, count: int, examples: list | None, describe: Callable) -> None:
        if not count:
            return
        problems = _Problems(self.path)
        for example in examples or []:
            describe(example, problems)
        more = [f"... and {count - MAX_REPORTED} more"] if count > MAX_REPORTED else []
        raise InputError("\n".join([f"{_plural(count, 'malformed line')} in {self.path}"]
                                    + problems.items[:MAX_REPORTED] + more))

    def _line_problem(self, example: dict, problems: _Problems) -> None:
        """The problem of one line the SQL found malformed, as the line-by-line reader words it."""
        number, line = example["line"], example["text"]
        before = len(problems.items)
        parsed = _gff_columns(line, number, problems)
        if parsed is not None:
            if self.dialect == "gff3":
                _gff3_attributes(parsed[-1], number, problems)
            elif (attributes := _gtf_attributes(parsed[-1], number, problems)) is not None \
                    and "gene_id" not in attributes:
                problems.add(number, "no gene_id attribute", 'every GTF line needs gene_id "..."; (GFF3 files: use .gff3)')
        if len(problems.items) == before:
            problems.add(number, "cannot read this line", "check its columns and attributes")

    def _group_problem(self, conflict: dict, problems: _Problems) -> None:
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


_FEATURE_SELECT = ('chrom, start, "end", strand, kind AS type, name, feature_id, parent, source, '
                   'map(attr_k, attr_v) AS attributes, parts')


def _quoted(names: list[str]) -> list[str]:
    return [f'"{name}"' for name in names]
_WHITESPACE = "' ' || chr(9) || chr(10) || chr(11) || chr(12) || chr(13)"  # str.strip()'s ASCII whitespace
_STRIP = f"trim({{0}}, {_WHITESPACE})"
# trim() walks the whole value (~250 MB/s): only values that start or end with whitespace are trimmed
_EDGE_STRIP = ("CASE WHEN regexp_matches({0}, '^\\s|\\s$') OR contains({0}, chr(11)) THEN " + _STRIP + " ELSE {0} END")
_GFF_INTEGER = "regexp_full_match({0}, '\\s*-?[0-9]+\\s*')"


# A GTF attribute column written the usual way (``key "value"; key value;``, single spaces, no ``;``, ``\``,
# space or quote inside a value): read with plain string functions; any other goes through _GTF_ATTRIBUTE.
_GTF_PLAIN = r'([^\s;"]+ ("[^"\\; ]*"|[^;\s"]+)(; |;$|$))*'


def _gff_rows_sql(lines: str, dialect: str) -> str:
    """``ge_rows``: every data line (number, text, ok) and, where ok, its fields and attribute keys/values
    (repeated keys merged: GTF comma-joins them, GFF3 keeps the last; then source/score/phase as
    ``gff_source``/``score``/``phase`` where set), exactly as :func:`_gff_columns` and the attribute readers
    read them.

    Speed: a GTF attribute column of the usual shape (:data:`_GTF_PLAIN`, one DFA pass to check) is cut
    into keys and values by string replacement and one split; only other lines go through the capturing
    :data:`_GTF_ATTRIBUTE` (DuckDB evaluates a CASE branch only on the rows that take it). Rows with a
    repeated key, or a key named like a column (``score``), are merged by lambdas; the others are not."""
    attributes = _EDGE_STRIP.format("f[9]")
    if dialect == "gtf":
        pattern = _GTF_ATTRIBUTE.pattern.replace("'", "''")
        plain = _GTF_PLAIN.replace("'", "''")
        text = f"CASE WHEN {attributes} = '.' THEN '' ELSE {attributes} END"
        items = f"""CASE WHEN a_text = '' THEN []::VARCHAR[]
                         WHEN NOT contains(a_text, '\\') AND regexp_full_match(a_text, '{plain}')
                         THEN string_split(replace(replace(a_text || ' ', '"', ''), '; ', ' '), ' ')[:-2] END"""
        keys = f"""CASE WHEN a_items IS NOT NULL THEN list_slice(a_items, 1, len(a_items), 2)
                        ELSE regexp_extract_all(a_text, '{pattern}', 1) END AS a_keys,
                   CASE WHEN a_items IS NOT NULL THEN list_slice(a_items, 2, len(a_items), 2)
                        ELSE list_transform(regexp_extract_all(a_text, '{pattern}', 3), lambda x, i: coalesce(
                             x, regexp_extract_all(a_text, '{pattern}', 2)[i])) END AS a_values"""
        attributes_ok = (f"(a_items IS NOT NULL OR len(array_to_string(regexp_extract_all(a_text, '{pattern}', 0), "
                         "'')) = len(a_text)) AND list_contains(a_keys, 'gene_id')")
        repeated = "array_to_string(list_filter(a_values, lambda y, j: a_keys[j] = a_keys[i]), ',')"
        chrom, kind = "f[1]", "f[3]"
        before_fasta = ""
    else:
        text = f"CASE WHEN {attributes} IN ('', '.') THEN '' ELSE {attributes} END"
        items = f"list_filter(string_split(a_text, ';'), lambda x: {_STRIP.format('x')} <> '')"
        tag = _STRIP.format("split_part(x, '=', 1)")
        keys = (f"list_transform(a_items, lambda x: url_decode({tag})) AS a_keys, "
                "list_transform(a_items, lambda x: url_decode(x[position('=' IN x) + 1:])) AS a_values")
        attributes_ok = "coalesce(list_bool_and(list_transform(a_items, lambda x: contains(x, '='))), true)"
        repeated = "list_filter(a_values, lambda y, j: a_keys[j] = a_keys[i])[-1]"
        chrom, kind = "url_decode(f[1])", "url_decode(f[3])"
        before_fasta = ("AND line < (SELECT coalesce(min(line), 9223372036854775807) FROM lines "
                        "WHERE starts_with(text, '##FASTA') OR starts_with(text, '>'))")
    integer = "TRY_CAST({0} AS BIGINT)".format
    columns_ok = (f"len(f) = 9 AND {_GFF_INTEGER.format('f[4]')} AND {_GFF_INTEGER.format('f[5]')} "
                  f"AND {integer(_STRIP.format('f[4]'))} BETWEEN 1 AND {integer(_STRIP.format('f[5]'))} "
                  "AND f[7] IN ('+', '-', '.', '?')")
    columns = {"gff_source": "f[2]", "score": "f[6]", "phase": "f[8]"}
    override = " ".join(f"WHEN a_keys[i] = '{key}' AND {value} <> '.' THEN {value}" for key, value in columns.items())
    added_keys = ", ".join(f"CASE WHEN {value} <> '.' AND NOT list_contains(a_keys, '{key}') THEN ['{key}'] "
                           "ELSE []::VARCHAR[] END" for key, value in columns.items())
    added_values = ", ".join(f"CASE WHEN {value} <> '.' AND NOT list_contains(a_keys, '{key}') THEN [{value}] "
                             "ELSE []::VARCHAR[] END" for key, value in columns.items())
    first = "list_filter(range(1, len(a_keys) + 1), lambda i: list_position(a_keys, a_keys[i]) = i)"
    return f"""
CREATE TEMP TABLE ge_rows AS
WITH lines AS ({lines}),
data AS (
    SELECT line, text, string_split(text, chr(9)) AS f FROM lines
    WHERE text IS NOT NULL AND NOT regexp_full_match(text, '[\\s\\x0b]*') AND NOT starts_with(text, '#')
          {before_fasta}),
checked AS (SELECT *, {columns_ok} AS columns_ok FROM data),
read AS (SELECT *, CASE WHEN columns_ok THEN {text} END AS a_text FROM checked),
itemised AS (SELECT *, {items} AS a_items FROM read),
split AS (SELECT *, {keys} FROM itemised),
shaped AS (
    SELECT *, len(list_distinct(a_keys)) AS a_distinct,
           (contains(a_text, 'gff_source') OR contains(a_text, 'score') OR contains(a_text, 'phase'))
           AND list_has_any(a_keys, ['gff_source', 'score', 'phase']) AS a_named,
           list_transform(range(1, len(a_keys) + 1), lambda i: i = 1 OR a_keys[i] <> a_keys[i - 1]) AS a_run_starts
    FROM split),
runs AS (
    -- a key repeated in one run of rows (GENCODE's tag "basic"; tag "CCDS") merges by one join and one split
    SELECT *, NOT a_named AND a_distinct < len(a_keys) AND NOT contains(a_text, chr(1))
              AND len(list_filter(a_run_starts, lambda x: x)) = a_distinct AS a_in_runs
    FROM shaped)
SELECT line, CASE WHEN NOT coalesce(columns_ok AND {attributes_ok}, false) THEN text END AS text,
       coalesce(columns_ok AND {attributes_ok}, false) AS ok,
       {chrom} AS chrom, {kind} AS kind, {integer(_STRIP.format('f[4]'))} - 1 AS start,
       {integer(_STRIP.format('f[5]'))} AS "end",
       CASE f[7] WHEN '?' THEN '.' ELSE f[7] END AS strand,
       list_concat(CASE WHEN NOT a_named AND a_distinct = len(a_keys) THEN a_keys
                        WHEN a_in_runs THEN list_filter(a_keys, lambda x, i: a_run_starts[i])
                        ELSE list_transform({first}, lambda i: a_keys[i]) END,
                   {added_keys}) AS attr_k,
       list_concat(CASE WHEN NOT a_named AND a_distinct = len(a_keys) THEN a_values
                        WHEN a_in_runs THEN string_split(array_to_string(list_transform(a_values, lambda x, i:
                             CASE WHEN a_run_starts[i] THEN chr(1) ELSE ',' END || x), '')[2:], chr(1))
                        ELSE list_transform({first}, lambda i: CASE {override}
                             WHEN list_contains(a_keys[i + 1:], a_keys[i]) THEN {repeated} ELSE a_values[i] END) END,
                   {added_values}) AS attr_v
FROM runs"""


def _attribute(name: str) -> str:
    return f"attr_v[list_position(attr_k, '{name}')]"


def _gff_groups_sql() -> str:
    """``ge_groups`` (rows of one multi-row feature: first row, count) and ``ge_conflicts`` (a group whose rows
    disagree on seqid or type: its first disagreeing row)."""
    return """
CREATE TEMP TABLE ge_groups AS
SELECT group_key, any_value(group_id) AS group_id, min(line) AS first_line, arg_min(chrom, line) AS first_chrom,
       arg_min(kind, line) AS first_kind, count(*) AS rows
FROM ge_keyed WHERE group_key IS NOT NULL GROUP BY group_key;
CREATE TEMP TABLE ge_conflicts AS
SELECT g.first_line, struct_pack(group_id := any_value(g.group_id), first_line := g.first_line,
                                 first_chrom := any_value(g.first_chrom), first_kind := any_value(g.first_kind),
                                 other_line := min(r.line), other_chrom := arg_min(r.chrom, r.line),
                                 other_kind := arg_min(r.kind, r.line)) AS c
FROM ge_keyed r JOIN ge_groups g USING (group_key)
WHERE r.chrom <> g.first_chrom OR r.kind <> g.first_kind
GROUP BY g.group_key, g.first_line"""


def _gff_features_sql(dialect: str, source: str) -> str:
    """``ge_features``: one row per feature (a multi-row feature in the place of its first row, with its parts
    and merged attributes: a value every row has is kept, values that differ are comma-joined in part order,
    '' where a row lacks the key), and exon parts for their parents."""
    if dialect == "gtf":
        exon_parents = f"[{_attribute('transcript_id')}]"
        owner = "CASE WHEN kind = 'transcript' THEN feature_id END"
    else:
        exon_parents = "list_distinct(string_split(coalesce(parent, ''), ','))"
        owner = "CASE WHEN NOT suffix(lower(kind), 'gene') THEN feature_id END"
    return f"""
CREATE TEMP TABLE ge_features AS
WITH members AS (
    SELECT k.*, g.first_line FROM ge_keyed k JOIN ge_groups g USING (group_key) WHERE g.rows > 1),
entries AS (
    SELECT first_line, line, unnest(attr_k) AS key, unnest(attr_v) AS value,
           unnest(range(1, len(attr_k) + 1)) AS position FROM members),
first_seen AS (SELECT first_line, key, min(line * 65536 + position) AS seen FROM entries GROUP BY ALL),
every_value AS (
    SELECT m.first_line, f.key, f.seen, m.line, coalesce(e.value, '') AS value
    FROM members m JOIN first_seen f USING (first_line)
    LEFT JOIN entries e ON e.first_line = m.first_line AND e.line = m.line AND e.key = f.key),
per_key AS (
    SELECT first_line, key, any_value(seen) AS seen,
           CASE WHEN count(DISTINCT value) = 1 THEN any_value(value) ELSE string_agg(value, ',' ORDER BY line) END
               AS value
    FROM every_value GROUP BY first_line, key),
merged_attributes AS (
    SELECT first_line, list(key ORDER BY seen) AS attr_k, list(value ORDER BY seen) AS attr_v
    FROM per_key GROUP BY first_line),
joined AS (
    SELECT first_line AS line, arg_min(chrom, line) AS chrom, min(start) AS start, max("end") AS "end",
           CASE WHEN count(DISTINCT strand) = 1 THEN any_value(strand) ELSE '.' END AS strand,
           arg_min(kind, line) AS kind, arg_min(name, line) AS name, arg_min(feature_id, line) AS feature_id,
           arg_min(parent, line) AS parent,
           list(struct_pack(start, "end", strand) ORDER BY line) AS parts
    FROM members GROUP BY first_line),
features AS (
    SELECT line, chrom, start, "end", strand, kind, name, feature_id, parent, attr_k, attr_v,
           NULL::{schema.PARTS_SQL_TYPE} AS parts
    FROM ge_keyed k LEFT JOIN ge_groups g USING (group_key) WHERE coalesce(g.rows, 1) = 1
    UNION ALL BY NAME
    SELECT j.*, a.attr_k, a.attr_v FROM joined j JOIN merged_attributes a ON a.first_line = j.line),
exons AS (
    SELECT unnest({exon_parents}) AS owner, line, struct_pack(start, "end", strand) AS part
    FROM features WHERE kind = 'exon'),
exon_parts AS (
    SELECT owner, list(part ORDER BY line) AS parts FROM exons
    WHERE owner IS NOT NULL AND owner <> '' GROUP BY owner HAVING count(*) > 1)
SELECT f.* EXCLUDE (parts),
       CASE WHEN f.parts IS NULL AND f.kind <> 'exon' THEN e.parts ELSE f.parts END AS parts,
       '{source.replace("'", "''")}' AS source
FROM features f LEFT JOIN exon_parts e ON e.owner = ({owner.replace('kind', 'f.kind').replace('feature_id', 'f.feature_id')})"""


def _gff_keyed_sql(dialect: str) -> str:
    """``ge_keyed``: the good rows with name, feature_id, parent and the key of the multi-row feature they
    belong to (GTF: transcript_id and type, for types other than gene/transcript/exon; GFF3: ID)."""
    if dialect == "gtf":
        gene, transcript = _attribute("gene_id"), _attribute("transcript_id")
        fields = f"""CASE WHEN list_contains(attr_k, 'gene_name') THEN {_attribute('gene_name')} ELSE {gene} END AS name,
       CASE kind WHEN 'gene' THEN {gene} WHEN 'transcript' THEN {transcript} ELSE {_attribute('exon_id')} END
           AS feature_id,
       CASE kind WHEN 'gene' THEN NULL WHEN 'transcript' THEN {gene} ELSE coalesce({transcript}, {gene}) END AS parent,
       {transcript} AS group_id,
       CASE WHEN {transcript} IS NOT NULL AND kind NOT IN ('gene', 'transcript', 'exon')
            THEN {transcript} || chr(0) || kind END AS group_key"""
    else:
        identifier = _attribute("ID")
        fields = f"""coalesce(nullif({_attribute('Name')}, ''), {_attribute('gene')}) AS name,
       {identifier} AS feature_id, {_attribute('Parent')} AS parent, {identifier} AS group_id,
       {identifier} AS group_key"""
    return f"""
CREATE TEMP TABLE ge_keyed AS
SELECT line, chrom, start, "end", strand, kind, attr_k, attr_v,
       {fields}
FROM ge_rows WHERE ok"""


def _parts(parts: list[tuple[int, int, str]]) -> list[tuple[int, int, str]] | None:
    """The ``parts`` value: None for one contiguous span (or none), else every part."""
    return list(parts) if len(parts) > 1 else None


def _gff_columns(line: str, number: int, problems: _Problems) -> tuple | None:
    """The nine columns with coordinates made 0-based half-open; None for comments and bad lines."""
    if not line.strip() or line.startswith("#"):
        return None
    fields = line.split("\t")
    if len(fields) != 9:
        return _fail(problems, number, f"{len(fields)} tab-separated columns", "GTF/GFF3 lines have exactly 9") or None
    start, end = _integer(fields[3]), _integer(fields[4])
    if start is None or end is None:
        return _fail(problems, number, f"start/end {fields[3]!r}/{fields[4]!r} are not integers",
                     "columns 4 and 5 are 1-based integer coordinates") or None
    if start < 1 or start > end:
        return _fail(problems, number, f"start {start}, end {end}",
                     "GTF/GFF3 coordinates are 1-based closed: 1 <= start <= end") or None
    if fields[6] not in _GFF_STRANDS:
        return _fail(problems, number, f"strand {fields[6]!r}", "use +, -, . or ?") or None
    return (fields[0], fields[1], fields[2], start - 1, end, fields[5], _GFF_STRANDS[fields[6]], fields[7],
            fields[8])


def _gtf_attributes(text: str, number: int, problems: _Problems) -> dict[str, str] | None:
    """``key "value";`` pairs; a repeated key (``tag``) keeps every value, comma-joined."""
    attributes: dict[str, str] = {}
    text = text.strip()
    position = 0 if text != "." else 1  # '.' is an empty column, as in GFF3
    while position < len(text):
        match = _GTF_ATTRIBUTE.match(text, position)
        if match is None:
            return _fail(problems, number, f"cannot read attributes at {text[position:position + 30]!r}",
                         'write key "value"; pairs') or None
        key, value = match.group(1), match.group(2) if match.group(2) is not None else match.group(3)
        attributes[key] = f"{attributes[key]},{value}" if key in attributes else value
        position = match.end()
    return attributes


def _gff3_attributes(text: str, number: int, problems: _Problems) -> dict[str, str] | None:
    """``tag=value`` pairs split on ``;``, then percent-decoded (``%3B`` -> ``;``, ``%2C`` -> ``,``)."""
    attributes: dict[str, str] = {}
    if text.strip() in ("", "."):
        return attributes
    for item in text.strip().split(";"):
        if not item.strip():
            continue
        if "=" not in item:
            return _fail(problems, number, f"attribute {item.strip()!r} has no '='",
                         "GFF3 attributes are tag=value pairs separated by ';' (GTF files: use .gtf)") or None
        tag, value = item.split("=", 1)
        attributes[unquote(tag.strip())] = ",".join(unquote(part) for part in value.split(","))
    return attributes


# ---------------------------------------------------------------- GenBank

def read_genbank(path: str | Path) -> pa.Table:
    """Every feature but ``source``, one row each, via Biopython (whose locations are already 0-based half-open).

    name = first of gene / locus_tag / product; feature_id = locus_tag or
    protein_id; attributes = qualifiers (several values comma-joined). A
    compound location (``join``, ``order``, trans-splicing) becomes one row
    spanning its parts, which the ``parts`` column lists (each with its own
    strand, in transcription order as Biopython lists them); attribute
    ``parts`` repeats them as ``start-end:strand`` (0-based half-open), as
    genoembed.evaluate reads them. A feature crossing the origin of a
    circular record is *split* into two rows, one on each side of the
    origin, each with attribute ``origin_split`` = ``1/2`` / ``2/2`` and its
    own parts: one span would cover the whole molecule.
    """
    from Bio import SeqIO

    path = Path(path)
    rows, problems = _Rows(path), _Problems(path)
    with _open_text(path) as handle:
        try:
            records = list(SeqIO.parse(handle, "genbank"))
        except ValueError as error:
            raise InputError(f"{path}: not a readable GenBank file ({error}); check the format or pass another one") \
                from None
    if not records:
        raise InputError(f"{path}: no GenBank records found; is it GenBank (LOCUS ... //)?")
    for record_number, record in enumerate(records, 1):
        circular = record.annotations.get("topology") == "circular"
        for feature in record.features:
            if feature.type == "source":
                continue
            if feature.location is None:
                problems.add_record(record_number, f"{feature.type} feature has no usable location",
                                    "fix its location in the file")
                continue
            qualifiers = {key: ",".join(map(str, values)) for key, values in feature.qualifiers.items()}
            name = next((qualifiers[k] for k in ("gene", "locus_tag", "product") if k in qualifiers), None)
            feature_id = qualifiers.get("locus_tag") or qualifiers.get("protein_id")
            parts = [(int(p.start), int(p.end), _strand(p.strand)) for p in feature.location.parts]
            if len(parts) > 1:
                qualifiers["parts"] = ",".join(f"{s}-{e}:{strand}" for s, e, strand in parts)
            for group, label in _origin_groups(parts, len(record.seq) if circular else None):
                attributes = qualifiers if label is None else {**qualifiers, "origin_split": label}
                rows.add(record.id, min(p[0] for p in group), max(p[1] for p in group),
                         _strand(feature.location.strand), feature.type, name, feature_id, None, attributes,
                         parts=_parts(group))
    problems.raise_if_any()
    return rows.table()


def _origin_groups(parts: list[tuple[int, int, str]],
                   circular_length: int | None) -> list[tuple[list[tuple[int, int, str]], str | None]]:
    """The parts as one group, or two (labelled 1/2, 2/2) when they cross the origin of a circular molecule."""
    for i in range(len(parts) - 1):
        (s1, e1, strand1), (s2, e2, strand2) = parts[i], parts[i + 1]
        forward = strand1 != "-" and e1 == circular_length and s2 == 0
        reverse = strand1 == "-" and s1 == 0 and e2 == circular_length
        if circular_length is not None and strand1 == strand2 and (forward or reverse):
            return [(parts[: i + 1], "1/2"), (parts[i + 1:], "2/2")]
    return [(parts, None)]


def _strand(value: int | None) -> str:
    return {1: "+", -1: "-"}.get(value, ".")


# ---------------------------------------------------------------- contig names

@dataclass(frozen=True)
class ContigReport:
    """How an annotation table's contigs match a genome: unknown names (with suggestions) and overhangs."""

    source: str
    unknown: tuple[str, ...]
    suggestions: dict[str, str] = field(default_factory=dict)
    rows_unknown: int = 0
    beyond_end: tuple[tuple[str, int, int, int], ...] = ()  # (chrom, rows past the end, max end, contig length)

    @property
    def ok(self) -> bool:
        return not self.unknown and not self.beyond_end

    def problems(self) -> list[str]:
        """One line per kind of mismatch, each with the fix; empty when ``ok``."""
        lines = []
        if self.unknown:
            example = self.unknown[0]
            line = (f"annotations {self.source}: {_plural(len(self.unknown), 'contig')} not in the genome "
                    f"({_plural(self.rows_unknown, 'feature')}; e.g. {example!r})")
            if self.suggestions:
                pairs = list(self.suggestions.items())
                shown = ", ".join(f"{a!r}→{b!r}" for a, b in pairs[:3])
                options = " ".join(f"--alias {a}={b}" for a, b in pairs[:3])
                line += f"; did you mean {shown}? pass {options} or --auto-alias"
            else:
                line += "; rename them with --alias FROM=TO, or use annotations made for this genome assembly"
            lines.append(line)
        if self.beyond_end:
            rows = sum(item[1] for item in self.beyond_end)
            chrom, _, end, length = self.beyond_end[0]
            lines.append(f"annotations {self.source}: {_plural(rows, 'feature')} extend past the end of their contig "
                         f"(e.g. {chrom!r} has a feature ending at {end:,} but is {length:,} bp); "
                         "check that the annotations are for this genome assembly")
        return lines


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def check_contigs(annotations: pa.Table, contig_lengths: dict[str, int], source: str | Path) -> ContigReport:
    """Compare the table's chroms with the genome's: unknown names, suggested aliases, features past the end."""
    import pyarrow.compute as pc  # imported when used: it costs ~30 ms of every command's start-up

    counts = {item["values"]: item["counts"] for item in pc.value_counts(annotations["chrom"]).to_pylist()}
    unknown = tuple(sorted((c for c in counts if c not in contig_lengths), key=lambda c: (-counts[c], c)))
    beyond = []
    known = annotations.filter(pc.is_in(annotations["chrom"], pa.array(list(contig_lengths), pa.string())))
    if known.num_rows:
        grouped = known.group_by("chrom").aggregate([("end", "max")])
        for chrom, max_end in zip(grouped["chrom"].to_pylist(), grouped["end_max"].to_pylist()):
            length = contig_lengths[chrom]
            if max_end > length:
                over = pc.sum(pc.and_(pc.equal(known["chrom"], chrom), pc.greater(known["end"], length))).as_py()
                beyond.append((chrom, int(over), int(max_end), int(length)))
    return ContigReport(source=str(source), unknown=unknown, suggestions=_suggest(unknown, contig_lengths),
                        rows_unknown=sum(counts[c] for c in unknown), beyond_end=tuple(sorted(beyond)))


def require_known_contigs(annotations: pa.Table, contig_lengths: dict[str, int], source: str | Path) -> None:
    """Raise one :class:`InputError` listing every contig mismatch (summary first), or return."""
    problems = check_contigs(annotations, contig_lengths, source).problems()
    if problems:
        raise InputError("\n".join(problems))


def suggest_aliases(annotations: pa.Table, contig_lengths: dict[str, int]) -> dict[str, str]:
    """``{annotation name: genome name}`` for unknown chroms that match exactly one contig once normalised."""
    import pyarrow.compute as pc

    names = pc.unique(annotations["chrom"]).to_pylist()
    return _suggest([n for n in names if n not in contig_lengths], contig_lengths)


def apply_aliases(table: pa.Table, aliases: dict[str, str]) -> pa.Table:
    """The table with ``chrom`` values renamed by ``aliases``; other names unchanged."""
    import pyarrow.compute as pc

    if not aliases or not table.num_rows:
        return table
    names = pc.unique(table["chrom"])
    renamed = pa.array([aliases.get(name, name) for name in names.to_pylist()], pa.string())
    chrom = pc.take(renamed, pc.index_in(table["chrom"], names))
    return table.set_column(table.schema.get_field_index("chrom"), table.schema.field("chrom"), chrom)


def parse_alias_option(values: Iterable[str]) -> dict[str, str]:
    """``["chr1=1", ...]`` (the CLI's ``--alias``) as a dict; every malformed value reported at once."""
    aliases: dict[str, str] = {}
    problems = []
    for value in values:
        source, sep, target = value.partition("=")
        source, target = source.strip(), target.strip()
        if not sep or not source or not target:
            problems.append(f"--alias {value!r}: expected FROM=TO, e.g. --alias chr1=1")
        elif aliases.get(source, target) != target:
            problems.append(f"--alias {value!r}: {source!r} is already aliased to {aliases[source]!r}; give it once")
        else:
            aliases[source] = target
    if problems:
        raise InputError("\n".join([f"{len(problems)} bad --alias values"] + problems) if len(problems) > 1
                         else problems[0])
    return aliases


def normalise_contig(name: str) -> str:
    """Comparison key for contig names: accession from ``gi|..|ref|X|`` headers, no ``chr``, no ``.N`` version,
    lower case, ``M`` = ``MT``."""
    if "|" in name:
        fields = [f for f in name.split("|") if f]
        name = fields[3] if len(fields) >= 4 and fields[0] == "gi" else (fields[-1] if fields else name)
    key = name.strip().lower()
    key = key[3:] if key.startswith("chr") and len(key) > 3 else key
    key = re.sub(r"\.\d+$", "", key)
    return "mt" if key == "m" else key


def _suggest(unknown: Iterable[str], contig_lengths: dict[str, int]) -> dict[str, str]:
    by_key: dict[str, list[str]] = {}
    for contig in contig_lengths:
        by_key.setdefault(normalise_contig(contig), []).append(contig)
    suggestions = {}
    for name in unknown:
        matches = by_key.get(normalise_contig(name), [])
        if len(matches) == 1:
            suggestions[name] = matches[0]
    return suggestions


# ---------------------------------------------------------------- shared plumbing

class _Problems:
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
        raise InputError("\n".join([f"{_plural(len(self.items), 'malformed line')} in {self.path}"] + shown + more))


def _fail(problems: _Problems, line: int, problem: str, fix: str) -> bool:
    problems.add(line, problem, fix)
    return False


@dataclass(frozen=True)
class _Feature:
    """One BED or GenBank feature as read."""

    chrom: str
    start: int
    end: int
    strand: str
    kind: str
    name: str | None
    feature_id: str | None
    parent: str | None
    attributes: dict[str, str]
    parts: list[tuple[int, int, str]] | None = None


class _Rows:
    """The features of one file, collected one at a time, then a ``FEATURES`` table."""

    def __init__(self, path: Path):
        self.source = str(path)
        self.features: list[_Feature] = []

    def add(self, chrom, start, end, strand, kind, name, feature_id, parent, attributes, parts=None) -> None:
        self.features.append(_Feature(chrom, start, end, strand, kind, name, feature_id, parent, attributes, parts))

    def table(self) -> pa.Table:
        features = self.features
        columns = {
            "chrom": [f.chrom for f in features], "start": [f.start for f in features],
            "end": [f.end for f in features], "strand": [f.strand for f in features],
            "type": [f.kind for f in features], "name": [f.name for f in features],
            "feature_id": [f.feature_id for f in features], "parent": [f.parent for f in features],
            "source": [self.source] * len(features), "attributes": [list(f.attributes.items()) for f in features],
            "parts": [None if f.parts is None else [{"start": s, "end": e, "strand": strand}
                                                    for s, e, strand in f.parts] for f in features]}
        return pa.table(columns, schema=schema.FEATURES)


def _open_text(path: Path) -> io.TextIOBase:
    try:
        return open_text(path)  # gzip by magic bytes, not by name
    except OSError as error:
        raise InputError(f"{path}: cannot open ({error.strerror or error}); check the path") from None


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """(1-based line number, line without its newline); unreadable text raised as InputError."""
    number = 0
    with _open_text(path) as handle:
        try:
            for number, line in enumerate(handle, 1):
                yield number, line.rstrip("\r\n")
        except UnicodeDecodeError:
            raise InputError(f"{path}:{number + 1}: not UTF-8 text; convert the file to UTF-8") from None
        except (OSError, EOFError) as error:
            raise InputError(f"{path}: cannot read after line {number} ({error}); is the file truncated?") from None
