"""The browser viewer (``orthodiffusion view``): a trame-slicer app over the library's calls.

It opens an exam (:func:`OrthoDiffusionLib.io.load_study` / :meth:`Exam.from_series`), a finished result folder
(:mod:`.results`), or a simulated sample (:func:`OrthoDiffusionLib.simulate.simulate_exam`); "Run" runs the
:class:`OrthoDiffusionLib.inference.predictor.Predictor` in a background worker (progress bar, Cancel), writes the outputs with
``write_outputs`` into a new result folder and shows them: the segmentations over the series in the sagittal, coronal
and axial slice views and as surfaces in 3D (toggle and opacity per structure), the 8 diagnosis labels with
probability bars and uncertainty, and the plane -> label Sankey from :func:`OrthoDiffusionLib.inference.report.sankey_figure`.
Bad input shows the library's one-line error in a banner and the app keeps working.
"""
from __future__ import annotations

import asyncio
import logging
import os
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

from .. import labels as label_tables
from ..errors import InputError, OrthoDiffusionError
from ..atomic import atomic_path
from ..inference.demo import DEFAULT_ABNORMALITY
from ..inference.result_folder import is_result_folder
from ..model.uncertainty import DEFAULT_NOISE_DRAWS, spread_percent
from ..io import PLANES, Exam, load_study
from ..bundle.registry import model_anatomy, orthodiffusion_home
from .background import BackgroundTask, TaskOutcome
from .folders import list_folder
from .results import ResultFolder, open_result_folder
from .scene import VIEW_TAGS, VIEW_TITLES, ExamScene, viewer_layout
from .security import ViewerGuard

log = logging.getLogger(__name__)

LAYOUT_ID = "orthodiffusion"
SIDE_PANEL_WIDTH = 460  # px
SANKEY_HEIGHT = 320  # px


def use_offscreen_rendering() -> None:
    """Without an X display, have VTK render through EGL (Mesa's, on a machine without a GPU) instead of first
    failing to open X. A ``VTK_DEFAULT_OPENGL_WINDOW`` already set is kept."""
    if not os.environ.get("DISPLAY") and not os.environ.get("WAYLAND_DISPLAY"):
        os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")


def new_result_folder(root: Path, stem: str) -> Path:
    """A fresh (not yet existing) folder ``root/<stem>-<date>-<time>[-n]`` for one run's outputs."""
    base = f"{stem or 'exam'}-{time.strftime('%Y%m%d-%H%M%S')}"
    path, n = root / base, 1
    while path.exists():
        n += 1
        path = root / f"{base}-{n}"
    return path


def _hex(color) -> str:
    return "#" + "".join(f"{int(c):02x}" for c in color[:3])


def _percent(p: Optional[float]) -> str:
    return "" if p is None else f"{100.0 * float(p):.0f}%"


def diagnosis_rows(result: ResultFolder) -> List[Dict[str, Any]]:
    """The diagnosis panel's rows (one per label, model order): name, probability in %, ``probability ± uncertainty``
    text (the uncertainty is the std over ``noise_draws``; with a single draw it is left out). The probability shown
    is the calibrated one when the result has it (as in report.html and the CLI table); the uncalibrated model
    output is given beside it."""
    draws = int(result.diagnosis.get("noise_draws") or 0)
    rows = []
    for i, entry in enumerate(result.labels):
        raw = float(entry["probability"])
        cal = entry.get("calibrated_probability")
        p = raw if cal is None else float(cal)
        u = entry.get("uncertainty")
        # with one noise draw there is no spread to report (the uncertainty field is 0 by definition)
        spread = f" ± {spread_percent(float(u), 1)}" if u is not None and draws != 1 else ""
        rows.append({
            "key": str(entry.get("key") or i), "name": str(entry["name"]), "percent": round(100.0 * p, 1),
            "text": _percent(p) + spread,
            "calibrated": f"uncalibrated {_percent(raw)}" if cal is not None else "",
            "color": "red-darken-1" if p >= 0.5 else "blue-grey",
        })
    return rows


