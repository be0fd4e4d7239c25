"""Contrastive fine-tuning of a genomic LM into a retrieval embedder.

The encoder of a pretrained model (genoembed's masked-LM default, or any
native ``EsmModel``-family k-mer model) is trained so that the *same vector the
product computes* (mean over the non-special tokens of the last hidden state,
optionally times a linear projection, L2-normalised) is close for homologous
windows and far for the rest: InfoNCE with in-batch negatives and a learned
temperature, symmetric (anchor -> positive and positive -> anchor).

Positive pairs (each positive view is a fresh draw):

- **related strains**: the same locus in another genome, found at build time
  by minimap2 (``-x asm20 -c``) between the genomes of a :class:`RelatedPair`
  or read from a NUCmer ``show-coords`` table; the anchor window is mapped
  linearly within its alignment block (:func:`map_window`) and kept only when
  the two windows share k-mers (a mapping check, :func:`shared_kmer_fraction`);
- **shifted windows** of the same locus (overlap >= 1 - ``max_shift``), as a
  query tile lies against a reference tiling;
- either strand: each pair is taken on a random strand, both views on the
  same one; the *reverse complement of the same tile* needs no training
  because the embedder averages a tile's two strands (vector(x) =
  vector(revcomp x) exactly), so ``strand_flip`` (probability that the
  positive is on the other strand) defaults to 0 and spends no capacity on it;
- simulated substitutions (0 - ``max_substitution``) and, with probability
  ``indel_probability``, small 1-3 bp indels (:func:`genoembed.synthetic.mutate`).

Reading frames: the embedder averages a window's vectors over its k
tokenisation frames (``TransformersEmbedder(frames=k)``, the default for
k-mer models), which makes the vector independent of where a window starts.
Training optimises that same average, estimated from ``train_frames``
randomly chosen frames per view (all k frames cost k forward passes);
validation uses all k frames and both strands, exactly the product's vector.

Negatives: every batch draws all its anchors from **one genome** (in-batch
negatives are then other loci of the same genome: the hard case of a search);
anchors never overlap each other, and in-batch pairs whose anchors share many
k-mers (repeats: IS elements, rRNA operons, paralogs) are removed from the
loss instead of being pushed apart (:func:`false_negative_mask`).

Output: a plain Hugging Face directory (``EsmModel`` config + weights, the
k-mer tokenizer) that :class:`genoembed.embedders.hf.TransformersEmbedder`
loads with no genoembed model code; with ``projection_dim`` set, also
``genoembed_projection.safetensors`` (a ``weight`` matrix, out x hidden) that
the embedder applies to the pooled vector. ``finetune.json`` records the data,
pairs, history, machine and command.

Starting points: the base model as it is; ``reinitialize`` (fresh seeded
weights of its shape, keeping its tokenizer); ``keep_layers`` (only its first
N layers; 0 leaves the token embeddings, so the vector is a learned embedding
of the window's overlapping k-mer spectrum); ``zero_residual`` (layers that
start by adding nothing). Measured on held-out genomes (benchmarks/RESULTS.md):
the masked-LM base's contextual layers made the vector *less* robust to
substitutions than its own token embeddings, and the trained zero-layer model
is what genoembed ships as its retrieval default.

Training shares :mod:`genoembed.train.loop` with pretraining (schedule over
steps or minutes, atomic resumable checkpoints, progress bar) and
:mod:`genoembed.train.pretrain`'s sequence reading.

This file is long because contrastive fine-tuning keeps its pair sources (shifted, mutated,
cross-strain aligned), frame views, projection head and validation retrieval together: they share one
configuration and are only used here.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pyarrow as pa

from genoembed.seqio import BASE_CODES, COMPLEMENT_BYTES, kmer_index, reverse_complement, reverse_complement_codes
from genoembed.errors import InputError, ModelError
from genoembed.train.pretrain import Contig, read_sequences
from genoembed.embedders.model_dir import PROJECTION_FILE
from genoembed.embedders.tokenize import SPECIAL_TOKENS, kmer_token_ids, write_kmer_tokenizer
from genoembed.train.loop import (TrainingSchedule, adamw, pick_device, publish_files, resume_state, run_record,
                                run_steps)

REPORT_FILE = "finetune.json"


@dataclass(frozen=True)
class RelatedPair:
    """Two genomes of related strains; homologous windows between them are positives.

    ``coords``: a NUCmer ``show-coords`` table of ``query`` on ``reference``;
    None = align with minimap2 when the run starts.
    """

    reference: Path
    query: Path
    coords: Path | None = None


@dataclass(frozen=True, kw_only=True)
class FinetuneConfig(TrainingSchedule):
    """Everything a fine-tuning run depends on (recorded in ``finetune.json``); schedule fields
    come from :class:`genoembed.train.loop.TrainingSchedule`, with fine-tuning's defaults below."""

    train_files: tuple[Path, ...]
    base_model: Path
    related: tuple[RelatedPair, ...] = ()
    val_files: tuple[Path, ...] = ()  # held-out genomes: retrieval among val pairs is logged
    # Embedding.
    window_bp: int = 1000
    projection_dim: int | None = None  # None: no projection, the vector is the encoder's hidden size
    train_frames: int = 2  # tokenisation frames sampled per view per step (validation uses all k)
    subword_init: tuple[int, ...] = ()  # e.g. (4, 5): add sub-k-mer vectors to the token embeddings first
    reinitialize: bool = False  # fresh seeded weights of the base model's shape (its tokenizer and size only)
    zero_residual: bool = False  # start every layer's residual branch at zero (see zero_residual_branches)
    keep_layers: int | None = None  # keep only the base model's first N transformer layers (0: token embeddings)
    # Positive pairs.
    cross_strain_fraction: float = 0.5
    max_shift: float = 0.5  # fraction of the window a positive may be shifted by
    strand_flip: float = 0.0  # probability that a positive is on the other strand than its anchor
    max_substitution: float = 0.25
    max_indel: float = 0.02
    indel_probability: float = 0.5
    min_pair_kmer_share: float = 0.02  # related-strain windows must share this fraction of 12-mers
    repeat_kmer_share: float = 0.2  # in-batch anchors sharing this fraction of 12-mers are not negatives
    min_alignment_bp: int = 2000
    minimap2_preset: str = "asm20"
    # Objective.
    batch_size: int = 32  # anchors per step (2 x batch_size windows through the model)
    temperature: float = 0.05  # initial; learned unless fixed_temperature
    fixed_temperature: bool = False
    eval_pairs: int = 128
    # Schedule defaults for fine-tuning.
    learning_rate: float = 2e-4
    warmup_steps: int = 20
    max_steps: int = 1000
    eval_every: int = 100
    checkpoint_every: int = 50
    log_every: int = 10


