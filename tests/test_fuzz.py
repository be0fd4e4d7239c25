"""Issue 25 fuzz pass: CLI arguments, recipes, VCF/BED/GFF3 files and HTTP bodies drawn by hypothesis.

Every draw must end in an answer or one clear line with a non-zero exit (an HTTP 4xx with a JSON error):
no traceback, no 500. Derandomised with modest counts so the suite stays fast; ``GENOEMBED_FUZZ_EXAMPLES=N``
scales every test up for a longer run (benchmarks/RESULTS.md records one). Manifests are fuzzed in
tests/test_chaos.py.
"""

from __future__ import annotations

import os
import string

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from typer.testing import CliRunner

from genoembed.cli import app

SCALE = int(os.environ.get("GENOEMBED_FUZZ_EXAMPLES", "0"))
CHROM = "NC_000932.1"


def fuzz(examples: int):
    return settings(max_examples=SCALE or examples, deadline=None, derandomize=not SCALE,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


# text a hostile user types: markup, huge or unicode numbers, paths, quotes, controls, SQL
NASTY = st.one_of(
    st.sampled_from(["[/x]", "[red]", "9" * 5000, "٣", "²", "1_000", "-1", "0", "1e12", "nan", "../../etc/passwd",
                     "/", "~", "'", '"', "\x00", "\t", "\n", "x;DROP TABLE tiles", "%s", "{}", "NC_000932.1",
                     f"{CHROM}:1-1000", f"{CHROM}:0-10", f"{CHROM}:1000-1", f"{CHROM}:1-{'9' * 30}", "ACGT" * 30,
                     "SELECT 1", "SELECT * FROM range(10)", "-", "--", ""]),
    st.text(max_size=12),
    st.integers(-10**30, 10**30).map(str),
)


def run_cli(arguments: list[str]):
    result = CliRunner().invoke(app, arguments)
    output = result.output + (result.stderr if result.stderr_bytes is not None else "")
    assert result.exception is None or isinstance(result.exception, SystemExit), \
        f"{arguments}: {result.exception!r}"
    assert result.exit_code in (0, 1, 2), (arguments, result.exit_code, output[-500:])
    assert "Traceback" not in output, (arguments, output[-500:])
    return result


@pytest.fixture(scope="module")
def store(chloroplast_store):
    return str(chloroplast_store.root)


@pytest.fixture(scope="module")
def outputs(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz-out")


COMMANDS = [
    lambda s, o, x, y: ["search", s, "-r", x, "-k", y, "--no-save"],
    lambda s, o, x, y: ["search", s, "-s", x, "--genome", y, "--no-save"],
    lambda s, o, x, y: ["sql", s, x, "-p", f"a={y}"],
    lambda s, o, x, y: ["sql", s, f"SELECT $a AS {'v' if not y.isidentifier() else y}", "-p", f"a={x}", "-f", "json"],
    lambda s, o, x, y: ["track", s, "-r", x, "-o", f"{o}/t{len(y) % 3}.bedgraph"],
    lambda s, o, x, y: ["track", s, "-s", "ACGT" * 50, "-o", f"{o}/{y[:20]}.bed"],
    lambda s, o, x, y: ["info", x],
    lambda s, o, x, y: ["verify", x],
    lambda s, o, x, y: ["explain", s, x],
    lambda s, o, x, y: ["plot", "embeddings", s, "-o", f"{o}/{y[:20]}x", "--max-points", "50"],
]


@fuzz(60)
@given(command=st.sampled_from(range(len(COMMANDS))), x=NASTY, y=NASTY)
def test_cli_arguments(store, outputs, command, x, y):
    if "\x00" in x + y:  # the OS refuses NUL in arguments before genoembed sees them
        return
    run_cli([str(a) for a in COMMANDS[command](store, outputs, x, y)])


# --- recipes -----------------------------------------------------------------------------------------------

RECIPE_VALUES = st.one_of(st.integers(-3, 10**20), st.sampled_from(["abc", "", "int8", "float16", "both", "+",
                                                                     "kmer:3", "kmer:0", "Flat", "IVF4,Flat",
                                                                     "/nonexistent", "[/x]"]),
                          st.booleans(), st.floats(allow_nan=False, allow_infinity=False),
                          st.lists(st.integers(0, 3), max_size=2))
RECIPE_KEYS = [("tiling", "window"), ("tiling", "stride"), ("tiling", "strands"), ("tiling", "max_n_fraction"),
               ("model", "name"), ("model", "k"), ("model", "pooling"), ("index", "factory"), ("index", "metric"),
               ("store", "embedding_dtype"), ("store", "shard_rows"), ("store", "batch_rows"), ("genome", "name"),
               ("annotations", "files"), ("tiling", "colour")]


def toml_value(value) -> str:
    import json

    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    return json.dumps(value)


@fuzz(25)
@given(changes=st.lists(st.tuples(st.sampled_from(RECIPE_KEYS), RECIPE_VALUES), min_size=1, max_size=3))
def test_recipes(tmp_path_factory, changes):
    from genoembed.synthetic import random_genome, write_fasta

    folder = tmp_path_factory.mktemp("recipe")
    fasta = write_fasta(folder / "g.fa", random_genome({"c": 3_000}, seed=1))
    sections = {"genome": {"fasta": str(fasta)}, "tiling": {"window": 500, "stride": 250, "strands": "+"},
                "model": {"name": "kmer:3"}, "index": {"factory": "Flat"}, "store": {}, "annotations": {}}
    for (section, key), value in changes:
        sections[section][key] = value
    text = "".join(f"[{name}]\n" + "".join(f"{key} = {toml_value(value)}\n" for key, value in body.items())
                   for name, body in sections.items())
    recipe = folder / "r.toml"
    recipe.write_text(text)
    run_cli(["index", str(recipe), "-o", str(folder / "out"), "--quiet"])


# --- VCF, BED, GFF3 files ----------------------------------------------------------------------------------

FIELD = st.one_of(st.sampled_from([CHROM, "1", "0", "-5", "9" * 5000, ".", "A", "AC", "<DEL>", "N[chr:1[", "*",
                                   "1|0", "5|0", "./.", "0/1", "GT", "", "٣", "[/x]", "1500", "154478", "154479"]),
                  st.text(string.printable.replace("\t", "").replace("\n", "").replace("\r", ""), max_size=6))
VCF_HEADER = ("##fileformat=VCFv4.2\n##contig=<ID=NC_000932.1,length=154478>\n"
              '##FORMAT=<ID=GT,Number=1,Type=String,Description="Genotype">\n'
              "#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\tFORMAT\ts1\n")


@fuzz(40)
@given(rows=st.lists(st.lists(FIELD, min_size=10, max_size=10), min_size=1, max_size=3), region=st.booleans())
def test_vcf_files(store, tmp_path_factory, rows, region):
    vcf = tmp_path_factory.mktemp("vcf") / "v.vcf"
    vcf.write_text(VCF_HEADER + "".join("\t".join(row) + "\n" for row in rows))
    run_cli(["variants", store, "--vcf", str(vcf)] + (["-r", f"{CHROM}:1-5000"] if region else []))
    run_cli(["search", store, "-r", f"{CHROM}:1001-3000", "--vcf", str(vcf), "--sample", "s1", "--no-save"])


@fuzz(40)
@given(rows=st.lists(st.lists(FIELD, min_size=1, max_size=12), min_size=1, max_size=4),
       kind=st.sampled_from(["bed", "gff3"]))
def test_bed_and_gff3_files(store, tmp_path_factory, rows, kind):
    folder = tmp_path_factory.mktemp("features")
    path = folder / f"f.{kind}"
    header = "##gff-version 3\n" if kind == "gff3" else ""
    path.write_text(header + "".join("\t".join(row) + "\n" for row in rows))
    run_cli(["search", store, "--bed", str(path), "--no-save", "-k", "1"])
    copy = folder / "store"
    import shutil

    shutil.copytree(store, copy)
    run_cli(["annotate", str(copy), str(path), "--name", "fuzz"])


# --- HTTP bodies -------------------------------------------------------------------------------------------

JSON = st.recursive(st.none() | st.booleans() | st.integers(-10**20, 10**20) | NASTY |
                    st.floats(allow_nan=False, allow_infinity=False),
                    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children,
                                                                                      max_size=3), max_leaves=8)
SEARCH_FIELDS = ["regions", "sequences", "bed", "fasta", "k", "genome", "chrom", "query_genome", "exclude_self",
                 "annotate", "strand_mode", "feature_types", "nprobe", "ef_search", "k_factor", "store"]
SQL_FIELDS = ["query", "parameters", "timeout", "store"]


@pytest.fixture(scope="module")
def http(chloroplast_store):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from genoembed.serve import ServedStore, create_app
    from genoembed.serve_limits import Limits

    served = ServedStore("chloro", chloroplast_store.root)
    with TestClient(create_app({"chloro": served}, limits=Limits(max_rows=2_000)),
                    raise_server_exceptions=False) as client:
        yield client


def field_values(names):
    return st.dictionaries(st.sampled_from(names), JSON | st.lists(NASTY, max_size=3) | NASTY, max_size=4)


@fuzz(80)
@given(body=st.one_of(field_values(SEARCH_FIELDS).map(lambda b: ("/search", b)),
                      field_values(SQL_FIELDS).map(lambda b: ("/sql", b)),
                      JSON.map(lambda b: ("/search", b)), NASTY.map(lambda b: ("/search", b))),
       as_text=st.booleans())
def test_http_bodies(http, body, as_text):
    import json

    path, content = body
    if as_text and isinstance(content, str):
        reply = http.post(path, content=content.encode("utf-8", "surrogatepass"),
                          headers={"Content-Type": "text/plain"})
    else:
        reply = http.post(path, content=json.dumps(content), headers={"Content-Type": "application/json"})
    assert reply.status_code < 500, (path, content, reply.text[:300])
    if reply.status_code >= 400:
        assert set(reply.json()) == {"error"} and "Traceback" not in reply.text


@fuzz(40)
@given(params=st.dictionaries(st.sampled_from(["regions", "sequences", "format", "k", "genome", "store",
                                               "exclude_self", "nprobe"]), NASTY, min_size=1, max_size=3))
def test_http_track_query_strings(http, params):
    reply = http.get("/track", params=params)
    assert reply.status_code < 500, (params, reply.text[:300])
