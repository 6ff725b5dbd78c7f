"""``orthodiffusion view``: the browser viewer (needs the ``viewer`` extra: ``pip install "orthodiffusion[viewer]"``).

    orthodiffusion view [EXAM_DIR | RESULT_DIR | --sagittal P --coronal P --axial P] [--results DIR]
                        [--model BUNDLE] [--device auto|cpu|cuda] [--out DIR] [--noise-draws K] [--demo]
                        [--host 127.0.0.1] [--port 0]

Serves on 127.0.0.1 only unless --host says otherwise (then anyone who can reach that address and has the printed
address sees the exams and can run the model). --port 0 picks a free port; the URL is printed as
``OrthoDiffusion viewer: http://HOST:PORT/?token=SECRET``: the secret is new at each launch and the app is refused
without it; requests whose Host or Origin is not the served address are refused (other web pages, DNS rebinding).
The folder picker browses only the folders named on the command line and the --out folder (the current folder when
nothing is named). With nothing to open, the app starts with a folder picker and a "Simulated sample" button. Run
writes each result into a new folder under --out (default ``$ORTHODIFFUSION_HOME/viewer/results``); reopen it later
with --results or the folder picker.
"""
from __future__ import annotations

import os
import sys

from ..errors import InputError
from ..model.uncertainty import DEFAULT_NOISE_DRAWS
from ..viewer.security import is_loopback
from .common import add_command, add_device_argument

def register(subparsers) -> None:
    """Add ``orthodiffusion view``."""
    p = add_command(subparsers, "view", _view,
                    help="browser viewer: exams, segmentations, diagnosis and Sankey (trame-slicer)",
                    description=__doc__, raw=True)
    p.add_argument("exam", nargs="?", help="study folder (DICOM/NIfTI/NRRD) or a finished result folder")
    for plane in ("sagittal", "coronal", "axial"):
        p.add_argument(f"--{plane}", metavar="PATH", help=f"the {plane} series (file or DICOM folder)")
    p.add_argument("--results", metavar="DIR", help="a finished result folder to show (over the exam, if given)")
    p.add_argument("--model", metavar="BUNDLE", help="model bundle for Run (default: the registry's default model)")
    add_device_argument(p)
    p.add_argument("--out", metavar="DIR", help="where Run writes result folders")
    p.add_argument("--noise-draws", type=int, default=DEFAULT_NOISE_DRAWS, metavar="K",
                   help=f"noise draws per Run; the uncertainty shown is their std (default {DEFAULT_NOISE_DRAWS}; "
                        "1 = none)")
    p.add_argument("--demo", action="store_true", help="open the simulated sample exam at start")
    p.add_argument("--sample-matrix", type=int, default=256, help="in-plane matrix of the simulated sample")
    p.add_argument("--host", default="127.0.0.1", help="address to serve on (default loopback only)")
    p.add_argument("--port", type=int, default=0, help="port (0 = a free one)")


def _view(a) -> int:
    series = {p: getattr(a, p) for p in ("sagittal", "coronal", "axial") if getattr(a, p)}
    if a.exam and series:
        raise InputError("give either a study folder or --sagittal/--coronal/--axial, not both", a.exam)
    if a.demo and (a.exam or series):
        raise InputError("--demo opens the simulated sample; do not give an exam as well", a.exam or "--demo")
    if a.noise_draws < 1:
        raise InputError("--noise-draws must be at least 1", str(a.noise_draws))
    if not 16 <= a.sample_matrix <= 1024:
        raise InputError("--sample-matrix must be 16..1024", str(a.sample_matrix))
    try:
        from ..viewer.app import ViewerApp
    except ImportError as e:
        raise InputError(f"the viewer needs the 'viewer' extra (pip install \"orthodiffusion[viewer]\"): {e}",
                         "orthodiffusion view") from None
    if not is_loopback(a.host):
        print(f"orthodiffusion view: WARNING: serving on {a.host}: anyone who can reach this address can see the "
              "exams and run the model (no login). Use the default 127.0.0.1 unless you mean it.", file=sys.stderr)
    named = [p for p in (a.exam, a.results, *series.values()) if p]
    roots = [*(named or [os.getcwd()]), *([a.out] if a.out else [])]  # what the folder picker may browse
    app = ViewerApp(model=a.model, device=a.device, out_root=a.out, sample_matrix=a.sample_matrix,
                    start_folder=a.exam if a.exam else None, noise_draws=a.noise_draws, folder_roots=roots)
    app.guard.add_root(app.out_root)
    if not a.exam:
        app.state.picker_path = str(app.guard.roots[0])

    def on_ready(url: str) -> None:
        print(f"OrthoDiffusion viewer: {url}", flush=True)
        if a.demo:
            app.open_sample()
        elif series:
            app.open_exam(series=series)
        elif a.exam:
            app.open_path(a.exam)
        elif not a.results:
            app.picker_show()  # nothing to open: start with the folder picker
        if a.results:
            app.queue_results(a.results, over_open_exam=bool(a.exam or series or a.demo))

    sys.argv[1:] = []  # trame parses sys.argv on start; ours are already parsed
    app.start(host=a.host, port=a.port, on_ready=on_ready)
    return 0