# --------------------------------------------------------------------------- k-mer helpers


PAIR_K = 12


def _kmer_codes(sequence: bytes | str | np.ndarray, k: int = PAIR_K, both_strands: bool = False) -> np.ndarray:
    """Unique base-4 codes of the k-mers without N (and of the reverse complement's, with both_strands)."""
    if isinstance(sequence, str):
        sequence = sequence.encode("ascii", errors="replace")
    raw = np.frombuffer(sequence, dtype=np.uint8) if isinstance(sequence, bytes) else sequence
    codes = BASE_CODES[raw]
    strands = [codes] + ([reverse_complement_codes(codes)] if both_strands else [])
    out = []
    for strand in strands:
        index, clean = kmer_index(strand[None, :], k)
        out.append(index[clean].astype(np.int64))
    return np.unique(np.concatenate(out))


def shared_kmer_fraction(a, b, k: int = PAIR_K) -> float:
    """Fraction of ``b``'s k-mers found in ``a`` on either strand (0 when ``b`` has none)."""
    kb = _kmer_codes(b, k)
    if kb.size == 0:
        return 0.0
    return float(np.isin(kb, _kmer_codes(a, k, both_strands=True), assume_unique=True).mean())


def false_negative_mask(anchors: Sequence, threshold: float, k: int = PAIR_K) -> np.ndarray:
    """(n, n) bool, True where anchors i != j share >= ``threshold`` of k-mers (either direction, either strand).

    Such pairs (repeats, paralogs, overlapping windows) are left out of the
    loss: the positive of one is also a positive of the other.
    """
    n = len(anchors)
    fwd = [_kmer_codes(a, k) for a in anchors]
    both = [_kmer_codes(a, k, both_strands=True) for a in anchors]
    mask = np.zeros((n, n), dtype=bool)
    for i in range(n):
        for j in range(i + 1, n):
            if fwd[i].size == 0 or fwd[j].size == 0:
                continue
            share = max(np.isin(fwd[j], both[i], assume_unique=True).mean(),
                        np.isin(fwd[i], both[j], assume_unique=True).mean())
            if share >= threshold:
                mask[i, j] = mask[j, i] = True
    return mask


# --------------------------------------------------------------------------- pairs from alignments


@dataclass(frozen=True)
class TrainingGenome:
    """A training genome: its contigs and where they are."""

    name: str
    path: Path
    contigs: tuple[Contig, ...]

    @property
    def length(self) -> int:
        return int(sum(len(c.bases) for c in self.contigs))


def pair_alignments(pair: RelatedPair, min_length: int = 2000, preset: str = "asm20",
                    threads: int = 2) -> pa.Table:
    """Alignment blocks (``genoembed.eval.run.ALIGNMENTS``) of ``pair.query`` on ``pair.reference``.

    From the NUCmer table when ``pair.coords`` is set, else minimap2 at build
    time (primary and secondary blocks). Blocks shorter than ``min_length``
    are dropped.
    """
    import pyarrow.compute as pc

    from genoembed.eval import derive_truth_minimap2, read_coords

    if pair.coords is not None:
        table = read_coords(pair.coords)
    else:
        table = derive_truth_minimap2(pair.reference, pair.query, preset=preset, min_length=min_length,
                                      threads=threads)
    keep = pc.greater_equal(pc.subtract(table["ref_end"], table["ref_start"]), min_length)
    return table.filter(keep)


def map_window(ref_span: tuple[int, int], query_span: tuple[int, int], strand: str,
               start: int, end: int) -> tuple[int, int]:
    """Map ``[start, end)`` on the reference side of a block linearly onto its query side.

    ``ref_span``/``query_span`` are the block's 0-based half-open spans;
    ``strand`` '-' means the query runs backwards along the reference.
    """
    r0, r1 = ref_span
    q0, q1 = query_span
    if not (r0 <= start < end <= r1):
        raise InputError(f"window {start}-{end} is not inside the block's reference span {r0}-{r1}")
    scale = (q1 - q0) / max(r1 - r0, 1)
    a, b = (start - r0) * scale, (end - r0) * scale
    if strand == "+":
        mapped = (q0 + a, q0 + b)
    else:
        mapped = (q1 - b, q1 - a)
    return int(round(mapped[0])), int(round(mapped[1]))


