"""Training data for genoembed's models: FASTA/GenBank genomes read as normalised bytes, held-out splits,
random windows from either strand, and BERT masking of their tokens (:mod:`genoembed.train.pretrain` trains on
them; :mod:`genoembed.train.pairs` draws fine-tuning pairs from the same contigs)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from genoembed.embedders.tokenize import SPECIAL_TOKENS
from genoembed.errors import InputError
from genoembed.seqio import COMPLEMENT_BYTES, NORMALIZED_BASES, is_gzip, open_text, read_fasta

GENBANK_SUFFIXES = (".gb", ".gbk", ".genbank", ".gbff")


@dataclass(frozen=True)
class Contig:
    """One sequence of the corpus, normalised to upper-case ACGTN bytes."""

    source: str  # file name
    name: str
    bases: np.ndarray  # uint8 ASCII


@dataclass(frozen=True)
class Corpus:
    train: tuple[Contig, ...]
    validation: dict[str, tuple[Contig, ...]]  # set name -> contigs


# --------------------------------------------------------------------------- data


def read_sequences(path: str | Path) -> list[Contig]:
    """All records of a FASTA or GenBank file (plain or gzip) as normalised bytes."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"sequence file not found: {path}")
    name = path.name[:-3] if path.name.endswith(".gz") else path.name
    fmt = "genbank" if name.lower().endswith(GENBANK_SUFFIXES) else "fasta"
    gzipped = is_gzip(path)
    if fmt == "fasta":
        with open_text(path, encoding="ascii", errors="replace") as handle:
            first = next((line for line in handle if line.strip()), "")
        if not first.startswith(">"):
            found = f"first line is {first.strip()[:30]!r}" if first else "the file is empty"
            raise InputError(f"{path}: no sequences found; expected FASTA records ('>name' lines), {found}")
    contigs: list[Contig] = []
    try:
        for name, text in read_fasta(path) if fmt == "fasta" else _genbank_records(path):
            bases = NORMALIZED_BASES[np.frombuffer(text.encode("ascii", errors="replace"), dtype=np.uint8)]
            contigs.append(Contig(source=path.name, name=name, bases=bases))
    except (ValueError, EOFError, OSError) as err:
        raise InputError(f"{path}: cannot read as {fmt}{' (gzip)' if gzipped else ''}: {err}") from None
    contigs = [c for c in contigs if len(c.bases)]
    if not contigs:
        expected = "a GenBank file with ORIGIN sequence" if fmt == "genbank" else "FASTA records ('>name' lines)"
        raise InputError(f"{path}: no sequences found; expected {expected}")
    return contigs


def _genbank_records(path: Path):
    """``(id, sequence)`` of each GenBank record (Biopython parses GenBank; FASTA goes through seqio)."""
    from Bio import SeqIO
    from Bio.Seq import UndefinedSequenceError

    with open_text(path, encoding="ascii", errors="replace") as handle:
        for record in SeqIO.parse(handle, "genbank"):
            try:
                yield record.id, str(record.seq)
            except UndefinedSequenceError as err:  # a feature-only GenBank record
                raise InputError(f"{path}: record {record.id} has no sequence ({err})") from None


