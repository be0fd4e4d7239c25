"""Sequence I/O shared by every stage: text files by magic bytes, FASTA records, reverse complement, base codes.

Whether a file is gzip (or bgzip) is decided by its first bytes, never by its
name, so ``genome.fa`` that is really gzip and ``genes.gff.gz`` that is not
are both read correctly. Everything here is small and dependency-free (numpy
only), so the genome reader, parsers, embedders, training and evaluation all
use the same definitions.
"""

from __future__ import annotations

import gzip
import io
from pathlib import Path
from collections.abc import Iterable, Iterator, Sequence

import numpy as np

from genoembed.errors import InputError

GZIP_MAGIC = b"\x1f\x8b"

# Complement of every IUPAC letter (U as T), case kept; S, W, N and anything else map to themselves.
_COMPLEMENT = str.maketrans("ACGTURYKMBDHVNacgturykmbdhvn", "TGCAAYRMKVHDBNtgcaayrmkvhdbn")

# Byte -> base code: A=0 C=1 G=2 T=3 (either case); everything else (N, IUPAC, gaps) = 4.
BASE_CODES = np.full(256, 4, dtype=np.uint8)
for _code, _base in enumerate("ACGT"):
    BASE_CODES[ord(_base)] = _code
    BASE_CODES[ord(_base.lower())] = _code

# Byte -> normalised byte: A/C/G/T upper-cased, every other byte "N".
NORMALIZED_BASES = np.full(256, ord("N"), dtype=np.uint8)
for _base in "ACGT":
    NORMALIZED_BASES[ord(_base)] = ord(_base)
    NORMALIZED_BASES[ord(_base.lower())] = ord(_base)

# Byte -> complementary byte for normalised (ACGTN) byte arrays.
COMPLEMENT_BYTES = np.arange(256, dtype=np.uint8)
for _base, _complement in zip("ACGTN", "TGCAN"):
    COMPLEMENT_BYTES[ord(_base)] = ord(_complement)


def reverse_complement(sequence: str) -> str:
    """Reverse complement, IUPAC-aware and case-preserving."""
    return sequence.translate(_COMPLEMENT)[::-1]


def encode_bases(sequence: str | bytes) -> np.ndarray:
    """uint8 codes A=0 C=1 G=2 T=3, other=4 (vectorised; case-insensitive)."""
    raw = sequence.encode("ascii", errors="replace") if isinstance(sequence, str) else sequence
    return BASE_CODES[np.frombuffer(raw, dtype=np.uint8)]


def reverse_complement_codes(codes: np.ndarray) -> np.ndarray:
    """Base codes (last axis) reverse-complemented: A<->T, C<->G, every other code stays 4."""
    return np.where(codes < 4, 3 - codes, 4).astype(np.uint8)[..., ::-1]


