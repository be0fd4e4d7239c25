"""genoembed: embed genomes with DNA language models, search them, join hits with annotations.

The public API mirrors the CLI, verb for verb::

    import genoembed

    store = genoembed.build(genoembed.load_recipe("indexes/demo.toml"))       # genoembed index RECIPE
    store = genoembed.index("genome.fa", "stores/g", tiling=genoembed.TilingSpec(window=1000, stride=500))
    hits = genoembed.search(store, ["chr1:10001-11000"], k=10)              # nearest tiles
    hits, blocks = genoembed.answer(store, queries, k=10, evalue=10)        # genoembed search: mapped, E-values
    table = genoembed.sql(store, "SELECT * FROM tiles LIMIT 5")             # genoembed sql
    genoembed.annotate(store, "genes.gff3")                                  # genoembed annotate
    genoembed.remove(store, genome="strainA")                                # genoembed remove
    genoembed.circularise(store, ["plasmid1"])                               # genoembed annotate --circular
    problems = genoembed.verify(store)                                       # genoembed verify
    shifts = genoembed.score_variants(store, genoembed.read_variants("calls.vcf"))  # genoembed variants
    why = genoembed.explain(store, "chr1:10001-11000", hit=1)                # genoembed explain

Heavy parts (torch, transformers, FAISS, DuckDB) load only when a verb needs them.
"""

import os

# Idle worker threads of OpenMP (FAISS, torch) and OpenBLAS (numpy) sleep at once instead of spinning for
# up to ~0.1 s after each parallel call. A search alternates FAISS, BLAS and single-threaded numpy, and
# on a 2-core machine the spinning workers of one step took the cores from the next: a 1000-query CLI
# search ran 0.9 s instead of 0.7 s (benchmarks/RESULTS.md, issue 20). Set before numpy, FAISS or torch
# load; setdefault, so a user's own settings win.
for _variable, _value in (("OMP_WAIT_POLICY", "PASSIVE"), ("OPENBLAS_THREAD_TIMEOUT", "4")):
    os.environ.setdefault(_variable, _value)
del _variable, _value

from genoembed.version import VERSION as __version__  # noqa: E402

from genoembed.annotate import add_annotations as annotate  # noqa: E402
from genoembed.build import build, index  # noqa: E402
from genoembed.circularise import circularise  # noqa: E402
from genoembed.embedders import Embedder, EmbedderOptions, get_embedder, register_embedder  # noqa: E402
from genoembed.explain import explain  # noqa: E402
from genoembed.errors import GenoembedError, InputError, ModelError, StoreError  # noqa: E402
from genoembed.recipe import Recipe, load_recipe  # noqa: E402
from genoembed.mapping import answer  # noqa: E402
from genoembed.remove import remove  # noqa: E402
from genoembed.search import Query, search  # noqa: E402
from genoembed.sql import run_sql as sql  # noqa: E402
from genoembed.store import Store  # noqa: E402
from genoembed.tiles import TilingSpec  # noqa: E402
from genoembed.variants import annotate_vcf, haplotype_queries, read_variants, score_variants  # noqa: E402
from genoembed.vector_index import IndexSpec  # noqa: E402
from genoembed.verify import verify_store as verify  # noqa: E402

__all__ = ["__version__", "build", "index", "search", "answer", "sql", "annotate", "remove", "circularise", "verify", "Store", "Recipe",
           "load_recipe", "TilingSpec", "IndexSpec", "Query", "Embedder", "EmbedderOptions", "get_embedder",
           "register_embedder", "read_variants", "score_variants", "annotate_vcf", "haplotype_queries",
           "explain", "GenoembedError", "InputError", "ModelError", "StoreError"]