@dataclass(frozen=True)
class _Blocks:
    """Alignment blocks seen from one genome: this side's spans and the other genome's."""

    this_contig: np.ndarray  # int index into the genome's contigs
    this_start: np.ndarray
    this_end: np.ndarray
    other_genome: np.ndarray
    other_contig: np.ndarray
    other_start: np.ndarray
    other_end: np.ndarray
    strand: np.ndarray  # bool: True for '-'
    identity: np.ndarray


def _blocks_by_genome(genomes: list[TrainingGenome], pairs: Sequence[RelatedPair], tables: Sequence[pa.Table],
                      window_bp: int) -> dict[int, _Blocks]:
    """Index every pair's blocks from both sides, keeping blocks at least one window long."""
    by_path = {g.path.resolve(): i for i, g in enumerate(genomes)}
    contig_index = [{c.name: j for j, c in enumerate(g.contigs)} for g in genomes]
    rows: dict[int, list[tuple]] = {}
    for pair, table in zip(pairs, tables):
        ref, qry = by_path[Path(pair.reference).resolve()], by_path[Path(pair.query).resolve()]
        for r in table.to_pylist():
            if r["ref_end"] - r["ref_start"] < window_bp or r["query_end"] - r["query_start"] < window_bp:
                continue
            rc, qc = contig_index[ref].get(r["ref_chrom"]), contig_index[qry].get(r["query_chrom"])
            if rc is None or qc is None:
                raise InputError(f"alignment of {pair.query} on {pair.reference} names contig "
                                 f"{r['ref_chrom'] if rc is None else r['query_chrom']}, not in the FASTA files")
            minus = r["strand"] == "-"
            rows.setdefault(ref, []).append((rc, r["ref_start"], r["ref_end"], qry, qc, r["query_start"],
                                             r["query_end"], minus, r["identity"]))
            rows.setdefault(qry, []).append((qc, r["query_start"], r["query_end"], ref, rc, r["ref_start"],
                                             r["ref_end"], minus, r["identity"]))
    out = {}
    for genome, items in rows.items():
        cols = list(zip(*items))
        out[genome] = _Blocks(*(np.asarray(c) for c in cols))
    return out


# --------------------------------------------------------------------------- batches


@dataclass(frozen=True)
class PairBatch:
    anchors: list[str]
    positives: list[str]
    kinds: list[str]  # "strain" or "shift" per pair
    exclude: np.ndarray  # (n, n) bool: off-diagonal pairs left out of the loss
    genome: str


def _window(contig: Contig, start: int, end: int, reverse: bool) -> str:
    bases = contig.bases[start:end]
    if reverse:
        bases = COMPLEMENT_BYTES[bases[::-1]]
    return bases.tobytes().decode("ascii")


