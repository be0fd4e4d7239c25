"""Open and validate FASTA genomes (plain, gzip, bgzip) with random access through pyfaidx.

pyfaidx needs a ``.fai`` index; we build it ourselves in one streamed pass that
also refuses any byte that is not a nucleotide letter (naming record, line and
column), and keep it in genoembed's cache (keyed by the file's checksum) so
read-only genome folders work. Plain gzip cannot be
randomly accessed, so it is decompressed once into the cache and reported;
bgzip is read in place.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import logging
import os
import re
import shutil
import struct
import time
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyfaidx

from genoembed.errors import InputError
from genoembed.files import atomic_file, atomic_write_bytes
from genoembed.seqio import GZIP_MAGIC, is_gzip, reverse_complement
from genoembed.topology import header_says_circular

log = logging.getLogger(__name__)

_FASTA_SUFFIXES = (".gz", ".bgz", ".fa", ".fasta", ".fna", ".fas", ".ffn", ".fsa")


def cache_dir() -> Path:
    """Where indexes and decompressed genomes go (``$GENOEMBED_CACHE`` or ``~/.cache/genoembed``)."""
    root = Path(os.environ.get("GENOEMBED_CACHE", Path.home() / ".cache" / "genoembed"))
    root.mkdir(parents=True, exist_ok=True)
    return root


def file_checksum(path: Path) -> str:
    """sha256 of the file's bytes, streamed."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def remembered_checksum(path: Path) -> str:
    """:func:`file_checksum`, remembered in the cache under the file's identity (path, device, inode, size,
    modification time in ns), so reopening an unchanged multi-gigabyte genome for every search does not
    re-read it (as make and rsync trust a file's size and mtime). Any change of the file re-reads it."""
    info = path.stat()
    identity = f"{path.resolve()}\0{info.st_dev}\0{info.st_ino}\0{info.st_size}\0{info.st_mtime_ns}"
    memo = cache_dir() / "checksums" / hashlib.sha256(identity.encode()).hexdigest()
    try:
        remembered = memo.read_text()
        if re.fullmatch(r"[0-9a-f]{64}", remembered):
            return remembered
    except OSError:
        pass
    checksum = file_checksum(path)
    try:
        memo.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(memo, checksum.encode())
    except OSError:
        pass  # an unwritable cache only costs reading the file again next time
    return checksum


def genome_label(path: Path) -> str:
    """Short genome name from a file name: ``GRCh38.fa.gz`` -> ``GRCh38``."""
    name = path.name
    while True:
        lowered = name.lower()
        suffix = next((s for s in _FASTA_SUFFIXES if lowered.endswith(s)), None)
        if suffix is None or len(name) == len(suffix):
            return name
        name = name[: -len(suffix)]


def _is_bgzf(path: Path) -> bool:
    with open(path, "rb") as handle:
        header = handle.read(18)
    # gzip magic, FEXTRA flag, and the 'BC' subfield that marks a BGZF block
    return len(header) >= 14 and header[:2] == GZIP_MAGIC and header[3] & 4 and header[12:14] == b"BC"


def _decompress_to_cache(path: Path, checksum: str) -> Path:
    target = cache_dir() / "fasta" / f"{checksum}.fa"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(f".partial.{os.getpid()}")
    log.warning("%s is plain gzip (not bgzip): decompressing once to %s for random access "
                "(use `bgzip` to avoid this copy)", path, target)
    try:
        with gzip.open(path, "rb") as source, open(partial, "wb") as sink:
            for block in iter(lambda: source.read(1 << 22), b""):
                sink.write(block)
    except (EOFError, OSError, zlib.error) as error:
        partial.unlink(missing_ok=True)
        raise InputError(f"{path}: corrupt or truncated gzip ({error}); re-download or re-compress the file") from None
    os.replace(partial, target)
    return target


