"""`genoembed finetune`: contrastive fine-tuning of a genomic LM into a retrieval embedder."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from genoembed.cli.common import handle_errors, pick, refuse_inside_store


def _related_pairs(values: list[str]):
    from genoembed.train.pairs import RelatedPair

    pairs = []
    for value in values:
        parts = [p.strip() for p in value.split(",")]
        if len(parts) not in (2, 3) or not all(parts):
            raise typer.BadParameter(f"{value!r}: --related takes REFERENCE,QUERY[,COORDS]", param_hint="--related")
        for part in parts:
            if not Path(part).is_file():
                raise typer.BadParameter(f"{part}: file not found", param_hint="--related")
        pairs.append(RelatedPair(Path(parts[0]), Path(parts[1]), Path(parts[2]) if len(parts) == 3 else None))
    return tuple(pairs)


def _sizes(value: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in value.split(",") if x.strip())
    except ValueError:
        raise typer.BadParameter(f"{value!r}: give comma-separated integers, e.g. 4,5",
                                 param_hint="--subword-init") from None


@handle_errors
def finetune(
    fasta: list[Path] = typer.Option(
        ..., "--fasta", exists=True, dir_okay=False, readable=True,
        help="Training genome: FASTA or GenBank, plain or gzip. Repeat for several files.",
    ),
    output: Path = typer.Option(
        ..., "--output", "-o", file_okay=False,
        help="Output Hugging Face directory (config.json, model.safetensors, tokenizer, finetune.json).",
    ),
    base_model: Optional[Path] = typer.Option(
        None, "--base-model", exists=True, file_okay=False,
        help="Model directory to start from (default: the shipped genoembed-nt6 masked-LM model).",
    ),
    related: list[str] = typer.Option(
        [], "--related",
        help="REFERENCE,QUERY[,COORDS]: two training genomes of related strains; the same locus in both is a "
             "positive pair (minimap2 at start, or a NUCmer show-coords table). Repeatable.",
    ),
    val_fasta: list[Path] = typer.Option(
        [], "--val-fasta", exists=True, dir_okay=False, readable=True,
        help="Held-out genome: retrieval of its mutated, shifted windows is logged (never trained on). Repeatable.",
    ),
    checkpoint_dir: Optional[Path] = typer.Option(
        None, "--checkpoint-dir", file_okay=False,
        help="Where resumable checkpoints go (default: '<output>.ckpt' beside the output).",
    ),
    resume: bool = typer.Option(False, "--resume", help="Continue from the checkpoint in --checkpoint-dir."),
    window: Optional[int] = typer.Option(None, "--window", min=50, max=100_000, help="Window (tile) length in bp [default: 1000]."),
    window_bp: Optional[int] = typer.Option(None, "--window-bp", min=50, max=100_000, hidden=True, help="Old spelling of --window."),
    projection_dim: Optional[int] = typer.Option(
        None, "--projection-dim", min=1, max=4096,
        help="Output dimension through a learned linear projection (default: none, the encoder's hidden size).",
    ),
    subword_init: str = typer.Option(
        "", "--subword-init",
        help="Comma list of sub-k-mer sizes (e.g. 4,5): before training, add to each token's embedding the sum "
             "of random vectors of its overlapping sub-k-mers (fastText-style). Empty: off.",
    ),
    cross_strain_fraction: float = typer.Option(
        0.5, "--cross-strain-fraction", min=0.0, max=1.0,
        help="Fraction of pairs drawn from related strains (when the batch's genome has any).",
    ),
    max_shift: float = typer.Option(
        0.5, "--max-shift", min=0.0, max=1.0, help="A positive window is shifted by up to this fraction of a window.",
    ),
    max_substitution: float = typer.Option(
        0.25, "--max-substitution", min=0.0, max=0.75, help="Positives get 0..this substitution rate.",
    ),
    max_indel: float = typer.Option(0.02, "--max-indel", min=0.0, max=0.2, help="Positives get 0..this indel rate."),
    indel_probability: float = typer.Option(
        0.5, "--indel-prob", min=0.0, max=1.0, help="Probability that a positive gets indels at all.",
    ),
    repeat_kmer_share: float = typer.Option(
        0.2, "--repeat-share", min=0.0, max=1.0,
        help="In-batch anchors sharing this fraction of 12-mers (repeats) are not used as negatives.",
    ),
    min_alignment_bp: int = typer.Option(
        2000, "--min-alignment-bp", min=50, help="Shortest alignment block used for related-strain pairs.",
    ),
    reinitialize: bool = typer.Option(
        False, "--reinitialize", help="Start from fresh random weights of the base model's shape (keeps its tokenizer).",
    ),
    zero_residual: bool = typer.Option(
        False, "--zero-residual",
        help="Zero every layer's residual-branch output first, so training starts from the mean token embedding.",
    ),
    keep_layers: Optional[int] = typer.Option(
        None, "--keep-layers", min=0, help="Keep only the base model's first N transformer layers (0 = token embeddings only).",
    ),
    train_frames: int = typer.Option(
        2, "--train-frames", min=1, max=64,
        help="Tokenisation frames sampled per window per step (the embedder averages all k; validation uses all).",
    ),
    batch_size: int = typer.Option(32, "--batch-size", min=2, max=65536, help="Pairs per step (in-batch negatives)."),
    temperature: float = typer.Option(0.05, "--temperature", min=1e-4, max=10.0, help="Initial InfoNCE temperature."),
    fixed_temperature: bool = typer.Option(False, "--fixed-temperature", help="Keep the temperature fixed."),
    learning_rate: float = typer.Option(2e-4, "--lr", min=0.0, help="Peak learning rate (AdamW)."),
    weight_decay: float = typer.Option(0.01, "--weight-decay", min=0.0, help="AdamW weight decay."),
    warmup_steps: int = typer.Option(20, "--warmup-steps", min=0, help="Linear warm-up steps."),
    max_steps: int = typer.Option(1000, "--max-steps", min=1, help="Stop after this many optimizer steps."),
    max_minutes: Optional[float] = typer.Option(
        None, "--max-minutes", min=0.01,
        help="Wall-clock budget in minutes (whole run, across resumes); the LR decay ends with it.",
    ),
    eval_every: int = typer.Option(100, "--eval-every", min=1, help="Validate every N steps."),
    eval_pairs: int = typer.Option(128, "--eval-pairs", min=2, max=100_000, help="Held-out validation pairs."),
    checkpoint_every: int = typer.Option(50, "--checkpoint-every", min=1, help="Checkpoint every N steps."),
    log_every: int = typer.Option(10, "--log-every", min=1, help="Log a line every N steps (when no progress bar)."),
    seed: int = typer.Option(0, "--seed", min=0, help="Random seed (projection init, pairs, mutations)."),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, max=1024, help="torch CPU threads."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda (bf16 autocast on CUDA)."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar on a terminal."),
) -> None:
    """Fine-tune a genomic LM with InfoNCE on homologous windows; write a Hugging Face directory."""
    refuse_inside_store(output)
    from genoembed.errors import InputError
    from genoembed.train.finetune import FinetuneConfig, finetune as run_finetune
    from genoembed.resources import default_model_dir

    pairs = _related_pairs(related)
    if base_model is None:
        base_model = default_model_dir("mlm")
        if base_model is None:
            raise InputError("the shipped genoembed-nt6 masked-LM model is not installed; give --base-model DIR")
    config = FinetuneConfig(
        train_files=tuple(fasta), output_dir=output, base_model=base_model, related=pairs,
        val_files=tuple(val_fasta), checkpoint_dir=checkpoint_dir, resume=resume, window_bp=pick(window, window_bp, "--window", "--window-bp") or 1000,
        projection_dim=projection_dim, subword_init=_sizes(subword_init), train_frames=train_frames,
        reinitialize=reinitialize, zero_residual=zero_residual, keep_layers=keep_layers,
        cross_strain_fraction=cross_strain_fraction, max_shift=max_shift,
        max_substitution=max_substitution, max_indel=max_indel, indel_probability=indel_probability,
        repeat_kmer_share=repeat_kmer_share, min_alignment_bp=min_alignment_bp, batch_size=batch_size,
        temperature=temperature, fixed_temperature=fixed_temperature, learning_rate=learning_rate,
        weight_decay=weight_decay, warmup_steps=warmup_steps, max_steps=max_steps, max_minutes=max_minutes,
        eval_every=eval_every, eval_pairs=eval_pairs, checkpoint_every=checkpoint_every, log_every=log_every,
        seed=seed, threads=threads, device=device, progress=progress,
    )
    typer.echo(str(run_finetune(config)))


if __name__ == "__main__":  # python -m cli.finetune (repo checkout) / python -m genoembed.cli.finetune
    typer.run(finetune)