class PairSampler:
    """Seeded batches of (anchor, positive) windows from one genome at a time."""

    def __init__(self, genomes: list[TrainingGenome], blocks: dict[int, _Blocks], config: FinetuneConfig):
        self.genomes = genomes
        self.blocks = blocks
        self.config = config
        w = config.window_bp
        self.usable = [[c for c in g.contigs if len(c.bases) >= w] for g in genomes]
        lengths = np.array([sum(len(c.bases) - w + 1 for c in cs) for cs in self.usable], dtype=np.float64)
        if not (lengths > 0).any():
            raise InputError(f"no training sequence is as long as one window ({w} bp); lower --window-bp")
        self.genome_weights = lengths / lengths.sum()
        self.stats = {"strain": 0, "shift": 0, "strain_rejected": 0, "excluded_pairs": 0}

    def sample(self, rng: np.random.Generator, n: int, substitution: tuple[float, float] | None = None,
               cross_fraction: float | None = None) -> PairBatch:
        from genoembed.synthetic import mutate

        config = self.config
        g = int(rng.choice(len(self.genomes), p=self.genome_weights))
        genome = self.genomes[g]
        blocks = self.blocks.get(g)
        cross = config.cross_strain_fraction if cross_fraction is None else cross_fraction
        taken: list[tuple[int, int]] = []  # (contig id, start) of anchors: never overlapping
        anchors, positives, kinds = [], [], []
        while len(anchors) < n:
            pair = None
            if blocks is not None and rng.random() < cross:
                pair = self._strain_pair(rng, genome, blocks, taken)
            kind = "strain"
            if pair is None:
                pair = self._shift_pair(rng, genome, taken)
                kind = "shift"
            if pair is None:
                continue
            anchor, positive, key = pair
            taken.append(key)
            lo, hi = substitution or ((0.0, config.max_substitution / 2) if kind == "strain"
                                      else (0.0, config.max_substitution))
            rate = float(rng.uniform(lo, hi))
            indel = float(rng.uniform(0, config.max_indel)) if rng.random() < config.indel_probability else 0.0
            positive = mutate(positive, rate, indel, seed=int(rng.integers(2**31)))
            anchors.append(anchor)
            positives.append(positive)
            kinds.append(kind)
            self.stats[kind] += 1
        exclude = false_negative_mask(anchors, config.repeat_kmer_share)
        self.stats["excluded_pairs"] += int(exclude.sum()) // 2
        return PairBatch(anchors, positives, kinds, exclude, genome.name)

    def _overlaps(self, taken, contig_id: int, start: int) -> bool:
        w = self.config.window_bp
        return any(c == contig_id and abs(s - start) < w for c, s in taken)

    def _shift_pair(self, rng, genome: TrainingGenome, taken):
        w = self.config.window_bp
        contigs = self.usable[self.genomes.index(genome)]
        sizes = np.array([len(c.bases) - w + 1 for c in contigs], dtype=np.float64)
        ci = int(rng.choice(len(contigs), p=sizes / sizes.sum()))
        contig = contigs[ci]
        for _ in range(20):
            start = int(rng.integers(0, len(contig.bases) - w + 1))
            if not self._overlaps(taken, id(contig), start):
                break
        else:
            return None
        span = int(self.config.max_shift * w)
        shift = int(rng.integers(-span, span + 1))
        p_start = min(max(start + shift, 0), len(contig.bases) - w)
        reverse = bool(rng.random() < 0.5)
        flip = bool(rng.random() < self.config.strand_flip)
        anchor = _window(contig, start, start + w, reverse)
        positive = _window(contig, p_start, p_start + w, reverse != flip)
        return anchor, positive, (id(contig), start)

    def _strain_pair(self, rng, genome: TrainingGenome, blocks: _Blocks, taken):
        w = self.config.window_bp
        sizes = (blocks.this_end - blocks.this_start - w + 1).astype(np.float64)
        b = int(rng.choice(len(sizes), p=sizes / sizes.sum()))
        contig = genome.contigs[int(blocks.this_contig[b])]
        start = int(rng.integers(blocks.this_start[b], blocks.this_end[b] - w + 1))
        if self._overlaps(taken, id(contig), start):
            return None
        other = self.genomes[int(blocks.other_genome[b])].contigs[int(blocks.other_contig[b])]
        q0, q1 = map_window((int(blocks.this_start[b]), int(blocks.this_end[b])),
                            (int(blocks.other_start[b]), int(blocks.other_end[b])),
                            "-" if blocks.strand[b] else "+", start, start + w)
        centre = (q0 + q1) // 2 + int(rng.integers(-w // 4, w // 4 + 1))
        p_start = min(max(centre - w // 2, 0), len(other.bases) - w)
        if p_start < 0:
            return None
        minus = bool(blocks.strand[b])
        anchor = _window(contig, start, start + w, False)
        positive = _window(other, p_start, p_start + w, minus)  # in the anchor's orientation
        if shared_kmer_fraction(anchor, positive) < self.config.min_pair_kmer_share:
            self.stats["strain_rejected"] += 1
            return None
        reverse = bool(rng.random() < 0.5)
        flip = bool(rng.random() < self.config.strand_flip)
        anchor = _window(contig, start, start + w, reverse)
        positive = _window(other, p_start, p_start + w, minus != (reverse != flip))
        return anchor, positive, (id(contig), start)


# --------------------------------------------------------------------------- model


def _contrastive_model(encoder, projection_dim: int | None, temperature: float, learn_temperature: bool):
    import torch

    class ContrastiveEncoder(torch.nn.Module):
        """Encoder + optional projection; ``embed`` is exactly the product's mean-pooled vector."""

        def __init__(self):
            super().__init__()
            self.encoder = encoder
            hidden = encoder.config.hidden_size
            self.projection = (torch.nn.Linear(hidden, projection_dim, bias=False)
                               if projection_dim is not None else None)
            scale = torch.tensor(math.log(1.0 / temperature))
            if learn_temperature:
                self.logit_scale = torch.nn.Parameter(scale)
            else:
                self.register_buffer("logit_scale", scale)

        def embed(self, input_ids, attention_mask, group: int = 1):
            """L2-normalised mean of each run of ``group`` consecutive rows' pooled vectors (frames, strands)."""
            hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            content = ((input_ids >= len(SPECIAL_TOKENS)) & (attention_mask > 0)).unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * content).sum(1) / content.sum(1).clamp_min(1.0)
            if self.projection is not None:
                pooled = self.projection(pooled)
            pooled = pooled.float().unflatten(0, (-1, group)).mean(1)
            return torch.nn.functional.normalize(pooled, dim=-1)

    return ContrastiveEncoder()


def info_nce(a, b, logit_scale, exclude=None):
    """Symmetric InfoNCE over in-batch negatives; ``exclude`` (n, n) bool drops off-diagonal pairs."""
    import torch

    scale = logit_scale.clamp(max=math.log(100.0)).exp()
    logits = scale * a @ b.T
    if exclude is not None:
        logits = logits.masked_fill(exclude, float("-inf"))
    target = torch.arange(len(a), device=a.device)
    return 0.5 * (torch.nn.functional.cross_entropy(logits, target)
                  + torch.nn.functional.cross_entropy(logits.T, target))


def load_encoder(base_model: Path):
    """The base model's encoder (``AutoModel``, no MLM head) and its k-mer size, from a local directory."""
    from transformers import AutoConfig, AutoModel

    from genoembed.embedders.model_dir import read_vocab

    base_model = Path(base_model)
    if not (base_model / "config.json").is_file():
        raise ModelError(f"{base_model}: no config.json; give a Hugging Face model directory as the base model")
    config = AutoConfig.from_pretrained(str(base_model), local_files_only=True)
    if config.model_type != "esm" or getattr(config, "auto_map", None):
        raise ModelError(f"{base_model}: fine-tuning supports native ESM-family k-mer models (genoembed's "
                         f"default); this one is model_type={config.model_type!r}")
    vocab = read_vocab(base_model)
    k = _vocab_k(vocab)
    from genoembed.embedders.tokenize import kmer_vocab

    if vocab != {t: i for i, t in enumerate(kmer_vocab(k))}:
        raise ModelError(f"{base_model}: the vocabulary is not genoembed's {k}-mer vocabulary "
                         "(genoembed.embedders.tokenize.write_kmer_tokenizer); fine-tuning needs it")
    from genoembed.embedders.hf import quiet_transformers

    try:
        with quiet_transformers():
            encoder, info = AutoModel.from_pretrained(str(base_model), local_files_only=True,
                                                      add_pooling_layer=False, output_loading_info=True)
    except (OSError, ValueError, RuntimeError) as err:
        raise ModelError(f"cannot load {base_model}: {err}") from None
    if info.get("missing_keys"):
        raise ModelError(f"{base_model}: {len(info['missing_keys'])} encoder weights missing "
                         f"(e.g. {sorted(info['missing_keys'])[:3]})")
    return encoder, k


def subword_init(encoder, k: int, sizes: Sequence[int], seed: int = 0) -> None:
    """Add to each k-mer token's embedding the sum of random vectors of its overlapping sub-m-mers.

    fastText-style: two tokens that share sub-sequences start close, so a
    sequence read in another frame of non-overlapping k-mers (another set of
    tokens) starts with a similar mean embedding. The added part has the
    norm of the existing rows (in mean); the model stays a plain EsmModel.
    """
    import itertools

    import torch

    weight = encoder.get_input_embeddings().weight
    hidden = weight.shape[1]
    n_special = len(SPECIAL_TOKENS)
    rng = np.random.default_rng([seed, 7])
    kmers = ["".join(p) for p in itertools.product("ACGT", repeat=k)]
    codes = np.array([[ "ACGT".index(c) for c in kmer] for kmer in kmers], dtype=np.uint8)
    added = np.zeros((len(kmers), hidden))
    for m in sizes:
        if not 1 <= m <= k:
            raise InputError(f"subword size {m} must be within 1..{k}")
        table = rng.normal(size=(4**m, hidden))
        index, _ = kmer_index(codes, m)  # (k-mers, k - m + 1): the m-mer at each offset of each k-mer
        for j in range(k - m + 1):
            added += table[index[:, j]]
    with torch.no_grad():
        rows = weight[n_special : n_special + len(kmers)]
        scale = float(rows.norm(dim=1).mean()) / float(np.linalg.norm(added, axis=1).mean())
        rows += torch.from_numpy(added * scale).to(rows.dtype)


def keep_first_layers(encoder, n: int) -> None:
    """Drop every transformer layer after the first ``n`` (config updated, so the saved model has n layers).

    With ``n = 0`` the vector is the mean over all frames of the layer-normed
    token embeddings: a learned embedding of the window's overlapping k-mer
    spectrum, k forward passes of nothing but a table look-up.
    """
    from transformers.models.esm.modeling_esm import EsmContactPredictionHead

    from genoembed.embedders.hf import quiet_transformers

    encoder.encoder.layer = encoder.encoder.layer[:n]
    encoder.config.num_hidden_layers = n
    # The (unused) contact head reads every layer's attention maps: its size follows the layer count.
    with quiet_transformers():  # n = 0: the contact head is an empty matrix
        encoder.contact_head = EsmContactPredictionHead(n * encoder.config.num_attention_heads,
                                                        eos_idx=encoder.config.eos_token_id)


def zero_residual_branches(encoder) -> None:
    """Zero each layer's attention-output and feed-forward-output projections.

    Every layer then adds nothing to the residual stream, so the pooled vector
    starts as the mean of the (layer-normed) token embeddings over all frames:
    a projection of the window's overlapping k-mer spectrum, which already
    retrieves about as well as 4-mer profiles with random embeddings.
    Gradients still reach the zeroed weights (through the inputs they
    multiply), so training grows the layers from there (ReZero-style start).
    """
    import torch

    with torch.no_grad():
        for layer in encoder.encoder.layer:
            for projection in (layer.attention.output.dense, layer.output.dense):
                projection.weight.zero_()
                projection.bias.zero_()


def _vocab_k(vocab) -> int:
    tokens = vocab if isinstance(vocab, (list, tuple)) else list(vocab or ())
    kmers = {len(t) for t in tokens if t and set(t) <= set("ACGT") and len(t) > 1}
    if len(kmers) != 1:
        raise ModelError("the base model's vocabulary is not a non-overlapping k-mer vocabulary")
    return kmers.pop()


# --------------------------------------------------------------------------- training


def finetune(config: FinetuneConfig) -> Path:
    """Contrastive fine-tuning; returns the output directory (a plain HF model directory)."""
    import torch

    _validate_config(config)
    if config.threads:
        torch.set_num_threads(config.threads)
    device = pick_device(config.device)
    on_cuda = device.type == "cuda"
    started_wall = time.monotonic()

    genomes = _read_genomes(config)
    say = _log
    tables = []
    for pair in config.related:
        say(f"pairs: aligning {Path(pair.query).name} on {Path(pair.reference).name}"
            + (f" (NUCmer table {Path(pair.coords).name})" if pair.coords else f" (minimap2 -x {config.minimap2_preset})"))
        tables.append(pair_alignments(pair, config.min_alignment_bp, config.minimap2_preset))
    blocks = _blocks_by_genome(genomes, config.related, tables, config.window_bp)
    pair_summary = [{"reference": Path(p.reference).name, "query": Path(p.query).name,
                     "source": "NUCmer coords" if p.coords else f"minimap2 -x {config.minimap2_preset} -c",
                     "blocks": t.num_rows,
                     "aligned_bp": int(sum(e - s for s, e in zip(t["ref_start"].to_pylist(), t["ref_end"].to_pylist()))),
                     "mean_identity": round(float(np.mean(t["identity"].to_numpy())), 2) if t.num_rows else None}
                    for p, t in zip(config.related, tables)]
    for entry in pair_summary:
        say(f"pairs: {entry['query']} on {entry['reference']}: {entry['blocks']} blocks, "
            f"{entry['aligned_bp'] / 1e6:.2f} Mbp, mean identity {entry['mean_identity']}%")
    sampler = PairSampler(genomes, blocks, config)

    encoder, k = load_encoder(config.base_model)
    from genoembed.embedders.tokenize import kmer_vocab

    vocab = {t: i for i, t in enumerate(kmer_vocab(k))}
    torch.manual_seed(config.seed)
    if config.reinitialize:
        encoder = type(encoder)(encoder.config, add_pooling_layer=False)
        say(f"weights: fresh random initialisation of {Path(config.base_model).name}'s shape (seed {config.seed})")
    if config.keep_layers is not None and config.keep_layers < encoder.config.num_hidden_layers:
        keep_first_layers(encoder, config.keep_layers)
        say(f"kept the first {config.keep_layers} of the base model's layers")
    if config.zero_residual:
        zero_residual_branches(encoder)
        say("residual branches zeroed: training starts from the mean of the token embeddings")
    if config.subword_init:  # a resumed run loads its trained embeddings over this
        subword_init(encoder, k, config.subword_init, seed=config.seed)
        say(f"token embeddings: added sums of random {'/'.join(map(str, config.subword_init))}-mer vectors "
            "(subword initialisation)")
    model = _contrastive_model(encoder, config.projection_dim, config.temperature,
                               not config.fixed_temperature).to(device)
    optimizer = adamw(model, config)
    rng = np.random.default_rng([config.seed, 0])
    state = {"step": 0, "elapsed_s": 0.0, "pairs_seen": 0, "history": [], "baselines": None,
             "projection_dim": config.projection_dim, "base_model": str(config.base_model)}
    shape = _shape_signature(encoder.config, k, config)
    checkpoint, state = resume_state(config, shape, model, optimizer, rng, state, say)

    val = _validation_pairs(config, k, vocab)

    def evaluate_val() -> dict | None:
        if val is None:
            return None
        return _evaluate(model, val, vocab, k, device, on_cuda, config.batch_size)

    if state["baselines"] is None and val is not None:
        state["baselines"] = {"base_model": evaluate_val(), **_kmer_baselines(val)}
        b = state["baselines"]
        say(f"validation ({val['n']} held-out pairs, R@1 among them): base model {b['base_model']['r1']:.3f}, "
            f"k-mer4 {b['kmer4']['r1']:.3f}, k-mer6 {b['kmer6']['r1']:.3f}")

    n_params = sum(p.numel() for p in model.parameters())
    say(f"model: {n_params / 1e6:.2f} M parameters, output dim {config.projection_dim or encoder.config.hidden_size}; "
        f"{sum(g.length for g in genomes) / 1e6:.2f} Mbp in {len(genomes)} genomes; batch {config.batch_size} pairs; "
        f"device {device}")

    model.train()
    running: list[float] = []

    def loss_step():
        batch = sampler.sample(rng, config.batch_size)
        frames = min(config.train_frames, k)
        views = frame_views(batch.anchors + batch.positives, k, frames, rng)
        ids, attn = _tokens(views, vocab, k, device)
        exclude = torch.from_numpy(batch.exclude).to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=on_cuda):
            vectors = model.embed(ids, attn, group=frames)
        n = len(batch.anchors)
        loss = info_nce(vectors[:n], vectors[n:], model.logit_scale, exclude)
        state["pairs_seen"] += n
        running.append(float(loss.detach()))
        return loss

    def record(lr: float) -> None:
        _record(state, evaluate_val(), running, lr, model)
        running.clear()

    def step_text() -> str:
        return (f"loss {np.mean(running[-config.log_every:]):.4f} "
                f"temperature {1 / float(model.logit_scale.detach().exp()):.4f}")

    stop_reason = run_steps(config, model=model, optimizer=optimizer, rng=rng, state=state, checkpoint=checkpoint,
                            shape=shape, loss_step=loss_step, record=record, step_text=step_text, log=say,
                            label="finetune")
    out = _write_output(config, model, k, state, genomes, pair_summary, sampler.stats, n_params, device,
                        stop_reason, time.monotonic() - started_wall)
    last = state["history"][-1]
    val_text = f", val R@1 {last['val']['r1']:.3f}" if last.get("val") else ""
    say(f"done: step {state['step']} ({stop_reason}){val_text}; wrote {out}")
    return out


