"""PNG charts of a run (matplotlib, the ``bench`` extra): latency CDFs per target, the
concurrency sweep, memory per stream. Without matplotlib the run still writes its JSON."""

from __future__ import annotations

from pathlib import Path
from typing import Any

DPI = 72
COLORS = {"direct": "#7f7f7f", "forwarder": "#1f77b4", "model-router": "#d62728"}
# Extra --target names take these in order: none is a colour the built-in targets use.
EXTRA_COLORS = ("#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22")


def available() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def palette(results: dict[str, Any]) -> dict[str, str]:
    """One colour per target, the same in every chart of the run: the built-in targets keep
    theirs, extra targets take the next unused colour in the order they appear."""
    names: list[str] = list(results.get("targets", []))
    for r in results.get("benchmarks", {}).values():
        for key in ("levels", "targets"):
            if isinstance(r, dict) and isinstance(r.get(key), dict):
                names += list(r[key])
        for mode in ("nonstream", "stream"):
            if isinstance(r, dict) and isinstance(r.get(mode), dict):
                names += list(r[mode].get("samples_ms", {}))
    colors = dict(COLORS)
    extra = [n for n in dict.fromkeys(names) if n not in colors]
    for i, name in enumerate(extra):
        colors[name] = EXTRA_COLORS[i % len(EXTRA_COLORS)]
    return colors


def write(results: dict[str, Any], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written: list[Path] = []
    b = results["benchmarks"]
    colors = palette(results)

    if "overhead" in b:
        r = b["overhead"]
        fig, axes = plt.subplots(1, 2, figsize=(9, 3.4), dpi=DPI)
        for ax, mode, title in (
            (axes[0], "nonstream", "non-streaming total"),
            (axes[1], "stream", "streaming TTFT"),
        ):
            for name, samples in r[mode]["samples_ms"].items():
                xs = sorted(samples)
                if not xs:
                    continue
                ys = [(i + 1) / len(xs) for i in range(len(xs))]
                ax.plot(xs, ys, label=name, color=colors[name], linewidth=1.4)
            ax.set_xscale("log")
            ax.set_xlabel("ms (log)")
            ax.set_title(f"{title}, one at a time", fontsize=10)
            ax.grid(True, alpha=0.3)
        axes[0].set_ylabel("fraction of requests")
        axes[1].legend(fontsize=8, loc="lower right")
        fig.tight_layout()
        path = out / "latency_cdf.png"
        fig.savefig(path)
        plt.close(fig)
        written.append(path)

    if "concurrency" in b:
        levels = b["concurrency"]["levels"]
        fig, axes = plt.subplots(1, 3, figsize=(11, 3.2), dpi=DPI)
        for name, by in levels.items():
            cs = sorted(by, key=int)
            x = [int(c) for c in cs]
            kw = {"label": name, "color": colors[name], "marker": "o", "markersize": 3}
            axes[0].plot(x, [by[c]["ttft_ms"]["p99"] for c in cs], **kw)
            axes[1].plot(x, [by[c]["streams_per_s"] for c in cs], **kw)
            axes[2].plot(x, [by[c]["stalls"] for c in cs], **kw)
        ticks = sorted({int(c) for by in levels.values() for c in by})
        stall_ms = b["concurrency"]["stall_ms"]
        titles = ("TTFT p99 (ms, log)", "streams per second", f"stalls (gap > {stall_ms:g} ms)")
        for ax, title in zip(axes, titles, strict=True):
            ax.set_xscale("log", base=2)
            ax.set_xticks(ticks, [str(t) for t in ticks])
            ax.set_xlabel("concurrent paced streams")
            ax.set_title(title, fontsize=10)
            ax.grid(True, alpha=0.3)
        axes[0].set_yscale("log")
        axes[0].legend(fontsize=8)
        fig.tight_layout()
        path = out / "concurrency.png"
        fig.savefig(path)
        plt.close(fig)
        written.append(path)

    if "memory" in b:
        targets = b["memory"]["targets"]
        names = list(targets)
        fig, axes = plt.subplots(1, 2, figsize=(8, 3), dpi=DPI)
        bars = [colors[n] for n in names]
        axes[0].bar(names, [targets[n]["idle_rss_kib"] / 1024 for n in names], color=bars)
        axes[0].axhline(60, color="black", linestyle="--", linewidth=0.8, label="target 60 MiB")
        axes[0].set_title("idle RSS (MiB)", fontsize=10)
        axes[0].legend(fontsize=8)
        axes[1].bar(names, [targets[n]["per_stream_kib"] for n in names], color=bars)
        axes[1].axhline(25, color="black", linestyle="--", linewidth=0.8, label="target 25 KiB")
        held = max(t["held_streams"] for t in targets.values())
        axes[1].set_title(f"RSS per open stream, {held} held (KiB)", fontsize=10)
        axes[1].legend(fontsize=8)
        fig.tight_layout()
        path = out / "memory.png"
        fig.savefig(path)
        plt.close(fig)
        written.append(path)
    return written


if __name__ == "__main__":
    # python -m benchmarks.charts OUT_DIR: redraw a finished run's charts from its results.json.
    import sys

    import orjson

    folder = Path(sys.argv[1])
    for written in write(orjson.loads((folder / "results.json").read_bytes()), folder):
        print(written)
