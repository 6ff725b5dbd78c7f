"""Pieces shared by the subcommands: the ``--device`` and ``--precision`` options, list-valued options (integers,
planes), and the terminal progress bars that turn a :data:`~OrthoDiffusionLib.progress.ProgressFn` into tqdm
bars."""
from __future__ import annotations

import argparse
import sys
from typing import Any, Callable, Dict, Optional, Tuple, TypeVar

from ..device import DEVICE_HELP, PRECISIONS
from ..labels import PLANES, planes_in_order
from ..progress import ProgressFn

__all__ = ["add_command", "add_device_argument", "add_precision_argument", "add_json_argument", "int_list",
           "plane_list", "stage_bars", "with_stage_bars", "fraction_bar", "command_line"]

T = TypeVar("T")


def add_command(subparsers: argparse._SubParsersAction, name: str, run: Callable[[argparse.Namespace], int],
                help: str, description: Optional[str] = None, raw: bool = False,
                **options: Any) -> argparse.ArgumentParser:
    """Add the subcommand ``name``, which calls ``run(args)`` (its exit code); ``raw`` keeps the line breaks of
    ``description`` (a module docstring, say) in ``--help``; ``options`` go to ``add_parser`` (e.g. ``epilog``)."""
    p = subparsers.add_parser(name, help=help, description=description,
                              formatter_class=argparse.RawDescriptionHelpFormatter if raw else argparse.HelpFormatter,
                              **options)
    p.set_defaults(func=run)
    return p


def add_device_argument(p: argparse.ArgumentParser, default: str = "auto", what: str = "") -> None:
    """``--device`` (resolved later by :func:`OrthoDiffusionLib.device.resolve_device`)."""
    p.add_argument("--device", default=default, help=f"{DEVICE_HELP}{what} (default {default})")


def add_precision_argument(p: argparse.ArgumentParser, help: str = "fp32 (default) or bf16 autocast") -> None:
    """``--precision fp32|bf16``."""
    p.add_argument("--precision", choices=PRECISIONS, default="fp32", help=help)


def add_json_argument(p: argparse.ArgumentParser) -> None:
    """``--json``: print JSON instead of a Markdown table."""
    p.add_argument("--json", action="store_true", help="print JSON instead of a Markdown table")


def int_list(text: str) -> Tuple[int, ...]:
    """argparse type of a comma-separated list of integers (``64,64,128``)."""
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def plane_list(text: str) -> Tuple[str, ...]:
    """argparse type of a comma-separated list of planes (``sagittal,coronal``), in ``PLANES`` order."""
    chosen = [v.strip() for v in text.split(",") if v.strip()]
    try:
        planes = planes_in_order(chosen)
    except ValueError:
        planes = ()
    if not planes:
        raise argparse.ArgumentTypeError(f"expected comma-separated planes out of {','.join(PLANES)}, got {text!r}")
    return planes


def command_line() -> str:
    """The command as typed (``orthodiffusion ARGS``), recorded in run folders."""
    return "orthodiffusion " + " ".join(sys.argv[1:])


def stage_bars() -> Tuple[ProgressFn, Callable[[], None]]:
    """(progress, close): one tqdm bar per stage on stderr, the previous one closed when a new stage starts."""
    from tqdm import tqdm

    bars: Dict[str, Any] = {}

    def progress(stage: str, fraction: float) -> None:
        bar = bars.get(stage)
        if bar is None:
            for other in bars.values():
                other.close()
            bars.clear()
            bar = bars[stage] = tqdm(total=1000, desc=stage, unit="‰", leave=True)
        bar.update(int(round(fraction * 1000)) - bar.n)

    def close() -> None:
        for bar in bars.values():
            bar.close()

    return progress, close


def with_stage_bars(call: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``call(*args, progress=..., **kwargs)`` with :func:`stage_bars` as the progress, closed afterwards."""
    progress, close = stage_bars()
    try:
        return call(*args, progress=progress, **kwargs)
    finally:
        close()


def fraction_bar(total: int, unit: str, desc: str) -> Tuple[ProgressFn, Callable[[], None]]:
    """(progress, close): one tqdm bar of ``total`` items, moved to ``round(fraction * total)`` at each report."""
    from tqdm import tqdm

    bar = tqdm(total=total, unit=unit, desc=desc)

    def progress(stage: str, fraction: float) -> None:
        bar.update(int(round(fraction * total)) - bar.n)

    return progress, bar.close


def positive_int(text: str) -> int:
    """argparse type: a whole number of at least 1 (refused in one line otherwise)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value
