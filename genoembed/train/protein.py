"""Contrastive training of the translation-aware encoder (``--model protein``, issue 17).

The network is :mod:`genoembed.embedders.protein`'s (six-frame residues -> embedding -> one 1-D
convolution -> masked mean per frame -> projection -> soft-max over frames), written here in torch;
the saved weights are read by the numpy embedder, and training checks that both give the same
vectors before it publishes them.

Positive pairs, each view a fresh draw:

- **cross-genus orthologs** (:func:`ortholog_pairs`): protein truth (pyrodigal + pyopal, as in
  ``genoembed eval --truth protein``) between *training* genomes of two genera; the anchor is a
  codon-aligned window of the query gene, the positive a tile-like window (random offset and strand)
  overlapping the homolog gene, the way target tiles are cut;
- **synthetic recodings** (:func:`recode`): a training gene window whose protein keeps 30-90 % of its
  residues (substitutes drawn from BLOSUM62) and whose every codon is re-drawn from the synonymous
  codons of another genome's codon usage: the protein stays, the DNA changes.

Negatives are the batch's other positives (symmetric InfoNCE, learned temperature, as
``train.surgery.info_nce``). Validation: R@10 of held-out query genes against their homologs'
tiles among distractor tiles of a held-out genome, every ``eval_every`` steps (the training curve);
the shipped weights are the last step's (no checkpoint selection).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from genoembed.embedders.protein import CONFIG, WEIGHTS, ProteinEmbedder, frame_codes
from genoembed.embedders.translated import AMINO_ACIDS, CODON_TABLE, FRAMES, UNKNOWN
from genoembed.errors import InputError
from genoembed.eval.protein import call_genes, protein_task, protein_truth, read_records
from genoembed.seqio import reverse_complement

BASES = "ACGT"


@dataclass(kw_only=True)
class EncoderTrainConfig:
    """What every training run of a six-frame residue encoder sets (this module's and
    :mod:`genoembed.train.homolog`'s, which extend it): network shape, batch, optimiser, CPU budget, held-out
    validation and seed. Saved with checkpoints as a dict of these names, so a name or a subclass's default that
    changes no longer resumes or publishes an older run."""

    validation: tuple[str, str]  # (query genome, target genome), held out of training
    window: int = 999
    embedding_dim: int = 32
    channels: int = 96
    width: int = 5
    dim: int = 128
    batch_size: int = 48
    min_identity: float = 0.3
    max_identity: float = 0.9
    lr: float = 2e-3
    weight_decay: float = 0.01
    max_minutes: float = 15.0
    eval_every: int = 100
    validation_queries: int = 150
    distractors: int = 2000
    seed: int = 0
    threads: int = 1
    history: list = field(default_factory=list)


@dataclass(kw_only=True)
class ProteinTrainConfig(EncoderTrainConfig):
    """Genomes, pair mix, network shape and the CPU budget of one training run."""

    output: Path
    related: Sequence[tuple[str, str]]  # (query genome, target genome) pairs of training genomes
    synthetic_fraction: float = 0.5
    max_steps: int = 100_000


@dataclass(frozen=True)
class OrthologPair:
    """A query gene's coding DNA and where its homolog lies in the target genome (with the sequence)."""

    query_dna: str
    target_sequence: str
    target_start: int
    target_end: int
    identity: float


def ortholog_pairs(query_path: str, target_path: str, say=print) -> list[OrthologPair]:
    """Every query gene (>= 300 bp) with a protein homolog in the target (E <= 1e-5, coverage >= 0.5)."""
    query_genes = [g for g in call_genes(read_records(query_path)) if len(g.dna) >= 300]
    target_records = dict(read_records(target_path))
    target_genes = call_genes(list(target_records.items()))
    say(f"aligning {len(query_genes)} proteins of {Path(query_path).name} to {len(target_genes)} of "
        f"{Path(target_path).name}")
    truth = protein_truth([g.protein for g in query_genes], [g.protein for g in target_genes])
    pairs = []
    for row in truth.to_pylist():
        target = target_genes[row["target_gene"]]
        pairs.append(OrthologPair(query_genes[row["query_gene"]].dna, target_records[target.contig],
                                  target.start, target.end, row["identity"]))
    say(f"{len(pairs)} ortholog pairs")
    return pairs


def tile_view(pair: OrthologPair, window: int, rng: np.random.Generator) -> str:
    """A ``window``-bp stretch of the target genome overlapping the homolog gene by >= half, random strand."""
    gene_length = pair.target_end - pair.target_start
    overlap = min(window, gene_length) // 2
    low = max(pair.target_start - window + overlap, 0)
    high = min(pair.target_end - overlap, len(pair.target_sequence) - window)
    start = int(rng.integers(low, max(high, low) + 1))
    piece = pair.target_sequence[start:start + window]
    return reverse_complement(piece) if rng.random() < 0.5 else piece


def gene_window(dna: str, window: int, rng: np.random.Generator) -> str:
    """A codon-aligned ``window``-bp stretch of a coding sequence (the whole gene when shorter)."""
    codons = window // 3
    total = len(dna) // 3
    if total <= codons:
        return dna
    start = int(rng.integers(0, total - codons + 1)) * 3
    return dna[start:start + 3 * codons]


def codon_usage(genes_dna: Sequence[str]) -> np.ndarray:
    """(64,) codon frequencies of coding sequences (index 16*b1 + 4*b2 + b3, A C G T order), +1 smoothed."""
    counts = np.ones(64)
    lookup = {base: i for i, base in enumerate(BASES)}
    for dna in genes_dna:
        for i in range(0, len(dna) - 2, 3):
            codon = dna[i:i + 3]
            if all(b in lookup for b in codon):
                counts[lookup[codon[0]] * 16 + lookup[codon[1]] * 4 + lookup[codon[2]]] += 1
    return counts / counts.sum()


def substitution_table(temperature: float = 0.35) -> np.ndarray:
    """(20, 20) P(substitute b | a), b != a, proportional to exp(temperature * BLOSUM62[a, b])."""
    from Bio.Align import substitution_matrices

    blosum = substitution_matrices.load("BLOSUM62")
    scores = np.array([[blosum[a][b] for b in AMINO_ACIDS] for a in AMINO_ACIDS], dtype=float)
    weights = np.exp(temperature * scores)
    np.fill_diagonal(weights, 0.0)
    return weights / weights.sum(axis=1, keepdims=True)


def recode(dna: str, identity: float, usage: np.ndarray, substitutions: np.ndarray, rng: np.random.Generator) -> str:
    """The coding DNA of a protein that keeps ``identity`` of ``dna``'s residues, every codon re-drawn."""
    out = []
    for i in range(0, len(dna) - 2, 3):
        residue = CODON_TABLE[BASES.index(dna[i]) * 16 + BASES.index(dna[i + 1]) * 4 + BASES.index(dna[i + 2])] \
            if all(b in BASES for b in dna[i:i + 3]) else "X"
        if residue in ("*", "X"):
            out.append(dna[i:i + 3])
            continue
        if rng.random() > identity:
            residue = AMINO_ACIDS[rng.choice(20, p=substitutions[AMINO_ACIDS.index(residue)])]
        synonyms = [c for c in range(64) if CODON_TABLE[c] == residue]
        weights = usage[synonyms] / usage[synonyms].sum()
        codon = synonyms[rng.choice(len(synonyms), p=weights)]
        out.append(BASES[codon // 16] + BASES[codon // 4 % 4] + BASES[codon % 4])
    return "".join(out)


def build_model(config: ProteinTrainConfig):
    """The torch twin of :class:`genoembed.embedders.protein.ProteinEmbedder`."""
    import torch

    class ProteinEncoder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embedding = torch.nn.Embedding(UNKNOWN + 1, config.embedding_dim, padding_idx=UNKNOWN)
            self.conv = torch.nn.Conv1d(config.embedding_dim, config.channels, config.width)
            self.projection = torch.nn.Linear(config.channels, config.dim)
            self.frame_score = torch.nn.Linear(config.dim, 1)
            self.logit_scale = torch.nn.Parameter(torch.tensor(math.log(1 / 0.07)))

        def forward(self, codes):  # (B, 6, L) -> (B, dim), L2-normalised
            batch, frames, length = codes.shape
            flat = codes.reshape(batch * frames, length)
            hidden = torch.relu(self.conv(self.embedding(flat).transpose(1, 2)))  # (B*6, C, P)
            positions = hidden.shape[2]
            valid = (flat[:, :positions] != UNKNOWN).unsqueeze(1).to(hidden.dtype)
            pooled = (hidden * valid).sum(2) / valid.sum(2).clamp_min(1.0)
            vectors = self.projection(pooled).reshape(batch, frames, -1)
            weights = torch.softmax(self.frame_score(vectors).squeeze(-1), dim=1)
            return torch.nn.functional.normalize((weights.unsqueeze(-1) * vectors).sum(1), dim=-1)

    return ProteinEncoder()


def batch_codes(sequences: Sequence[str], width: int):
    """(B, 6, L) residue codes of sequences, padded with UNKNOWN to the longest frame."""
    import torch

    coded = [frame_codes(s, width) for s in sequences]
    length = max(c.shape[1] for c in coded)
    out = np.full((len(coded), FRAMES, length), UNKNOWN, dtype=np.int64)
    for row, codes in enumerate(coded):
        out[row, :, :codes.shape[1]] = codes
    return torch.from_numpy(out)


def export_tensors(model) -> dict[str, np.ndarray]:
    """The weights under the names :mod:`genoembed.embedders.protein` reads."""
    state = {name: value.detach().cpu().numpy().astype(np.float32) for name, value in model.state_dict().items()}
    return {"embedding": state["embedding.weight"], "conv_weight": state["conv.weight"],
            "conv_bias": state["conv.bias"], "projection_weight": state["projection.weight"],
            "projection_bias": state["projection.bias"], "frame_score_weight": state["frame_score.weight"],
            "frame_score_bias": state["frame_score.bias"]}


def embed_torch(model, sequences: Sequence[str], width: int, batch: int = 64) -> np.ndarray:
    import torch

    with torch.no_grad():
        return np.concatenate([model(batch_codes(sequences[i:i + batch], width)).numpy()
                               for i in range(0, len(sequences), batch)])


def validation_set(config: EncoderTrainConfig, say=print) -> dict:
    """Held-out query windows, their truth spans and a reduced target tiling (truth tiles + distractors)."""
    task = protein_task(config.validation[0], config.validation[1], n_queries=config.validation_queries,
                        window=config.window + 1, seed=config.seed, say=say)
    rng = np.random.default_rng(config.seed)
    spans = task.tile_spans
    wanted = {i for i, span in enumerate(spans) for truth in task.truth
              if span[0] == truth[0][0] and span[1] < truth[0][2] and truth[0][1] < span[2]}
    others = [i for i in range(len(spans)) if i not in wanted]
    keep = sorted(wanted | set(rng.choice(others, size=min(config.distractors, len(others)), replace=False).tolist()))
    return {"queries": task.queries, "truth": task.truth, "spans": [spans[i] for i in keep],
            "tiles": [task.tile_sequences[i] for i in keep], "direction": task.direction}


def validation_recall(model, val: dict, width: int) -> dict:
    """R@1 / R@10 of the held-out queries against the reduced tiling (exact cosine)."""
    from genoembed.eval.metrics import correct_ranks, recall_at_k

    model.eval()
    tiles, queries = embed_torch(model, val["tiles"], width), embed_torch(model, val["queries"], width)
    model.train()
    order = np.argsort(-(queries @ tiles.T), axis=1)[:, :10]
    ranks = correct_ranks([[val["spans"][i] for i in row] for row in order], val["truth"])
    return {"recall_at_1": recall_at_k(ranks=ranks, k=1), "recall_at_10": recall_at_k(ranks=ranks, k=10)}


def train_protein(config: ProteinTrainConfig, say=print) -> Path:
    """Train, check the numpy embedder reproduces the torch vectors, write the model directory."""
    import torch
    from safetensors.numpy import save_file

    torch.manual_seed(config.seed)
    torch.set_num_threads(config.threads)
    rng = np.random.default_rng(config.seed)
    began = time.perf_counter()
    pairs = [pair for query, target in config.related for pair in ortholog_pairs(query, target, say)]
    genes = {path: [g.dna for g in call_genes(read_records(path)) if len(g.dna) >= 300]
             for path in sorted({p for pair in config.related for p in pair})}
    usages = [codon_usage(dna) for dna in genes.values()]
    coding = [dna for dnas in genes.values() for dna in dnas]
    substitutions = substitution_table()
    if not pairs:
        raise InputError("no ortholog pairs between the training genomes; check --related")
    val = validation_set(config, say)
    prepare_seconds = time.perf_counter() - began
    model = build_model(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    say(f"{len(pairs)} ortholog pairs, {len(coding)} genes for recoding, {prepare_seconds:.0f} s to prepare")
    config.history.append({"step": 0, "minutes": 0.0, **validation_recall(model, val, config.width)})
    say(json.dumps(config.history[-1]))
    step, started, running = 0, time.perf_counter(), []
    while step < config.max_steps and (time.perf_counter() - started) / 60 < config.max_minutes:
        anchors, positives = [], []
        for _ in range(config.batch_size):
            if rng.random() < config.synthetic_fraction:
                anchor = gene_window(coding[rng.integers(len(coding))], config.window, rng)
                identity = rng.uniform(config.min_identity, config.max_identity)
                positive = recode(anchor, identity, usages[rng.integers(len(usages))], substitutions, rng)
                positive = reverse_complement(positive) if rng.random() < 0.5 else positive
            else:
                pair = pairs[rng.integers(len(pairs))]
                anchor, positive = gene_window(pair.query_dna, config.window, rng), tile_view(pair, config.window, rng)
            anchors.append(anchor)
            positives.append(positive)
        a, b = model(batch_codes(anchors, config.width)), model(batch_codes(positives, config.width))
        scale = model.logit_scale.clamp(max=math.log(100.0)).exp()
        logits = scale * a @ b.T
        target = torch.arange(len(a))
        loss = 0.5 * (torch.nn.functional.cross_entropy(logits, target)
                      + torch.nn.functional.cross_entropy(logits.T, target))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        step += 1
        running.append(loss.item())
        if step % config.eval_every == 0:
            record = {"step": step, "minutes": round((time.perf_counter() - started) / 60, 2),
                      "loss": round(float(np.mean(running)), 4), "temperature": round(1 / scale.item(), 4),
                      **validation_recall(model, val, config.width)}
            running = []
            config.history.append(record)
            say(json.dumps(record))
    minutes = (time.perf_counter() - started) / 60
    config.output.mkdir(parents=True, exist_ok=True)
    save_file(export_tensors(model), str(config.output / WEIGHTS))
    settings = {key: (str(value) if isinstance(value, Path) else value) for key, value in asdict(config).items()
                if key not in ("history", "output")}
    (config.output / CONFIG).write_text(json.dumps({"name": config.output.name, "architecture": "six-frame residue "
                                                    "embedding -> conv1d -> masked mean -> linear -> frame soft-max",
                                                    **settings}, indent=1) + "\n")
    check = [val["tiles"][i] for i in range(0, len(val["tiles"]), max(len(val["tiles"]) // 50, 1))]
    model.eval()
    difference = float(np.abs(ProteinEmbedder(config.output).embed(check) - embed_torch(model, check, config.width)).max())
    if difference > 1e-4:
        raise InputError(f"{config.output}: numpy and torch vectors differ by {difference:.2g}; not publishing")
    (config.output / "training.json").write_text(json.dumps({
        "steps": step, "train_minutes": round(minutes, 2), "prepare_seconds": round(prepare_seconds, 1),
        "ortholog_pairs": len(pairs), "recoding_genes": len(coding), "numpy_torch_max_difference": difference,
        "validation": val["direction"], "history": config.history, "command": " ".join(sys.argv),
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "threads": config.threads},
        "parameters": int(sum(p.numel() for p in model.parameters()))}, indent=1) + "\n")
    say(f"wrote {config.output} ({step} steps, {minutes:.1f} min; numpy vs torch max difference {difference:.2g})")
    return config.output


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Train the translation-aware protein encoder (issue 17).")
    parser.add_argument("--related", action="append", required=True, help="QUERY,TARGET training genome pair")
    parser.add_argument("--validation", required=True, help="QUERY,TARGET held-out genome pair (training curve)")
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--max-minutes", type=float, default=15.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    train_protein(ProteinTrainConfig(output=args.output, related=[tuple(r.split(",")) for r in args.related],
                                     validation=tuple(args.validation.split(",")), max_minutes=args.max_minutes,
                                     seed=args.seed))


if __name__ == "__main__":
    main()