def _validate_config(config: FinetuneConfig) -> None:
    problems = []
    if not config.train_files:
        problems.append("no training files")
    if config.window_bp < 50:
        problems.append(f"window_bp={config.window_bp} (use >= 50)")
    if config.projection_dim is not None and config.projection_dim < 1:
        problems.append(f"projection_dim={config.projection_dim} (use >= 1, or None for no projection)")
    for name in ("cross_strain_fraction", "max_shift", "strand_flip", "indel_probability", "min_pair_kmer_share",
                 "repeat_kmer_share"):
        if not 0 <= getattr(config, name) <= 1:
            problems.append(f"{name}={getattr(config, name)} (use 0..1)")
    if not 0 <= config.max_substitution <= 0.75:
        problems.append(f"max_substitution={config.max_substitution} (use 0..0.75)")
    if not 0 <= config.max_indel <= 0.2:
        problems.append(f"max_indel={config.max_indel} (use 0..0.2)")
    if config.keep_layers is not None and config.keep_layers < 0:
        problems.append(f"keep_layers={config.keep_layers} (use >= 0)")
    if config.train_frames < 1:
        problems.append(f"train_frames={config.train_frames} (use >= 1)")
    if config.batch_size < 2:
        problems.append(f"batch_size={config.batch_size} (in-batch negatives need >= 2)")
    if not config.temperature > 0:
        problems.append(f"temperature={config.temperature} (use > 0)")
    problems += config.schedule_problems()
    if config.eval_pairs < 1:
        problems.append(f"eval_pairs={config.eval_pairs} (use >= 1)")
    train = {Path(p).resolve() for p in config.train_files}
    for pair in config.related:
        for side in (pair.reference, pair.query):
            if Path(side).resolve() not in train:
                problems.append(f"related genome {side} is not one of the training files")
        if Path(pair.reference).resolve() == Path(pair.query).resolve() and pair.coords is None:
            problems.append(f"related pair {pair.reference} with itself (give two genomes)")
    leaked = [str(p) for p in config.val_files if Path(p).resolve() in train]
    if leaked:
        problems.append(f"validation file(s) also given for training: {', '.join(leaked)}")
    if problems:
        raise InputError("invalid fine-tuning settings: " + "; ".join(problems))