def _sniff_fasta(path: Path, shown: Path, compressed: bool = False) -> None:
    try:
        with (gzip.open(path, "rb") if compressed else open(path, "rb")) as handle:
            head = handle.read(1 << 16)
    except (EOFError, OSError, zlib.error) as error:
        raise InputError(f"{shown}: corrupt or truncated compressed FASTA ({error}); "
                         "re-download or re-compress the file") from None
    if not head.strip():
        raise InputError(f"{shown}: file is empty; expected a FASTA genome")
    first = head.lstrip()[:1]
    # a stray byte inside a FASTA record is reported by the indexer, naming its record and line
    if first != b">" and b"\x00" in head:
        raise InputError(f"{shown}: binary data, not a FASTA file; pass a FASTA genome (.fa, .fa.gz)")
    if first != b">":
        line = head.lstrip().split(b"\n", 1)[0][:40].decode("utf-8", "replace")
        raise InputError(f"{shown}: not a FASTA file (line 1 starts {line!r}, expected '>name'); pass a FASTA genome")


# The one statement of what a FASTA sequence line may hold: IUPAC nucleotide codes (U for RNA, N and
# the ambiguity letters) in either case, lower case being soft-masked. Gaps ('-', '.'), stops ('*'),
# other letters, digits, whitespace and non-ASCII bytes are refused: downstream they would silently
# become N, and a space or digit would shift every coordinate after it.
SEQUENCE_LETTERS = b"ACGTURYKMSWBDHVNacgturykmswbdhvn"
_LINE_BYTES = SEQUENCE_LETTERS + b"\r\n"  # '\r' only in '\r\n', checked separately
_LONE_CR = re.compile(rb"\r[^\n]")
_SCAN_CHUNK = 1 << 22  # bytes read at a time while indexing: memory is bounded by this, not by line length
_MAX_HEADER = 1 << 20
_INDEX_VERSION = 3  # in the cached index's name: v1 checked no bytes, v2 kept no header topology
_REWRAP = "rewrap it, e.g. `seqkit seq -w 60 in.fa > out.fa`"


@dataclass
class FaiRow:
    """One ``.fai`` line (samtools layout), plus the header's line number for messages."""

    name: str
    line: int
    offset: int  # byte offset of the first base
    length: int = 0  # bases
    line_bases: int = 0  # bases per full line
    line_bytes: int = 0  # bytes per full line, newline included
    short_line: int = 0  # the line that ended the record's full lines (shorter or blank), 0 while none
    circular: bool = False  # the header marks the record circular (:func:`genoembed.topology.header_says_circular`)

    def fai_line(self) -> str:
        return f"{self.name}\t{self.length}\t{self.offset}\t{self.line_bases}\t{self.line_bytes}\n"


