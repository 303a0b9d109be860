"""What ``tunepp compare`` shows while it runs: a bar per training stage, one line per evaluated case.

A comparison trains three models and then runs every method on every test case (the saliency row
does S forward+backward passes per window), so it runs for minutes to hours; without output the
user cannot tell a slow stage from a hung one. TUNE++'s own trainer draws its bars itself.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

#: ``update(done, loss)``: iterations completed so far and the latest training loss.
StepUpdate = Callable[[int, float], None]


@contextmanager
def stage_bar(console: Console, label: str, total: int) -> Iterator[StepUpdate]:
    """A bar ``label [####   ] done/total loss ...`` for one training stage."""
    bar = Progress(TextColumn(f"[bold]{label}"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("loss {task.fields[loss]:.4f}"), TimeElapsedColumn(), TimeRemainingColumn(),
                   console=console)
    with bar:
        task = bar.add_task(label, total=total, loss=float("nan"))
        yield lambda done, loss: bar.update(task, completed=done, loss=loss)


def case_line(console: Console, method: str, index: int, total: int, case: str, row: dict[str, float],
              seconds: float) -> None:
    """``[method] 2/4 phantom_003: Dice 0.912  AUROC 0.871  ECE fg 0.041  (3.2 s)``."""
    console.print(f"[bold]\\[{method}][/] {index}/{total} {case}: Dice {row['dice']:.3f}  AUROC {row['auroc']:.3f}  "
                  f"ECE fg {row['ece_fg']:.3f}  ({seconds:.1f} s)")


__all__ = ["StepUpdate", "case_line", "stage_bar"]