def _read_genomes(config: FinetuneConfig) -> list[TrainingGenome]:
    genomes, seen = [], set()
    for path in config.train_files:
        path = Path(path)
        if path.resolve() in seen:
            continue
        seen.add(path.resolve())
        genomes.append(TrainingGenome(path.name, path, tuple(read_sequences(path))))
    return genomes


def _tokens(sequences: list[str], vocab, k: int, device):
    import torch

    encoded = kmer_token_ids(sequences, vocab, k)
    return (torch.from_numpy(encoded["input_ids"]).to(device),
            torch.from_numpy(encoded["attention_mask"]).to(device))


def frame_views(windows: Sequence[str], k: int, frames: int, rng: np.random.Generator | None = None,
                both_strands: bool = False) -> list[str]:
    """Each window read from ``frames`` offsets in 0..k-1 (random distinct ones with ``rng``, else the
    first), consecutive per window (and per strand, forward first, with ``both_strands``)."""
    out = []
    for window in windows:
        for text in (window, reverse_complement(window)) if both_strands else (window,):
            offsets = rng.choice(k, size=frames, replace=False) if rng is not None else range(frames)
            out += [text[int(f):] for f in offsets]
    return out


def _shape_signature(encoder_config, k: int, config: FinetuneConfig) -> dict:
    """What a checkpoint must match to be resumed (the projection is checked by its weights' shapes)."""
    return {"k": k, "window_bp": config.window_bp, "num_layers": encoder_config.num_hidden_layers,
            "hidden_size": encoder_config.hidden_size, "num_heads": encoder_config.num_attention_heads,
            "intermediate_size": encoder_config.intermediate_size,
            "max_position_embeddings": encoder_config.max_position_embeddings}


