"""The overload benchmark's report: its table (markdown) and its figure (goodput and p99 against
the offered load, and the degradation level over each run), from :func:`benchmarks.overload.
run_overload`'s result."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def _nan(v: float | None) -> float:
    return float("nan") if v is None else v


def ms_cell(v: float | None, digits: int = 1) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def _pct_cell(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f}%"


def stops_cell(stops: dict[str, int]) -> str:
    return " / ".join(str(stops.get(k, 0)) for k in ("confident", "cap", "deadline", "overload"))


def _refused_cell(total: int, by: dict[str, int]) -> str:
    """The 503s, and why the server refused them where it said (exitwise_refused_total)."""
    if not total or not by:
        return str(total)
    return f"{total} ({', '.join(f'{reason} {n}' for reason, n in sorted(by.items()))})"


def _cores_cell(server: float | None, engine: float | None) -> str:
    """Cores' worth of CPU over a run: the server's, and its engine worker's part."""
    return f"{ms_cell(server, 2)} / {ms_cell(engine, 2)}"


def _over_cell(*counts: int | None) -> str:
    """Requests slower than 250 ms: answered and refused as the client saw them, all as the
    server did."""
    return " / ".join("-" if n is None else str(n) for n in counts)


def markdown(result: dict[str, Any]) -> str:
    from .tables import markdown_table

    d = result["deadline_ms"]
    header = [
        "offered (asked / sent per s)", "degrade", "policy", "answered/s", "goodput/s",
        "x cheapest", "p50 ms", "p99 ms", "p99.9 ms", f"in time (<= {d:g} ms)",
        f"answered <= {d + 5:g} ms", "503s", "stopped: confident / cap / deadline / overload",
        "mean MFLOPs", "accuracy (est.)", "cores: server / engine", "listen drops",
        "over 250 ms: answered / refused / server",
    ]  # fmt: skip
    cells = [
        [
            f"{r['multiple']:g}x ({r['offered_per_s']:.0f} / {r['sent_per_s']:.0f})",
            "on" if r["degrade"] else "off",
            r["policy"],
            f"{r['answered_per_s']:.0f}",
            f"{r['goodput_per_s']:.0f}",
            "-" if r["goodput_vs_cheapest"] is None else f"{r['goodput_vs_cheapest']:.2f}",
            ms_cell(r["answered_p50_ms"]),
            ms_cell(r["answered_p99_ms"]),
            ms_cell(r["answered_p999_ms"]),
            _pct_cell(r["in_time_pct"]),
            _pct_cell(r["within_5ms_pct"]),
            _refused_cell(r["status_503"], r.get("refused_by") or {}),
            stops_cell(r["stops"]),
            ms_cell(r["mean_mflops"], 2),
            ms_cell(r["accuracy_estimate"]),
            _cores_cell(r.get("process_cores"), r.get("engine_cores")),
            "-" if r.get("listen_drops") is None else str(r["listen_drops"]),
            _over_cell(
                r.get("answered_over_250ms"),
                r.get("refused_over_250ms"),
                r.get("server_over_250ms"),
            ),
        ]
        for r in result["rows"]
    ]
    cheap = result.get("cheapest_capacity_per_s")
    note = (
        f"Closed loop ({result['closed_connections']} connections): last exit "
        f"{result['capacity_per_s']:.0f} requests/s"
        + ("" if cheap is None else f", {result['cheapest_point']} {cheap:.0f} requests/s")
        + ". Latencies are the client's, of the answered requests (503s left out)."
    )
    table = markdown_table(header, cells, "lllrrrrrrrrrlrrrrr")
    if result.get("stopped"):
        table += f"\n\nStopped: the server did not settle {result['stopped']}."
    return note + "\n\n" + table


def plot(result: dict[str, Any], path: Path) -> None:
    """Goodput and p99 against the offered load, degradation off and on; and the degradation
    level over each run with degradation on."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from exitwise.fileio import atomic_write_bytes

    fig, (left, mid, right) = plt.subplots(1, 3, figsize=(13.5, 3.6))
    late = [r for r in result["rows"] if r["policy"] == "late"]
    for degrade, colour in ((False, "tab:red"), (True, "tab:green")):
        rows = [r for r in late if r["degrade"] is degrade]
        xs = [r["multiple"] for r in rows]
        label = "degrade on" if degrade else "degrade off"
        left.plot(xs, [_nan(r["goodput_per_s"]) for r in rows], "o-", color=colour, label=label)
        mid.plot(xs, [_nan(r["answered_p99_ms"]) for r in rows], "o-", color=colour, label=label)
    for r in result["rows"]:
        if r["policy"] == "strict":
            left.plot([r["multiple"]], [_nan(r["goodput_per_s"])], "s", color="tab:blue",
                      label="strict")  # fmt: skip
            mid.plot([r["multiple"]], [_nan(r["answered_p99_ms"])], "s", color="tab:blue",
                     label="strict")  # fmt: skip
    xs = sorted({r["multiple"] for r in late})
    offered = {r["multiple"]: r["offered_per_s"] for r in late}
    left.plot(xs, [offered[x] for x in xs], ":", color="grey", label="offered")
    cheap = result.get("cheapest_capacity_per_s")
    if cheap:
        left.axhline(cheap, color="grey", ls="--", lw=0.8, label="cheapest point, closed loop")
    mid.axhline(result["deadline_ms"], color="black", ls="--", lw=0.8, label="deadline_ms")
    left.set(xlabel="offered load (x last-exit capacity)", ylabel="answers within D per s")
    mid.set(xlabel="offered load (x last-exit capacity)", ylabel="p99 of answered (ms)")
    mid.set_yscale("log")
    on = [r for r in result["rows"] if r["degrade"] and r.get("timeline")]
    palette = ["tab:blue", "tab:orange", "tab:purple", "tab:brown", "tab:olive", "tab:cyan"]
    loads = sorted({r["multiple"] for r in on})
    shade = {m: palette[i % len(palette)] for i, m in enumerate(loads)}
    for r in on:
        series = r["timeline"]
        strict = r["policy"] == "strict"
        right.step(
            series["t"], series["level"], where="post", color=shade[r["multiple"]],
            ls="--" if strict else "-", label=f"{r['multiple']:g}x" + (" strict" if strict else ""),
        )  # fmt: skip
    right.set(xlabel="seconds into the run", ylabel="degradation level (points down)")
    right.yaxis.get_major_locator().set_params(integer=True)
    for ax in (left, mid, right):
        handles, labels = ax.get_legend_handles_labels()
        unique = dict(zip(labels, handles, strict=True))
        if unique:
            ax.legend(unique.values(), unique.keys(), fontsize=7)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