class _FastaScanner:
    """Builds ``.fai`` rows from FASTA bytes fed in chunks of any size, refusing what would mis-index.

    Work is per chunk and per record, never per base or line in Python (bytes.translate and
    numpy do the rest), and nothing is kept across chunks but counters: a 1 Gbp single-line
    record costs the memory of one chunk.
    """

    def __init__(self, shown: Path):
        self.shown = shown
        self.offset = 0  # file offset of the chunk being fed
        self.lines = 0  # completed lines so far
        self.line_start = 0  # file offset where the current line began
        self.cr_pending = False  # the last byte fed was '\r'
        self.header: bytearray | None = None  # bytes of a '>' line still being read
        self.record: FaiRow | None = None
        self.rows: list[FaiRow] = []
        self.names: dict[str, int] = {}

    def feed(self, chunk: bytes) -> None:
        position = 0
        while position < len(chunk):
            if self.header is not None:
                position = self._header_part(chunk, position)
            elif self.offset + position == self.line_start and chunk[position] == ord(">"):
                self._close_record()
                self.header = bytearray()
            else:
                position = self._sequence_part(chunk, position)
        self.offset += len(chunk)

    def finish(self) -> list[FaiRow]:
        """The rows, once the last chunk is fed (a last line without newline is fine)."""
        if self.header is not None:
            self._open_record(bytes(self.header), self.offset)
        elif self.offset > self.line_start and self.record is not None:
            size = self.offset - self.line_start
            self._add_lines(np.array([size - self.cr_pending]), np.array([size]), at_end=True)
        self._close_record()
        return self.rows

    def _header_part(self, chunk: bytes, position: int) -> int:
        newline = chunk.find(b"\n", position)
        stop = len(chunk) if newline < 0 else newline
        self.header += chunk[position:stop]
        if len(self.header) > _MAX_HEADER:
            raise InputError(f"{self.shown}: line {self.lines + 1}: header line longer than 1 MiB; "
                             "put the sequence on the lines after '>name'")
        if newline < 0:
            return len(chunk)
        self._open_record(bytes(self.header), self.offset + newline + 1)
        return newline + 1

    def _open_record(self, header: bytes, offset: int) -> None:
        number = self.lines + 1
        if b"\r" in header.rstrip(b"\r"):
            raise InputError(f"{self.shown}: line {number}: carriage return inside the header line (old Mac line "
                             "endings?); convert them to '\\n', e.g. `mac2unix`")
        words = header[1:].split(maxsplit=1)
        if not words:
            raise InputError(f"{self.shown}: line {number}: header '>' has no name; write '>name' before each sequence")
        try:
            name = words[0].decode("utf-8")
        except UnicodeDecodeError:
            raise InputError(f"{self.shown}: line {number}: record name {words[0][:40]!r} is not UTF-8 text; "
                             "rename the record") from None
        if name in self.names:
            raise InputError(f"{self.shown}: record name {name!r} on line {number} repeats line "
                             f"{self.names[name]}; record names must be unique, rename one")
        self.names[name] = number
        circular = len(words) > 1 and header_says_circular(words[1].decode("utf-8", "replace"))
        self.record = FaiRow(name=name, line=number, offset=offset, circular=circular)
        self.header, self.lines, self.line_start = None, number, offset

    def _close_record(self) -> None:
        if self.record is not None:
            self.rows.append(self.record)
            self.record = None

    def _sequence_part(self, chunk: bytes, position: int) -> int:
        """Sequence lines up to the next header (or the chunk's end): bytes checked, lines measured."""
        header = _next_header(chunk, position)
        end = len(chunk) if header < 0 else header + 1
        piece = chunk[position:end]
        at = self.offset + position
        if self.record is not None:
            self._check_bytes(piece, at)
        elif piece.strip():
            raise InputError(f"{self.shown}: line {self.lines + 1}: text before the first '>name' header; "
                             "a FASTA file starts with '>name'")
        self._measure_lines(piece, at)
        return end

    def _check_bytes(self, piece: bytes, at: int) -> None:
        if self.cr_pending and piece[:1] != b"\n":
            self._refuse(piece, -1, at)
        stray = piece.translate(None, _LINE_BYTES)
        if stray:
            self._refuse(piece, min(piece.find(bytes([byte])) for byte in set(stray)), at)
        carriage = piece.count(b"\r") if b"\r" in piece else 0  # 'in' is a fast memchr, count is not
        if carriage and carriage != piece.count(b"\r\n") + piece.endswith(b"\r"):
            self._refuse(piece, _LONE_CR.search(piece).start(), at)

    def _refuse(self, piece: bytes, index: int, at: int) -> None:
        """Raise for the byte at ``piece[index]`` (-1: the '\\r' that ended the previous chunk)."""
        byte = piece[index] if index >= 0 else ord("\r")
        newlines = piece.count(b"\n", 0, max(index, 0))
        line_start = at + piece.rfind(b"\n", 0, index) + 1 if newlines else self.line_start
        column = at + index - line_start + 1
        where = f"record {self.record.name!r}, line {self.lines + newlines + 1}, column {column}"
        raise InputError(f"{self.shown}: {where}: {_describe_byte(byte)} in sequence; {_byte_fix(byte)}")

    def _measure_lines(self, piece: bytes, at: int) -> None:
        codes = np.frombuffer(piece, dtype=np.uint8)
        ends = np.flatnonzero(codes == ord("\n"))
        if ends.size:
            starts = np.concatenate(([self.line_start], at + ends[:-1] + 1))
            carriage = codes[np.maximum(ends - 1, 0)] == ord("\r")
            carriage[0] = self.cr_pending if ends[0] == 0 else carriage[0]
            line_bytes = at + ends + 1 - starts
            if self.record is not None:
                self._add_lines(line_bytes - 1 - carriage, line_bytes)
            self.lines += ends.size
            self.line_start = at + int(ends[-1]) + 1
        self.cr_pending = piece.endswith(b"\r")

    def _add_lines(self, bases: np.ndarray, sizes: np.ndarray, at_end: bool = False) -> None:
        """Check line lengths (samtools' rule: all equal but a shorter last one) and count bases."""
        record, first = self.record, self.lines + 1
        record.length += int(bases.sum())
        if not record.line_bytes and not record.short_line:
            if bases[0] == 0:
                record.short_line = first
            else:
                record.line_bases, record.line_bytes = int(bases[0]), int(sizes[0])
        if not record.short_line:
            odd = np.flatnonzero((sizes != record.line_bytes) | (bases != record.line_bases))
            if not odd.size:
                return
            index = int(odd[0])
            last_line_at_end = at_end and bases[index] == record.line_bases
            if bases[index] >= record.line_bases and not last_line_at_end:
                self._refuse_length(first + index, int(bases[index]))
            record.short_line = first + index
            bases = bases[index + 1:]
            first += index + 1
        more = np.flatnonzero(bases)
        if more.size:
            raise InputError(f"{self.shown}: record {record.name!r}, line {first + int(more[0])}: sequence after "
                             f"the shorter or blank line {record.short_line}; fix line lengths: only a record's "
                             f"last line may be shorter ({_REWRAP})")

    def _refuse_length(self, number: int, bases: int) -> None:
        record = self.record
        where = f"{self.shown}: record {record.name!r}, line {number}"
        if bases == record.line_bases:
            raise InputError(f"{where}: line ending differs from line {record.line + 1} ('\\r\\n' vs '\\n'); "
                             "use one line ending throughout, e.g. `dos2unix`")
        raise InputError(f"{where}: {bases} bases but the record's first line has {record.line_bases}; "
                         f"fix line lengths: all but a record's last line must be equally long ({_REWRAP})")


