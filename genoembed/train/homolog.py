"""Contrastive training of the issue-27 homolog encoder (:class:`genoembed.embedders.protein.DilatedProteinEmbedder`).

    nice -n 15 python -m genoembed.train.homolog --data runs/data --run runs/homolog      # resumes runs/homolog
    python -m genoembed.train.homolog --data runs/data --run runs/homolog --publish DIR   # best checkpoint -> DIR

Built for a shared CPU and a session that may be killed: one torch thread, a checkpoint (model,
optimiser, random state, history) every ``checkpoint_minutes`` and at the end, resumed on restart; the
best validation checkpoint is kept apart and is what ``--publish`` exports, after checking that the
numpy embedder gives the torch vectors (max difference <= 1e-4), else it refuses.

Each batch mixes three kinds of positive pairs (anchor = a codon-aligned window of a gene, as a query;
positive = a tile-like window overlapping its homolog by >= half, random offset and strand):

- **real cross-genus orthologs** of five pairs of training genomes (E. coli K-12 MG1655, H. pylori G27 and
  ELS37, two Klebsiella pneumoniae), :func:`genoembed.train.homolog_data.cached_orthologs`;
- **UniProt families** (:mod:`genoembed.train.homolog_data`): two proteins of one mmseqs family, each
  back-translated with the codon usage of a different real genome and set into that genome's DNA;
- **synthetic recodings** (:func:`genoembed.train.protein.recode`): 30-90 % of residues kept.

Hard negatives ride along as extra columns: a window of the target genome right next to the homolog
(sharing its neighbourhood, not its protein) and, for family pairs, the same genomic context around
another family's gene. Validation: R@10 of held-out genes (H. pylori Gambia94_24 -> E. coli DH1)
among their homologs' tiles and distractors (:func:`genoembed.train.protein.validation_set`).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from genoembed.embedders.protein import CONFIG, WEIGHTS, DilatedProteinEmbedder, residue_codes
from genoembed.embedders.translated import AMINO_ACIDS, CODON_TABLE, UNKNOWN
from genoembed.errors import InputError
from genoembed.eval.protein import call_genes, read_records
from genoembed.seqio import reverse_complement
from genoembed.train.homolog_data import FamilyPairs, cached_orthologs, klebsiella_genomes
from genoembed.train.protein import (BASES, EncoderTrainConfig, OrthologPair, codon_usage, gene_window, recode,
                                     substitution_table, tile_view, validation_set)

# the project's shared genomes lie beside the checkout; GENOEMBED_SHARED_DATA points elsewhere (a worktree)
DATA = Path(os.environ.get("GENOEMBED_SHARED_DATA", Path(__file__).resolve().parents[2].parent / "shared" / "data"))
MG1655, G27, ELS37 = (DATA / "ecoli_k12" / "MG1655-K12.fasta.gz", DATA / "h_pylori" / "G27.fasta.gz",
                      DATA / "h_pylori" / "ELS37.fasta.gz")
VALIDATION = (DATA / "h_pylori" / "Gambia94_24.fasta.gz", DATA / "ecoli_k12" / "DH1.fasta.gz")


@dataclass(kw_only=True)
class HomologTrainConfig(EncoderTrainConfig):
    """Network shape, batch mix and budget; saved with every checkpoint and in the model's config.json. A run
    resumes with these defaults (only the history comes from its checkpoint): keep them the running model's."""

    validation: tuple = (str(VALIDATION[0]), str(VALIDATION[1]))
    channels: int = 64
    dim: int = 256
    max_minutes: float = 120.0
    dilations: tuple = (2, 4)
    heads: int = 2
    ortholog_fraction: float = 0.35
    family_fraction: float = 0.45
    hard_negatives: int = 12
    checkpoint_minutes: float = 4.0


