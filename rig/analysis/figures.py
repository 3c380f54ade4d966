"""The study's figures (matplotlib, PNG), drawn from `analyze_subject`'s result alone."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

SAMPLE_BEFORE_GO_S = 2.6
"""Sample onset before the go cue in the full task (sample 1.3 s + delay 1.3 s)."""
DELAY_BEFORE_GO_S = 1.3


def _matrix(ax: plt.Axes, labels: list[str], matrix: list[list[float | None]], title: str, vmin: float,
            vmax: float, cmap: str, diagonal_note: list[float | None] | None = None) -> None:
    m = np.array([[np.nan if v is None else v for v in row] for row in matrix], dtype=float) \
        if matrix else np.zeros((0, 0))
    image = ax.imshow(m, vmin=vmin, vmax=vmax, cmap=cmap)
    ax.set_xticks(range(len(labels)), labels, rotation=60 if len(labels) > 6 else 0, fontsize=7)
    ax.set_yticks(range(len(labels)), labels, fontsize=7)
    ax.set_title(title, fontsize=9)
    if len(labels) <= 12:
        for i in range(m.shape[0]):
            for j in range(m.shape[1]):
                if np.isfinite(m[i, j]):
                    text = f"{m[i, j]:.2f}"
                    if diagonal_note is not None and i == j:
                        text += "\n(ceil.)"
                    ax.text(j, i, text, ha="center", va="center", fontsize=6,
                            color="white" if m[i, j] < (vmin + vmax) / 2 else "black")
    plt.colorbar(image, ax=ax, fraction=0.046)


def learning_figure(result: Mapping[str, Any], path: Path) -> Path:
    curve = result["learning_curve"]
    perf = np.array([np.nan if v is None else v for v in curve["performance"]], dtype=float)
    fig, ax = plt.subplots(figsize=(10, 3.2))
    ax.plot(np.arange(perf.size), 100 * perf, color="k", lw=1)
    colours = plt.cm.tab10.colors
    contexts = list(dict.fromkeys(c for _, _, c in curve["block_starts"]))
    starts = curve["block_starts"] + [[perf.size, "", ""]]
    for (start, label, context), (stop, _, _) in zip(starts[:-1], starts[1:], strict=True):
        ax.axvspan(start, stop, color=colours[contexts.index(context) % 10], alpha=0.15, lw=0)
        ax.text(start + 2, 102, label, fontsize=8, va="bottom")
        if start:
            ax.axvline(start, color="k", lw=1.2)
    for start, _ in curve["session_starts"][1:]:
        ax.axvline(start, color="0.6", lw=0.5, ls=":")
    ax.axhline(100 * result["options"]["criterion"], color="tab:red", lw=0.8, ls="--")
    ax.set_ylim(0, 110)
    ax.set_xlim(0, max(perf.size, 1))
    ax.set_xlabel("trial (study)")
    ax.set_ylabel(f"% correct (last {curve['window']})")
    handles = [plt.Rectangle((0, 0), 1, 1, color=colours[i % 10], alpha=0.3) for i in range(len(contexts))]
    ax.legend(handles, contexts, fontsize=7, loc="lower right")
    ax.set_title(f"{result['subject']}: learning; context switches (black), sessions (dotted)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def decoding_figure(result: Mapping[str, Any], path: Path) -> Path:
    """The main figure: CD similarity with ceilings, cross-decoding by block and by session, memory trace."""
    fig, axes = plt.subplots(1, 4, figsize=(17, 4.2), gridspec_kw={"width_ratios": [1, 1, 1.4, 0.6]})
    sim, cross = result["cd_similarity"], result["cross_decoding"]
    sessions = result["cross_decoding_sessions"]
    _matrix(axes[0], sim["labels"], sim["matrix"], "CD similarity (diagonal: split-half ceiling)", -0.2, 1,
            "viridis", sim["ceiling"])
    _matrix(axes[1], cross["labels"], cross["matrix"], "cross-decoding by block (train row, test col)",
            0.3, 1, "RdBu_r")
    _matrix(axes[2], [lab.split(":")[-1] + " d" + str(i + 1) for i, lab in enumerate(sessions["labels"])],
            sessions["matrix"], "cross-decoding by session", 0.3, 1, "RdBu_r")
    ax = axes[3]
    trace = result.get("memory_trace")
    if trace:
        values = [100 * trace["prev_context_accuracy"], 100 * trace["return_context_accuracy"]]
        ax.bar([0, 1], values, color=["0.6", "tab:blue"])
        ax.set_xticks([0, 1], [trace["prev_block"], trace["return_block"]])
        ax.axhline(50, color="k", lw=0.8, ls="--")
        ax.set_ylim(30, 100)
        ax.set_title(f"CD {trace['cd_block']} decoding\np = {trace['p_value']:.3g}", fontsize=9)
        ax.set_ylabel("% correct (balanced)")
    else:
        ax.text(0.5, 0.5, "memory trace:\nneeds blocks 1, 2, 1'", ha="center", va="center", fontsize=8)
        ax.set_axis_off()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def psth_figure(result: Mapping[str, Any], path: Path) -> Path | None:
    psths = result["psth"]
    if not psths:
        return None
    fig, axes = plt.subplots(2, len(psths), figsize=(4 * len(psths), 5), squeeze=False, sharex=True)
    for col, p in enumerate(psths):
        t = np.asarray(p["bin_centres_s"])
        for row, group in enumerate(("right_preferring", "left_preferring")):
            ax = axes[row][col]
            for side, colour in (("right", "tab:red"), ("left", "tab:blue")):
                trace = p[group][side]
                if trace:
                    ax.plot(t, trace, color=colour, label=f"{side} trials")
            ax.axvspan(-SAMPLE_BEFORE_GO_S, -DELAY_BEFORE_GO_S, color="0.85", lw=0)
            ax.axvspan(-DELAY_BEFORE_GO_S, 0, color="0.93", lw=0)
            ax.axvline(0, color="k", lw=0.8)
            n = p["n_right_preferring"] if row == 0 else p["n_left_preferring"]
            ax.set_title(f"{p['label']}: {group.replace('_', '-')} ({n})", fontsize=8)
            if col == 0:
                ax.set_ylabel("activity")
            if row == 1:
                ax.set_xlabel("time from go cue (s)")
        axes[0][col].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def all_figures(result: Mapping[str, Any], out: Path) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    figures = {"decoding": decoding_figure(result, out / "decoding.png"),
               "learning": learning_figure(result, out / "learning.png")}
    psth = psth_figure(result, out / "psth.png")
    if psth is not None:
        figures["psth"] = psth
    return figures