def kmer_index(codes: np.ndarray, k: int, step: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """The one k-mer indexer: (rows, n) base-4 index (A=0 ... T=3, first base most significant) of the
    k-mer starting at positions 0, step, 2 * step, ... of each row of base codes, and which of those k-mers
    hold only A/C/G/T. A k-mer with another base (code 4) is indexed as if that base were T, so every index
    is a valid row of a 4**k table; callers that must skip such k-mers use the mask.

    Built by k shifted adds over whole rows (int32 up to k = 15, else int64) and checked by a running
    count of ambiguous bases: several times faster than a (length x k) window matrix.
    """
    if codes.ndim != 2 or k < 1 or step < 1:
        raise ValueError(f"kmer_index takes 2-D codes, k >= 1 and step >= 1 (got {codes.ndim}-D, {k}, {step})")
    rows, length = codes.shape
    count = max((length - k) // step + 1, 0)
    index = np.zeros((rows, count), dtype=np.int32 if k <= 15 else np.int64)
    if count == 0:
        return index, np.zeros((rows, 0), dtype=bool)
    span = (count - 1) * step + 1  # the start positions: [0, span) in steps of step
    ambiguous = codes >= 4
    several = bool(ambiguous.any())
    source = np.minimum(codes, 3) if several else codes
    for offset in range(k):
        index <<= 2
        index |= source[:, offset : offset + span : step]
    if not several:
        return index, np.ones(index.shape, dtype=bool)
    running = np.zeros((rows, length + 1), dtype=np.int32)
    np.cumsum(ambiguous, axis=1, out=running[:, 1:])
    return index, running[:, k : k + span : step] == running[:, :span:step]


def rows_by_length(sequences: Sequence[str]) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(row indices, (rows, length) uint8 ASCII bytes) per distinct length of ``sequences``, so equal-length
    sequences (tiles, reads) are processed as one 2-D array; a non-ASCII letter becomes ``?``."""
    lengths = np.fromiter(map(len, sequences), dtype=np.int64, count=len(sequences))
    for length in np.unique(lengths):
        rows = np.flatnonzero(lengths == length)
        data = "".join([sequences[row] for row in rows]).encode("ascii", errors="replace")
        yield rows, np.frombuffer(data, dtype=np.uint8).reshape(len(rows), int(length))


def codes_by_length(sequences: Sequence[str]) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """:func:`rows_by_length` as :data:`BASE_CODES` (A=0 C=1 G=2 T=3, other=4)."""
    for rows, block in rows_by_length(sequences):
        yield rows, BASE_CODES[block]


def window_fractions(block: bytes, starts: np.ndarray, window: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """GC (among unambiguous bases), N (any non-ACGT) and lowercase fractions of each ``window``-long window of
    ``block`` starting at ``starts``, via prefix sums: the tiles' and the gene units' QC columns."""
    codes = np.frombuffer(block, dtype=np.uint8)
    upper = codes & 0xDF  # ASCII uppercase
    flags = np.stack([(upper == ord("G")) | (upper == ord("C")),
                      ~np.isin(upper, np.frombuffer(b"ACGT", dtype=np.uint8)),
                      (codes >= ord("a")) & (codes <= ord("z"))])
    prefix = np.zeros((3, len(codes) + 1), dtype=np.int64)
    np.cumsum(flags, axis=1, out=prefix[:, 1:])
    counts = (prefix[:, starts + window] - prefix[:, starts]) / window
    acgt = np.maximum(1.0 - counts[1], 1.0 / window)
    gc = counts[0] / acgt  # GC among unambiguous bases
    return gc.astype(np.float32), counts[1].astype(np.float32), counts[2].astype(np.float32)


def is_gzip(path: str | Path) -> bool:
    """True when the file starts with the gzip magic bytes (plain gzip and bgzip alike)."""
    with open(path, "rb") as handle:
        return handle.read(2) == GZIP_MAGIC


def open_text(path: str | Path, encoding: str = "utf-8", errors: str = "strict") -> io.TextIOBase:
    """Open a plain or gzip text file for reading, chosen by its magic bytes; newlines kept as written."""
    if is_gzip(path):
        return gzip.open(path, "rt", encoding=encoding, errors=errors, newline="")
    return open(path, "rt", encoding=encoding, errors=errors, newline="")


def read_fasta(path: str | Path) -> Iterator[tuple[str, str]]:
    """``(name, sequence)`` for every record of a small FASTA file (plain or gzip), e.g. query files.

    The name is the header up to the first whitespace, as samtools and BLAST read it. Whole
    genomes go through :func:`genoembed.genome.open_genome` instead (indexed, checksummed).
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: FASTA file not found")
    try:
        with open_text(path, encoding="ascii", errors="replace") as handle:
            yield from fasta_records(handle, str(path))
    except (OSError, EOFError) as error:
        raise InputError(f"{path}: cannot read ({error}); is it a complete FASTA or gzip file?") from None


def fasta_records(lines: Iterable[str], where: str) -> Iterator[tuple[str, str]]:
    """``(name, sequence)`` records from FASTA lines (a file, or text sent to `genoembed serve`)."""
    name, chunks, records = None, [], 0
    for number, line in enumerate(lines, 1):
        line = line.rstrip("\r\n")
        if line.startswith(">"):
            if name is not None:
                yield name, "".join(chunks)
                records += 1
            header = line[1:].strip()
            name, chunks = header.split()[0] if header else f"record{records + 1}", []
        elif name is None and line.strip():
            raise InputError(f"{where}:{number}: not a FASTA file (expected a '>name' line first)")
        else:
            chunks.append(line)
    if name is not None:
        yield name, "".join(chunks)
        records += 1
    if not records:
        raise InputError(f"{where}: no FASTA records found")
