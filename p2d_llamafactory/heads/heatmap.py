"""The layers x heads sensitivity heatmap of a head set (the paper's Fig. 3)."""

from collections.abc import Sequence
from pathlib import Path

from ..io import pyplot, save_figure


def plot_head_heatmap(
    scores: Sequence[Sequence[float]],
    selected: Sequence[tuple[int, int]],
    path: str | Path,
    title: str,
) -> Path:
    """Heatmap of head scores (rows: layers, columns: heads) with the selected heads outlined; written atomically."""
    import numpy as np
    from matplotlib.colors import LogNorm
    from matplotlib.patches import Rectangle

    plt = pyplot()
    data = np.asarray(scores, dtype=float)
    num_layers, num_heads = data.shape
    top = float(data.max()) if data.size else 0.0
    log_scale = top > 0 and float(data.min()) < top * 1e-3  # scores spanning orders of magnitude
    norm = LogNorm(vmin=top * 1e-6, vmax=top, clip=True) if log_scale else None
    fig, ax = plt.subplots(figsize=(max(4.0, 0.35 * num_heads + 2.5), max(3.0, 0.22 * num_layers + 1.5)))
    shown = np.clip(data, top * 1e-6, None) if log_scale else data
    image = ax.imshow(shown, aspect="auto", cmap="viridis", origin="lower", interpolation="nearest", norm=norm)
    for layer, head in selected:
        ax.add_patch(Rectangle((head - 0.5, layer - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=1.2))
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_title(title, fontsize=9)
    fig.colorbar(image, ax=ax, label="sensitivity score" + (" (log scale)" if log_scale else ""))
    fig.tight_layout()
    return save_figure(fig, path, dpi=120)
