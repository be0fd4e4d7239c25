"""README command 1, as written, runs: its genoembed steps are taken from the README text itself and invoked
(in a copy of indexes/, so the checkout stays clean) with the answers the README promises."""

from __future__ import annotations

import re
import shlex
import shutil
from pathlib import Path

from typer.testing import CliRunner

from genoembed.cli import app

ROOT = Path(__file__).resolve().parents[1]


def command_one() -> list[list[str]]:
    """The `genoembed ...` steps of the README's first shell command, as argument lists."""
    text = (ROOT / "README.md").read_text()
    block = re.search(r"```bash\n(python3 -m venv .venv && [^\n]*genoembed index indexes/demo\.toml[^\n]*)\n```", text)
    assert block, "README command 1 not found"
    steps = [step.strip() for step in block.group(1).split(" && ")]
    return [shlex.split(step)[1:] for step in steps if step.startswith(".venv/bin/genoembed ")]


def test_readme_command_one_runs_and_finds_the_other_inverted_repeat(tmp_path, monkeypatch):
    steps = command_one()
    assert [step[0] for step in steps] == ["index", "search", "sql"]
    shutil.copytree(ROOT / "indexes", tmp_path / "indexes", ignore=shutil.ignore_patterns("demo"))
    monkeypatch.chdir(tmp_path)
    outputs = []
    for step in steps:
        result = CliRunner().invoke(app, step)
        assert result.exit_code == 0, f"{step}: {result.output}"
        outputs.append(result.stdout)
    # the top hit is ycf2's copy in the other inverted repeat, on the opposite strand (as the README says)
    search_output, sql_output = outputs[1], outputs[2]
    first_hit = next(line for line in search_output.splitlines() if "│ 1 " in line)
    assert "ycf2" in first_hit and "│ -" in first_hit
    assert "ycf2" in sql_output and "rps12" not in sql_output  # a trans-spliced gene no longer spans the genome
