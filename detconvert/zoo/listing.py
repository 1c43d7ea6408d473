"""Human-readable views of the catalogue: the ``zoo list`` table and the ``zoo show`` card."""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, List, Optional

from detconvert.zoo.catalogue import ReportedResult, ZooEntry


def _metric(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.1f}"


def format_table(entries: Iterable[ZooEntry]) -> str:
    """One line per entry: name, type, model id, box/mask/keypoint AP, proposal AR, config."""
    header = ("NAME", "TYPE", "MODEL ID", "BOX AP", "MASK AP", "KP AP", "AR", "CONFIG")
    rows: List[tuple] = [header]
    for entry in entries:
        result = entry.headline or ReportedResult(section="", table="", csv_type="")
        rows.append(
            (
                entry.name,
                entry.type,
                entry.model_id or "-",
                _metric(result.box_ap),
                _metric(result.mask_ap),
                _metric(result.keypoint_ap),
                _metric(result.proposal_ar),
                entry.config or "-",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header) - 1)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)) + "  " + row[-1] for row in rows]
    return "\n".join(line.rstrip() for line in lines)


def describe(entry: ZooEntry, url: str, cached: Path) -> str:
    """A multi-line card for one entry: what it is, where it comes from, what it scored."""
    lines = [f"{entry.name}  ({entry.type})"]

    def add(label: str, value) -> None:
        if value not in (None, "", (), []):
            lines.append(f"  {label:<14}{value}")

    add("model id", entry.model_id)
    add("backbone", entry.backbone)
    add("schedule", entry.lr_schedule)
    add("config", entry.config)
    for other in entry.other_configs:
        add("also config", other)
    add("initialised", f"from ImageNet {entry.imagenet}" if entry.imagenet else None)
    if entry.used_by_configs:
        add("used by", f"{len(entry.used_by_configs)} configs (TRAIN.WEIGHTS), e.g. {entry.used_by_configs[0]}")
    add("url", url)
    add("sha256", entry.sha256 or "unknown (the published <url>.md5sum is checked when available)")
    add("cache", f"{cached} ({'present' if cached.is_file() else 'not downloaded'})")
    for result in entry.results:
        metrics = [
            f"{label} {value:.1f}"
            for label, value in (
                ("box AP", result.box_ap),
                ("mask AP", result.mask_ap),
                ("kp AP", result.keypoint_ap),
                ("proposal AR", result.proposal_ar),
            )
            if value is not None
        ]
        timing = ""
        if result.inference_time_s_per_im is not None:
            timing = f"; inference {result.inference_time_s_per_im:.3f}"
            if result.inference_postprocess_s_per_im is not None:
                timing += f" + {result.inference_postprocess_s_per_im:.3f}"
            timing += " s/im"
        note = f" [{result.note}]" if result.note else ""
        add("reported", f"{', '.join(metrics) or 'no metrics'}{timing}{note}")
    return "\n".join(lines)