def structure_rows(keys: List[str]) -> List[Dict[str, Any]]:
    """The structure panel's rows for the segment IDs present (label-table order, then any unknown key)."""
    table = label_tables.structure_by_key()
    ordered = [s.key for s in label_tables.knee_structures() if s.key in keys] + [k for k in keys if k not in table]
    rows = []
    for key in ordered:
        s = table.get(key)
        rows.append({"key": key, "name": s.name if s else key, "color": _hex(s.color) if s else "#888888",
                     "visible": True, "opacity": 1.0})
    return rows


class ViewerApp:
    """The viewer: trame server, Slicer scene and views, background worker, and the panels' state.

    Args:
        server: a trame server (None = a new one).
        model: model bundle for Run (None = the registry's default model).
        device: "auto", "cpu" or "cuda" for the Predictor.
        out_root: where Run writes its result folders (default ``$ORTHODIFFUSION_HOME/viewer/results``).
        sample_matrix: in-plane matrix of the simulated sample.
        start_folder: where the folder picker starts.
        noise_draws: noise draws per Run (the uncertainty is their standard deviation; 1 = no uncertainty).
        folder_roots: the folders the picker may browse (default: ``start_folder`` or the current folder, and
            ``out_root``); see :class:`~OrthoDiffusionLib.viewer.security.ViewerGuard`, which also holds the
            per-launch access token checked when the app is served.
    """

    def __init__(self, server=None, model: Optional[str] = None, device: str = "auto",
                 out_root: Optional[os.PathLike] = None, sample_matrix: int = 256,
                 start_folder: Optional[os.PathLike] = None, noise_draws: int = DEFAULT_NOISE_DRAWS,
                 folder_roots: Optional[List[os.PathLike]] = None):
        use_offscreen_rendering()
        from trame.app import get_server
        from trame_slicer import module as trame_slicer_module
        from trame_slicer.core import LayoutManager, SlicerApp
        from trame_slicer.rca_view import register_rca_factories

        self.server = get_server(server, client_type="vue3")
        self.server.enable_module(trame_slicer_module)
        self.state, self.ctrl = self.server.state, self.server.controller
        self.model = model
        self.device = device
        self.out_root = Path(out_root) if out_root else orthodiffusion_home() / "viewer" / "results"
        self.guard = ViewerGuard(folder_roots if folder_roots is not None
                                 else [start_folder or os.getcwd(), self.out_root])
        self.sample_matrix = int(sample_matrix)
        self.noise_draws = max(1, int(noise_draws))
        self.exam: Optional[Exam] = None
        self.exam_name = ""
        self.result: Optional[ResultFolder] = None
        self._predictor = None
        self._predictor_key = None
        self._loop: Optional[asyncio.AbstractEventLoop] = None

        self.slicer = SlicerApp()
        register_rca_factories(self.slicer.view_manager, self.server, slice_view_ui_f=self._slice_view_ui,
                               three_d_view_ui_f=self._threed_view_ui)
        self.layout_manager = LayoutManager(self.slicer.scene, self.slicer.view_manager, self.server)
        self.layout_manager.register_layout(LAYOUT_ID, viewer_layout())
        self.layout_manager.set_layout(LAYOUT_ID)
        self.scene = ExamScene(self.slicer)
        self.task = BackgroundTask(self._post, self._on_progress, self._on_done)
        self._after: Dict[str, Callable[[Any], None]] = {}
        self._queue: List[Callable[[], Any]] = []

        self.state.update({
            "trame__title": "OrthoDiffusion viewer", "busy": False, "task_name": "", "progress_stage": "",
            "progress_value": 0, "error_message": "", "info_message": "", "exam_label": "No exam open",
            "exam_choices": [], "result_dir": "", "diagnosis_rows": [], "structures": [], "segmentation_visible": True,
            "has_exam": False, "has_result": False, "warnings": [], "model_label": model or "default model",
            "picker_open": False, "picker_path": str(Path(start_folder or os.getcwd()).resolve()),
            "picker_entries": [], "picker_error": "",
        })
        self._build_ui()

    # ---- threading ----------------------------------------------------------------------------------------------
    def _capture_loop(self) -> None:
        if self._loop is None:
            self._loop = asyncio.get_event_loop()

    def _post(self, fn: Callable, *args) -> None:
        """Run ``fn(*args)`` on the UI thread (inside a state flush)."""
        def call() -> None:
            with self.state:
                fn(*args)

        if self._loop is None:  # no server loop (tests drive the app directly)
            call()
        else:
            self._loop.call_soon_threadsafe(call)

    def _start(self, name: str, work: Callable, after: Callable[[Any], None]) -> bool:
        self._capture_loop()
        if self.task.busy:
            self._error(f"{self.state.task_name} is still running; wait for it or press Cancel")
            return False
        self._after[name] = after
        self.state.update({"busy": True, "task_name": name, "progress_stage": "starting", "progress_value": 0,
                           "error_message": "", "info_message": ""})
        self.task.start(name, work)
        return True

    def _on_progress(self, name: str, stage: str, fraction: float) -> None:
        self.state.progress_stage = stage
        self.state.progress_value = round(100.0 * fraction, 1)

    def _on_done(self, outcome: TaskOutcome) -> None:
        self.state.busy = False
        self.state.progress_value = 100 if outcome.ok else 0
        after = self._after.pop(outcome.name, None)
        if outcome.crash is not None:
            log.error("%s failed", outcome.name, exc_info=outcome.crash)
        if outcome.cancelled or outcome.error:
            self._queue.clear()
            self.state.progress_stage = f"{outcome.name}: {'cancelled' if outcome.cancelled else 'failed'}"
            if outcome.cancelled:
                self.state.info_message = f"{outcome.name} cancelled"
            else:
                self._error(outcome.error)
            return
        self.state.progress_stage = f"{outcome.name}: done"
        if after is not None:
            try:
                after(outcome.value)
            except OrthoDiffusionError as e:  # e.g. a segmentation file the library's reader refuses
                self._error(str(e))
            except Exception as e:  # noqa: BLE001 - showing a result must not take the app down
                log.error("showing the %s outcome failed", outcome.name, exc_info=e)
                self._error(f"{outcome.name}: showing the result failed: {type(e).__name__}: {e}")
        if self._queue:
            self._queue.pop(0)()

    def then(self, action: Callable[[], Any]) -> None:
        """Call ``action`` now, or after the running task if one is running (e.g. open results after the exam)."""
        if self.task.busy:
            self._queue.append(action)
        else:
            action()

    def queue_results(self, folder: os.PathLike, over_open_exam: bool = False) -> None:
        """Open a result folder once the running task (if any) has finished."""
        self.then(lambda: self.open_results(folder, over_open_exam))

    def _error(self, message: str) -> None:
        self.state.error_message = message

    # ---- opening things ----------------------------------------------------------------------------------------
    def open_exam(self, folder: Optional[os.PathLike] = None, *, series: Optional[Dict[str, str]] = None) -> bool:
        """Load an exam in the background: a study folder (auto plane assignment) or given series paths."""
        if folder is None and not series:
            self._error("nothing to open: give a study folder or the series of each plane")
            return False
        name = Path(folder).name if folder is not None else Path(next(iter(series.values()))).parent.name

        def work(progress, cancel):
            anatomy = self._model_anatomy()
            if folder is not None:
                return load_study(folder, progress=progress, anatomy=anatomy)
            progress("reading series", 0.0)
            return Exam.from_series(**series, anatomy=anatomy)

        return self._start("Open exam", work, lambda exam: self._show_exam(exam, name))

    def _model_anatomy(self) -> str:
        """The anatomy of the model Run uses (exams of another anatomy are refused when opened); ``knee`` (every
        shipped model's) when that model cannot be resolved yet -- Run reports that problem itself."""
        if self._predictor is not None and self._predictor_key == (self.model, self.device):
            return self._predictor.anatomy
        try:
            return model_anatomy(self.model)
        except OrthoDiffusionError:
            return "knee"

    def open_sample(self, seed: int = 1) -> bool:
        """Simulate the demo's knee exam (``orthodiffusion demo``'s default abnormality) as NIfTI series under
        ``$ORTHODIFFUSION_HOME/viewer/samples`` and open that folder like any study (so its results can be reopened
        with the series later)."""
        folder = orthodiffusion_home() / "viewer" / "samples" / f"seed-{seed}-matrix-{self.sample_matrix}"
        matrix = self.sample_matrix

        def work(progress, cancel):
            if not all((folder / f"{p}.nii.gz").is_file() for p in PLANES):
                from ..simulate import simulate_exam
                from ..simulate.cohort import write_image

                progress("simulating a knee exam", 0.05)
                exam = simulate_exam(seed, {DEFAULT_ABNORMALITY: True}, matrix=matrix)
                folder.mkdir(parents=True, exist_ok=True)
                for i, s in enumerate(exam.series):
                    progress(f"writing the {s.plane} series", 0.6 + 0.1 * i)
                    with atomic_path(folder / f"{s.plane}.nii.gz", suffix=".nii.gz") as tmp:
                        write_image(s.image, tmp)
            progress("reading the sample", 0.9)
            return load_study(folder)

        return self._start("Simulated sample", work, lambda exam: self._show_exam(exam, f"simulated sample {seed}"))

    def open_results(self, folder: os.PathLike, over_open_exam: bool = False) -> bool:
        """Open a finished result folder (diagnosis + segmentations).

        The series are those ``diagnosis.json`` records (read again from their paths; the open exam is kept when it
        is the same series), or the open exam when ``over_open_exam``. When the recorded series cannot be read, the
        segmentations are shown alone and a notice says why.
        """
        current = self.exam

        def work(progress, cancel):
            progress("reading the result folder", 0.0)
            result = open_result_folder(folder)
            if over_open_exam and current is not None:
                return result, current, ""
            return (result,) + self._exam_of_result(result, current, progress)

        return self._start("Open results", work, lambda value: self._show_result(*value))

    @staticmethod
    def _exam_of_result(result: ResultFolder, current: Optional[Exam], progress) -> tuple:
        """(exam, notice) for a result folder: its recorded series, the open exam if it is those, or (None, why)."""
        sources = result.series_sources()
        if not sources:
            return None, "diagnosis.json records no series paths: showing the segmentations only"
        if current is not None and {p: current.get(p).source for p in current.planes_present()} == sources:
            return current, ""
        progress("reading the exam's series", 0.3)
        try:
            return Exam.from_series(**sources, anatomy=None), ""  # the result exists: no input check
        except InputError as first:
            study = result.study_source()
            if study and Path(study).is_dir():
                try:
                    return load_study(study, anatomy=None), ""
                except InputError:
                    pass
            return None, f"the exam's series cannot be read ({first}): showing the segmentations only"

    def open_path(self, path: str) -> bool:
        """Open what ``path`` holds: a result folder or an exam."""
        path = str(path).strip()
        if not path:
            self._error("type or pick a folder first")
            return False
        if is_result_folder(path):
            return self.open_results(path)
        return self.open_exam(path)

    def _show_exam(self, exam: Exam, name: str) -> None:
        self.scene.clear()
        self.exam, self.exam_name, self.result = exam, name, None
        for plane in exam.planes_present():
            self.scene.show_series(plane, exam.get(plane).image, f"{plane} series")
        self._set_result_state(None)
        self.state.update({"has_exam": True, "exam_label": f"{name}: {', '.join(exam.planes_present())}",
                           "exam_choices": list(exam.choices), "info_message": ""})

    def _show_result(self, result: ResultFolder, exam: Optional[Exam] = None, notice: str = "") -> None:
        """Show a result over ``exam`` (None: without series; the exam that was open is closed)."""
        if exam is not self.exam or exam is None:
            if exam is None:
                self.scene.clear()
                self.exam, self.exam_name = None, ""
                self.state.update({"has_exam": False, "exam_label": f"results {result.path.name} (no series)",
                                   "exam_choices": []})
            else:
                self._show_exam(exam, Path(result.study_source() or result.path).name)
        self.scene.clear_segmentations()
        for plane, path in result.segmentations.items():
            self.scene.show_segmentation(plane, path)
        self.result = result
        self._set_result_state(result)
        self.state.info_message = notice

    def _set_result_state(self, result: Optional[ResultFolder]) -> None:
        if result is None:
            self.state.update({"has_result": False, "result_dir": "", "diagnosis_rows": [], "structures": [],
                               "warnings": []})
            self._sankey.update(_empty_figure())
            return
        self.state.update({
            "has_result": True, "result_dir": str(result.path), "diagnosis_rows": diagnosis_rows(result),
            "structures": structure_rows(self.scene.structures_present()), "warnings": result.warnings,
            "segmentation_visible": True,
        })
        from ..inference.report import sankey_figure

        fig = sankey_figure(result.diagnosis)
        # the panel's card carries the title; the figure fills the card
        fig.update_layout(title=None, margin=dict(l=4, r=4, t=6, b=6), height=SANKEY_HEIGHT, font=dict(size=11),
                          paper_bgcolor="rgba(0,0,0,0)")
        self._sankey.update(fig)

    # ---- running the model ---------------------------------------------------------------------------------------
    def _get_predictor(self):
        from ..inference.predictor import Predictor

        key = (self.model, self.device)
        if self._predictor is None or self._predictor_key != key:
            self._predictor = Predictor(self.model, device=self.device)
            self._predictor_key = key
        return self._predictor

    def run(self) -> bool:
        """Run the model on the open exam in the background and show the result folder it writes."""
        if self.exam is None:
            self._error("open an exam (or the simulated sample) before Run")
            return False
        exam, out = self.exam, new_result_folder(self.out_root, _safe_stem(self.exam_name))

        def work(progress, cancel):
            from ..inference.predictor import predict_and_write

            progress("loading the model", 0.0)
            predict_and_write(self._get_predictor(), exam, out, noise_draws=self.noise_draws, progress=progress,
                              cancel=cancel)
            return open_result_folder(out)

        return self._start("Run", work, lambda result: self._show_result(result, exam))

    def cancel(self) -> None:
        if self.task.cancel():
            self.state.progress_stage = f"{self.task.name}: cancelling"

    # ---- structures ----------------------------------------------------------------------------------------------
    def set_structure_visible(self, key: str, visible: bool) -> None:
        self.scene.set_structure_visible(key, visible)
        self._update_structure_row(key, visible=bool(visible))

    def set_structure_opacity(self, key: str, opacity: float) -> None:
        self.scene.set_structure_opacity(key, float(opacity))
        self._update_structure_row(key, opacity=float(opacity))

    def _update_structure_row(self, key: str, **values) -> None:
        rows = [dict(r, **values) if r["key"] == key else r for r in self.state.structures]
        self.state.structures = rows

    def set_segmentation_visible(self, visible: bool) -> None:
        self.state.segmentation_visible = bool(visible)
        self.scene.set_segmentations_visible(bool(visible))

    # ---- folder picker -------------------------------------------------------------------------------------------
    def _outside_roots(self, path: str) -> str:
        """The picker's message for a folder outside the roots ("" when it is inside)."""
        if self.guard.allows_folder(path):
            return ""
        roots = ", ".join(str(r) for r in self.guard.roots) or "none"
        return (f"{path}: outside the folders this viewer was started with ({roots}); start `orthodiffusion view "
                "FOLDER` to browse another")

    def picker_show(self, path: Optional[str] = None) -> None:
        path = str(Path(path or self.state.picker_path).expanduser())
        refused = self._outside_roots(path)
        if refused:
            self.state.picker_error = refused
            return
        try:
            entries = list_folder(path)
        except InputError as e:
            self.state.picker_error = str(e)
            return
        self.state.update({"picker_path": str(Path(path).resolve()), "picker_entries": entries, "picker_error": "",
                           "picker_open": True})

    def picker_up(self) -> None:
        parent = str(Path(self.state.picker_path).parent)
        if self.guard.allows_folder(parent):  # never above the roots
            self.picker_show(parent)

    def picker_open_current(self) -> None:
        refused = self._outside_roots(str(Path(str(self.state.picker_path)).expanduser()))
        if refused:
            self.state.picker_error = refused
            return
        self.state.picker_open = False
        self.open_path(self.state.picker_path)

    # ---- UI ------------------------------------------------------------------------------------------------------
    def _view_label(self, view_id: str) -> None:
        from trame.widgets import html

        key = next(k for k, tag in VIEW_TAGS.items() if tag == view_id)
        html.Div(VIEW_TITLES[key], id=f"view-{key}", classes="od-view-label",
                 style="position:absolute;top:4px;right:8px;color:#fff;font:600 13px sans-serif;"
                       "text-shadow:0 0 3px #000;pointer-events:none;")

    def _slice_view_ui(self, server, view_id, view) -> None:
        from trame_slicer.app.ui import create_vertical_slice_view_gutter_ui

        create_vertical_slice_view_gutter_ui(server, view_id, view)
        self._view_label(view_id)

    def _threed_view_ui(self, server, view_id, view) -> None:
        from trame_slicer.app.ui import create_vertical_view_gutter_ui

        create_vertical_view_gutter_ui(server, view_id, view)
        self._view_label(view_id)

    def _build_ui(self) -> None:
        from trame.ui.vuetify3 import SinglePageLayout
        from trame.widgets import html
        from trame.widgets import vuetify3 as v3
        from trame_plotly.widgets.plotly import Figure

        ctrl = self.ctrl
        ctrl.on_server_ready.add(lambda **_: self._capture_loop())
        with SinglePageLayout(self.server, full_height=True) as layout:
            self.ui = layout
            layout.title.set_text("OrthoDiffusion")
            layout.icon.hide()
            layout.footer.hide()
            with layout.toolbar as tb:
                tb.density = "compact"
                html.Span("{{ exam_label }}", id="exam-label", classes="text-body-2 ml-4 text-truncate",
                          style="max-width: 30vw")
                v3.VSpacer()
                v3.VBtn("Open folder", id="btn-open", prepend_icon="mdi-folder-open", variant="text",
                        disabled=("busy",), click=self.picker_show)
                v3.VBtn("Simulated sample", id="btn-sample", prepend_icon="mdi-flask-outline", variant="text",
                        disabled=("busy",), click=self.open_sample)
                v3.VBtn("Run", id="btn-run", prepend_icon="mdi-play", color="primary", variant="flat",
                        disabled=("busy || !has_exam",), click=self.run, classes="mx-1")
                v3.VBtn("Cancel", id="btn-cancel", prepend_icon="mdi-stop", variant="text", disabled=("!busy",),
                        click=self.cancel)
                with html.Div(style="width: 240px", classes="mx-3"):
                    v3.VProgressLinear(id="progress", model_value=("progress_value",), height=8, rounded=True,
                                       indeterminate=("busy && progress_value == 0",), color="primary")
                    html.Div("{{ progress_stage }}", id="progress-stage", classes="text-caption text-truncate")
            with layout.content:
                with html.Div(classes="d-flex flex-column", style="height: calc(100vh - 48px)"):
                    with v3.VAlert(v_if="error_message", id="error-banner", type="error", variant="tonal",
                                   closable=True, density="compact", classes="ma-1", style="flex: 0 0 auto",
                                   click_close="error_message = ''"):
                        html.Span("{{ error_message }}", classes="text-body-2")
                    with v3.VAlert(v_if="info_message && !error_message", id="info-banner", type="info",
                                   variant="tonal", closable=True, density="compact", classes="ma-1", style="flex: 0 0 auto",
                                   click_close="info_message = ''"):
                        html.Span("{{ info_message }}", classes="text-body-2")
                    with html.Div(classes="d-flex flex-row flex-grow-1", style="min-height: 0"):
                        with html.Div(id="views", classes="flex-grow-1 d-flex", style="min-width: 0; height: 100%"):
                            self.layout_manager.initialize_layout_grid(layout)
                        self._side_panel(html, v3, Figure)
            self._picker_dialog(html, v3)

    def _side_panel(self, html, v3, Figure) -> None:
        with html.Div(id="side-panel", classes="pa-2", style=f"width: {SIDE_PANEL_WIDTH}px; flex: 0 0 "
                                                             f"{SIDE_PANEL_WIDTH}px; overflow-y: auto; height: 100%;"
                                                             " background: #fafafa"):
            with v3.VCard(id="diagnosis-panel", density="compact", classes="mb-2"):
                v3.VCardTitle("Diagnosis", classes="text-subtitle-1 py-1")
                html.Div("Press Run to compute the 8 labels.", v_if="!has_result",
                         classes="text-caption px-4 pb-2")
                with v3.VCardText(classes="py-1"):
                    with html.Div(v_for="row in diagnosis_rows", key="row.key", classes="diagnosis-row mb-1"):
                        with html.Div(classes="d-flex justify-space-between text-body-2"):
                            html.Span("{{ row.name }}", classes="diagnosis-name")
                            html.Span("{{ row.text }}", classes="diagnosis-probability font-weight-medium")
                        v3.VProgressLinear(model_value=("row.percent",), color=("row.color",), height=7,
                                           rounded=True)
                    with html.Div(v_for="w in warnings", classes="text-caption text-warning"):
                        html.Span("{{ w }}")
            with v3.VCard(id="sankey-panel", density="compact", classes="mb-2"):
                v3.VCardTitle("Plane contributions", classes="text-subtitle-1 py-1")
                with html.Div(style=f"height: {SANKEY_HEIGHT}px", id="sankey"):
                    self._sankey = Figure(display_mode_bar=False, responsive=True,
                                          style=f"height: {SANKEY_HEIGHT}px")
                    self._sankey.update(_empty_figure())
            with v3.VCard(id="structures-panel", density="compact", classes="mb-2"):
                with v3.VCardTitle(classes="text-subtitle-1 py-1 d-flex align-center"):
                    html.Span("Structures")
                    v3.VSpacer()
                    v3.VSwitch(id="seg-toggle", model_value=("segmentation_visible",), density="compact",
                               hide_details=True, color="primary", disabled=("!has_result",),
                               update_modelValue=(self.set_segmentation_visible, "[$event]"))
                with v3.VCardText(classes="py-1"):
                    with html.Div(v_for="s in structures", key="s.key",
                                  classes="structure-row d-flex align-center", style="height: 30px"):
                        v3.VCheckboxBtn(model_value=("s.visible",), density="compact", hide_details=True,
                                        style="flex: 0 0 auto",
                                        update_modelValue=(self.set_structure_visible, "[s.key, $event]"))
                        html.Span(style=("'display:inline-block;width:12px;height:12px;border-radius:2px;"
                                         "margin-right:6px;background:' + s.color",))
                        html.Span("{{ s.name }}", classes="text-body-2", style="flex: 0 0 170px")
                        v3.VSlider(model_value=("s.opacity",), min=0, max=1, step=0.05, density="compact",
                                   hide_details=True, classes="ml-2",
                                   end=(self.set_structure_opacity, "[s.key, $event]"))
            with v3.VCard(density="compact", classes="mb-2"):
                v3.VCardTitle("Exam", classes="text-subtitle-1 py-1")
                with v3.VCardText(classes="py-1 text-caption"):
                    html.Div("Model: {{ model_label }}")
                    html.Div("Results: {{ result_dir }}", v_if="result_dir", id="result-dir")
                    with html.Div(v_for="c in exam_choices"):
                        html.Span("{{ c }}")
                    html.Div("Research use only. Not a medical device; not for diagnosis.",
                             classes="mt-1 font-weight-medium")

    def _picker_dialog(self, html, v3) -> None:
        with v3.VDialog(v_model=("picker_open",), max_width=720):
            with v3.VCard(id="picker"):
                v3.VCardTitle("Open a study folder or a result folder (on the server)")
                with v3.VCardText():
                    with html.Div(classes="d-flex align-center"):
                        v3.VBtn(icon="mdi-arrow-up", variant="text", id="picker-up", click=self.picker_up)
                        v3.VTextField(v_model=("picker_path",), id="picker-path", label="Folder", hide_details=True,
                                      density="compact", keyup_enter=(self.picker_show, "[picker_path]"))
                    html.Div("{{ picker_error }}", v_if="picker_error", classes="text-error text-caption mt-1")
                    with v3.VList(density="compact", style="max-height: 360px; overflow-y: auto"):
                        with v3.VListItem(v_for="e in picker_entries", key="e.path", title=("e.name",),
                                          classes="picker-entry", click=(self.picker_show, "[e.path]")):
                            with v3.Template(v_slot_prepend=True):
                                v3.VIcon(icon=("e.kind == 'result' ? 'mdi-clipboard-pulse-outline' : 'mdi-folder'",))
                with v3.VCardActions():
                    v3.VSpacer()
                    v3.VBtn("Close", id="picker-close", click="picker_open = false")
                    v3.VBtn("Open this folder", id="picker-open", color="primary", variant="flat",
                            click=self.picker_open_current)

    # ---- serving -------------------------------------------------------------------------------------------------
    def start(self, host: str = "127.0.0.1", port: int = 0, on_ready: Optional[Callable[[str], None]] = None) -> None:
        """Serve until interrupted (blocking). ``on_ready(url)`` is called once the port is bound, with the address
        that carries the access token (:class:`~OrthoDiffusionLib.viewer.security.ViewerGuard`)."""
        self.guard.install(self.server, host)
        if on_ready is not None:
            def ready(**_) -> None:
                self.guard.port = self.server.port
                with self.state:  # flush what on_ready changes, so clients that connect later see it in sync
                    on_ready(self.guard.url(self.server.port))

            self.ctrl.on_server_ready.add(ready)
        try:
            self.server.start(host=host, port=port, open_browser=False, show_connection_info=False, timeout=0)
        finally:
            self.task.shutdown()


def _safe_stem(name: str) -> str:
    stem = "".join(c if c.isalnum() or c in "-_." else "-" for c in name).strip("-.")
    return stem[:60] or "exam"


def _empty_figure():
    import plotly.graph_objects as go

    fig = go.Figure()
    fig.update_layout(margin=dict(l=8, r=8, t=8, b=8), height=SANKEY_HEIGHT, paper_bgcolor="rgba(0,0,0,0)",
                      plot_bgcolor="rgba(0,0,0,0)", xaxis=dict(visible=False), yaxis=dict(visible=False),
                      annotations=[dict(text="The Sankey of plane weights appears after Run", showarrow=False,
                                        x=0.5, y=0.5, xref="paper", yref="paper", font=dict(size=13))])
    return fig
