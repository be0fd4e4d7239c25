"""Figures a biologist reads at a glance: embedding maps, robustness curves, speed/quality trade-offs.

matplotlib (the ``plot`` extra) is imported inside each function with the
Agg backend, so importing this module costs nothing and needs no display.
Each function writes a PNG and returns the matplotlib ``Figure`` (tests read
its axes labels).
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import numpy as np
import pyarrow as pa

from genoembed.errors import InputError, missing_extra

COLOR_BY = ("gc", "type", "genome")


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise missing_extra("plotting", "plot", "matplotlib") from None
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, out_png: str | Path) -> None:
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=120, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)


def pca(vectors: np.ndarray, components: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Projection on the top principal components (numpy SVD) and the variance fraction each explains."""
    centred = vectors - vectors.mean(axis=0, keepdims=True)
    _u, singular, vt = np.linalg.svd(centred, full_matrices=False)
    explained = singular**2 / max(float((singular**2).sum()), 1e-30)
    return centred @ vt[:components].T, explained[:components]


def _sample_store(store, max_points: int, seed: int) -> tuple[np.ndarray, pa.Table]:
    """A seeded sample of at most ``max_points`` tiles: vectors and their tile rows."""
    ids, vectors = store.sample_embeddings(max_points, seed)
    return vectors, store.tiles(ids)


def _feature_types(store, tiles: pa.Table) -> list[str]:
    """The annotation type overlapping each tile the most ('intergenic' when none), via the store's SQL views."""
    if not store.manifest.get("annotations"):
        raise InputError(f"{store.root}: the store has no annotations to colour by type; "
                         "add some with `genoembed annotate` or use --color-by gc")
    from genoembed.interrupts import interruptible
    from genoembed.sql import connect

    con = connect(store)
    con.register("sampled", pa.table({"row": pa.array(np.arange(tiles.num_rows)), "chrom": tiles["chrom"],
                                      "start": tiles["start"], "end": tiles["end"]}))
    # on a worker thread: a Ctrl-C stops the join and is raised as such (DuckDB would report a failed query)
    kinds = ["intergenic"] * tiles.num_rows
    for row, kind in interruptible(con, lambda: _best_types(con, store), None):
        kinds[row] = kind
    return kinds


def _best_types(con, store) -> list[tuple[int, str]]:
    """(sampled row, the annotation type overlapping it most) for each sampled tile that overlaps one."""
    columns = set(con.sql("SELECT * FROM annotations LIMIT 0").columns)
    type_column = "type" if "type" in columns else "feature_type" if "feature_type" in columns else None
    if type_column is None:
        raise InputError(f"{store.root}: annotations have no type column to colour by")
    # the best type per tile: most overlapping bases; genes lose to their more specific CDS/tRNA/rRNA children
    return con.sql(f"""
        SELECT row, arg_max({type_column}, overlap * CASE WHEN {type_column} = 'gene' THEN 0.5 ELSE 1 END) AS kind
        FROM (SELECT s.row, a.{type_column},
                     least(s."end", a."end") - greatest(s.start, a.start) AS overlap
              FROM sampled s JOIN annotations a
                ON a.chrom = s.chrom AND a.start < s."end" AND s.start < a."end"
              WHERE a.{type_column} NOT IN ('source', 'region'))
        GROUP BY row""").fetchall()


def plot_embeddings(store, out_png: str | Path, color_by: str = "gc", method: str = "pca",
                    max_points: int = 20_000, seed: int = 0, title: str | None = None):
    """Scatter of tile embeddings projected to 2-D, coloured by GC, annotation type or genome."""
    if color_by not in COLOR_BY:
        raise InputError(f"color_by={color_by!r}: use one of {', '.join(COLOR_BY)}")
    if method != "pca":
        raise InputError(f"method={method!r}: only 'pca' is available (no UMAP dependency is installed)")
    if store.num_tiles < 3:
        raise InputError(f"{store.root}: {store.num_tiles} tiles are too few to plot; need at least 3")
    plt = _pyplot()
    vectors, tiles = _sample_store(store, max_points, seed)
    points, explained = pca(vectors)
    fig, ax = plt.subplots(figsize=(7, 6))
    size = max(2.0, min(20.0, 20000.0 / len(points)))
    if color_by == "gc":
        scatter = ax.scatter(points[:, 0], points[:, 1], c=tiles.column("gc").to_numpy(), cmap="viridis",
                             s=size, alpha=0.7, linewidths=0)
        fig.colorbar(scatter, ax=ax, label="GC fraction")
    else:
        labels = _feature_types(store, tiles) if color_by == "type" else tiles.column("genome").to_pylist()
        names, counts = np.unique(np.array(labels, dtype=object), return_counts=True)
        order = names[np.argsort(-counts)]
        palette = plt.get_cmap("tab10")
        for i, name in enumerate(order[:10]):
            mask = np.array([label == name for label in labels])
            ax.scatter(points[mask, 0], points[mask, 1], s=size, alpha=0.7, linewidths=0, color=palette(i),
                       label=f"{name} ({int(mask.sum())})")
        if len(order) > 10:
            mask = ~np.isin(np.array(labels, dtype=object), order[:10])
            ax.scatter(points[mask, 0], points[mask, 1], s=size, alpha=0.5, linewidths=0, color="lightgrey",
                       label=f"other ({int(mask.sum())})")
        ax.legend(title="annotation type" if color_by == "type" else "genome", markerscale=3, fontsize=8)
    ax.set_xlabel(f"PC1 ({100 * explained[0]:.1f}% of variance)")
    ax.set_ylabel(f"PC2 ({100 * explained[1]:.1f}% of variance)" if len(explained) > 1 else "PC2")
    model = store.provenance.get("embedder", {}).get("model_id", "embedder")
    ax.set_title(title or f"{', '.join(store.genomes)}: {len(points)} tiles, {model}, PCA")
    _save(fig, out_png)
    return fig


