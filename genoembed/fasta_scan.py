"""Scanning FASTA bytes into ``.fai`` rows (samtools' layout), refusing whatever would mis-index.

One streamed pass, chunk by chunk, checks every sequence byte (naming record, line and column of the first
bad one), line lengths (samtools' rule), unique record names, and notes records whose header marks them
circular (:func:`genoembed.topology.header_says_circular`). :mod:`genoembed.genome` indexes genomes with it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from genoembed.errors import InputError
from genoembed.topology import header_says_circular

# The one statement of what a FASTA sequence line may hold: IUPAC nucleotide codes (U for RNA, N and
# the ambiguity letters) in either case, lower case being soft-masked. Gaps ('-', '.'), stops ('*'),
# other letters, digits, whitespace and non-ASCII bytes are refused: downstream they would silently
# become N, and a space or digit would shift every coordinate after it.
SEQUENCE_LETTERS = b"ACGTURYKMSWBDHVNacgturykmswbdhvn"
_LINE_BYTES = SEQUENCE_LETTERS + b"\r\n"  # '\r' only in '\r\n', checked separately
_LONE_CR = re.compile(rb"\r[^\n]")
_MAX_HEADER = 1 << 20
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