def _next_header(chunk: bytes, position: int) -> int:
    """Index of the newline that ends the sequence before the next '>' line, or -1.

    Searches for '>' alone (a memchr) rather than for '\\n>', which bytes.find does far slower.
    """
    mark = chunk.find(b">", position + 1)
    while mark > 0 and chunk[mark - 1] != ord("\n"):
        mark = chunk.find(b">", mark + 1)
    return mark - 1 if mark > 0 else -1


def _describe_byte(byte: int) -> str:
    names = {0: "NUL byte", 9: "tab", 13: "carriage return without newline", 32: "space"}
    if byte in names:
        return names[byte]
    if byte < 32 or byte >= 127:
        return f"{'non-ASCII' if byte >= 128 else 'control'} byte 0x{byte:02x}"
    return f"character {chr(byte)!r}"


def _byte_fix(byte: int) -> str:
    allowed = "lines hold only IUPAC nucleotide letters (ACGTURYKMSWBDHVN, either case)"
    if byte in b"0123456789\t ":
        return f"{allowed}: numbered or spaced sequence (a GenBank/EMBL paste?) must be converted to FASTA, " \
               "e.g. `seqret -osformat fasta` or Biopython SeqIO.convert"
    if byte == 13:
        return "old Mac line endings? convert them to '\\n', e.g. `mac2unix`"
    if byte in b"-.*":
        return f"{allowed}: gaps and stops are not genome sequence; remove them (`seqkit seq -g`) or use N"
    if byte >= 127 or byte < 32:
        return f"{allowed}: the file is corrupt or not plain text; re-download it or delete the byte"
    return f"{allowed}: protein or another alphabet? replace other letters with N"