# --------------------------------------------------------------------------- validation


def _validation_pairs(config: FinetuneConfig, k: int, vocab) -> dict | None:
    """Fixed, seeded pairs from held-out genomes: shifted (<= half a window), either strand, 0-20 % substitutions."""
    if not config.val_files:
        return None
    genomes = [TrainingGenome(Path(p).name, Path(p), tuple(read_sequences(p))) for p in config.val_files]
    sampler = PairSampler(genomes, {}, dataclasses.replace(config, indel_probability=0.0))
    rng = np.random.default_rng([config.seed, 1])
    batch = sampler.sample(rng, config.eval_pairs, substitution=(0.0, 0.2), cross_fraction=0.0)
    return {"anchors": batch.anchors, "positives": batch.positives, "exclude": batch.exclude,
            "n": len(batch.anchors), "genome": batch.genome}


def _retrieval(a: np.ndarray, b: np.ndarray, exclude: np.ndarray) -> dict:
    """Query = positive (mutated), database = anchors: R@1 and MRR of the true anchor."""
    scores = b @ a.T
    scores = np.where(exclude, -np.inf, scores)
    true = np.diag(scores)
    rank = 1 + (scores > true[:, None]).sum(axis=1)
    return {"r1": float((rank == 1).mean()), "mrr": float((1.0 / rank).mean())}


