"""The picture of a fit: four panels beside FIT.json (FIT.png).

1. IsoFLOP profiles: loss against N for each compute budget, with the fitted L(N, C/6N) and
   approach 2's bottom of each profile;
2. loss against compute, every run, and the fitted frontier L(N_opt(C), D_opt(C)) drawn on past
   the sweep (where a prediction would be read);
3. loss against D, one colour per size, with the fitted L(N, D);
4. residuals: measured / fitted - 1 against compute.
N counts every parameter unless asked otherwise.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from llmos import plots
from llmos.scaling.laws import Law, isoflop_groups, profile_compute


def plot_fit(runs: list[dict], fit: dict, out: str | Path, counting: str = "total") -> Path:
    """The four panels of the fit with N counted as `counting` says ("total" or
    "nonembedding", when the fit has it)."""
    plt = plots.pyplot()
    block = fit["nonembedding"] if counting == "nonembedding" else fit
    a3 = block["approach3"]
    law = Law.of(a3)
    n = np.array([r["params_nonembed" if counting == "nonembedding" else "params"]
                  for r in runs], dtype=float)
    d = np.array([r["tokens"] for r in runs], dtype=float)
    loss = np.array([r["loss"] for r in runs], dtype=float)
    c = 6 * n * d
    spent = profile_compute(runs)
    n_label = "N (parameters without embeddings)" if counting == "nonembedding" else \
        "N (parameters)"

    fig, ax = plt.subplots(2, 2, figsize=(11, 8.5))
    colours = plt.get_cmap("viridis")

    # 1. IsoFLOP profiles
    groups = [g for g in isoflop_groups(n, d, spent) if len(g) >= 2]
    for i, g in enumerate(groups):
        colour = colours(i / max(1, len(groups) - 1))
        ax[0, 0].scatter(n[g], loss[g], color=colour, label=f"C = {np.mean(spent[g]):.2g}")
        grid = np.geomspace(n[g].min() / 1.5, n[g].max() * 1.5, 60)
        counted = float(np.mean(c[g]))  # the budget as 6ND with N counted as the fit counts it
        ax[0, 0].plot(grid, law.loss(grid, counted / (6 * grid)), color=colour, lw=1)
    for p in block["approach2"].get("profiles", []):
        ax[0, 0].axvline(p["n_opt"], color="grey", lw=0.6, ls=":")
    ax[0, 0].set(xscale="log", xlabel=n_label, ylabel="validation loss (nats/token)",
                 title="IsoFLOP profiles (dotted: approach 2's optima)")
    if groups:
        ax[0, 0].legend(fontsize=8)

    # 2. loss against compute, and the frontier
    ax[0, 1].scatter(c, loss, c=np.log(n), cmap="viridis", s=18)
    cs = np.geomspace(c.min() / 2, c.max() * 30, 80)
    frontier = [law.loss(*law.optimum(x)) for x in cs]
    ax[0, 1].plot(cs, frontier, color="black", lw=1, label="fitted optimum")
    ax[0, 1].axvline(c.max(), color="grey", lw=0.6, ls=":")
    ax[0, 1].set(xscale="log", xlabel="compute C = 6ND (FLOPs)", ylabel="validation loss",
                 title="loss against compute (right of dotted: extrapolated)")
    ax[0, 1].legend(fontsize=8)

    # 3. loss against D, a colour per size (sizes within 2% are one)
    sizes: list[float] = []
    for size in sorted(n):
        if not sizes or size > sizes[-1] * 1.02:
            sizes.append(size)
    for i, size in enumerate(sizes):
        colour = colours(i / max(1, len(sizes) - 1))
        pick = np.abs(n / size - 1) <= 0.02
        ax[1, 0].scatter(d[pick], loss[pick], color=colour, s=18)
        grid = np.geomspace(d.min() / 1.5, d.max() * 1.5, 60)
        ax[1, 0].plot(grid, law.loss(size, grid), color=colour, lw=0.8,
                      label=f"N = {size:,.0f}")
    ax[1, 0].set(xscale="log", xlabel="D (training tokens)", ylabel="validation loss",
                 title="loss against data, per size")
    if len(sizes) <= 10:
        ax[1, 0].legend(fontsize=7)

    # 4. residuals
    residual = loss / law.loss(n, d) - 1
    ax[1, 1].scatter(c, 100 * residual, c=np.log(n), cmap="viridis", s=18)
    ax[1, 1].axhline(0, color="black", lw=0.6)
    ax[1, 1].set(xscale="log", xlabel="compute C = 6ND (FLOPs)",
                 ylabel="measured / fitted - 1 (%)", title="residuals of the fit")
    fig.suptitle(f"L = {law.E:.3f} + {law.A:.4g}/N^{law.alpha:.3f} + {law.B:.4g}/D^{law.beta:.3f}"
                 f"   ({len(runs)} runs)")
    fig.tight_layout()
    return plots.save(fig, out)
