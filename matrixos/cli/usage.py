"""``matrixos usage``: metered use in degrees, as a table, a terminal bar chart and a PNG.

Reads ``system.billing.usage`` (see ``matrixos.metering``) summed by hour, day or job. Run where
the warehouse's catalog is reachable: the command sees every account (as ``accounts`` does).

Example:
    $ matrixos usage --account team-a --by day --png usage.png
"""

from __future__ import annotations

from enum import StrEnum
from typing import TYPE_CHECKING, Annotated

import typer

from matrixos.cli.common import connect, fail
from matrixos.cli.output import OutputFormat, console, emit_table

if TYPE_CHECKING:
    import pyarrow as pa

BAR_WIDTH = 40


class By(StrEnum):
    """How ``matrixos usage`` sums."""

    hour = "hour"
    day = "day"
    job = "job"


def usage(
    ctx: typer.Context,
    account: Annotated[
        str | None, typer.Option("--account", "-a", help="One account (default: all).")
    ] = None,
    by: Annotated[By, typer.Option("--by", help="Sum by hour, day or job.")] = By.day,
    since: Annotated[
        str | None, typer.Option("--since", help="From this time (2026-12-05[T08:00]).")
    ] = None,
    until: Annotated[str | None, typer.Option("--until", help="Before this time.")] = None,
    png: Annotated[
        str | None, typer.Option("--png", help="Also draw the chart into this PNG file.")
    ] = None,
    format: Annotated[OutputFormat, typer.Option("--format", "-f")] = OutputFormat.table,
) -> None:
    """Compute used per account in degrees (1 degree = 312 TFLOPS x 1 hour), with a chart."""
    with connect(ctx) as lh:
        rows = lh.usage(account, by=by.value, since=since, until=until)
    emit_table(rows, format, empty="no usage recorded")
    if format is OutputFormat.table and rows.num_rows:
        labels, totals = chart_data(rows, by.value)
        console().print(bar_chart(labels, totals), markup=False, highlight=False)
    if png is not None:
        labels, totals = chart_data(rows, by.value)
        write_png(png, labels, totals, title=f"degrees by {by.value}")
        console(stderr=True).print(f"chart written to {png}", markup=False, highlight=False)


def chart_data(rows: pa.Table, by: str) -> tuple[list[str], list[float]]:
    """Degrees summed per period (or job) across accounts and resources, in order."""
    key = "job" if by == "job" else "period"
    fmt = "%Y-%m-%d %H:00" if by == "hour" else "%Y-%m-%d"
    totals: dict[str, float] = {}
    for k, d in zip(rows.column(key).to_pylist(), rows.column("degrees").to_pylist(), strict=True):
        label = k if by == "job" else k.strftime(fmt)
        totals[label] = totals.get(label, 0.0) + float(d or 0)
    return list(totals), list(totals.values())


def bar_chart(labels: list[str], values: list[float], width: int = BAR_WIDTH) -> str:
    """A horizontal bar per label, scaled to the largest value (eighth-block resolution).

    Example:
        >>> print(bar_chart(["a", "b"], [2.0, 1.0], width=4))
        a ████ 2
        b ██   1
    """
    top = max(values, default=0.0)
    pad = max((len(s) for s in labels), default=0)
    blocks = " ▏▎▍▌▋▊▉█"
    lines = []
    for label, value in zip(labels, values, strict=True):
        eighths = round(value / top * width * 8) if top > 0 else 0
        bar = "█" * (eighths // 8) + (blocks[eighths % 8] if eighths % 8 else "")
        lines.append(f"{label:<{pad}} {bar:<{width}} {value:.6g}")
    return "\n".join(lines)


def write_png(path: str, labels: list[str], values: list[float], *, title: str) -> None:
    """Draw ``values`` as a bar chart into the PNG file ``path`` (needs matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        fail("--png needs matplotlib", hint="pip install 'matrixos[plot]'")
    fig, ax = plt.subplots(figsize=(max(6.0, 0.5 * len(labels) + 2), 4))
    try:
        ax.bar(range(len(values)), values, color="#3b7dd8")
        ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right", fontsize=8)
        ax.set_ylabel("degrees (312 TFLOPS x 1 h)")
        ax.set_title(title)
        fig.tight_layout()
        fig.savefig(path, format="png", dpi=100)
    except OSError as e:
        fail(f"cannot write {path}: {e.strerror}")
    finally:
        plt.close(fig)
