"""Pictures of a Paraformer's decision: the log-mel spectrogram with CIF's weights and firings under it.

    save_cif_plot(features, out.alpha[0], out.fire_positions[0], hyp.tokens, "cif.png",
                  feature_shift_s=0.01, frame_shift_s=0.04)
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import torch

from ..checks import check_shape

__all__ = ["save_cif_plot"]


def save_cif_plot(features: torch.Tensor, alpha: torch.Tensor, fire_positions: torch.Tensor, tokens: Sequence[str],
                  path: str | os.PathLike, *, feature_shift_s: float, frame_shift_s: float,
                  title: str = "") -> Path:
    """Write a two-panel PNG: the features `[T, F]` as an image over time (top), and the CIF
    weights `alpha [T']` of the encoder frames as bars with a vertical line and the token's
    text at each firing frame (bottom), on one time axis in seconds.

    fire_positions: `[N]` int, the frame of each fired token (-1 = none); tokens: the text of
    the fired tokens in order (len <= number of firings; specials may be left out, then only
    the first `len(tokens)` firings are labelled). The file is written then renamed.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    check_shape(features, "t f", name="features")
    check_shape(alpha, "t", name="alpha")
    check_shape(fire_positions, "n", name="fire_positions")
    feats = features.detach().float().cpu()
    a = alpha.detach().float().cpu()
    fires = [int(f) for f in fire_positions.tolist() if int(f) >= 0]
    t_feat = feats.shape[0] * feature_shift_s
    fig, (ax0, ax1) = plt.subplots(2, 1, figsize=(9, 4.8), dpi=100, sharex=True,
                                   gridspec_kw={"height_ratios": [2, 1]})
    ax0.imshow(feats.T.numpy(), origin="lower", aspect="auto", cmap="magma", extent=(0, t_feat, 0, feats.shape[1]))
    ax0.set_ylabel("mel bin")
    if title:
        ax0.set_title(title)
    centers = (torch.arange(a.shape[0]) + 0.5) * frame_shift_s
    ax1.bar(centers.numpy(), a.numpy(), width=frame_shift_s * 0.9, color="tab:blue", label="alpha (CIF weight)")
    for i, f in enumerate(fires):
        x = (f + 1) * frame_shift_s
        ax1.axvline(x, color="tab:red", linewidth=0.8)
        ax0.axvline(x, color="white", linewidth=0.5, alpha=0.6)
        if i < len(tokens):
            ax1.text(x, 1.02, tokens[i] if tokens[i] != " " else "_", ha="center", va="bottom", fontsize=8)
    ax1.set_ylim(0, 1.15)
    ax1.set_xlim(0, max(t_feat, a.shape[0] * frame_shift_s))
    ax1.set_xlabel("time (s)")
    ax1.set_ylabel("alpha")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}.png")
    try:
        fig.savefig(tmp)
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        tmp.unlink(missing_ok=True)
    return path