def load_corpus(config) -> Corpus:
    """Read the files of a :class:`genoembed.train.pretrain.PretrainConfig` and split them into training and
    held-out validation contigs."""
    if not config.train_files:
        raise InputError("no training files given")
    if not config.val_files and not config.val_contigs:
        raise InputError("no validation data: give held-out files (--val-fasta) or held-out contigs (--val-contig)")
    train_resolved = {Path(p).resolve() for p in config.train_files}
    overlap = [str(p) for p in config.val_files if Path(p).resolve() in train_resolved]
    if overlap:
        raise InputError(f"validation file(s) also given for training: {', '.join(overlap)}")

    train: list[Contig] = []
    for path in config.train_files:
        train.extend(read_sequences(path))
    names = [c.name for c in train]
    missing = [c for c in config.val_contigs if c not in names]
    if missing:
        raise InputError(
            f"held-out contig(s) {', '.join(missing)} not in the training files; "
            f"available: {', '.join(names[:10])}{' ...' if len(names) > 10 else ''}"
        )
    validation: dict[str, tuple[Contig, ...]] = {}
    if config.val_contigs:
        held = set(config.val_contigs)
        validation["held-out contigs"] = tuple(c for c in train if c.name in held)
        train = [c for c in train if c.name not in held]
    for path in config.val_files:
        validation[Path(path).name] = tuple(read_sequences(path))

    require_windows("training", train, config.window_bp)
    for set_name, contigs in validation.items():
        require_windows(f"validation set {set_name}", contigs, config.window_bp)
    return Corpus(train=tuple(train), validation=validation)


def require_windows(what: str, contigs, window_bp: int) -> None:
    """Refuse a set of contigs none of which holds one window, naming the set and its longest sequence."""
    if not any(len(c.bases) >= window_bp for c in contigs):
        longest = max((len(c.bases) for c in contigs), default=0)
        raise InputError(
            f"{what}: no sequence is as long as one window ({window_bp} bp; longest is {longest} bp); "
            "lower --window-bp or add longer sequences"
        )


class WindowSampler:
    """Random windows (uniform over positions) from either strand of some contigs."""

    def __init__(self, contigs, window_bp: int):
        self.contigs = [c for c in contigs if len(c.bases) >= window_bp]
        self.window_bp = window_bp
        starts = np.array([len(c.bases) - window_bp + 1 for c in self.contigs], dtype=np.float64)
        self.weights = starts / starts.sum()
        self.n_starts = starts.astype(np.int64)

    def sample(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, list[tuple[str, int, bool]]]:
        which = rng.choice(len(self.contigs), size=n, p=self.weights)
        starts = rng.integers(0, self.n_starts[which])
        reverse = rng.random(n) < 0.5
        out = np.empty((n, self.window_bp), dtype=np.uint8)
        origin = []
        for row, (c, s, rc) in enumerate(zip(which, starts, reverse)):
            window = self.contigs[c].bases[s : s + self.window_bp]
            out[row] = COMPLEMENT_BYTES[window[::-1]] if rc else window
            origin.append((self.contigs[c].name, int(s), bool(rc)))
        return out, origin


# --------------------------------------------------------------------------- masking


@dataclass(frozen=True)
class MaskedBatch:
    input_ids: np.ndarray
    attention_mask: np.ndarray
    labels: np.ndarray  # -100 where not scored


def mask_tokens(
    input_ids: np.ndarray,
    attention_mask: np.ndarray,
    rng: np.random.Generator,
    vocab_size: int,
    probability: float = 0.15,
    mask_all: bool = False,
) -> MaskedBatch:
    """BERT masking of non-special tokens: 80% ``<mask>``, 10% random, 10% kept.

    With ``mask_all`` every selected token becomes ``<mask>`` (evaluation).
    """
    n_special = len(SPECIAL_TOKENS)
    mask_id = SPECIAL_TOKENS.index("<mask>")
    maskable = (input_ids >= n_special) & (attention_mask == 1)
    selected = (rng.random(input_ids.shape) < probability) & maskable
    if not selected.any():  # a loss needs at least one scored token
        rows, cols = np.nonzero(maskable)
        selected[rows[0], cols[0]] = True
    labels = np.where(selected, input_ids, -100)
    ids = input_ids.copy()
    if mask_all:
        ids[selected] = mask_id
    else:
        roll = rng.random(input_ids.shape)
        ids[selected & (roll < 0.8)] = mask_id
        random_pos = selected & (roll >= 0.8) & (roll < 0.9)
        ids[random_pos] = rng.integers(n_special, vocab_size, size=int(random_pos.sum()))
    return MaskedBatch(ids, attention_mask, labels)
