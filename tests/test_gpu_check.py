"""benchmarks/gpu_check.py, the one prepared GPU run, works before a GPU is lent: its dry run (CPU, tiny shapes)
goes through every section and writes the JSON it promises, with real figures where the CPU can give them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_dry_run_writes_every_section(tmp_path):
    output = tmp_path / "gpu_check.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    result = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), "--dry-run",
                             "--output", str(output)], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(output.read_text())
    assert report["dry_run"] and report["device"] == "cpu"
    sections = report["sections"]
    assert set(sections) == {"environment", "probe", "attention", "compile", "faiss", "throughput"}
    assert not [name for name, found in sections.items() if "error" in found], sections
    probe = sections["probe"]  # the check the embedder runs at load, and real tiles after it
    assert probe["load_probe_cosine"] >= 0.999 and probe["bf16_vs_fp32"]["min"] >= 0.999
    assert probe["recorded_dtype"] == "bfloat16" and probe["same_fingerprint"]
    faiss = sections["faiss"]
    assert faiss["cpu_ivf_recall_at_10"] > 0.5 and ("gpu_skipped" in faiss or "gpu_ivf_recall_at_10" in faiss)
    throughput = sections["throughput"]
    assert throughput["paths"]["stock"]["x_stock"] == 1.0
    assert throughput["paths"]["genoembed"]["vs_stock_fp32"]["min"] >= 0.999  # the same vectors, whatever speed
    for name in ("attention", "compile"):  # need xformers / inductor on a GPU: skipped with the reason
        assert "skipped" in sections[name] or "x_sdpa" in sections[name] or "x_eager" in sections[name]
