"""Retrieval metrics on binary codes: mAP@k, precision@k, per-class AP, top-1 confusion,
PR curve by Hamming radius, and a tie-aware expected AP; JSON, markdown and PNG output.

Conventions (stated because hashing papers differ):
  * Relevant = same class label.
  * AP@k = (1 / R_k) sum_{i<=k} P(i) rel(i), with R_k the relevant items among the top k
    (0 when there are none). This is DAFH's formula with n_gt read as "correct results
    returned", the convention of the DeepHash code base the baselines come from; MAP@1 is
    then top-1 precision, as DAFH sec. 3.3.6 says. ``map`` is AP over the whole database.
  * Hamming distances tie a lot (at most bits + 1 values). The plain metrics break ties by
    database order (a stable sort — what a real index returns). ``tie_aware_*`` metrics give
    the exact expectation over all orderings of tied items (McSherry & Najork 2008, as
    used by McFee & Lanckriet 2010), derived in ``tie_aware_ap``; they do not reward a
    method for collapsing codes onto few values and being lucky with database order.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np

__all__ = [
    "hamming_distances", "average_precision", "tie_aware_ap", "retrieval_metrics", "markdown_table",
    "save_plots", "save_report", "DEFAULT_KS",
]

DEFAULT_KS: tuple[int, ...] = (1, 10, 100)
_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


def hamming_distances(queries: np.ndarray, database: np.ndarray, chunk: int = 256) -> np.ndarray:
    """(Q, N) Hamming distances between packed uint8 code rows (popcount of XOR)."""
    out = np.empty((len(queries), len(database)), dtype=np.int32)
    for i in range(0, len(queries), chunk):
        x = np.bitwise_xor(queries[i:i + chunk, None, :], database[None, :, :])
        out[i:i + chunk] = _POPCOUNT[x].sum(axis=2, dtype=np.int32)
    return out


def average_precision(relevance_sorted: np.ndarray, k: int | None = None) -> np.ndarray:
    """AP@k per row of a (Q, N) boolean matrix already in ranked order (k=None: all N)."""
    rel = np.asarray(relevance_sorted, dtype=bool)[:, : (k or relevance_sorted.shape[1])]
    hits = np.cumsum(rel, axis=1)
    precision = hits / np.arange(1, rel.shape[1] + 1)
    n_rel = hits[:, -1]
    summed = (precision * rel).sum(axis=1)
    return np.divide(summed, n_rel, out=np.zeros(len(rel)), where=n_rel > 0)


def _log_comb(n: int, r: int) -> float:
    return math.lgamma(n + 1) - math.lgamma(r + 1) - math.lgamma(n - r + 1)


def _expected_group_sum(n_before: int, r_before: int, m: int, x: int) -> float:
    """E[sum of P(i) rel(i)] over the m tied positions after n_before items (r_before
    relevant), given x relevant items placed uniformly at random in those m positions.

    Position j (1-based) holds a relevant item with probability x/m; given that, each of
    the other j-1 earlier positions is relevant with probability (x-1)/(m-1), so
    E[hits up to j | rel at j] = r_before + 1 + (j-1)(x-1)/(m-1).
    """
    if x == 0:
        return 0.0
    j = np.arange(1, m + 1)
    extra = (j - 1) * (x - 1) / (m - 1) if m > 1 else np.zeros(m)
    return float(np.sum((x / m) * (r_before + 1 + extra) / (n_before + j)))


def tie_aware_ap(distances: np.ndarray, relevant: np.ndarray, k: int | None = None) -> float:
    """Exact expected AP@k of one query when items at equal distance are in random order.

    Items form groups of equal distance, ranked by distance. Groups fully inside the top k
    contribute ``_expected_group_sum`` each (linearity of expectation; their order inside a
    group does not change how many relevant items precede later groups). If the cut-off k
    falls inside a group of n items with r relevant, the top k take m of them, and the
    number X of relevant among those is hypergeometric(n, r, m). X fixes the normaliser
    R_k = R_before + X, and is independent of the arrangement of earlier groups, so

        E[AP@k] = sum_x P(X = x) (S_before + E[S_group | X = x]) / (R_before + x)

    with S_before the expected sum of the earlier groups (terms with R_k = 0 are 0).
    For k = None (or k >= N) no group is cut and the result is S / R, the classic
    tie-aware AP.
    """
    n_total = len(distances)
    k = n_total if k is None else min(k, n_total)
    _, inverse, counts = np.unique(distances, return_inverse=True, return_counts=True)
    rel_counts = np.bincount(inverse, weights=np.asarray(relevant, dtype=float), minlength=len(counts)).astype(int)
    n_before = r_before = 0
    s_before = 0.0
    for n_g, r_g in zip(counts.tolist(), rel_counts.tolist()):
        m = min(n_g, k - n_before)
        if m <= 0:
            break
        if m == n_g:
            s_before += _expected_group_sum(n_before, r_before, n_g, r_g)
            n_before += n_g
            r_before += r_g
            continue
        expected = 0.0
        for x in range(max(0, m - (n_g - r_g)), min(m, r_g) + 1):
            if r_before + x == 0:
                continue
            log_p = _log_comb(r_g, x) + _log_comb(n_g - r_g, m - x) - _log_comb(n_g, m)
            expected += math.exp(log_p) * (s_before + _expected_group_sum(n_before, r_before, m, x)) / (r_before + x)
        return expected
    return s_before / r_before if r_before > 0 else 0.0


def _ks_label(k: int | None) -> str:
    return "map" if k is None else f"map@{k}"


def retrieval_metrics(
    query_codes: np.ndarray,
    query_labels: np.ndarray,
    db_codes: np.ndarray,
    db_labels: np.ndarray,
    class_names: Sequence[str],
    ks: Sequence[int] = DEFAULT_KS,
    tie_aware: bool = True,
) -> dict[str, Any]:
    """All metrics of one query set against one database, as a JSON-ready dict."""
    query_labels, db_labels = np.asarray(query_labels), np.asarray(db_labels)
    bits = db_codes.shape[1] * 8
    dist = hamming_distances(query_codes, db_codes)
    order = np.argsort(dist, axis=1, kind="stable")  # ties: database order
    relevant = query_labels[:, None] == db_labels[None, :]
    rel_sorted = np.take_along_axis(relevant, order, axis=1)

    out: dict[str, Any] = {"num_queries": int(len(query_labels)), "num_database": int(len(db_labels)),
                           "bits": int(bits)}
    per_query_ap: dict[str, np.ndarray] = {}
    for k in [*ks, None]:
        per_query_ap[_ks_label(k)] = average_precision(rel_sorted, k)
        out[_ks_label(k)] = float(per_query_ap[_ks_label(k)].mean())
    for k in ks:
        out[f"precision@{k}"] = float(rel_sorted[:, :k].mean())
    if tie_aware:
        for k in [*ks, None]:
            values = [tie_aware_ap(dist[q], relevant[q], k) for q in range(len(query_labels))]
            out["tie_aware_" + _ks_label(k)] = float(np.mean(values))

    per_class: dict[str, dict[str, float]] = {}
    for c, name in enumerate(class_names):
        mask = query_labels == c
        if mask.any():
            per_class[name] = {"queries": int(mask.sum()), "map": float(per_query_ap["map"][mask].mean()),
                               "map@10": float(per_query_ap["map@10"][mask].mean())}
    out["per_class"] = per_class

    top1 = db_labels[order[:, 0]]
    confusion = np.zeros((len(class_names), len(class_names)), dtype=int)
    np.add.at(confusion, (query_labels, top1), 1)
    out["confusion_top1"] = {"classes": list(class_names), "matrix": confusion.tolist()}

    n_relevant = relevant.sum(axis=1)
    precision, recall = [], []
    for radius in range(bits + 1):
        within = dist <= radius
        retrieved = within.sum(axis=1)
        hits = (within & relevant).sum(axis=1)
        has = retrieved > 0
        precision.append(float((hits[has] / retrieved[has]).mean()) if has.any() else 1.0)
        recall.append(float(np.mean(np.divide(hits, n_relevant, out=np.zeros(len(hits)), where=n_relevant > 0))))
    out["pr_curve"] = {"radius": list(range(bits + 1)), "precision": precision, "recall": recall}
    return out


def markdown_table(metrics: dict[str, Any]) -> str:
    """Headline numbers and per-class AP as markdown."""
    keys = [k for k in metrics if k.startswith(("map", "tie_aware_", "precision@"))]
    lines = ["| metric | value |", "| --- | --- |", *[f"| {k} | {metrics[k]:.4f} |" for k in keys]]
    lines += ["", "| class | queries | AP | AP@10 |", "| --- | --- | --- | --- |"]
    lines += [f"| {name} | {v['queries']} | {v['map']:.4f} | {v['map@10']:.4f} |"
              for name, v in metrics["per_class"].items()]
    return "\n".join(lines) + "\n"


def save_plots(metrics: dict[str, Any], out_dir: Path | str) -> list[Path]:
    """PR curve, per-class AP bars and the top-1 confusion matrix as PNG files."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / "pr_curve.png", out_dir / "per_class_ap.png", out_dir / "confusion_top1.png"]

    fig, ax = plt.subplots(figsize=(4.5, 4))
    ax.plot(metrics["pr_curve"]["recall"], metrics["pr_curve"]["precision"], marker=".")
    ax.set(xlabel="recall", ylabel="precision", title="PR by Hamming radius", xlim=(0, 1.02), ylim=(0, 1.02))
    fig.tight_layout()
    fig.savefig(paths[0], dpi=100)
    plt.close(fig)

    names = list(metrics["per_class"])
    fig, ax = plt.subplots(figsize=(max(4.0, 0.6 * len(names)), 3.5))
    ax.bar(names, [metrics["per_class"][n]["map"] for n in names])
    ax.set(ylabel="AP (whole database)", ylim=(0, 1), title="Per-class AP")
    ax.tick_params(axis="x", rotation=45)
    fig.tight_layout()
    fig.savefig(paths[1], dpi=100)
    plt.close(fig)

    conf = np.asarray(metrics["confusion_top1"]["matrix"])
    classes = metrics["confusion_top1"]["classes"]
    fig, ax = plt.subplots(figsize=(max(4.0, 0.6 * len(classes) + 2), max(3.5, 0.6 * len(classes) + 1.5)))
    ax.imshow(conf, cmap="Blues")
    for (i, j), v in np.ndenumerate(conf):
        ax.text(j, i, str(v), ha="center", va="center", fontsize=8)
    ax.set(xticks=range(len(classes)), yticks=range(len(classes)), xlabel="top-1 retrieved class",
           ylabel="query class", title="Top-1 confusion")
    ax.set_xticklabels(classes, rotation=45, ha="right")
    ax.set_yticklabels(classes)
    fig.tight_layout()
    fig.savefig(paths[2], dpi=100)
    plt.close(fig)
    return paths


def save_report(metrics: dict[str, Any], json_path: Path | str, plots_dir: Path | str | None = None) -> None:
    """JSON (always), markdown next to it, and plots if a folder is given."""
    json_path = Path(json_path)
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(metrics, indent=2))
    json_path.with_suffix(".md").write_text(markdown_table(metrics))
    if plots_dir is not None:
        save_plots(metrics, plots_dir)
