"""Turn `<backup>/<base>.loss.csv` (batch, loss, avg, rate) into a loss-curve PNG."""

import argparse
import csv
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def plot_loss(csv_path: Path, png_path: Path) -> None:
    """Loss and running average against batch number, learning rate on a second axis."""
    try:
        with open(csv_path, newline="") as f:
            rows = list(csv.DictReader(f))
    except OSError as e:
        sys.exit(f"plot_loss: {csv_path}: {e.strerror or e}")
    if not rows:
        sys.exit(f"plot_loss: {csv_path}: no batches logged")
    batch = [int(r["batch"]) for r in rows]
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    ax.plot(batch, [float(r["loss"]) for r in rows], lw=0.6, alpha=0.5, label="loss")
    ax.plot(batch, [float(r["avg"]) for r in rows], lw=1.6, label="running average")
    ax.set_xlabel("batch")
    ax.set_ylabel("loss (softmax x-ent + sse)/2 per image")
    ax.grid(alpha=0.3)
    rate_ax = ax.twinx()
    rate_ax.plot(batch, [float(r["rate"]) for r in rows], color="grey", lw=1, ls="--", label="learning rate")
    rate_ax.set_ylabel("learning rate")
    lines = ax.get_legend_handles_labels()
    rate_lines = rate_ax.get_legend_handles_labels()
    ax.legend(lines[0] + rate_lines[0], lines[1] + rate_lines[1], loc="upper right")
    ax.set_title(f"dl-server training: {csv_path.name}")
    fig.tight_layout()
    fig.savefig(png_path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("csv", type=Path)
    parser.add_argument("png", type=Path, nargs="?")
    args = parser.parse_args()
    png = args.png or args.csv.with_suffix(".png")
    plot_loss(args.csv, png)
    print(png)


if __name__ == "__main__":
    main()
