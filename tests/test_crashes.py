"""Issue 25, findings 10 and 12: inputs that crashed a command (a traceback or a segfault) or were answered
wrongly without a word. Each is now one line naming the input, and a non-zero exit."""

from __future__ import annotations

import gzip
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from genoembed.cli import app
from genoembed.errors import StoreError
from genoembed.sql import run_sql
from genoembed.store import Store

CHROM = "NC_000932.1"
HUGE = "9" * 5000  # over Python's 4,300-digit int() limit


def run(*arguments):
    result = CliRunner().invoke(app, [str(argument) for argument in arguments])
    output = result.output + (result.stderr if result.stderr_bytes is not None else "")
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in output
    return result.exit_code, output


def error_line(*arguments) -> str:
    code, output = run(*arguments)
    assert code == 2, output
    lines = {line for line in output.splitlines() if line.startswith("genoembed: error:")}
    assert len(lines) == 1, output  # one line (the runner may show stderr twice: mixed in and on its own)
    return lines.pop()


@pytest.fixture(scope="module")
def store(chloroplast_store):
    return chloroplast_store.root


def test_bigwig_into_a_missing_folder_is_an_error_not_a_segfault(store, tmp_path):
    pytest.importorskip("pyBigWig")
    line = error_line("track", store, "-r", f"{CHROM}:1001-2000", "-o", tmp_path / "missing" / "x.bw")
    assert "missing/x.bw: cannot write a bigWig file here (No such file or directory)" in line


@pytest.mark.parametrize("text", ["[/x]", "[red]", "[bold]b[/bold]"])
def test_markup_in_cells_and_names_is_printed_as_written(store, text):
    code, output = run("sql", store, f"SELECT '{text}' AS \"{text}\"")
    assert code == 0 and output.count(text) == 2, output


@pytest.mark.parametrize("where", ["region", "bed", "track", "annotate"])
def test_integers_over_4300_digits_are_one_line_errors(store, tmp_path, where):
    bed = tmp_path / "huge.bed"
    bed.write_text(f"{CHROM}\t1\t{HUGE}\n")
    arguments = {"region": ["search", store, "-r", f"{CHROM}:1-{HUGE}"],
                 "bed": ["search", store, "--bed", bed],
                 "track": ["track", store, "-r", f"{CHROM}:{HUGE}-{HUGE}", "-o", tmp_path / "t.bedgraph"],
                 "annotate": ["annotate", store, bed, "--name", "huge"]}[where]
    line = error_line(*arguments)
    assert any(text in line for text in ("digits is beyond any genome", "malformed line")) and len(line) < 300


@pytest.mark.parametrize("column", ["INTERVAL 1 DAY", "union_value(k := 1)"])
def test_parquet_output_of_types_parquet_cannot_hold(store, tmp_path, column):
    output = tmp_path / "x.parquet"
    line = error_line("sql", store, f"SELECT {column} AS a, 1 AS b", "-f", "parquet", "-o", output)
    assert "Parquet cannot hold column(s) a (" in line and not output.exists()
    assert not list(tmp_path.iterdir())


def test_plot_to_a_non_image_file(store, tmp_path):
    line = error_line("plot", "embeddings", store, "-o", tmp_path / "x.json")
    assert line.endswith("a plot is an image; name the file .png, .svg, .pdf")


@pytest.mark.parametrize("setting, message", [
    ('[store]\nembedding_dtype = "int8"', "r.toml: [store] embedding_dtype 'int8': use float32 or float16"),
    ("[index]\nfactory = 0", "r.toml: [index] factory = 0: expected a string"),  # found by tests/test_fuzz.py
    ("[tiling]\nwindow = true", "r.toml: [tiling] window = True: expected a number"),
    ("[store]\nshard_rows = 0", "r.toml: [store] shard_rows = 0: give a positive number of rows"),  # fuzz
])
def test_recipe_values_of_the_wrong_kind(tmp_path, setting, message):
    from conftest import CHLOROPLAST_FASTA

    recipe = tmp_path / "r.toml"
    recipe.write_text(f'[genome]\nfasta = "{CHLOROPLAST_FASTA}"\n[model]\nname = "kmer:3"\n{setting}\n')
    assert message in error_line("index", recipe)
    assert not (tmp_path / "r").exists()


def test_a_shard_replaced_by_parquet_of_another_schema(store, tmp_path):
    copy = shutil.copytree(store, tmp_path / "store")
    shard = copy / Store.open(copy).shards[0]["path"]
    pq.write_table(pa.table({"a": [1, 2, 3]}), shard)
    for arguments in (["search", copy, "-r", f"{CHROM}:1001-2000"], ["plot", "embeddings", copy, "-o", tmp_path / "p.png"],
                      ["track", copy, "-r", f"{CHROM}:1-1000", "-o", tmp_path / "t.bedgraph"]):
        line = error_line(*arguments)
        assert "not a shard of this store" in line or "sha256 differs" in line, line


