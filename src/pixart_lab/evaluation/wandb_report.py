"""The comparison as a W&B Report (wandb-workspaces): the same curves, drawn from the logged runs.

Built offline as an object (and checked by the tests); saved to W&B only when the user is logged in.
Every training run logs ``eval/*`` beside ``cost/curriculum_*`` at each periodic evaluation, so the
report's line plots put quality against the curriculum's compute, runs grouped by their W&B group.
"""

from __future__ import annotations

from collections.abc import Sequence

import wandb_workspaces.reports.v2 as wr

from pixart_lab.evaluation.report import COMPUTE_AXES, METRICS


def build_wandb_report(project: str, entity: str, group: str, runs: Sequence[str], summary_markdown: str) -> wr.Report:
    """A report of quality vs training compute for the ``runs`` of W&B group ``group``."""
    names = ", ".join(f"'{r}'" for r in runs)
    runset = wr.Runset(entity=entity, project=project, name=f"{group}: PixArt curriculum and SD-class baseline",
                       filters=f"Group = '{group}' and Name in [{names}]")  # fmt: skip
    panels = [
        wr.LinePlot(title=f"{label} vs {axis}", x=f"eval/{x}", y=[f"eval/{metric}"], log_y=metric == "fid")
        for metric, (label, _) in METRICS.items()
        for x, axis in COMPUTE_AXES.items()
    ]
    return wr.Report(
        project=project,
        entity=entity,
        title="PixArt vs SD-class baseline: quality against training compute",
        description="Periodic FID, CLIP score and compositional accuracy against training FLOPs, $ and CO2.",
        blocks=[
            wr.H1("PixArt vs SD-class baseline"),
            wr.MarkdownBlock(summary_markdown),
            wr.PanelGrid(runsets=[runset], panels=panels),
        ],
    )


def publish(report: wr.Report, online: bool) -> str:
    """Save the report to W&B when ``online``; otherwise say why not. Returns a one-line message."""
    if not online:
        return "W&B Report not published: no W&B credentials (offline mode); the local HTML report has the same figures"
    report.save()
    return f"W&B Report: {report.url}"
