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
import warnings
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import pyfaidx

from genoembed.errors import InputError, StoreError
from genoembed.files import atomic_file, atomic_write_bytes
from genoembed.seqio import GZIP_MAGIC, is_gzip, reverse_complement
from genoembed.fasta_scan import SEQUENCE_LETTERS, scan_fasta  # noqa: F401 (SEQUENCE_LETTERS: part of this API)

log = logging.getLogger(__name__)

_SCAN_CHUNK = 1 << 22  # bytes read at a time while indexing: memory is bounded by this, not by line length
_INDEX_VERSION = 3  # in the cached index's name: v1 checked no bytes, v2 kept no header topology
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
    except (OSError, StoreError):
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
        A bgzip input in htslib's blocks is copied as is; other input is written by :func:`write_bgzf_blocks`.
        """
        source = Path(self._fasta.filename)
        compressed = source.name.lower().endswith((".gz", ".bgz"))  # pyfaidx's BGZF reader is chosen by name
        digest = hashlib.sha256()

        def text():
            with gzip.open(source, "rb") if compressed else open(source, "rb") as handle:
                for block in iter(lambda: handle.read(_SCAN_CHUNK), b""):
                    digest.update(block)
                    yield block

        with atomic_file(target, "genome sequence") as partial:
            if compressed and _largest_block(source) <= BGZF_BLOCK:
                shutil.copyfile(source, partial)
                for _ in text():
                    pass
            else:
                write_bgzf_blocks(partial, text())
            atomic_write_bytes(target.with_name(target.name + ".gzi"), _gzi_bytes(partial, target))
            atomic_write_bytes(target.with_name(target.name + ".fai"), Path(self._fasta.faidx.indexname).read_bytes())
        return {"sha256": file_checksum(target), "content_sha256": digest.hexdigest()}

    def describe(self) -> dict:
        return {"path": str(self.path), "name": self.name, "sha256": self.checksum,
                "contigs": len(self.contigs), "length": sum(self.contigs.values())}


# Bytes of FASTA text per BGZF block: htslib's 0xff00. pyfaidx cannot seek to a position exactly 65,536 bytes
# into a block (ValueError from make_virtual_offset), which Biopython's full 65,536-byte blocks put within reach.
BGZF_BLOCK = 0xFF00


def write_bgzf_blocks(path: Path, chunks: Iterable[bytes]) -> None:
    """Write ``chunks`` as one BGZF file in :data:`BGZF_BLOCK`-byte blocks (Biopython's writer, a flush per block)
    at zlib level 1: 5x faster than level 6 on DNA (20 vs 4 MB/s on this project's 2-core machine, so a 3.1 Gbp
    genome is copied in minutes) for ~12 % more bytes."""
    from Bio import bgzf

    pending = b""
    with bgzf.BgzfWriter(str(path), "wb", compresslevel=1) as sink:
        for chunk in chunks:
            pending += chunk
            whole = len(pending) - len(pending) % BGZF_BLOCK
            for at in range(0, whole, BGZF_BLOCK):
                sink.write(pending[at:at + BGZF_BLOCK])
                sink.flush()
            pending = pending[whole:]
        sink.write(pending)


def _largest_block(path: Path) -> int:
    from Bio import bgzf

    with open(path, "rb") as handle:
        return max((length for *_, length in bgzf.BgzfBlocks(handle)), default=0)


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
        with warnings.catch_warnings():  # a copied store's files get new mtimes in any order; verify checks them
            warnings.filterwarnings("ignore", ".*Index file .* is older than FASTA file", RuntimeWarning)
            fasta = _pyfaidx(path, path.with_name(path.name + ".fai"), path.with_name(path.name + ".gzi"))
    except (OSError, ValueError, pyfaidx.FastaIndexingError) as error:
        raise InputError(f"{path}: unreadable copy of genome {name!r} ({error}); run `genoembed verify` on the store") \
            from None
    contigs = {record: len(fasta[record]) for record in fasta.keys()}
    return Genome(path=path, name=name, checksum=checksum, contigs=contigs, _fasta=fasta, circular=frozenset(circular))
