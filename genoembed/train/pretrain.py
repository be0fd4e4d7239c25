"""Masked-language-model pretraining of a small Nucleotide-Transformer-style encoder.

An ``EsmForMaskedLM`` (rotary positions like NT-v2, no token dropout) is
trained on random windows of FASTA/GenBank genomes, both strands, with
non-overlapping 6-mer tokens (:mod:`genoembed.embedders.tokenize`). Validation is always
on held-out data: whole held-out files (genomes) or held-out contigs of the
training files, never on windows of the sequences trained on.

The result is a plain Hugging Face directory (``config.json``,
``model.safetensors``, tokenizer files) that ``AutoModel.from_pretrained`` and
``AutoTokenizer.from_pretrained`` load with no genoembed code, plus
``training.json`` (metrics history, baselines, wall time, machine, command).

Evaluation protocol: 15% of the non-special tokens of fixed, seeded windows
are *all* replaced by ``<mask>`` (no 80/10/10 there, so the model can never
read the answer), and the loss/accuracy are over those positions. The same
windows and masks score the baselines: always predicting the most frequent
training token (unigram), and the randomly initialised model (step 0).

Learning-rate schedule: linear warm-up over ``warmup_steps``, then cosine
decay to ``min_lr_ratio × learning_rate`` over the run's *progress*, which is
``max(step / max_steps, elapsed / max_minutes)``: with a time budget the decay
finishes when the budget does, so a time-limited run still anneals.

Reading the corpus, sampling windows and masking them is :mod:`genoembed.train.corpus`.
"""

from __future__ import annotations

import json
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from genoembed.embedders.tokenize import SPECIAL_TOKENS, kmer_token_ids, kmer_vocab, write_kmer_tokenizer
from genoembed.errors import InputError, ModelError
from genoembed.seqio import COMPLEMENT_BYTES
from genoembed.train.corpus import (MaskedBatch, WindowSampler, load_corpus, mask_tokens, read_sequences,
                                    require_windows)
from genoembed.train.loop import (TrainingSchedule, adamw, pick_device, publish_files, resume_state, run_record,
                                run_steps)


@dataclass(frozen=True, kw_only=True)
class PretrainConfig(TrainingSchedule):
    """Everything a pretraining run depends on (recorded in ``training.json``); schedule fields
    (learning rate, steps, minutes, cadences, seed, device) come from :class:`TrainingSchedule`."""

    train_files: tuple[Path, ...]
    # Validation: whole held-out files and/or held-out contigs of the training files.
    val_files: tuple[Path, ...] = ()
    val_contigs: tuple[str, ...] = ()
    # Tokens and windows.
    k: int = 6
    window_bp: int = 1002
    # Model shape (EsmForMaskedLM).
    num_layers: int = 4
    hidden_size: int = 256
    num_heads: int = 4
    intermediate_size: int = 1024
    max_position_embeddings: int = 2050
    dropout: float = 0.0
    # Objective.
    batch_size: int | None = None  # default: 32 on CPU, 256 on CUDA
    mask_probability: float = 0.15
    eval_batches: int = 8

    def tokens_per_window(self) -> int:
        """Tokens of an all-ACGT window: cls + k-mers + single-base tail + eos."""
        return 2 + self.window_bp // self.k + self.window_bp % self.k


# --------------------------------------------------------------------------- model


def build_model(config: PretrainConfig, vocab_size: int):
    """A randomly initialised ``EsmForMaskedLM`` of the configured shape."""
    from transformers import EsmConfig, EsmForMaskedLM

    if config.hidden_size % config.num_heads:
        raise InputError(f"hidden size {config.hidden_size} is not divisible by {config.num_heads} heads")
    if config.tokens_per_window() > config.max_position_embeddings:
        raise InputError(
            f"a {config.window_bp} bp window is {config.tokens_per_window()} tokens, more than "
            f"max_position_embeddings={config.max_position_embeddings}"
        )
    esm_config = EsmConfig(
        vocab_size=vocab_size,
        mask_token_id=SPECIAL_TOKENS.index("<mask>"),
        pad_token_id=SPECIAL_TOKENS.index("<pad>"),
        eos_token_id=SPECIAL_TOKENS.index("<eos>"),
        hidden_size=config.hidden_size,
        num_hidden_layers=config.num_layers,
        num_attention_heads=config.num_heads,
        intermediate_size=config.intermediate_size,
        max_position_embeddings=config.max_position_embeddings,
        position_embedding_type="rotary",
        hidden_dropout_prob=config.dropout,
        attention_probs_dropout_prob=config.dropout,
        token_dropout=False,
        emb_layer_norm_before=False,
        tie_word_embeddings=True,
        is_folding_model=False,
    )
    esm_config.architectures = ["EsmForMaskedLM"]
    model = EsmForMaskedLM(esm_config)
    return model


