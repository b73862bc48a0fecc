"""Plain-text tables of KV reports, as `minillm kv-calc` prints them."""

from __future__ import annotations

from minillm.kvcalc.report import KVReport
from minillm.kvcalc.units import format_bytes_per_value


def format_count(value: float) -> str:
    """Write 70272 as '70,272' and 5887.98976 as '5,887.99'."""
    return f"{value:,.0f}" if float(value).is_integer() else f"{value:,.2f}"


def format_gib(value: float) -> str:
    """Two decimals from 0.01 GiB up, three significant digits below that."""
    return f"{value:.2f}" if value >= 0.01 or value == 0 else f"{value:.3g}"


def _plural(value: float, unit: str) -> str:
    return f"{format_bytes_per_value(value)} {unit}" + ("" if value == 1 else "s")


def _precision_line(report: KVReport) -> str:
    return (f"KV values {_plural(report.kv_bytes, 'byte')}, indexer keys {_plural(report.indexer_bytes, 'byte')}; "
            f"GiB = 2^30 bytes")


def _align(rows: list[list[str]], left_columns: int) -> list[str]:
    """Pad columns to a common width: the first `left_columns` to the left, the rest to the right."""
    widths = [max(len(row[i]) for row in rows if i < len(row)) for i in range(max(map(len, rows)))]
    lines = []
    for row in rows:
        cells = [cell.ljust(widths[i]) if i < left_columns else cell.rjust(widths[i]) for i, cell in enumerate(row)]
        lines.append("  ".join(cells).rstrip())
    return lines


def format_report(report: KVReport) -> str:
    """Render one report: a header, a row per layer type, a total row and the MHA/GQA comparison."""
    lines = [
        f"{report.model} ({report.model_type}): KV cache for {report.context_tokens:,} tokens",
        _precision_line(report),
    ]
    if report.source:
        lines.append(f"source: {report.source}")
    lines.append("")

    rows = [["layer type", "layers", "bytes/token", "bytes", "GiB", "layout"]]
    for usage in report.layer_types:
        rows.append([usage.layer_type, str(usage.layers), format_count(usage.bytes_per_token),
                     format_count(usage.total_bytes), format_gib(usage.total_gib), usage.description])
    rows.append(["total", str(report.layers), format_count(report.bytes_per_token),
                 format_count(report.total_bytes), format_gib(report.total_gib)])
    # The layout column is free text, so it stays unpadded at the end of each line.
    table = _align([row[:5] for row in rows], left_columns=1)
    lines += [line + ("  " + row[5] if len(row) > 5 else "") for line, row in zip(table, rows)]

    baselines = report.baselines
    comparison = [
        ["  MHA, a key and a value per query head", format_count(baselines.mha_bytes_per_token), "bytes/token"],
        [f"  GQA with {baselines.gqa_kv_heads} KV heads", format_count(baselines.gqa_bytes_per_token), "bytes/token"],
    ]
    lines += ["", f"for comparison, the same {report.layers} layers and head sizes caching every token, "
                  f"at {_plural(report.kv_bytes, 'byte')} per value:"]
    lines += _align(comparison, left_columns=1)
    if report.exceeds_max_positions:
        lines.append(f"note: {report.context_tokens:,} tokens is more than the model's "
                     f"max_position_embeddings ({report.max_position_embeddings:,})")
    return "\n".join(lines)


def format_preset_table(reports: dict[str, KVReport]) -> str:
    """Render one summary row per preset; all reports must share the context length and precisions."""
    first = next(iter(reports.values()))
    lines = [f"KV cache for {first.context_tokens:,} tokens per sequence", _precision_line(first), ""]
    rows = [["preset", "model_type", "layers", "bytes/token", "bytes", "GiB"]]
    for name, report in reports.items():
        rows.append([name, report.model_type, str(report.layers), format_count(report.bytes_per_token),
                     format_count(report.total_bytes), format_gib(report.total_gib)])
    return "\n".join(lines + _align(rows, left_columns=2))