def scan_fasta(chunks: Iterable[bytes], shown: Path) -> list[FaiRow]:
    """``.fai`` rows for FASTA bytes given in chunks, validating every sequence byte on the way."""
    scanner = _FastaScanner(shown)
    for chunk in chunks:
        scanner.feed(chunk)
    return scanner.finish()


@dataclass(frozen=True)
class Genome:
    """A FASTA genome with random access. Coordinates are 0-based half-open; on a ``circular`` contig an
    interval may run through the origin (``end`` past the contig's length, see :mod:`genoembed.topology`)."""

    path: Path
    name: str
    checksum: str
    contigs: dict[str, int]
    _fasta: pyfaidx.Fasta = field(repr=False, compare=False)
    circular: frozenset[str] = frozenset()

    def fetch(self, chrom: str, start: int, end: int, strand: str = "+") -> str:
        """Sequence of ``[start, end)`` on ``chrom``; reverse-complemented for strand ``-``."""
        length = self.contigs.get(chrom)
        if length is None:
            raise InputError(f"{self.path}: unknown contig {chrom!r}; known: {_preview(self.contigs)}")
        if strand not in ("+", "-"):
            raise InputError(f"{self.path}: strand {strand!r} for {chrom}:{start}-{end} must be '+' or '-'")
        if chrom in self.circular and 0 <= start < length < end <= start + length:
            sequence = self._fasta[chrom][start:length].seq + self._fasta[chrom][0:end - length].seq
        elif not 0 <= start < end <= length:
            across = f", or start < {length} < end <= start + {length} across the origin" \
                if chrom in self.circular else ""
            raise InputError(f"{self.path}: region {chrom}:{start}-{end} is outside {chrom} (length {length}); "
                             f"use 0 <= start < end <= {length}{across}")
        else:
            sequence = self._fasta[chrom][start:end].seq
        return reverse_complement(sequence) if strand == "-" else sequence

    def with_circular(self, names) -> "Genome":
        """This genome with ``names`` (contigs it holds) circular as well."""
        unknown = sorted(set(names) - set(self.contigs))
        if unknown:
            raise InputError(f"{self.path}: --circular names contig {unknown[0]!r}, which is not in the FASTA; "
                             f"known: {_preview(self.contigs)}")
        return dataclasses.replace(self, circular=self.circular | frozenset(names))

    def write_bgzf(self, target: Path) -> dict:
        """Write this genome's FASTA text, byte for byte, as BGZF at ``target`` with its ``.fai`` and ``.gzi``
        beside it (each renamed into place when complete, the FASTA last), so a store carries its own sequence.

        Returns ``{"path", "sha256"}`` of the written file and ``content_sha256``, the sha256 of the FASTA text
        (the recorded FASTA's own sha256 when that was plain text), which ``genoembed verify`` re-derives.
        A bgzip input is copied as is; other input is compressed with Biopython's BGZF writer, which pyfaidx
        reads like htslib's, at zlib level 1: 5x faster than the default level 6 on DNA (20 vs 4 MB/s on this
        project's 2-core machine, so a 3.1 Gbp genome is copied in minutes) for ~12 % more bytes.
        """
        from Bio import bgzf

        source = Path(self._fasta.filename)
        compressed = source.name.lower().endswith((".gz", ".bgz"))  # pyfaidx's BGZF reader is chosen by name
        digest = hashlib.sha256()
        with atomic_file(target, "genome sequence") as partial:
            if compressed:
                shutil.copyfile(source, partial)
                with gzip.open(source, "rb") as handle:
                    for block in iter(lambda: handle.read(_SCAN_CHUNK), b""):
                        digest.update(block)
            else:
                with open(source, "rb") as handle, bgzf.BgzfWriter(str(partial), "wb", compresslevel=1) as sink:
                    for block in iter(lambda: handle.read(_SCAN_CHUNK), b""):
                        digest.update(block)
                        sink.write(block)
            atomic_write_bytes(target.with_name(target.name + ".gzi"), _gzi_bytes(partial, target))
            atomic_write_bytes(target.with_name(target.name + ".fai"), Path(self._fasta.faidx.indexname).read_bytes())
        return {"sha256": file_checksum(target), "content_sha256": digest.hexdigest()}

    def describe(self) -> dict:
        return {"path": str(self.path), "name": self.name, "sha256": self.checksum,
                "contigs": len(self.contigs), "length": sum(self.contigs.values())}