def _masked_logits(model, input_ids, attention_mask, labels):
    """Logits at scored positions only (the LM head on 15% of tokens, not all)."""
    hidden = model.esm(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    scored = labels != -100
    return model.lm_head(hidden[scored]), labels[scored]


# --------------------------------------------------------------------------- training


def pretrain(config: PretrainConfig) -> Path:
    """Train, validate on held-out data, checkpoint, and write the HF directory.

    Returns the output directory.
    """
    import torch

    _validate_config(config)
    if config.threads:
        torch.set_num_threads(config.threads)
    device = pick_device(config.device)
    on_cuda = device.type == "cuda"
    batch_size = config.batch_size or (256 if on_cuda else 32)
    vocab_list = kmer_vocab(config.k)
    vocab = {t: i for i, t in enumerate(vocab_list)}
    vocab_size = len(vocab_list)

    corpus = load_corpus(config)
    sampler = WindowSampler(corpus.train, config.window_bp)

    # Fixed evaluation batches (seeded apart from the training stream).
    eval_rng = np.random.default_rng([config.seed, 1])
    eval_sets: dict[str, list[MaskedBatch]] = {"train": _eval_batches(sampler, eval_rng, config, vocab, batch_size)}
    for set_name, contigs in corpus.validation.items():
        eval_sets[set_name] = _eval_batches(
            WindowSampler(contigs, config.window_bp), eval_rng, config, vocab, batch_size
        )
    val_names = [n for n in eval_sets if n != "train"]

    torch.manual_seed(config.seed)
    model = build_model(config, vocab_size).to(device)
    optimizer = adamw(model, config)
    rng = np.random.default_rng([config.seed, 0])
    state = {"step": 0, "elapsed_s": 0.0, "tokens_seen": 0, "history": [], "baselines": None}
    shape = _shape_signature(config)
    checkpoint, state = resume_state(config, shape, model, optimizer, rng, state, _log)

    def evaluate_all() -> dict:
        return {name: _evaluate(model, batches, device, on_cuda) for name, batches in eval_sets.items()}

    if state["baselines"] is None:
        counts = _token_counts(corpus.train, vocab, config.k)
        random_init = evaluate_all()
        state["baselines"] = {
            "unigram": _unigram_baseline(counts, eval_sets, vocab_list),
            "random_init": random_init,
        }
        _log(
            "baselines on validation: unigram acc "
            f"{_pooled(state['baselines']['unigram'], val_names)['accuracy']:.4f}, random-init acc "
            f"{_pooled(random_init, val_names)['accuracy']:.4f} loss {_pooled(random_init, val_names)['loss']:.3f}"
        )

    n_params = sum(p.numel() for p in model.parameters())
    _log(
        f"model: {config.num_layers} layers x {config.hidden_size}, {n_params / 1e6:.2f} M parameters; "
        f"{sum(len(c.bases) for c in corpus.train) / 1e6:.2f} Mbp training, batch {batch_size}, device {device}"
    )

    model.train()
    running_loss: list[float] = []
    running_acc: list[float] = []

    def loss_step():
        windows, _ = sampler.sample(rng, batch_size)
        encoded = kmer_token_ids(windows, vocab, config.k)
        batch = mask_tokens(encoded["input_ids"], encoded["attention_mask"], rng, vocab_size, config.mask_probability)
        ids, attn, labels = _to_device(batch, device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=on_cuda):
            logits, targets = _masked_logits(model, ids, attn, labels)
        loss = torch.nn.functional.cross_entropy(logits.float(), targets)
        state["tokens_seen"] += int(encoded["attention_mask"].sum())
        running_loss.append(float(loss.detach()))
        running_acc.append(float((logits.detach().argmax(-1) == targets).float().mean()))
        return loss

    def record(lr: float) -> None:
        _record_eval(state, evaluate_all(), running_loss, running_acc, lr, val_names)
        running_loss.clear()
        running_acc.clear()

    stop_reason = run_steps(config, model=model, optimizer=optimizer, rng=rng, state=state, checkpoint=checkpoint,
                            shape=shape, loss_step=loss_step, record=record,
                            step_text=lambda: f"loss {np.mean(running_loss[-config.log_every:]):.4f}",
                            log=_log, label="pretrain")
    out = _write_output(config, model, state, corpus, n_params, batch_size, device, stop_reason, val_names)
    last = state["history"][-1]
    _log(
        f"done: step {state['step']} ({stop_reason}), val loss {last['val']['loss']:.4f} "
        f"acc {last['val']['accuracy']:.4f}; wrote {out}"
    )
    return out


def _validate_config(config: PretrainConfig) -> None:
    problems = []
    if not 1 <= config.k <= 8:
        problems.append(f"k={config.k} (use 1..8)")
    if config.window_bp < config.k:
        problems.append(f"window_bp={config.window_bp} is shorter than k")
    if not 0 < config.mask_probability < 1:
        problems.append(f"mask_probability={config.mask_probability} (use 0..1)")
    problems += config.schedule_problems()
    for name in ("eval_batches", "num_layers", "hidden_size", "num_heads"):
        if getattr(config, name) < 1:
            problems.append(f"{name}={getattr(config, name)} (use >= 1)")
    if problems:
        raise InputError("invalid pretraining settings: " + "; ".join(problems))


def _eval_batches(sampler: WindowSampler, rng, config: PretrainConfig, vocab, batch_size: int) -> list[MaskedBatch]:
    batches = []
    for _ in range(config.eval_batches):
        windows, _ = sampler.sample(rng, batch_size)
        encoded = kmer_token_ids(windows, vocab, config.k)
        batches.append(
            mask_tokens(
                encoded["input_ids"], encoded["attention_mask"], rng, len(vocab), config.mask_probability, mask_all=True
            )
        )
    return batches


def _to_device(batch: MaskedBatch, device):
    import torch

    return (
        torch.from_numpy(batch.input_ids).to(device),
        torch.from_numpy(batch.attention_mask).to(device),
        torch.from_numpy(batch.labels).to(device),
    )


def _evaluate(model, batches: list[MaskedBatch], device, on_cuda: bool) -> dict:
    import torch

    was_training = model.training
    model.eval()
    total_loss, correct, count = 0.0, 0, 0
    with torch.no_grad():
        for batch in batches:
            ids, attn, labels = _to_device(batch, device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=on_cuda):
                logits, targets = _masked_logits(model, ids, attn, labels)
            total_loss += float(torch.nn.functional.cross_entropy(logits.float(), targets, reduction="sum"))
            correct += int((logits.argmax(-1) == targets).sum())
            count += int(targets.numel())
    model.train(was_training)
    return {"loss": total_loss / count, "accuracy": correct / count, "masked_tokens": count}


def _token_counts(contigs, vocab, k: int) -> np.ndarray:
    """Token frequencies of the training sequences, both strands, one frame."""
    counts = np.zeros(len(vocab), dtype=np.int64)
    chunk = 600_000 - 600_000 % k
    for contig in contigs:
        for strand in (contig.bases, COMPLEMENT_BYTES[contig.bases[::-1]]):
            pieces = [strand[i : i + chunk].tobytes() for i in range(0, len(strand), chunk)]
            ids = kmer_token_ids(pieces, vocab, k, add_eos=False)
            valid = ids["input_ids"][ids["attention_mask"] == 1]
            counts += np.bincount(valid[valid >= len(SPECIAL_TOKENS)], minlength=len(vocab))
    return counts


def _unigram_baseline(counts: np.ndarray, eval_sets, vocab_list) -> dict:
    top = int(np.argmax(counts))
    probs = (counts + 1) / (counts + 1)[len(SPECIAL_TOKENS) :].sum()
    result = {"token": vocab_list[top]}
    for name, batches in eval_sets.items():
        labels = np.concatenate([b.labels[b.labels != -100] for b in batches])
        result[name] = {
            "loss": float(-np.log(probs[labels]).mean()),
            "accuracy": float((labels == top).mean()),
            "masked_tokens": int(labels.size),
        }
    return result


def _pooled(metrics: dict, names: list[str]) -> dict:
    """Token-weighted mean over several evaluation sets."""
    n = sum(metrics[name]["masked_tokens"] for name in names)
    return {
        "loss": sum(metrics[k]["loss"] * metrics[k]["masked_tokens"] for k in names) / n,
        "accuracy": sum(metrics[k]["accuracy"] * metrics[k]["masked_tokens"] for k in names) / n,
        "masked_tokens": n,
    }


def _record_eval(state, metrics, running_loss, running_acc, lr, val_names) -> None:
    entry = {
        "step": state["step"],
        "tokens_seen": state["tokens_seen"],
        "elapsed_s": round(state["elapsed_s"], 1),
        "lr": lr,
        "train_batch_loss": float(np.mean(running_loss)) if running_loss else None,
        "train_batch_accuracy": float(np.mean(running_acc)) if running_acc else None,
        "train": metrics["train"],
        "val": _pooled(metrics, val_names),
        "val_by_set": {name: metrics[name] for name in val_names},
    }
    state["history"].append(entry)
    _log(
        f"eval step {entry['step']}: train loss {entry['train']['loss']:.4f} acc {entry['train']['accuracy']:.4f} | "
        f"val loss {entry['val']['loss']:.4f} acc {entry['val']['accuracy']:.4f}"
    )


# --------------------------------------------------------------------------- checkpoints


def _shape_signature(config: PretrainConfig) -> dict:
    keys = ("k", "window_bp", "num_layers", "hidden_size", "num_heads", "intermediate_size", "max_position_embeddings")
    return {key: getattr(config, key) for key in keys}


# --------------------------------------------------------------------------- evaluation


def evaluate_mlm(
    model_dir: str | Path,
    val_files: tuple[Path, ...] | list[Path],
    train_files: tuple[Path, ...] | list[Path],
    *,
    window_bp: int = 1002,
    windows_per_set: int = 2048,
    batch_size: int = 32,
    mask_probability: float = 0.15,
    seed: int = 12345,
    threads: int | None = None,
) -> dict:
    """Held-out masked-token loss/accuracy of a saved model beside the two baselines.

    Same protocol as during training (all selected tokens become ``<mask>``) on
    ``windows_per_set`` seeded windows (both strands) of each validation file:
    a bigger, independent sample than the in-training evaluation. Baselines on
    the same masked tokens: the most frequent token of ``train_files``
    (unigram) and a randomly initialised model of the same config.
    """
    import torch
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    if threads:
        torch.set_num_threads(threads)
    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise ModelError(f"{model_dir} is not a model directory (no config.json)")
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
    vocab_list = [tokenizer.convert_ids_to_tokens(i) for i in range(tokenizer.vocab_size)]
    k = len(vocab_list[len(SPECIAL_TOKENS)])
    if vocab_list != kmer_vocab(k):
        raise ModelError(f"{model_dir}: tokenizer is not a genoembed {k}-mer vocabulary")
    vocab = {t: i for i, t in enumerate(vocab_list)}
    model = AutoModelForMaskedLM.from_pretrained(str(model_dir), local_files_only=True).eval()
    torch.manual_seed(seed)
    random_model = AutoModelForMaskedLM.from_config(model.config).eval()

    config = PretrainConfig(train_files=tuple(train_files), output_dir=model_dir, k=k, window_bp=window_bp,
                            eval_batches=max(1, windows_per_set // batch_size), mask_probability=mask_probability)
    rng = np.random.default_rng([seed, 2])
    sets: dict[str, list[MaskedBatch]] = {}
    for path in val_files:
        contigs = read_sequences(path)
        require_windows(f"validation file {path}", contigs, window_bp)
        sets[Path(path).name] = _eval_batches(WindowSampler(contigs, window_bp), rng, config, vocab, batch_size)
    train = [c for path in train_files for c in read_sequences(path)]
    device = torch.device("cpu")
    names = list(sets)
    result = {
        "model": {name: _evaluate(model, batches, device, False) for name, batches in sets.items()},
        "random_init": {name: _evaluate(random_model, batches, device, False) for name, batches in sets.items()},
    }
    unigram = _unigram_baseline(_token_counts(train, vocab, k), sets, vocab_list)
    result["unigram"] = {name: unigram[name] for name in names}
    for key in ("model", "random_init", "unigram"):
        result[key]["pooled"] = _pooled(result[key], names)
    result["unigram_token"] = unigram["token"]
    result["settings"] = {
        "model_dir": str(model_dir),
        "val_files": [str(p) for p in val_files],
        "train_files": [str(p) for p in train_files],
        "window_bp": window_bp,
        "windows_per_set": config.eval_batches * batch_size,
        "mask_probability": mask_probability,
        "seed": seed,
        "protocol": "selected tokens all replaced by <mask>; both strands at random",
    }
    return result


# --------------------------------------------------------------------------- output


def _write_output(config, model, state, corpus, n_params, batch_size, device, stop_reason, val_names) -> Path:
    """Write config, weights, tokenizer and training.json; each file replaced atomically."""
    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    last = state["history"][-1]
    baselines = state["baselines"]
    report = {
        "model": {
            "architecture": "EsmForMaskedLM",
            "parameters": n_params,
            "layers": config.num_layers,
            "hidden_size": config.hidden_size,
            "heads": config.num_heads,
            "intermediate_size": config.intermediate_size,
            "position_embeddings": "rotary",
            "vocab_size": len(kmer_vocab(config.k)),
            "tokenizer": f"non-overlapping {config.k}-mers, single-base fallback (EsmTokenizer)",
        },
        "data": {
            "train": [{"file": c.source, "contig": c.name, "bp": int(len(c.bases))} for c in corpus.train],
            "validation": {
                name: [{"file": c.source, "contig": c.name, "bp": int(len(c.bases))} for c in contigs]
                for name, contigs in corpus.validation.items()
            },
            "train_bp": int(sum(len(c.bases) for c in corpus.train)),
            "window_bp": config.window_bp,
            "strands": "both (reverse complement with probability 0.5)",
        },
        "training": {
            "steps": state["step"],
            "stop_reason": stop_reason,
            "tokens_seen": state["tokens_seen"],
            "batch_size": batch_size,
            "wall_time_s": round(state["elapsed_s"], 1),
            "masking": f"{config.mask_probability:.0%} of tokens, 80/10/10 (train); all <mask> (evaluation)",
        },
        "final": {
            "train": last["train"],
            "val": last["val"],
            "val_by_set": last["val_by_set"],
        },
        "baselines": {
            "unigram_token": baselines["unigram"]["token"],
            "unigram": {"train": baselines["unigram"]["train"], "val": _pooled(baselines["unigram"], val_names)}
            | {"val_by_set": {n: baselines["unigram"][n] for n in val_names}},
            "random_init": {"train": baselines["random_init"]["train"], "val": _pooled(baselines["random_init"], val_names)}
            | {"val_by_set": {n: baselines["random_init"][n] for n in val_names}},
        },
        "history": state["history"],
        **run_record(config, device),
    }
    with tempfile.TemporaryDirectory(prefix=".pretrain-out-", dir=out) as tmp:
        tmp_dir = Path(tmp)
        model.to("cpu").save_pretrained(tmp_dir)
        write_kmer_tokenizer(tmp_dir, config.k)
        (tmp_dir / "training.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        publish_files(tmp_dir, out)
    return out


def _log(message: str) -> None:
    print(f"[pretrain] {message}", file=sys.stderr, flush=True)