def build_model(config: HomologTrainConfig):
    """The torch twin of :class:`DilatedProteinEmbedder`."""
    import torch

    class HomologEncoder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embedding = torch.nn.Embedding(UNKNOWN + 1, config.embedding_dim, padding_idx=UNKNOWN)
            self.conv = torch.nn.Conv1d(config.embedding_dim, config.channels, config.width,
                                        padding=config.width // 2)
            self.dilated = torch.nn.ModuleList(torch.nn.Conv1d(config.channels, config.channels, 3, padding=d,
                                                               dilation=d) for d in config.dilations)
            self.attention = torch.nn.Linear(config.channels, config.heads)
            self.projection = torch.nn.Linear(config.channels * (config.heads + 1), config.dim)
            self.logit_scale = torch.nn.Parameter(torch.tensor(math.log(1 / 0.07)))

        def forward(self, codes):  # (B, 6, L) -> (B, dim), L2-normalised
            batch, frames, length = codes.shape
            flat = codes.reshape(batch * frames, length)
            mask = (flat != UNKNOWN).unsqueeze(1).to(torch.float32)  # (B*6, 1, L)
            hidden = torch.relu(self.conv(self.embedding(flat).transpose(1, 2))) * mask
            for layer in self.dilated:
                hidden = hidden + torch.relu(layer(hidden)) * mask
            hidden = hidden.transpose(1, 2).reshape(batch, frames * length, -1)  # (B, positions, C)
            valid = mask.reshape(batch, frames * length, 1) > 0
            scores = self.attention(hidden).masked_fill(~valid, float("-inf"))
            weights = torch.softmax(scores, dim=1)  # (B, positions, heads)
            attended = torch.einsum("bph,bpc->bhc", weights, hidden).reshape(batch, -1)
            pooled = torch.cat([attended, hidden.max(dim=1).values], dim=1)
            return torch.nn.functional.normalize(self.projection(pooled), dim=-1)

    return HomologEncoder()


def export_tensors(model) -> dict[str, np.ndarray]:
    """Weights under the names :class:`DilatedProteinEmbedder` reads."""
    state = {name: value.detach().cpu().numpy().astype(np.float32) for name, value in model.state_dict().items()}
    out = {"embedding": state["embedding.weight"], "conv_weight": state["conv.weight"], "conv_bias": state["conv.bias"],
           "attention_weight": state["attention.weight"], "attention_bias": state["attention.bias"],
           "projection_weight": state["projection.weight"], "projection_bias": state["projection.bias"]}
    for number in range(len(model.dilated)):
        out[f"dilated_{number}_weight"] = state[f"dilated.{number}.weight"]
        out[f"dilated_{number}_bias"] = state[f"dilated.{number}.bias"]
    return out


def embed_torch(model, sequences: Sequence[str], batch: int = 32) -> np.ndarray:
    import torch

    with torch.no_grad():
        return np.concatenate([model(torch.from_numpy(residue_codes(sequences[i:i + batch]))).numpy()
                               for i in range(0, len(sequences), batch)])


def back_translate(protein: str, usage: np.ndarray, rng: np.random.Generator) -> str:
    """Coding DNA of ``protein`` (plus a stop codon), each codon drawn from its synonyms by ``usage``."""
    out = []
    for residue in protein + "*":
        synonyms = SYNONYMS[residue]
        weights = usage[synonyms] / usage[synonyms].sum()
        codon = synonyms[rng.choice(len(synonyms), p=weights)]
        out.append(BASES[codon // 16] + BASES[codon // 4 % 4] + BASES[codon % 4])
    return "".join(out)


SYNONYMS = {residue: [c for c in range(64) if CODON_TABLE[c] == residue] for residue in AMINO_ACIDS + "*"}


@dataclass
class Genome:
    """A training genome as context: its longest contig and codon usage."""

    sequence: str
    usage: np.ndarray
    coding: list[str]

    @classmethod
    def read(cls, path: Path) -> "Genome":
        records = read_records(path)
        genes = [g.dna for g in call_genes(records) if len(g.dna) >= 300]
        return cls(max((s for _, s in records), key=len), codon_usage(genes), genes)


def in_context(gene_dna: str, genome: Genome, window: int, rng: np.random.Generator) -> OrthologPair:
    """The gene set into ``genome`` at a random place (``window`` bp of real DNA on each side)."""
    at = int(rng.integers(window, len(genome.sequence) - window))
    sequence = genome.sequence[at - window:at] + gene_dna + genome.sequence[at:at + window]
    return OrthologPair("", sequence, window, window + len(gene_dna), 0.0)


def neighbour_window(pair: OrthologPair, window: int, rng: np.random.Generator) -> str | None:
    """A window next to the homolog gene that does not overlap it (a hard negative), random strand."""
    gap = int(rng.integers(0, 300))
    if rng.random() < 0.5 and pair.target_end + gap + window <= len(pair.target_sequence):
        start = pair.target_end + gap
    elif pair.target_start - gap - window >= 0:
        start = pair.target_start - gap - window
    else:
        return None
    piece = pair.target_sequence[start:start + window]
    return reverse_complement(piece) if rng.random() < 0.5 else piece


class PairSampler:
    """Draws (anchors, positives, hard negatives) batches from the three sources."""

    def __init__(self, config: HomologTrainConfig, orthologs: list[OrthologPair], families: FamilyPairs,
                 genomes: list[Genome], rng: np.random.Generator):
        self.config, self.orthologs, self.families, self.genomes, self.rng = config, orthologs, families, genomes, rng
        self.substitutions = substitution_table()
        bins = np.clip((families.identity * 10).astype(int), 3, 9)  # < 40 % is one bin (few pairs)
        counts = np.bincount(bins, minlength=10)
        weights = 1.0 / counts[bins]  # every identity decile drawn about as often
        self.family_weights = weights / weights.sum()

    def family(self) -> tuple[str, str, str]:
        rng, window = self.rng, self.config.window
        index = int(rng.choice(len(self.families.a), p=self.family_weights))
        a, b = (self.families.a[index], self.families.b[index])[::1 if rng.random() < 0.5 else -1]
        first, second = rng.choice(len(self.genomes), size=2, replace=False)
        anchor = gene_window(back_translate(a, self.genomes[first].usage, rng), window, rng)
        place = in_context(back_translate(b, self.genomes[second].usage, rng), self.genomes[second], window, rng)
        positive = tile_view(place, window, rng)
        other = self.families.b[int(rng.integers(len(self.families.b)))]
        decoy = place.target_sequence[:window] + back_translate(other, self.genomes[second].usage, rng) \
            + place.target_sequence[place.target_end:]
        negative = tile_view(OrthologPair("", decoy, window, len(decoy) - window, 0.0), window, rng)
        return anchor, positive, negative

    def ortholog(self) -> tuple[str, str, str | None]:
        pair = self.orthologs[int(self.rng.integers(len(self.orthologs)))]
        window = self.config.window
        return (gene_window(pair.query_dna, window, self.rng), tile_view(pair, window, self.rng),
                neighbour_window(pair, window, self.rng))

    def synthetic(self) -> tuple[str, str, None]:
        rng = self.rng
        genome = self.genomes[int(rng.integers(len(self.genomes)))]
        anchor = gene_window(genome.coding[int(rng.integers(len(genome.coding)))], self.config.window, rng)
        usage = self.genomes[int(rng.integers(len(self.genomes)))].usage
        positive = recode(anchor, rng.uniform(self.config.min_identity, self.config.max_identity), usage,
                          self.substitutions, rng)
        return anchor, reverse_complement(positive) if rng.random() < 0.5 else positive, None

    def batch(self) -> tuple[list[str], list[str], list[str]]:
        anchors, positives, negatives = [], [], []
        for _ in range(self.config.batch_size):
            draw = self.rng.random()
            kind = self.ortholog if draw < self.config.ortholog_fraction else \
                self.family if draw < self.config.ortholog_fraction + self.config.family_fraction else self.synthetic
            anchor, positive, negative = kind()
            anchors.append(anchor)
            positives.append(positive)
            if negative is not None:
                negatives.append(negative)
        return anchors, positives, negatives[:self.config.hard_negatives]


def validation_recall(model, val: dict) -> dict:
    from genoembed.eval.metrics import correct_ranks, recall_at_k

    model.eval()
    tiles, queries = embed_torch(model, val["tiles"]), embed_torch(model, val["queries"])
    model.train()
    order = np.argsort(-(queries @ tiles.T), axis=1)[:, :10]
    ranks = correct_ranks([[val["spans"][i] for i in row] for row in order], val["truth"])
    return {"recall_at_1": recall_at_k(ranks=ranks, k=1), "recall_at_10": recall_at_k(ranks=ranks, k=10)}


def training_data(data: Path, say=print) -> tuple[list[OrthologPair], FamilyPairs, list[Genome]]:
    klebsiella = klebsiella_genomes(data / "genomes")
    related = [(G27, MG1655), (MG1655, G27), (ELS37, MG1655), (G27, klebsiella[0]), (ELS37, klebsiella[1])]
    orthologs = [pair for query, target in related for pair in cached_orthologs(str(query), str(target), data, say)]
    genomes = [Genome.read(path) for path in (MG1655, G27, klebsiella[0])]
    return orthologs, FamilyPairs.read(data / "families.parquet"), genomes


def _loss(model, sampler: PairSampler):
    import torch

    anchors, positives, negatives = sampler.batch()
    a = model(torch.from_numpy(residue_codes(anchors)))
    b = model(torch.from_numpy(residue_codes(positives + negatives)))
    scale = model.logit_scale.clamp(max=math.log(100.0)).exp()
    logits = scale * a @ b.T  # anchors x (positives, hard negatives)
    target = torch.arange(len(a))
    return 0.5 * (torch.nn.functional.cross_entropy(logits, target)
                  + torch.nn.functional.cross_entropy(logits[:, :len(a)].T, target)), scale


def train(config: HomologTrainConfig, data: Path, run: Path, say=print) -> Path:
    """Train (resuming ``run/checkpoint.pt`` when present) until ``max_minutes`` of this call have passed."""
    import torch

    torch.set_num_threads(config.threads)
    run.mkdir(parents=True, exist_ok=True)
    checkpoint = run / "checkpoint.pt"
    rng = np.random.default_rng(config.seed)
    torch.manual_seed(config.seed)
    orthologs, families, genomes = training_data(data, say)
    val = validation_set(config, say)
    model = build_model(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    step, best = 0, -1.0
    if checkpoint.is_file():
        state = torch.load(checkpoint, weights_only=False)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        rng.bit_generator.state = state["rng"]
        step, best, config.history = state["step"], state["best"], state["history"]
        say(f"resumed {checkpoint} at step {step} (best R@10 {best:.3f})")
    sampler = PairSampler(config, orthologs, families, genomes, rng)
    say(f"{len(orthologs)} ortholog pairs, {len(families.a)} family pairs, {len(genomes)} context genomes; "
        f"{sum(p.numel() for p in model.parameters())} parameters")
    if not config.history:
        config.history.append({"step": 0, "minutes": 0.0, **validation_recall(model, val)})
    began, saved, running = time.perf_counter(), time.perf_counter(), []
    spent = config.history[-1].get("minutes", 0.0)

    def save(path: Path) -> None:
        torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "rng": rng.bit_generator.state,
                    "step": step, "best": best, "history": config.history, "config": asdict(config)},
                   path.with_suffix(".tmp"))
        path.with_suffix(".tmp").rename(path)

    while (time.perf_counter() - began) / 60 < config.max_minutes:
        loss, scale = _loss(model, sampler)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        step += 1
        running.append(loss.item())
        if step % config.eval_every == 0:
            record = {"step": step, "minutes": round(spent + (time.perf_counter() - began) / 60, 2),
                      "loss": round(float(np.mean(running)), 4), "temperature": round(1 / scale.item(), 4),
                      **validation_recall(model, val)}
            running = []
            config.history.append(record)
            say(json.dumps(record))
            if record["recall_at_10"] >= best:
                best = record["recall_at_10"]
                save(run / "best.pt")
        if (time.perf_counter() - saved) / 60 >= config.checkpoint_minutes:
            save(checkpoint)
            saved = time.perf_counter()
    save(checkpoint)
    return checkpoint


def publish(config: HomologTrainConfig, run: Path, output: Path, name: str | None = None, say=print) -> Path:
    """Export ``run/best.pt`` as a model directory, refusing when numpy and torch vectors differ."""
    import torch
    from safetensors.numpy import save_file

    state = torch.load(run / "best.pt", weights_only=False)
    for key, value in state["config"].items():
        setattr(config, key, tuple(value) if key == "dilations" else value)
    model = build_model(config)
    model.load_state_dict(state["model"])
    model.eval()
    output.mkdir(parents=True, exist_ok=True)
    save_file(export_tensors(model), str(output / WEIGHTS))
    settings = {k: v for k, v in asdict(config).items() if k != "history"}
    (output / CONFIG).write_text(json.dumps({"name": name or output.name, "architecture": "dilated six-frame "
                                             "residue CNN -> attention + max pooling over frames and positions",
                                             **settings}, indent=1) + "\n")
    rng = np.random.default_rng(1)
    check = ["".join(rng.choice(list("ACGTN"), size=int(n), p=[0.245] * 4 + [0.02])) for n in rng.integers(20, 1100, 40)]
    difference = float(np.abs(DilatedProteinEmbedder(output).embed(check) - embed_torch(model, check)).max())
    if difference > 1e-4:
        for path in (output / WEIGHTS, output / CONFIG):
            path.unlink()
        raise InputError(f"{output}: numpy and torch vectors differ by {difference:.2g}; not publishing")
    (output / "training.json").write_text(json.dumps({
        "steps": state["step"], "best_validation_recall_at_10": state["best"],
        "numpy_torch_max_difference": difference, "history": state["history"], "command": " ".join(sys.argv),
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "threads": config.threads},
        "parameters": int(sum(p.numel() for p in model.parameters()))}, indent=1) + "\n")
    say(f"wrote {output} (step {state['step']}; numpy vs torch max difference {difference:.2g})")
    return output


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Train the issue-27 homolog encoder (resumable).")
    parser.add_argument("--data", type=Path, required=True, help="directory built by genoembed.train.homolog_data")
    parser.add_argument("--run", type=Path, required=True, help="checkpoint directory (resumed when it has one)")
    parser.add_argument("--max-minutes", type=float, default=120.0)
    parser.add_argument("--publish", type=Path, help="export the best checkpoint as a model directory and stop")
    args = parser.parse_args(argv)
    config = HomologTrainConfig(max_minutes=args.max_minutes)
    if args.publish:
        publish(config, args.run, args.publish)
    else:
        train(config, args.data, args.run)


if __name__ == "__main__":
    main()