def test_sql_refuses_a_shard_with_flipped_bytes_and_remembers_good_checksums(store, tmp_path, monkeypatch):
    import genoembed.genome as genome_module

    copy = shutil.copytree(store, tmp_path / "store")
    hashed = []
    original = genome_module.file_checksum
    monkeypatch.setattr(genome_module, "file_checksum", lambda path: hashed.append(path) or original(path))
    opened = Store.open(copy)
    assert run_sql(opened, "SELECT count(*) AS n FROM embeddings").column("n")[0].as_py() == opened.num_tiles
    first = len(hashed)
    run_sql(opened, "SELECT count(*) AS n FROM tiles")
    assert {copy / shard["path"] for shard in opened.shards} <= {Path(path) for path in hashed}  # every shard ...
    assert len(hashed) == first  # ... once: unchanged files are not read again
    shard = copy / opened.shards[0]["path"]
    data = bytearray(shard.read_bytes())
    middle = pq.ParquetFile(shard).metadata.row_group(0).column(9).data_page_offset + 64  # the embedding pages
    data[middle] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(StoreError, match="sha256 differs from the manifest"):
        run_sql(opened, "SELECT embedding FROM embeddings")
    assert "sha256 differs" in error_line("sql", copy, "SELECT embedding FROM embeddings LIMIT 1")


# --- VCF inputs ---------------------------------------------------------------------------------------------

HEADER = ("##fileformat=VCFv4.2\n##contig=<ID=NC_000932.1,length=154478>\n"
          '##FORMAT=<ID=GT,Number=1,Type=String,Description="Genotype">\n'
          "#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\tFORMAT\ts1\n")


@pytest.fixture(scope="module")
def reference(chloroplast_store) -> str:
    return chloroplast_store.genome().fetch(CHROM, 0, 3000).upper()


def vcf_text(reference: str, pos: int, gt: str) -> str:
    ref = reference[pos - 1] if pos >= 1 else "N"
    alt = "A" if ref != "A" else "C"
    return HEADER + f"{CHROM}\t{pos}\t.\t{ref}\t{alt}\t.\t.\t.\tGT\t{gt}\n"


def test_plain_gzip_vcf_is_named(store, tmp_path, reference):
    vcf = tmp_path / "v.vcf.gz"
    vcf.write_bytes(gzip.compress(vcf_text(reference, 1500, "1|0").encode()))
    assert "gzip-compressed but not bgzip" in error_line("variants", store, "--vcf", vcf)


def test_genotype_naming_a_missing_alt_and_pos_zero(store, tmp_path, reference):
    genotype = tmp_path / "gt.vcf"
    genotype.write_text(vcf_text(reference, 1500, "5|0"))
    line = error_line("search", store, "-r", f"{CHROM}:1001-2000", "--vcf", genotype, "--sample", "s1")
    assert line.endswith("sample 's1' GT '5|0' names allele 5, but the record has 1 ALT allele(s); fix the genotype")
    zero = tmp_path / "zero.vcf"
    zero.write_text(vcf_text(reference, 0, "1|0"))
    for arguments in (["variants", store, "--vcf", zero],
                      ["search", store, "-r", f"{CHROM}:1-2000", "--vcf", zero, "--sample", "s1"]):
        assert "record NC_000932.1:0: POS must be 1 or more" in error_line(*arguments)


def test_tabix_index_older_than_its_vcf_is_refused(store, tmp_path, reference):
    pysam = pytest.importorskip("pysam")
    plain = tmp_path / "v.vcf"
    plain.write_text(vcf_text(reference, 1500, "1|0"))
    indexed = tmp_path / "v.vcf.gz"
    pysam.tabix_index(str(plain), preset="vcf", force=True)
    assert code_of("variants", store, "--vcf", indexed, "-r", f"{CHROM}:1-3000") == 0
    stamp = (tmp_path / "v.vcf.gz.tbi").stat().st_mtime_ns
    import os

    os.utime(indexed, ns=(stamp + 10**9, stamp + 10**9))
    line = error_line("variants", store, "--vcf", indexed, "-r", f"{CHROM}:1-3000")
    assert "v.vcf.gz.tbi: older than v.vcf.gz" in line and "tabix -f -p vcf" in line


def code_of(*arguments) -> int:
    return run(*arguments)[0]


@pytest.mark.slow
def test_a_second_ctrl_c_ends_without_a_traceback(store):
    process = subprocess.Popen([sys.executable, "-m", "genoembed", "sql", str(store),
                                "SELECT sum(hash(range)) FROM range(100000000000)", "--timeout", "60"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(5)  # imports done, the query running
    process.send_signal(signal.SIGINT)
    time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode != 0 and "Traceback" not in stderr and "Exception ignored" not in stderr
