"""Open and validate FASTA genomes (plain, gzip, bgzip) with random access through pyfaidx.

pyfaidx needs a ``.fai`` index; we keep it in genoembed's cache (keyed by the
file's checksum) so read-only genome folders work. Plain gzip cannot be
randomly accessed, so it is decompressed once into the cache and reported;
bgzip is read in place.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import os
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import pyfaidx

from genoembed.errors import InputError

log = logging.getLogger(__name__)

_COMPLEMENT = str.maketrans("ACGTURYKMBDHVNacgturykmbdhvn", "TGCAAYRMKVHDBNtgcaayrmkvhdbn")
_FASTA_SUFFIXES = (".gz", ".bgz", ".fa", ".fasta", ".fna", ".fas", ".ffn", ".fsa")


def reverse_complement(sequence: str) -> str:
    """Reverse complement, IUPAC-aware and case-preserving."""
    return sequence.translate(_COMPLEMENT)[::-1]


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
    return len(header) >= 14 and header[:2] == b"\x1f\x8b" and header[3] & 4 and header[12:14] == b"BC"


def _is_gzip(path: Path) -> bool:
    with open(path, "rb") as handle:
        return handle.read(2) == b"\x1f\x8b"


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


def _sniff_fasta(path: Path, shown: Path) -> None:
    with open(path, "rb") as handle:
        head = handle.read(1 << 16)
    if not head.strip():
        raise InputError(f"{shown}: file is empty; expected a FASTA genome")
    if b"\x00" in head:
        raise InputError(f"{shown}: binary data, not a FASTA file; pass a FASTA genome (.fa, .fa.gz)")
    first = head.lstrip()[:1]
    if first != b">":
        line = head.lstrip().split(b"\n", 1)[0][:40].decode("utf-8", "replace")
        raise InputError(f"{shown}: not a FASTA file (line 1 starts {line!r}, expected '>name'); pass a FASTA genome")


@dataclass(frozen=True)
class Genome:
    """A FASTA genome with random access. Coordinates are 0-based half-open."""

    path: Path
    name: str
    checksum: str
    contigs: dict[str, int]
    _fasta: pyfaidx.Fasta = field(repr=False, compare=False)

    def fetch(self, chrom: str, start: int, end: int, strand: str = "+") -> str:
        """Sequence of ``[start, end)`` on ``chrom``; reverse-complemented for strand ``-``."""
        length = self.contigs.get(chrom)
        if length is None:
            raise InputError(f"{self.path}: unknown contig {chrom!r}; known: {_preview(self.contigs)}")
        if not 0 <= start < end <= length:
            raise InputError(f"{self.path}: region {chrom}:{start}-{end} is outside {chrom} (length {length}); "
                             f"use 0 <= start < end <= {length}")
        sequence = self._fasta[chrom][start:end].seq
        return reverse_complement(sequence) if strand == "-" else sequence

    def describe(self) -> dict:
        return {"path": str(self.path), "name": self.name, "sha256": self.checksum,
                "contigs": len(self.contigs), "length": sum(self.contigs.values())}


def _preview(names) -> str:
    names = list(names)
    return ", ".join(names[:5]) + (f", ... ({len(names)} in all)" if len(names) > 5 else "")


def open_genome(path: str | Path, name: str | None = None) -> Genome:
    """Open and validate a FASTA (plain, gzip or bgzip); raise InputError naming the file and fix."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: FASTA file not found; check the path")
    if not os.access(path, os.R_OK):
        raise InputError(f"{path}: FASTA file is not readable; check its permissions")
    checksum = file_checksum(path)
    readable = path
    if _is_gzip(path) and not _is_bgzf(path):
        readable = _decompress_to_cache(path, checksum)
    elif not _is_gzip(path):
        _sniff_fasta(path, path)
    if readable is not path:
        _sniff_fasta(readable, path)
    index_dir = cache_dir() / "fai"
    index_dir.mkdir(parents=True, exist_ok=True)
    try:
        fasta = pyfaidx.Fasta(
            str(readable), indexname=str(index_dir / f"{checksum}.fai"),
            gzi_indexname=str(index_dir / f"{checksum}.gzi"), as_raw=False, sequence_always_upper=False,
            duplicate_action="stop", rebuild=False,
        )
    except pyfaidx.FastaIndexingError as error:
        raise InputError(f"{path}: malformed FASTA ({error}); fix line lengths within each record") from None
    except ValueError as error:
        message = str(error)
        if "Duplicate key" in message:
            raise InputError(f"{path}: {message.rstrip('.')}; record names must be unique") from None
        raise InputError(f"{path}: cannot read FASTA ({message})") from None
    except (EOFError, OSError, zlib.error) as error:
        raise InputError(f"{path}: corrupt or truncated compressed FASTA ({error})") from None
    contigs = {record: len(fasta[record]) for record in fasta.keys()}
    if not contigs:
        raise InputError(f"{path}: no FASTA records found")
    empty = [record for record, length in contigs.items() if length == 0]
    if empty:
        raise InputError(f"{path}: record {empty[0]!r} is empty ({len(empty)} empty records); remove empty records")
    return Genome(path=path, name=name or genome_label(path), checksum=checksum, contigs=contigs, _fasta=fasta)
