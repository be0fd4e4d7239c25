"""Read BED / GTF / GFF3 / GenBank features into one table, and reconcile contig names with a genome.

Every reader returns a table with exactly :data:`genoembed.schema.FEATURES` (a store adds ``genome``),
in the 0-based half-open convention stated there: BED is already so; GTF,
GFF3 and GenBank text are 1-based closed, so ``start - 1`` (Biopython has
already converted GenBank locations). Multi-part features become one row
with their ``parts`` (see schema.py for which rows are parts of what). Readers collect every malformed line
(the first :data:`MAX_REPORTED` are listed) and raise one :class:`InputError`
led by a one-line summary, each problem naming ``file:line``, what is wrong
and the fix. GTF and GFF3 are parsed by DuckDB (:mod:`genoembed.gff`); BED and GenBank here.
"""

from __future__ import annotations

import contextlib
import io
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa

from genoembed import schema
from genoembed.errors import InputError, quoted
from genoembed.gff import MAX_REPORTED, FeatureFile, Problems, fail, integer, plural
from genoembed.seqio import open_text

FORMATS = ("bed", "gtf", "gff3", "genbank")
BED_TYPE = "region"

_EXTENSIONS = {".bed": "bed", ".gtf": "gtf", ".gff": "gff3", ".gff3": "gff3",
               ".gb": "genbank", ".gbk": "genbank", ".genbank": "genbank"}
_BED_EXTRA = ("score", "strand", "thickStart", "thickEnd", "itemRgb", "blockCount", "blockSizes", "blockStarts")


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
    rows, problems = _Rows(path), Problems(path)
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


def _bed_interval(start_text: str, end_text: str, number: int, problems: Problems) -> tuple[int | None, int | None]:
    start, end = integer(start_text), integer(end_text)
    if start is None or end is None:
        problems.add(number, f"start/end {quoted(start_text, 20)}/{quoted(end_text, 20)} are not integers",
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
                problems: Problems) -> list[tuple[int, int]] | None | bool:
    """BED12 blocks as (offset from chromStart, size); None without blocks, False (reported) when malformed.

    Blocks are the parts the joins match, so each must lie inside chromStart-chromEnd.
    """
    if len(fields) < 12:
        return None if len(fields) <= 9 else fail(problems, number, f"{len(fields)} columns",
                                                   "BED with blocks needs all of columns 10-12 (BED12)")
    count = integer(fields[9])
    if count is None or count < 1:
        return fail(problems, number, f"blockCount {fields[9]!r} is not a positive integer",
                     "column 10 counts the blocks")
    sizes = [integer(s) for s in fields[10].split(",") if s.strip()]
    starts = [integer(s) for s in fields[11].split(",") if s.strip()]
    if len(sizes) != count or len(starts) != count:
        return fail(problems, number, f"blockCount {count} but {len(sizes)} blockSizes and {len(starts)} blockStarts",
                     "list one size and one start per block")
    if None in sizes or None in starts:
        return fail(problems, number, f"blockSizes {fields[10]!r} / blockStarts {fields[11]!r} are not integer lists",
                     "write comma-separated integers, e.g. 100,200,")
    outside = [i for i, (at, size) in enumerate(zip(starts, sizes), 1) if at < 0 or size < 0 or start + at + size > end]
    if outside:
        return fail(problems, number, f"block {outside[0]} lies outside chromStart-chromEnd",
                     "blockStarts are offsets from chromStart and each block must end by chromEnd")
    return list(zip(starts, sizes))


def _parts(parts: list[tuple[int, int, str]]) -> list[tuple[int, int, str]] | None:
    """The ``parts`` value: None for one contiguous span (or none), else every part."""
    return list(parts) if len(parts) > 1 else None


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
    rows, problems = _Rows(path), Problems(path)
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
            line = (f"annotations {self.source}: {plural(len(self.unknown), 'contig')} not in the genome "
                    f"({plural(self.rows_unknown, 'feature')}; e.g. {example!r})")
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
            lines.append(f"annotations {self.source}: {plural(rows, 'feature')} extend past the end of their contig "
                         f"(e.g. {chrom!r} has a feature ending at {end:,} but is {length:,} bp); only a circular contig's "
                         "may, across its origin (index it with --circular), else check the annotations' assembly")
        return lines


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
    """Raise one :class:`InputError` listing every contig mismatch (one line, summary first), or return."""
    problems = check_contigs(annotations, contig_lengths, source).problems()
    if problems:
        raise InputError("; ".join(problems))


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