def _records(rows: pa.Table | Iterable[dict]) -> list[dict]:
    records = rows.to_pylist() if isinstance(rows, pa.Table) else list(rows)
    if not records:
        raise InputError("no result rows to plot; run `genoembed eval` first")
    return records


def _index_label(row: dict) -> str:
    label = row.get("index") or ""
    if row.get("nprobe"):
        label += f" nprobe={row['nprobe']}"
    if row.get("ef_search"):
        label += f" ef={row['ef_search']}"
    return label


def plot_recall_vs_mutation(rows: pa.Table | Iterable[dict], out_png: str | Path, k: int = 1,
                            rate: str = "substitution_rate", index: str = "Flat", title: str | None = None):
    """Recall@k against injected mutation rate, one line per method (exact search, all queries)."""
    if rate not in ("substitution_rate", "indel_rate"):
        raise InputError(f"rate={rate!r}: use substitution_rate or indel_rate")
    other = "indel_rate" if rate == "substitution_rate" else "substitution_rate"
    metric = f"recall_at_{k}"
    records = [r for r in _records(rows) if r.get("identity_bin", "all") == "all" and metric in r
               and (r.get("index") in (None, index)) and not r.get("nprobe") and not r.get("ef_search")
               and not r.get(other)]
    if not records:
        raise InputError(f"no rows with {metric} for index {index!r} and {other}=0 to plot")
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 5))
    methods = list(dict.fromkeys(r["method"] for r in records))
    for method in methods:
        points = sorted((100 * r[rate], r[metric]) for r in records if r["method"] == method)
        style = "--" if any(r["kind"] == "aligner" for r in records if r["method"] == method) else "-"
        ax.plot([p[0] for p in points], [p[1] for p in points], style, marker="o", label=method)
    ax.set_xlabel(f"injected {rate.replace('_rate', '')} rate (%)")
    ax.set_ylabel(f"recall@{k}")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title or f"recall@{k} vs {rate.replace('_', ' ')}")
    _save(fig, out_png)
    return fig


def plot_recall_vs_qps(rows: pa.Table | Iterable[dict], out_png: str | Path, recall: str = "ann_recall_at_10",
                       title: str | None = None):
    """Recall (default ANN recall@10 vs exact search) against queries per second, per method and index type."""
    records = [r for r in _records(rows) if r.get("identity_bin", "all") == "all" and r.get("kind") == "embedding"
               and r.get(recall) is not None and r.get("qps") is not None and not r.get("substitution_rate")
               and not r.get("indel_rate")]
    if not records:
        raise InputError(f"no embedding rows with {recall} and qps (unmutated queries) to plot")
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 5))
    markers = "osD^vP*X"
    groups = list(dict.fromkeys((r["method"], r["index"]) for r in records))
    for i, (method, index) in enumerate(groups):
        points = sorted((r["qps"], r[recall], _index_label(r)) for r in records
                        if r["method"] == method and r["index"] == index)
        ax.plot([p[0] for p in points], [p[1] for p in points], marker=markers[i % len(markers)],
                label=f"{method} {index}")
    ax.set_xscale("log")
    ax.set_xlabel("queries per second (log scale)")
    ax.set_ylabel(recall.replace("ann_recall_at_", "ANN recall@").replace("recall_at_", "recall@"))
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    ax.set_title(title or "search quality vs speed")
    _save(fig, out_png)
    return fig

