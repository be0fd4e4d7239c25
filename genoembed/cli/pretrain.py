"""`genoembed pretrain`: masked-LM pretraining of a small 6-mer genomic LM."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from genoembed.cli.common import handle_errors, pick, refuse_inside_store


@handle_errors
def pretrain(
    fasta: list[Path] = typer.Option(
        ..., "--fasta", exists=True, dir_okay=False, readable=True,
        help="Training genome: FASTA or GenBank, plain or gzip. Repeat for several files.",
    ),
    output: Path = typer.Option(
        ..., "--output", "-o", file_okay=False,
        help="Output Hugging Face directory (config.json, model.safetensors, tokenizer, training.json).",
    ),
    val_fasta: list[Path] = typer.Option(
        [], "--val-fasta", exists=True, dir_okay=False, readable=True,
        help="Held-out validation genome (never trained on). Repeat for several files.",
    ),
    val_contig: list[str] = typer.Option(
        [], "--val-contig",
        help="Name of a contig of the training files to hold out for validation. Repeatable.",
    ),
    checkpoint_dir: Optional[Path] = typer.Option(
        None, "--checkpoint-dir", file_okay=False,
        help="Where resumable checkpoints go (default: '<output>.ckpt' beside the output).",
    ),
    resume: bool = typer.Option(False, "--resume", help="Continue from the checkpoint in --checkpoint-dir."),
    k: int = typer.Option(6, "--k", min=1, max=8, help="k-mer size of the tokens (non-overlapping k-mers)."),
    window: Optional[int] = typer.Option(None, "--window", min=6, max=100_000, help="Training window length in bp [default: 1002]."),
    window_bp: Optional[int] = typer.Option(None, "--window-bp", min=6, max=100_000, hidden=True, help="Old spelling of --window."),
    layers: int = typer.Option(4, "--layers", min=1, max=48, help="Number of transformer layers."),
    hidden: int = typer.Option(256, "--hidden", min=8, max=4096, help="Hidden size."),
    heads: int = typer.Option(4, "--heads", min=1, max=64, help="Attention heads (must divide --hidden)."),
    intermediate: int = typer.Option(1024, "--intermediate", min=8, max=16384, help="Feed-forward inner size."),
    max_positions: int = typer.Option(
        2050, "--max-positions", min=8, max=1_000_000, help="max_position_embeddings of the config (rotary)."
    ),
    batch_size: Optional[int] = typer.Option(
        None, "--batch-size", min=1, max=65536, help="Windows per step (default 32 on CPU, 256 on CUDA)."
    ),
    learning_rate: float = typer.Option(1e-3, "--lr", min=0.0, help="Peak learning rate (AdamW)."),
    weight_decay: float = typer.Option(0.01, "--weight-decay", min=0.0, help="AdamW weight decay."),
    warmup_steps: int = typer.Option(100, "--warmup-steps", min=0, help="Linear warm-up steps."),
    mask_probability: float = typer.Option(
        0.15, "--mask-prob", min=0.01, max=0.9, help="Fraction of tokens masked (80/10/10)."
    ),
    max_steps: int = typer.Option(2000, "--max-steps", min=1, help="Stop after this many optimizer steps."),
    max_minutes: Optional[float] = typer.Option(
        None, "--max-minutes", min=0.01,
        help="Wall-clock budget in minutes (whole run, across resumes); the LR decay ends with it.",
    ),
    eval_every: int = typer.Option(200, "--eval-every", min=1, help="Validate every N steps."),
    eval_batches: int = typer.Option(8, "--eval-batches", min=1, max=10_000, help="Fixed batches per evaluation set."),
    checkpoint_every: int = typer.Option(200, "--checkpoint-every", min=1, help="Checkpoint every N steps."),
    log_every: int = typer.Option(20, "--log-every", min=1, help="Log a line every N steps (when no progress bar)."),
    seed: int = typer.Option(0, "--seed", min=0, help="Random seed (init, windows, masks)."),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, max=1024, help="torch CPU threads."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda (bf16 autocast on CUDA)."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar on a terminal."),
) -> None:
    """Pretrain a Nucleotide-Transformer-style 6-mer masked LM on genomes; write a Hugging Face directory."""
    refuse_inside_store(output)
    from genoembed.train.pretrain import PretrainConfig, pretrain as run_pretrain

    config = PretrainConfig(
        train_files=tuple(fasta),
        output_dir=output,
        val_files=tuple(val_fasta),
        val_contigs=tuple(val_contig),
        checkpoint_dir=checkpoint_dir,
        resume=resume,
        k=k,
        window_bp=pick(window, window_bp, "--window", "--window-bp") or 1002,
        num_layers=layers,
        hidden_size=hidden,
        num_heads=heads,
        intermediate_size=intermediate,
        max_position_embeddings=max_positions,
        batch_size=batch_size,
        learning_rate=learning_rate,
        weight_decay=weight_decay,
        warmup_steps=warmup_steps,
        mask_probability=mask_probability,
        max_steps=max_steps,
        max_minutes=max_minutes,
        eval_every=eval_every,
        eval_batches=eval_batches,
        checkpoint_every=checkpoint_every,
        log_every=log_every,
        seed=seed,
        threads=threads,
        device=device,
        progress=progress,
    )
    out = run_pretrain(config)
    typer.echo(str(out))


if __name__ == "__main__":  # python -m cli.pretrain (repo checkout) / python -m genoembed.cli.pretrain
    typer.run(pretrain)
