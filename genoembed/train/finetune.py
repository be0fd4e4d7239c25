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

Pairs come from :mod:`genoembed.train.pairs`, the model and its starting-point
surgery from :mod:`genoembed.train.surgery`; this module holds the run: its
configuration, the loop, validation and the output directory.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from genoembed.embedders.model_dir import PROJECTION_FILE
from genoembed.embedders.tokenize import kmer_token_ids, kmer_vocab, write_kmer_tokenizer
from genoembed.errors import InputError
from genoembed.train.pairs import (PairSampler, RelatedPair, TrainingGenome, blocks_by_genome, frame_views,
                                   pair_alignments)
from genoembed.train.corpus import read_sequences
from genoembed.train.surgery import (contrastive_model, info_nce, keep_first_layers, load_encoder, subword_init,
                                     zero_residual_branches)
from genoembed.train.loop import (TrainingSchedule, adamw, pick_device, publish_files, resume_state, run_record,
                                run_steps)

REPORT_FILE = "finetune.json"


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
    blocks = blocks_by_genome(genomes, config.related, tables, config.window_bp)
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
    model = contrastive_model(encoder, config.projection_dim, config.temperature,
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
    from genoembed.embedders.loading import quiet_transformers

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
