"""Heatmap of a logit-lens profile (layers × languages); drawing only, no computation.

png = lens_heatmap(profile, k=3, m=2)      # PNG bytes
atomic_write_bytes("lens.png", png)
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from pathlib import Path

from matplotlib.figure import Figure


def lens_heatmap(profile: Mapping, k: int | None = None, m: int | None = None) -> bytes:
    """Two panels, own-language mass and English mass, layer 0 at the bottom; PNG bytes.

    With ``k`` and ``m`` given, dashed lines mark the top of the first k blocks
    and the bottom of the last m blocks (the layers LayRA trains).
    """
    langs = list(profile["languages"])
    n = int(profile["num_layers"])
    panels = [
        ("own-language mass", profile["own_mass"]),
        (f"English ({profile.get('english', 'eng')}) mass", profile["english_mass"]),
    ]
    # A Figure without pyplot: no global state, no GUI backend needed.
    fig = Figure(figsize=(2.2 + 1.1 * len(langs) * 2, 1.6 + 0.28 * (n + 1)), layout="constrained")
    axes = fig.subplots(1, 2, sharey=True)
    for ax, (title, masses) in zip(axes, panels, strict=True):
        grid = [[masses[lang][layer] for lang in langs] for layer in range(n + 1)]
        im = ax.imshow(grid, origin="lower", aspect="auto", cmap="viridis", vmin=0.0)
        ax.set_title(title)
        ax.set_xticks(range(len(langs)), langs)
        ax.set_xlabel("text language")
        for layer in range(n + 1):
            for j in range(len(langs)):
                value = grid[layer][j]
                ax.text(
                    j,
                    layer,
                    f"{value:.2f}",
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if value < 0.6 * (im.norm.vmax or 1) else "black",
                )
        if k is not None:
            ax.axhline(k + 0.5, color="red", linestyle="--", linewidth=1)
        if m is not None:
            ax.axhline(n - m + 0.5, color="orange", linestyle="--", linewidth=1)
        fig.colorbar(im, ax=ax, shrink=0.8)
    axes[0].set_ylabel("layer (0 = embeddings, last = output)")
    axes[0].set_yticks(range(n + 1))
    suffix = f"  (k={k}, m={m})" if k is not None and m is not None else ""
    name = Path(str(profile.get("model") or profile.get("model_type") or "")).name
    fig.suptitle(f"logit lens, {name}{suffix}")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    return buf.getvalue()