def _preview(names) -> str:
    names = list(names)
    return ", ".join(names[:5]) + (f", ... ({len(names)} in all)" if len(names) > 5 else "")


def _named_for_pyfaidx(readable: Path, checksum: str, bgzf: bool) -> Path:
    """``readable``, or a link to it in the cache whose suffix tells pyfaidx the real format.

    pyfaidx picks the BGZF reader by file name (``.gz``/``.bgz``), not content:
    a bgzip file named ``x.fa`` or a plain FASTA named ``x.fa.gz`` would fail.
    """
    if readable.name.lower().endswith((".gz", ".bgz")) == bgzf:
        return readable
    link = cache_dir() / "links" / (f"{checksum}.fa.gz" if bgzf else f"{checksum}.fa")
    link.parent.mkdir(parents=True, exist_ok=True)
    target = readable.resolve()
    if not (link.is_symlink() and Path(os.readlink(link)) == target):
        partial = link.with_name(f"{link.name}.{os.getpid()}.tmp")
        partial.unlink(missing_ok=True)
        partial.symlink_to(target)
        os.replace(partial, link)
    return link


def _write_index(readable: Path, bgzf: bool, shown: Path, fai: Path, gzi: Path, circular: Path) -> None:
    """Validate and index in one streamed pass (plus, for bgzip, htslib's .gzi of block offsets, and the
    names of records whose header marks them circular, one a line)."""
    with (gzip.open(readable, "rb") if bgzf else open(readable, "rb")) as handle:
        rows = scan_fasta(iter(lambda: handle.read(_SCAN_CHUNK), b""), shown)
    circular.write_text("".join(f"{row.name}\n" for row in rows if row.circular), encoding="utf-8")
    fai.write_text("".join(row.fai_line() for row in rows), encoding="utf-8")
    if bgzf:
        gzi.write_bytes(_gzi_bytes(readable, shown))


def _gzi_bytes(path: Path, shown: Path) -> bytes:
    """htslib .gzi: (compressed, uncompressed) start of every block but the first and the empty EOF block."""
    from Bio import bgzf

    with open(path, "rb") as handle:
        try:
            blocks = [(start, data_start, data_length) for start, _, data_start, data_length in bgzf.BgzfBlocks(handle)]
        except ValueError as error:
            raise InputError(f"{shown}: corrupt bgzip block ({error}); re-compress the file with `bgzip`") from None
    if not blocks or blocks[-1][2] != 0:
        raise InputError(f"{shown}: bgzip end-of-file marker missing (truncated?); re-download or re-compress "
                         "the file with `bgzip`")
    starts = blocks[1:-1]
    return struct.pack("<Q", len(starts)) + b"".join(struct.pack("<QQ", c, u) for c, u, _ in starts)