def _evaluate(model, val: dict, vocab, k: int, device, on_cuda: bool, batch_size: int) -> dict:
    import torch

    was_training = model.training
    model.eval()
    out = []
    with torch.no_grad():
        sequences = val["anchors"] + val["positives"]
        for start in range(0, len(sequences), batch_size):
            # The product's vector: every frame of both strands.
            views = frame_views(sequences[start : start + batch_size], k, k, both_strands=True)
            ids, attn = _tokens(views, vocab, k, device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=on_cuda):
                out.append(model.embed(ids, attn, group=2 * k).float().cpu().numpy())
        vectors = np.concatenate(out)
        a, b = vectors[: val["n"]], vectors[val["n"] :]
        anchors_t, positives_t = torch.from_numpy(a), torch.from_numpy(b)
        loss = float(info_nce(anchors_t, positives_t, model.logit_scale.detach().cpu(),
                              torch.from_numpy(val["exclude"])))
    model.train(was_training)
    return {**_retrieval(a, b, val["exclude"]), "loss": loss}


def _kmer_baselines(val: dict) -> dict:
    from genoembed.embedders.kmer import KmerEmbedder

    result = {}
    for kk in (4, 6):
        embedder = KmerEmbedder(kk)
        result[f"kmer{kk}"] = _retrieval(embedder.embed(val["anchors"]), embedder.embed(val["positives"]),
                                         val["exclude"])
    return result


def _record(state, val_metrics, running, lr, model) -> None:
    entry = {
        "step": state["step"],
        "pairs_seen": state["pairs_seen"],
        "elapsed_s": round(state["elapsed_s"], 1),
        "lr": lr,
        "train_loss": float(np.mean(running)) if running else None,
        "temperature": 1.0 / float(model.logit_scale.detach().exp()),
        "val": val_metrics,
    }
    state["history"].append(entry)
    val_text = (f" | val R@1 {val_metrics['r1']:.3f} MRR {val_metrics['mrr']:.3f} loss {val_metrics['loss']:.3f}"
                if val_metrics else "")
    loss_text = f"{entry['train_loss']:.4f}" if entry["train_loss"] is not None else "-"
    _log(f"eval step {entry['step']}: train loss {loss_text}{val_text}")


# --------------------------------------------------------------------------- output


def _write_output(config, model, k, state, genomes, pair_summary, pair_stats, n_params, device, stop_reason,
                  wall_s) -> Path:
    """config.json + model.safetensors (EsmModel), tokenizer, optional projection, finetune.json; atomically."""
    import torch
    from safetensors.torch import save_file

    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    encoder = model.encoder
    report = {
        "objective": "symmetric InfoNCE, in-batch negatives from one genome per batch, learned temperature",
        "model": {
            "base_model": str(config.base_model),
            "architecture": type(encoder).__name__,
            "parameters": n_params,
            "hidden_size": encoder.config.hidden_size,
            "layers": encoder.config.num_hidden_layers,
            "output_dim": config.projection_dim or encoder.config.hidden_size,
            "projection": PROJECTION_FILE if config.projection_dim else None,
            "pooling": "mean over non-special tokens of the last hidden state (then projection), L2-normalised",
            "k": k,
        },
        "data": {
            "train": [{"file": g.name, "contigs": len(g.contigs), "bp": g.length} for g in genomes],
            "validation": [Path(p).name for p in config.val_files],
            "related_pairs": pair_summary,
            "window_bp": config.window_bp,
            "pairs_drawn": pair_stats,
        },
        "training": {
            "steps": state["step"],
            "stop_reason": stop_reason,
            "pairs_seen": state["pairs_seen"],
            "batch_size": config.batch_size,
            "wall_time_s": round(state["elapsed_s"], 1),
            "final_temperature": 1.0 / float(model.logit_scale.detach().exp()),
            "last_run_wall_s_including_setup": round(wall_s, 1),
        },
        "baselines": state["baselines"],
        "history": state["history"],
        **run_record(config, device),
    }
    from genoembed.embedders.hf import quiet_transformers

    with tempfile.TemporaryDirectory(prefix=".finetune-out-", dir=out) as tmp, quiet_transformers():
        tmp_dir = Path(tmp)
        encoder.to("cpu").save_pretrained(tmp_dir)
        write_kmer_tokenizer(tmp_dir, k)
        if model.projection is not None:
            weight = model.projection.weight.detach().to("cpu", torch.float32).contiguous()
            save_file({"weight": weight}, str(tmp_dir / PROJECTION_FILE),
                      metadata={"applied": "to the pooled vector: weight @ pooled", "format": "pt"})
        (tmp_dir / REPORT_FILE).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        if model.projection is None and (out / PROJECTION_FILE).exists():
            (out / PROJECTION_FILE).unlink()  # a stale projection from an earlier run must not be applied
        publish_files(tmp_dir, out)
    model.to(device)
    return out


def _log(message: str) -> None:
    print(f"[finetune] {message}", file=sys.stderr, flush=True)
