"""What masked-LM pretraining and contrastive fine-tuning share: schedule, checkpoints, the step loop.

Both objectives train for ``max_steps`` optimizer steps or ``max_minutes`` of
wall clock (whichever ends first, summed across resumes), with a linear
warm-up then cosine learning-rate decay over that progress, gradient
clipping, and validation / checkpoint / log lines at fixed step cadences.
A checkpoint holds the model, optimizer and both random generators, so a
resumed run continues the exact sequence of batches of an uninterrupted one.
Each objective supplies only what differs: how one step's loss is computed,
what a validation record holds, and its model-shape signature.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import platform
import shlex
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable


from genoembed.errors import InputError, ModelError

CHECKPOINT_FILE = "checkpoint.pt"
CHECKPOINT_FORMAT = 1


@dataclass(frozen=True, kw_only=True)
class TrainingSchedule:
    """Optimisation and bookkeeping settings of a training run (the objectives' configs extend it)."""

    output_dir: Path  # the model directory the run writes
    checkpoint_dir: Path | None = None  # default: "<output_dir>.ckpt" beside the output
    resume: bool = False
    learning_rate: float = 1e-3
    weight_decay: float = 0.01
    warmup_steps: int = 100
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0
    max_steps: int = 2000
    max_minutes: float | None = None
    eval_every: int = 200
    checkpoint_every: int = 200
    log_every: int = 20
    seed: int = 0
    threads: int | None = None
    device: str = "auto"  # "auto", "cpu", "cuda"
    progress: bool = True

    def resolved_checkpoint_dir(self) -> Path:
        if self.checkpoint_dir is not None:
            return Path(self.checkpoint_dir)
        out = Path(self.output_dir)
        return out.with_name(out.name + ".ckpt")

    def schedule_problems(self) -> list[str]:
        """Invalid schedule settings, one phrase each (the objective adds its own and raises once)."""
        problems = []
        if self.max_steps < 1:
            problems.append(f"max_steps={self.max_steps} (use >= 1)")
        if self.max_minutes is not None and self.max_minutes <= 0:
            problems.append(f"max_minutes={self.max_minutes} (use > 0)")
        for name in ("eval_every", "checkpoint_every", "log_every"):
            if getattr(self, name) < 1:
                problems.append(f"{name}={getattr(self, name)} (use >= 1)")
        if self.device not in ("auto", "cpu", "cuda"):
            problems.append(f"device={self.device!r} (use auto, cpu or cuda)")
        return problems


def learning_rate(schedule: TrainingSchedule, step: int, elapsed_s: float) -> float:
    """Warm-up then cosine decay over max(step/max_steps, elapsed/max_minutes)."""
    progress = step / max(schedule.max_steps, 1)
    if schedule.max_minutes:
        progress = max(progress, elapsed_s / (60.0 * schedule.max_minutes))
    progress = min(progress, 1.0)
    warm = min(1.0, (step + 1) / max(schedule.warmup_steps, 1))
    cosine = schedule.min_lr_ratio + (1 - schedule.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    return schedule.learning_rate * warm * cosine


def pick_device(name: str):
    import torch

    if name == "cuda" and not torch.cuda.is_available():
        raise InputError("device 'cuda' requested but no CUDA device is available")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def adamw(model, schedule: TrainingSchedule):
    """AdamW without weight decay on biases and norms."""
    import torch

    decay, no_decay = [], []
    for name, param in model.named_parameters():
        (no_decay if param.ndim < 2 or "LayerNorm" in name or "layer_norm" in name else decay).append(param)
    groups = [{"params": decay, "weight_decay": schedule.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=schedule.learning_rate, betas=(0.9, 0.98), eps=1e-6)


# --------------------------------------------------------------------------- checkpoints


def save_checkpoint(path: Path, shape: dict, schedule: TrainingSchedule, model, optimizer, rng, state) -> None:
    """Model, optimizer, generators and run state in one file, replaced atomically."""
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": CHECKPOINT_FORMAT,
        "shape": shape,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": {
            "kind": "warmup-cosine-over-progress",
            "learning_rate": schedule.learning_rate,
            "warmup_steps": schedule.warmup_steps,
            "min_lr_ratio": schedule.min_lr_ratio,
            "max_steps": schedule.max_steps,
            "max_minutes": schedule.max_minutes,
        },
        "rng": {"numpy": rng.bit_generator.state, "torch": torch.get_rng_state()},
        "state": json.dumps(state),
    }
    fd, tmp = tempfile.mkstemp(prefix=".checkpoint-", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        torch.save(payload, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def load_checkpoint(path: Path, shape: dict, model, optimizer, rng) -> dict:
    """Restore a checkpoint made with the same model shape; returns the run state."""
    import torch

    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for corrupt files
        raise ModelError(f"cannot read checkpoint {path}: {err}") from None
    if payload.get("format") != CHECKPOINT_FORMAT:
        raise ModelError(f"checkpoint {path} has format {payload.get('format')}, expected {CHECKPOINT_FORMAT}")
    if payload["shape"] != shape:
        diff = {k: (v, payload["shape"].get(k)) for k, v in shape.items() if payload["shape"].get(k) != v}
        raise ModelError(
            f"checkpoint {path} was made with other settings (requested, checkpoint): {diff}; "
            "use the same model shape to resume or another --checkpoint-dir"
        )
    try:
        model.load_state_dict(payload["model"])
    except RuntimeError as err:  # same shape signature, other extra weights (e.g. a projection)
        raise ModelError(f"checkpoint {path} was made with other settings ({str(err).splitlines()[0]}); "
                         "resume with the settings it was made with, or use another --checkpoint-dir") from None
    optimizer.load_state_dict(payload["optimizer"])
    rng.bit_generator.state = payload["rng"]["numpy"]
    torch.set_rng_state(payload["rng"]["torch"])
    return json.loads(payload["state"])


def resume_state(schedule: TrainingSchedule, shape: dict, model, optimizer, rng, state: dict,
                 log: Callable[[str], None]) -> tuple[Path, dict]:
    """The checkpoint path and the state to start from: the checkpoint's with ``resume``, else ``state``.

    An existing checkpoint without ``resume`` is refused rather than overwritten.
    """
    path = schedule.resolved_checkpoint_dir() / CHECKPOINT_FILE
    if path.exists():
        if not schedule.resume:
            raise InputError(f"a checkpoint already exists at {path}; pass --resume to continue it "
                             "or choose another --checkpoint-dir")
        state = load_checkpoint(path, shape, model, optimizer, rng)
        log(f"resumed from {path} at step {state['step']}")
    elif schedule.resume:
        log(f"no checkpoint at {path}; starting from scratch")
    return path, state


# --------------------------------------------------------------------------- the loop


def run_steps(schedule: TrainingSchedule, *, model, optimizer, rng, state: dict, checkpoint: Path, shape: dict,
              loss_step: Callable[[], "object"], record: Callable[[float], None],
              step_text: Callable[[], str], log: Callable[[str], None], label: str) -> str:
    """Optimizer steps until ``max_steps`` or the time budget; returns the stop reason.

    ``loss_step()`` draws a batch and returns its loss tensor (and keeps its own
    running statistics); ``record(lr)`` validates and appends to
    ``state["history"]``; ``step_text()`` is the log line's loss part. The run
    always ends with a record of its last step and a checkpoint.
    """
    import torch

    started = time.monotonic()
    before = state["elapsed_s"]
    budget_s = 60.0 * schedule.max_minutes if schedule.max_minutes else math.inf

    def elapsed() -> float:
        return before + time.monotonic() - started

    stop_reason = "max_steps"
    progress = Progress(label, schedule.progress and sys.stderr.isatty(), state["step"], schedule.max_steps)
    try:
        while state["step"] < schedule.max_steps:
            if elapsed() >= budget_s:
                stop_reason = "max_minutes"
                break
            lr = learning_rate(schedule, state["step"], elapsed())
            for group in optimizer.param_groups:
                group["lr"] = lr
            loss = loss_step()
            loss.backward()
            if schedule.grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), schedule.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            state["step"] += 1
            progress.update(state["step"], float(loss.detach()), lr)
            step = state["step"]
            if step % schedule.log_every == 0 and not progress.live:
                log(f"step {step}/{schedule.max_steps} {step_text()} lr {lr:.2e} elapsed {elapsed():.0f}s")
            if step % schedule.eval_every == 0:
                state["elapsed_s"] = elapsed()
                record(lr)
            if step % schedule.checkpoint_every == 0:
                state["elapsed_s"] = elapsed()
                save_checkpoint(checkpoint, shape, schedule, model, optimizer, rng, state)
    finally:
        progress.close()
    state["elapsed_s"] = elapsed()
    if not state["history"] or state["history"][-1]["step"] != state["step"]:
        record(learning_rate(schedule, state["step"], state["elapsed_s"]))
    save_checkpoint(checkpoint, shape, schedule, model, optimizer, rng, state)
    return stop_reason


def run_record(config: TrainingSchedule, device) -> dict:
    """Machine, command line and full config of a run, for its report file."""
    import torch
    import transformers

    return {
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
        },
        "command_line": shlex.join([sys.executable, *sys.argv]),
        "cwd": os.getcwd(),
        "config": _jsonable(dataclasses.asdict(config)),
    }


def _jsonable(value):
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def publish_files(staging: Path, out: Path) -> None:
    """Move every file of ``staging`` (a temporary directory inside ``out``) over ``out``'s, readable by all."""
    for item in staging.iterdir():
        target = out / item.name
        if item.is_dir():
            if target.exists():
                shutil.rmtree(target)
            shutil.move(str(item), target)
        else:
            os.replace(item, target)
            os.chmod(target, 0o644)  # temp files are private; the model is not


class Progress:
    """A rich progress bar with the loss on a terminal; nothing otherwise (plain log lines)."""

    def __init__(self, label: str, enabled: bool, completed: int, total: int):
        self.live = enabled
        self._bar = None
        if enabled:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress as Bar, TextColumn, TimeElapsedColumn, TimeRemainingColumn

            self._bar = Bar(
                TextColumn(label),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("loss {task.fields[loss]:.4f} lr {task.fields[lr]:.2e}"),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=Console(stderr=True),
            )
            self._task = self._bar.add_task(label, total=total, completed=completed, loss=float("nan"), lr=0.0)
            self._bar.start()

    def update(self, step: int, loss: float, lr: float) -> None:
        if self._bar is not None:
            self._bar.update(self._task, completed=step, loss=loss, lr=lr)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()