def _open_indexed(readable: Path, checksum: str, bgzf: bool, shown: Path) -> tuple[pyfaidx.Fasta, frozenset[str]]:
    """pyfaidx over ``readable`` with its .fai (and .gzi for bgzip) in the cache, keyed by content, and the
    records whose header marks them circular.

    The index is ours (:func:`scan_fasta`), not pyfaidx's, which reads a line at a time and so
    holds a whole single-line chromosome in memory, and checks no bytes. A missing index is
    built under a temporary name and renamed into place, so an interrupted or concurrent build
    never leaves a truncated index for later opens. An existing index is touched: the cache is
    content-addressed, so pyfaidx's mtime staleness check (a copied or touched genome looks
    newer than its index) does not apply and would only warn.
    """
    index_dir = cache_dir() / "fai"
    index_dir.mkdir(parents=True, exist_ok=True)
    stem = f"{checksum}.v{_INDEX_VERSION}"
    fai, gzi, circular = (index_dir / f"{stem}.{suffix}" for suffix in ("fai", "gzi", "circular"))
    readable = _named_for_pyfaidx(readable, checksum, bgzf)
    if fai.exists() and circular.exists() and (gzi.exists() or not bgzf):
        stamp = max(time.time_ns(), readable.stat().st_mtime_ns)
        for index in (fai, gzi) if bgzf else (fai,):
            os.utime(index, ns=(stamp, stamp))
    else:
        suffix = f".{os.getpid()}.tmp"
        partials = [path.with_name(path.name + suffix) for path in (fai, gzi, circular)]
        try:
            _write_index(readable, bgzf, shown, *partials)
            if bgzf:
                os.replace(partials[1], gzi)
            os.replace(partials[2], circular)
            os.replace(partials[0], fai)
        finally:
            for partial in partials:
                partial.unlink(missing_ok=True)
    return _pyfaidx(readable, fai, gzi), frozenset(circular.read_text(encoding="utf-8").split())


def _pyfaidx(readable: Path, fai: Path, gzi: Path) -> pyfaidx.Fasta:
    return pyfaidx.Fasta(str(readable), indexname=str(fai), gzi_indexname=str(gzi), as_raw=False,
                         sequence_always_upper=False, rebuild=False)


def open_genome(path: str | Path, name: str | None = None) -> Genome:
    """Open and validate a FASTA (plain, gzip or bgzip); raise InputError naming the file and fix."""
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{path}: is a directory, not a FASTA file; pass the FASTA file inside it")
    if not path.is_file():
        raise InputError(f"{path}: FASTA file not found; check the path")
    if not os.access(path, os.R_OK):
        raise InputError(f"{path}: FASTA file is not readable; check its permissions")
    checksum = remembered_checksum(path)
    readable = path
    if is_gzip(path) and not _is_bgzf(path):
        readable = _decompress_to_cache(path, checksum)
    # bgzip is sniffed through its decompressed head; plain gzip through the cached copy
    _sniff_fasta(readable, path, compressed=is_gzip(readable))
    try:
        fasta, circular = _open_indexed(readable, checksum, bgzf=_is_bgzf(readable), shown=path)
    except (EOFError, OSError, zlib.error, struct.error) as error:
        raise InputError(f"{path}: corrupt or truncated compressed FASTA ({error}); "
                         "re-download or re-compress the file") from None
    contigs = {record: len(fasta[record]) for record in fasta.keys()}
    if not contigs:
        raise InputError(f"{path}: no FASTA records found")
    empty = [record for record, length in contigs.items() if length == 0]
    if empty:
        raise InputError(f"{path}: record {empty[0]!r} is empty ({len(empty)} empty records); remove empty records")
    return Genome(path=path, name=name or genome_label(path), checksum=checksum, contigs=contigs, _fasta=fasta,
                  circular=circular)


def open_bgzf_copy(path: Path, name: str, checksum: str, circular=()) -> Genome:
    """A genome from a copy :meth:`Genome.write_bgzf` wrote (its ``.fai`` and ``.gzi`` beside it), without
    re-scanning it; ``checksum`` is the original FASTA's, kept as provenance."""
    if not path.is_file():
        raise InputError(f"{path}: the store's copy of genome {name!r} is missing; run `genoembed verify` on the "
                         "store, then restore the FASTA and rebuild")
    try:
        fasta = _pyfaidx(path, path.with_name(path.name + ".fai"), path.with_name(path.name + ".gzi"))
    except (OSError, ValueError, pyfaidx.FastaIndexingError) as error:
        raise InputError(f"{path}: unreadable copy of genome {name!r} ({error}); run `genoembed verify` on the store") \
            from None
    contigs = {record: len(fasta[record]) for record in fasta.keys()}
    return Genome(path=path, name=name, checksum=checksum, contigs=contigs, _fasta=fasta, circular=frozenset(circular))
