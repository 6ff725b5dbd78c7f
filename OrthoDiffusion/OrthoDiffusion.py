"""OrthoDiffusion: 3D Slicer module for multi-plane knee MRI (segmentation of 11 structures, 8 abnormality
probabilities, contribution of each imaging plane).

A thin shell over the ``OrthoDiffusionLib`` library: the MRML conversions are ``OrthoDiffusionLib.slicer.mrml``, the work
runs in a separate process (``python -m OrthoDiffusionLib predict ... --progress json`` through Slicer's Python
launcher, ``OrthoDiffusionLib.slicer.child_process``), the Sankey diagram is ``OrthoDiffusionLib.inference.report.sankey_figure``.
Nothing heavy is imported when the module loads; missing packages are installed on the first Apply after the user
confirms.

Console use::

    logic = slicer.util.getModuleLogic("OrthoDiffusion")
    result = logic.run(sagittalNode, coronalNode, axialNode, device="cpu")
    result.segmentations["sagittal"], result.diagnosis_table, result.measures_table, result.report
"""
from __future__ import annotations

import html
import importlib
import importlib.util
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import qt
import slicer
import vtk
from slicer.ScriptedLoadableModule import (ScriptedLoadableModule, ScriptedLoadableModuleLogic,
                                           ScriptedLoadableModuleTest, ScriptedLoadableModuleWidget)
from slicer.util import VTKObservationMixin

MODULE_DIR = Path(__file__).resolve().parent
PLANES = ("sagittal", "coronal", "axial")
DEVICES = {"Auto": "auto", "CPU": "cpu", "GPU": "cuda"}
PRECISIONS = {"Full (fp32)": "fp32", "Fast (bf16)": "bf16"}
#: The parameter node's references to the input volumes, per plane.
VOLUME_REFERENCES = {"sagittal": "SagittalVolume", "coronal": "CoronalVolume", "axial": "AxialVolume"}
#: The parameter node's per-plane segmentation choice ("true": segment that plane).
SEGMENT_PARAMETERS = {"sagittal": "SegmentSagittal", "coronal": "SegmentCoronal", "axial": "SegmentAxial"}
#: The panel's choices in the parameter node (besides the volumes), with their defaults ("Model" empty: the
#: registry's default model).
DEFAULT_PARAMETERS = {"Model": "", "Device": "auto", "Precision": "fp32", "SegmentSagittal": "true",
                      "SegmentCoronal": "true", "SegmentAxial": "true", "FuseSegmentations": "false",
                      "Diagnosis": "true", "NoiseDraws": "4"}
SAMPLE_ABNORMALITY = "joint_effusion"
TORCH_REQUIREMENT = "torch>=2.2"
# Progress stages of `orthodiffusion predict` (and the module's own) as shown in the progress bar. The predictor's
# own stages name the plane and the step ("coronal: backbone t=50", "sagittal: segmentation") and are shown as they are.
STAGE_LABELS = {"loading": "loading exam and model", "fusion": "diagnosis (fusing the planes)",
                "writing outputs": "writing results", "done": "results written"}


#
# OrthoDiffusion
#
class OrthoDiffusion(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "OrthoDiffusion"
        self.parent.categories = ["Segmentation"]
        self.parent.dependencies = []
        self.parent.contributors = ["OrthoDiffusion contributors"]
        self.parent.helpText = """
Segments 11 knee structures (femur, tibia, patella, femoral/tibial/patellar cartilage, menisci, ACL, PCL) on the
sagittal, coronal and axial MRI series of a knee exam and predicts 8 knee abnormalities (ACL, PCL, MCL, LCL injury,
medial/lateral meniscus tear, patellar dislocation, joint effusion) with a diffusion-pretrained foundation model,
showing how much each imaging plane contributed to each prediction (Sankey diagram).
Pick the three series (filled in automatically from the loaded volumes), choose a model and press Apply. The
processing runs in a separate process; Cancel stops it. <b>Research use only, not for diagnosis.</b>
<br><br>Method: OrthoDiffusion, a generalizable multi-task diffusion foundation model for musculoskeletal MRI
interpretation (Tian et al., arXiv:2409.09176). Please cite it when you use this extension.
"""
        self.parent.acknowledgementText = """
Re-implementation of the OrthoDiffusion method (Tian et al., "OrthoDiffusion: A Generalizable Multi-Task Diffusion
Foundation Model for Musculoskeletal MRI Interpretation", arXiv:2409.09176). Simulated sample anatomy uses the SPL
Knee Atlas (Surgical Planning Laboratory, Brigham and Women's Hospital). Built on 3D Slicer, PyTorch, SimpleITK and
plotly.
"""


#
# Where the library comes from
#
def bundledLibraryDir() -> Optional[Path]:
    """The folder holding a copy of OrthoDiffusionLib installed with the extension (next to this file), if any."""
    return MODULE_DIR if (MODULE_DIR / "OrthoDiffusionLib" / "__init__.py").is_file() else None


def sourceCheckout() -> Optional[Path]:
    """The repository root when the module runs from a source checkout (additional module path)."""
    root = MODULE_DIR.parent
    return root if (root / "pyproject.toml").is_file() and (root / "OrthoDiffusionLib").is_dir() else None


def libraryImportable() -> bool:
    importlib.invalidate_caches()
    try:
        return (importlib.util.find_spec("OrthoDiffusionLib") is not None
                and importlib.util.find_spec("OrthoDiffusionLib.resources") is not None)
    except ModuleNotFoundError:
        return False


def pythonLauncher() -> str:
    """Slicer's Python launcher (``PythonSlicer``) for child processes; this interpreter outside Slicer."""
    return shutil.which("PythonSlicer") or sys.executable


#
# OrthoDiffusionWidget
#
class OrthoDiffusionWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """The panel. Every choice on it (input volumes, model, device, precision, planes to segment, diagnosis, fusion,
    noise draws) lives in the module's parameter node (saved with the scene): :meth:`updateParameterNodeFromGUI`
    writes a change of the GUI into the node, :meth:`updateGUIFromParameterNode` shows the node's values, and Apply
    runs :meth:`OrthoDiffusionLogic.runOptions` of the node."""

    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self.webWidget = None
        self._parameterNode = None
        self._updatingGUIFromParameterNode = False
        self._models = {}
        self._startTime = None
        self._elapsedTimer = qt.QTimer()
        self._elapsedTimer.setInterval(1000)
        self._elapsedTimer.timeout.connect(self.updateElapsed)
        self._autoAssignTimer = qt.QTimer()
        self._autoAssignTimer.setSingleShot(True)
        self._autoAssignTimer.setInterval(500)
        self._autoAssignTimer.timeout.connect(lambda: self.onAutoAssign(onlyEmpty=True))

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/OrthoDiffusion.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = OrthoDiffusionLogic()

        self.selectors = {"sagittal": self.ui.sagittalSelector, "coronal": self.ui.coronalSelector,
                          "axial": self.ui.axialSelector}
        self.segmentationCheckBoxes = {"sagittal": self.ui.segmentSagittalCheckBox,
                                       "coronal": self.ui.segmentCoronalCheckBox,
                                       "axial": self.ui.segmentAxialCheckBox}
        self.connectGUI()

        self.webWidget = slicer.qSlicerWebWidget()
        self.ui.sankeyFrame.layout().addWidget(self.webWidget)
        self.ui.sankeyLabel.visible = False
        self.ui.sankeyFrame.visible = False

        self.addObserver(slicer.mrmlScene, slicer.vtkMRMLScene.NodeAddedEvent, self.onNodeAdded)
        self.addObserver(slicer.mrmlScene, slicer.vtkMRMLScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.vtkMRMLScene.EndCloseEvent, self.onSceneEndClose)
        self.refreshModels()
        self.initializeParameterNode()
        self.onAutoAssign(onlyEmpty=True)
        self.updateButtons()

    def connectGUI(self):
        """Every choice writes the parameter node; the buttons run their actions."""
        for selector in self.selectors.values():
            selector.connect("currentNodeChanged(vtkMRMLNode*)", self.updateParameterNodeFromGUI)
            selector.connect("currentNodeChanged(vtkMRMLNode*)", self.updateButtons)
        for checkBox in (*self.segmentationCheckBoxes.values(), self.ui.fuseSegmentationsCheckBox,
                         self.ui.diagnosisCheckBox):
            checkBox.connect("toggled(bool)", self.updateParameterNodeFromGUI)
        for comboBox in (self.ui.modelComboBox, self.ui.deviceComboBox, self.ui.precisionComboBox):
            comboBox.connect("currentIndexChanged(int)", self.updateParameterNodeFromGUI)
        self.ui.modelComboBox.connect("currentIndexChanged(int)", self.updateModelInfo)
        self.ui.noiseDrawsSpinBox.connect("valueChanged(int)", self.updateParameterNodeFromGUI)
        self.ui.autoAssignButton.connect("clicked(bool)", lambda: self.onAutoAssign(onlyEmpty=False))
        self.ui.loadSampleButton.connect("clicked(bool)", self.onLoadSample)
        self.ui.importModelButton.connect("clicked(bool)", self.onImportModel)
        self.ui.applyButton.connect("clicked(bool)", self.onApply)
        self.ui.cancelButton.connect("clicked(bool)", self.onCancel)
        self.ui.openReportButton.connect("clicked(bool)", self.onOpenReport)

    def cleanup(self):
        self.removeObservers()
        if self.logic is not None:
            self.logic.cancel()

    def enter(self):
        self.initializeParameterNode()

    def exit(self):
        if self._parameterNode is not None:
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGUIFromParameterNode)

    # ----------------------------------------------------------------------------------------- parameter node
    def initializeParameterNode(self):
        """Use (and observe) the scene's parameter node of the module, with defaults for missing values."""
        self.setParameterNode(self.logic.getParameterNode())

    def setParameterNode(self, parameterNode):
        if parameterNode is not None:
            self.logic.setDefaultParameters(parameterNode)
        if self._parameterNode is not None:
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGUIFromParameterNode)
        self._parameterNode = parameterNode
        if parameterNode is not None:
            self.addObserver(parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGUIFromParameterNode)
        self.updateGUIFromParameterNode()

    def updateGUIFromParameterNode(self, caller=None, event=None):
        """Show the parameter node's choices (without writing them back)."""
        node = self._parameterNode
        if node is None or self._updatingGUIFromParameterNode:
            return
        self._updatingGUIFromParameterNode = True
        try:
            for plane, selector in self.selectors.items():
                selector.setCurrentNode(node.GetNodeReference(VOLUME_REFERENCES[plane]))
            for plane, checkBox in self.segmentationCheckBoxes.items():
                checkBox.checked = node.GetParameter(SEGMENT_PARAMETERS[plane]) == "true"
            self.ui.fuseSegmentationsCheckBox.checked = node.GetParameter("FuseSegmentations") == "true"
            self.ui.diagnosisCheckBox.checked = node.GetParameter("Diagnosis") == "true"
            self.ui.noiseDrawsSpinBox.value = int(node.GetParameter("NoiseDraws") or 4)
            _selectValue(self.ui.deviceComboBox, DEVICES, node.GetParameter("Device"))
            _selectValue(self.ui.precisionComboBox, PRECISIONS, node.GetParameter("Precision"))
            model = self.ui.modelComboBox.findData(node.GetParameter("Model"))
            if node.GetParameter("Model") and model >= 0:
                self.ui.modelComboBox.setCurrentIndex(model)
        finally:
            self._updatingGUIFromParameterNode = False
        self.updateModelInfo()
        self.updateButtons()

    def updateParameterNodeFromGUI(self, *args):
        """Write the GUI's choices into the parameter node (one Modified event)."""
        node = self._parameterNode
        if node is None or self._updatingGUIFromParameterNode:
            return
        wasModified = node.StartModify()
        for plane, selector in self.selectors.items():
            node.SetNodeReferenceID(VOLUME_REFERENCES[plane], selector.currentNodeID)
        for plane, checkBox in self.segmentationCheckBoxes.items():
            node.SetParameter(SEGMENT_PARAMETERS[plane], _flag(checkBox.checked))
        node.SetParameter("FuseSegmentations", _flag(self.ui.fuseSegmentationsCheckBox.checked))
        node.SetParameter("Diagnosis", _flag(self.ui.diagnosisCheckBox.checked))
        node.SetParameter("NoiseDraws", str(self.ui.noiseDrawsSpinBox.value))
        node.SetParameter("Device", DEVICES[self.ui.deviceComboBox.currentText])
        node.SetParameter("Precision", PRECISIONS[self.ui.precisionComboBox.currentText])
        node.SetParameter("Model", self.ui.modelComboBox.currentData or "")
        node.EndModify(wasModified)

    # ----------------------------------------------------------------------------------------- inputs
    @vtk.calldata_type(vtk.VTK_OBJECT)
    def onNodeAdded(self, caller, event, node):
        if node.IsA("vtkMRMLScalarVolumeNode") and not node.IsA("vtkMRMLLabelMapVolumeNode"):
            self._autoAssignTimer.start()      # image data arrives after the node: assign a moment later

    def onSceneStartClose(self, caller, event):
        self.setParameterNode(None)            # the scene's parameter node goes with it

    def onSceneEndClose(self, caller, event):
        self.ui.diagnosisTableView.setMRMLTableNode(None)
        self.ui.reportPathLineEdit.text = ""
        self.ui.openReportButton.enabled = False
        self.ui.sankeyLabel.visible = False
        self.ui.sankeyFrame.visible = False
        if self.parent.isEntered:
            self.initializeParameterNode()

    def onAutoAssign(self, onlyEmpty: bool = True):
        with slicer.util.tryWithErrorDisplay("The planes could not be assigned.", show=not onlyEmpty):
            assigned = self.logic.assignPlanes()
            for plane, selector in self.selectors.items():
                if plane in assigned and (not onlyEmpty or selector.currentNode() is None):
                    selector.setCurrentNode(assigned[plane])
            self.updateButtons()

    def onLoadSample(self):
        with slicer.util.tryWithErrorDisplay("The sample could not be made.", waitCursor=True):
            if not self.ensureDependencies():
                return
            self.setBusy(True, "Simulating a sample knee exam...")
            try:
                self.logic.loadSample(onLine=self.appendLog, onFinished=self._sampleLoaded)
            except Exception:
                self.setBusy(False)
                raise

    def _sampleLoaded(self, volumes, error):
        self.setBusy(False)
        if error:
            self.showFailure(f"Sample could not be made: {error}")
            return
        for plane, node in volumes.items():
            self.selectors[plane].setCurrentNode(node)
        slicer.util.setSliceViewerLayers(background=volumes.get("sagittal"), fit=True)
        self.ui.statusLabel.text = "Sample (simulated) knee loaded. Press Apply."

    # ----------------------------------------------------------------------------------------- models
    def refreshModels(self, select: Optional[str] = None):
        combo = self.ui.modelComboBox
        combo.blockSignals(True)
        combo.clear()
        models = self.logic.listModels()
        if not models:
            combo.addItem("Default model of the registry", "")
        for m in models:
            label = f"{m['name']} (default)" if m.get("default") else m["name"]
            combo.addItem(label, m["name"])
        names = [combo.itemData(i) for i in range(combo.count)]
        defaults = [m["name"] for m in models if m.get("default")]
        chosen = self._parameterNode.GetParameter("Model") if self._parameterNode is not None else ""
        want = select or (chosen if chosen in names else None) or (defaults[0] if defaults else None)
        if want in names:
            combo.setCurrentIndex(names.index(want))
        combo.blockSignals(False)
        self._models = {m["name"]: m for m in models}
        self.updateModelInfo()
        self.updateParameterNodeFromGUI()

    def updateModelInfo(self, *args):
        m = self._models.get(self.ui.modelComboBox.currentData)
        if not m:
            self.ui.modelInfoLabel.text = ("Model list appears once the OrthoDiffusion packages are installed "
                                           "(first Apply)." if not self._models else "")
            return
        parts = [m.get("description") or ""]
        if m.get("cpu_seconds"):
            parts.append(f"about {m['cpu_seconds']:.0f} s on CPU")
        if m.get("gpu_seconds"):
            parts.append(f"{m['gpu_seconds']:.0f} s on GPU")
        if not m.get("present", True):
            parts.append("file missing: " + str(m.get("file")))
        self.ui.modelInfoLabel.text = "; ".join(p for p in parts if p)

    def onImportModel(self):
        path = qt.QFileDialog.getOpenFileName(slicer.util.mainWindow(), "Import OrthoDiffusion model", "",
                                              "OrthoDiffusion model (*.odbundle);;All files (*)")
        if not path:
            return
        with slicer.util.tryWithErrorDisplay("The model could not be imported.", waitCursor=True):
            if not self.ensureDependencies():
                return
            self.setBusy(True, f"Verifying {Path(path).name} ...")
            before = {(m["name"], m.get("sha256")) for m in self.logic.listModels()}

            def finished(ok, error):
                self.setBusy(False)
                if not ok:
                    self.showFailure(f"Model not imported: {error}")
                    return
                new = [m["name"] for m in self.logic.listModels() if (m["name"], m.get("sha256")) not in before]
                self.refreshModels(select=new[0] if new else None)
                self.ui.statusLabel.text = f"Model {Path(path).name} verified and imported."

            try:
                self.logic.importModel(path, onLine=self.appendLog, onFinished=finished)
            except Exception:
                self.setBusy(False)
                raise

    # ----------------------------------------------------------------------------------------- run
    def updateButtons(self, *args):
        busy = self.logic is not None and self.logic.busy
        anyInput = any(s.currentNode() is not None for s in self.selectors.values())
        self.ui.applyButton.enabled = anyInput and not busy
        self.ui.cancelButton.enabled = busy
        self.ui.loadSampleButton.enabled = not busy
        self.ui.importModelButton.enabled = not busy
        if not anyInput and not busy:
            self.ui.applyButton.toolTip = "Select at least one volume (or load the sample)."
        else:
            self.ui.applyButton.toolTip = "Run segmentation and diagnosis in a separate process."

    def setBusy(self, busy: bool, message: str = ""):
        if busy:
            self._startTime = time.monotonic()
            self._elapsedTimer.start()
            self.ui.progressBar.visible = True
            self.ui.progressBar.value = 0
            self.ui.progressBar.format = "%p%"
        else:
            self._elapsedTimer.stop()
            self.updateElapsed()
            self.ui.progressBar.visible = False
        if message:
            self.ui.statusLabel.text = message
        self.updateButtons()

    def updateElapsed(self):
        if self._startTime is not None:
            self.ui.elapsedLabel.text = f"{time.monotonic() - self._startTime:.0f} s"

    def onProgress(self, stage: str, fraction: float):
        label = STAGE_LABELS.get(stage, stage)
        self.ui.progressBar.value = int(round(100 * fraction))
        self.ui.progressBar.format = f"{label}: %p%"
        self.ui.statusLabel.text = f"Running: {label}"

    def appendLog(self, text: str):
        self.ui.logTextEdit.appendPlainText(text)

    def showFailure(self, reason: str):
        self.ui.statusLabel.text = f"<span style='color:#c0392b'>{html.escape(reason)}</span>"
        self.ui.logCollapsibleButton.collapsed = False

    def ensureDependencies(self) -> bool:
        """Install what is missing after the user confirms; True when everything is present. Raises when the
        installation fails (the caller's ``tryWithErrorDisplay`` shows why)."""
        needed = self.logic.missingPackages()
        if not needed:
            return True
        text = ("OrthoDiffusion needs these Python packages, which are not installed in Slicer yet:\n\n  "
                + "\n  ".join(needed) + "\n\nInstall them now? This downloads several hundred MB (PyTorch) and "
                "can take a few minutes; Slicer may look busy meanwhile.")
        if not slicer.util.confirmOkCancelDisplay(text, windowTitle="OrthoDiffusion: install packages"):
            self.ui.statusLabel.text = "Packages not installed; nothing was run."
            return False
        self.setBusy(True, "Installing packages (see the log)...")
        self.onProgress("installing", 0.0)
        try:
            self.logic.installDependencies(onLine=self.appendLog)
        except Exception as e:  # pip/PyTorch installer failure: show it, keep the log
            self.setBusy(False)
            self.showFailure(f"Installing packages failed: {e}")
            logging.exception("OrthoDiffusion: package installation failed")
            raise
        self.setBusy(False, "Packages installed.")
        self.refreshModels()
        return True

    def onApply(self):
        with slicer.util.tryWithErrorDisplay("OrthoDiffusion could not start.", waitCursor=True):
            if not self.ensureDependencies():
                return
            self.updateParameterNodeFromGUI()
            self.ui.logTextEdit.clear()
            self.setBusy(True, "Starting...")
            try:
                self.logic.start(**self.logic.runOptions(self._parameterNode), onProgress=self.onProgress,
                                 onLine=self.appendLog, onFinished=self.onFinished)
            except Exception as e:
                self.setBusy(False)
                self.showFailure(str(e))
                raise

    def onCancel(self):
        with slicer.util.tryWithErrorDisplay("OrthoDiffusion could not be cancelled."):
            self.logic.cancel()
            self.ui.statusLabel.text = "Cancelling..."

    def onFinished(self, result, error):
        self.setBusy(False)
        if error:
            self.showFailure(error)
            return
        with slicer.util.tryWithErrorDisplay("The results could not be shown."):
            self.showResult(result)

    def showResult(self, result):
        if result.diagnosis_table is not None:
            self.ui.diagnosisTableView.setMRMLTableNode(result.diagnosis_table)
        sankey = self.logic.sankeyHtml(result)
        self.ui.sankeyLabel.visible = self.ui.sankeyFrame.visible = sankey is not None
        if sankey is not None:
            self.webWidget.setUrl(qt.QUrl.fromLocalFile(str(sankey)).toString())
        report = result.report
        self.ui.reportPathLineEdit.text = str(report) if report else ""
        self.ui.openReportButton.enabled = report is not None
        background = next((self.selectors[p].currentNode() for p in PLANES if self.selectors[p].currentNode()), None)
        if background is not None:
            slicer.util.setSliceViewerLayers(background=background, fit=True)
        warnings = result.result.get("warnings") or []
        self.ui.statusLabel.text = "Done." + (" " + " ".join(warnings) if warnings else "")

    def onOpenReport(self):
        with slicer.util.tryWithErrorDisplay("The report could not be opened."):
            path = self.ui.reportPathLineEdit.text
            if path:
                qt.QDesktopServices.openUrl(qt.QUrl.fromLocalFile(path))


def _flag(value: bool) -> str:
    """A check box's state as a parameter node value."""
    return "true" if value else "false"


def _selectValue(comboBox, items: Dict[str, str], value: str) -> None:
    """Select the item of ``comboBox`` whose text ``items`` maps to ``value`` (left as it is for another value)."""
    texts = [text for text, v in items.items() if v == value]
    if texts:
        comboBox.setCurrentIndex(comboBox.findText(texts[0]))


#
# OrthoDiffusionLogic
#
class OrthoDiffusionLogic(ScriptedLoadableModuleLogic):
    """Runs the library in a separate process and imports its outputs as MRML nodes. Usable from the Python
    console: :meth:`run` blocks (keeping the GUI alive) and returns an ``OrthoDiffusionLib.slicer.mrml.ImportedResult``."""

    def __init__(self):
        ScriptedLoadableModuleLogic.__init__(self)
        self.process = None
        self._timer = None
        self._callbacks = {}
        self.lastLog: List[str] = []
        self.lastResult = None

    # ----------------------------------------------------------------------------------------- parameters
    def setDefaultParameters(self, parameterNode) -> None:
        """Give ``parameterNode`` the default of every choice it does not hold yet."""
        for name, value in DEFAULT_PARAMETERS.items():
            if not parameterNode.GetParameter(name):
                parameterNode.SetParameter(name, value)

    @staticmethod
    def runOptions(parameterNode) -> dict:
        """The keyword arguments of :meth:`start` chosen in ``parameterNode``: the input volumes, model, device,
        precision, the planes to segment, diagnosis, fusion and noise draws."""
        get = parameterNode.GetParameter
        volumes = {f"{plane}Node": parameterNode.GetNodeReference(name) for plane, name in VOLUME_REFERENCES.items()}
        return dict(volumes, model=get("Model") or None, device=get("Device") or "auto",
                    precision=get("Precision") or "fp32",
                    segmentationPlanes=[p for p in PLANES if get(SEGMENT_PARAMETERS[p]) == "true"],
                    diagnosis=get("Diagnosis") == "true", fuseSegmentations=get("FuseSegmentations") == "true",
                    noiseDraws=int(get("NoiseDraws") or 4))

    # ----------------------------------------------------------------------------------------- packages
    def missingPackages(self) -> List[str]:
        """What the first Apply has to install, as lines for the confirmation dialog (empty: nothing)."""
        out = []
        if importlib.util.find_spec("torch") is None:
            out.append(f"{TORCH_REQUIREMENT} (PyTorch; "
                       f"{'with the PyTorch extension' if self._pytorchExtension() else 'with pip'})")
        if not libraryImportable():
            checkout = sourceCheckout()
            if checkout is None:
                raise RuntimeError("the OrthoDiffusionLib library is neither installed nor next to the module; "
                                   "reinstall the extension")
            out.append(f"orthodiffusion from {checkout} with its dependencies (numpy, SimpleITK, pydicom, "
                       f"safetensors, plotly, ...)")
            return out
        from OrthoDiffusionLib.dependencies import missing_requirements

        out.extend(r.spec for r in missing_requirements() if r.module != "torch")
        return out

    @staticmethod
    def _pytorchExtension():
        try:
            import PyTorchUtils
        except ImportError:
            return None
        return PyTorchUtils

    def installDependencies(self, onLine: Optional[Callable[[str], None]] = None) -> None:
        """Install torch (PyTorch extension's installer when present, else pip), then the library (from the source
        checkout when it is not importable) and its missing core packages, into Slicer's Python."""
        say = onLine or logging.info
        if importlib.util.find_spec("torch") is None:
            extension = self._pytorchExtension()
            if extension is not None:
                say("Installing PyTorch with the PyTorch extension...")
                torch = extension.PyTorchUtilsLogic().installTorch(askConfirmation=False,
                                                                   torchVersionRequirement=">=2.2")
                if torch is None:
                    raise RuntimeError("the PyTorch extension did not install PyTorch")
            else:
                say(f"Installing {TORCH_REQUIREMENT} with pip...")
                slicer.util.pip_install([TORCH_REQUIREMENT])
        if not libraryImportable():
            checkout = sourceCheckout()
            say(f"Installing orthodiffusion from {checkout} ...")
            slicer.util.pip_install([str(checkout)])
        from OrthoDiffusionLib.dependencies import missing_requirements

        missing = [r.spec for r in missing_requirements()]
        if missing:
            say("Installing " + " ".join(missing) + " ...")
            slicer.util.pip_install(missing)
        importlib.invalidate_caches()
        still = self.missingPackages()
        if still:
            raise RuntimeError("still missing after installation: " + ", ".join(still))
        say("All packages are installed.")

    # ----------------------------------------------------------------------------------------- models, planes
    def listModels(self) -> List[dict]:
        """The registry's models as dicts (name, description, default, cpu_seconds, ...); empty while the library
        or torch is not installed yet."""
        try:
            from OrthoDiffusionLib.bundle.registry import list_models
        except ImportError:
            return []
        try:
            return [m.as_dict() for m in list_models()]
        except Exception as e:  # a corrupt user registry must not break the panel
            logging.warning(f"OrthoDiffusion: cannot read the model registry: {e}")
            return []

    def assignPlanes(self, volumeNodes: Optional[Sequence] = None) -> Dict[str, object]:
        """``{plane: volume node}`` chosen from ``volumeNodes`` (default: every scalar volume of the scene) by slice
        orientation; empty while the library is not installed."""
        try:
            from OrthoDiffusionLib.slicer import mrml
        except ImportError:
            return {}
        nodes = mrml.scene_volume_nodes(slicer.mrmlScene) if volumeNodes is None else volumeNodes
        return mrml.assign_planes(nodes)

    # ----------------------------------------------------------------------------------------- processes
    @property
    def busy(self) -> bool:
        return self.process is not None

    def _startProcess(self, args: Sequence[str], onLine, onProgress, onDone) -> None:
        """Start ``python -m OrthoDiffusionLib ARGS`` and poll it from a Qt timer (the GUI stays responsive)."""
        from OrthoDiffusionLib.slicer.child_process import ChildProcess, library_command

        if self.process is not None:
            raise RuntimeError("OrthoDiffusion is already running; cancel it first")
        env = {"PYTHONUNBUFFERED": "1"}
        bundled = bundledLibraryDir()
        if bundled is not None:
            env["PYTHONPATH"] = os.pathsep.join([str(bundled)] + [p for p in [os.environ.get("PYTHONPATH")] if p])
        argv = library_command(pythonLauncher(), *args)
        self.lastLog = ["$ " + " ".join(argv)]
        if onLine:
            onLine(self.lastLog[0])
        self.process = ChildProcess(argv, env=env).start()
        self._callbacks = {"line": onLine, "progress": onProgress, "done": onDone}
        if onProgress:
            onProgress("loading", 0.0)          # until the child's first progress line
        self._timer = qt.QTimer()
        self._timer.setInterval(100)
        self._timer.timeout.connect(self._poll)
        self._timer.start()

    def _poll(self) -> None:
        from OrthoDiffusionLib.slicer.child_process import error_line, parse_progress_line

        process = self.process
        if process is None:
            return
        for _, text in process.read_lines():
            event = parse_progress_line(text)
            if event is not None:
                if self._callbacks.get("progress"):
                    self._callbacks["progress"](*event)
                continue
            self.lastLog.append(text)
            if self._callbacks.get("line"):
                self._callbacks["line"](text)
        code = process.poll()
        if code is None:
            return
        self._timer.stop()
        self.process = None
        if process.cancelled:
            error = "Cancelled."
        elif code != 0:
            error = error_line(process.output()) or f"the process failed (exit code {code})"
        else:
            error = None
        self._callbacks["done"](error)

    def cancel(self) -> None:
        """Kill the running process and everything it started."""
        if self.process is not None:
            self.process.kill_tree()

    def _wait(self) -> None:
        while self.process is not None:
            slicer.app.processEvents()
            time.sleep(0.05)

    # ----------------------------------------------------------------------------------------- sample, import
    def loadSample(self, onLine=None, onFinished=None, seed: int = 0, wait: bool = False):
        """Simulate a three-plane knee exam (``orthodiffusion simulate exam``, with a joint effusion) in a child
        process and load its NIfTI series as volume nodes; ``onFinished({plane: node}, error)``. With ``wait`` it
        blocks and returns the dict."""
        from OrthoDiffusionLib.slicer.child_process import sample_exam_arguments, sample_exam_series

        folder = Path(tempfile.mkdtemp(prefix="OrthoDiffusion-sample-", dir=slicer.app.temporaryPath))
        out = {}

        def done(error):
            volumes = {}
            if error is None:
                from OrthoDiffusionLib.slicer import mrml

                try:
                    for plane, path in sample_exam_series(folder).items():
                        volumes[plane] = mrml.load_volume_file(slicer.mrmlScene, path, f"Sample {plane}")
                except Exception as e:
                    error = str(e)
            out.update(volumes=volumes, error=error)
            if onFinished:
                onFinished(volumes, error)

        self._startProcess(sample_exam_arguments(folder, seed, SAMPLE_ABNORMALITY), onLine, None, done)
        if wait:
            self._wait()
            if out.get("error"):
                raise RuntimeError(out["error"])
            return out["volumes"]
        return None

    def importModel(self, path: str, onLine=None, onFinished=None) -> None:
        """Verify and register a model file (``orthodiffusion models import FILE``); ``onFinished(ok, error)``."""
        self._startProcess(["models", "import", str(path)], onLine, None,
                           lambda error: onFinished and onFinished(error is None, error))

    # ----------------------------------------------------------------------------------------- prediction
    @staticmethod
    def dicomAnatomyFields(node) -> Dict[str, str]:
        """The anatomy tags (BodyPartExamined, StudyDescription, ProtocolName) of a volume loaded from DICOM, from
        Slicer's DICOM database ({} for other volumes): written into the exported NRRD so that `predict` refuses
        a series of another body part (OrthoDiffusionLib.io.anatomy)."""
        from OrthoDiffusionLib.io.anatomy import HEADER_TAGS

        uids = (node.GetAttribute("DICOM.instanceUIDs") or "").split()
        database = getattr(slicer, "dicomDatabase", None)
        if not uids or database is None:
            return {}
        fields = {}
        for keyword, tag in HEADER_TAGS.values():
            value = database.instanceValue(uids[0], tag)
            if value:
                fields[keyword] = str(value)
        return fields

    def start(self, sagittalNode=None, coronalNode=None, axialNode=None, model: Optional[str] = None,
              device: str = "auto", segmentationPlanes: Sequence[str] = PLANES, diagnosis: bool = True,
              noiseDraws: int = 4, outputFolder: Optional[str] = None, onProgress=None, onLine=None,
              onFinished=None, fuseSegmentations: bool = False, precision: str = "fp32") -> Path:
        """Write the volumes, start ``orthodiffusion predict`` in a child process and return the output folder;
        ``onFinished(ImportedResult, None)`` or ``onFinished(None, one-line reason)`` is called when it ends.

        The child segments only ``segmentationPlanes`` (``--segmentation-planes``) and runs the networks in
        ``precision`` (``fp32`` or ``bf16``)."""
        from OrthoDiffusionLib.slicer import mrml
        from OrthoDiffusionLib.slicer.child_process import predict_arguments

        volumes = {p: n for p, n in zip(PLANES, (sagittalNode, coronalNode, axialNode)) if n is not None}
        if not volumes:
            raise ValueError("select at least one volume (sagittal, coronal or axial)")
        if not segmentationPlanes and not diagnosis:
            raise ValueError("nothing to do: turn on segmentation for a plane or the diagnosis")
        work = Path(tempfile.mkdtemp(prefix="OrthoDiffusion-", dir=slicer.app.temporaryPath))
        out = Path(outputFolder) if outputFolder else work / "result"
        if onProgress:
            onProgress("writing inputs", 0.0)
        inputs = {}
        for plane, node in volumes.items():
            inputs[plane] = mrml.write_volume_node(node, work / "inputs" / f"{plane}.nrrd",
                                                   dicom_fields=self.dicomAnatomyFields(node))
        args = predict_arguments(inputs, out, model=model, device=device, segmentation_planes=list(segmentationPlanes),
                                 diagnosis=diagnosis, noise_draws=noiseDraws, fuse_segmentations=fuseSegmentations,
                                 precision=precision)

        def done(error):
            if error is not None:
                if onFinished:
                    onFinished(None, error)
                return
            if onProgress:
                onProgress("importing results", 1.0)
            try:
                imported = mrml.import_result_folder(slicer.mrmlScene, out, volumes, prefix="OrthoDiffusion",
                                                     diagnosis=diagnosis, planes=segmentationPlanes)
            except Exception as e:
                logging.exception("OrthoDiffusion: importing the results failed")
                if onFinished:
                    onFinished(None, f"Importing the results failed: {e}")
                return
            self.lastResult = imported
            if onFinished:
                onFinished(imported, None)

        self._startProcess(args, onLine, onProgress, done)
        return out

    def run(self, sagittalNode=None, coronalNode=None, axialNode=None, **kwargs):
        """Blocking :meth:`start` for the Python console and scripts: returns the ImportedResult (segmentation
        nodes per plane, diagnosis table, structure table, report path); raises RuntimeError with the one-line
        reason on failure."""
        outcome = {}
        kwargs["onFinished"] = lambda result, error: outcome.update(result=result, error=error)
        self.start(sagittalNode, coronalNode, axialNode, **kwargs)
        self._wait()
        if outcome.get("error"):
            raise RuntimeError(outcome["error"])
        return outcome["result"]

    def sankeyHtml(self, imported) -> Optional[Path]:
        """Write the Sankey diagram of a result (``OrthoDiffusionLib.inference.report.sankey_figure``, plotly inlined) next to
        the outputs; None when the result has no diagnosis or plotly is missing."""
        if not imported.result.get("labels"):
            return None
        try:
            from OrthoDiffusionLib.inference.report import sankey_figure
        except ImportError as e:
            logging.warning(f"OrthoDiffusion: no Sankey diagram ({e})")
            return None
        path = Path(imported.folder) / "sankey.html"
        sankey_figure(imported.result).write_html(str(path), include_plotlyjs=True, full_html=True)
        return path


#
# OrthoDiffusionTest
#
class OrthoDiffusionTest(ScriptedLoadableModuleTest):
    """Self-test inside Slicer: simulated sample exam -> model on CPU -> nodes checked."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_SampleOnCpu()

    def test_SampleOnCpu(self):
        import numpy as np

        logic = OrthoDiffusionLogic()
        self.delayDisplay("Installing missing packages (if any)")
        logic.installDependencies()
        from OrthoDiffusionLib import labels
        from OrthoDiffusionLib.slicer import mrml

        self.delayDisplay("Simulating the sample knee exam")
        volumes = logic.loadSample(wait=True)
        self.assertEqual(sorted(volumes), sorted(PLANES))
        self.assertEqual(logic.assignPlanes(), volumes)

        parameters = logic.getParameterNode()
        logic.setDefaultParameters(parameters)
        options = logic.runOptions(parameters)
        self.assertEqual((options["segmentationPlanes"], options["precision"]), (list(PLANES), "fp32"))

        self.delayDisplay("Running the default model on the CPU")
        stages = []
        result = logic.run(volumes["sagittal"], volumes["coronal"], volumes["axial"], device="cpu",
                           onProgress=lambda stage, fraction: stages.append((stage, fraction)))
        self.assertTrue(stages and stages[-1] == ("importing results", 1.0))

        for plane in PLANES:
            node = result.segmentations[plane]
            segmentation = node.GetSegmentation()
            structures = labels.knee_structures(plane)
            self.assertEqual(segmentation.GetNumberOfSegments(), len(structures))
            for s in structures:
                segment = segmentation.GetSegment(s.key)
                self.assertEqual(segment.GetName(), s.name)
                mask, matrix = mrml.segment_labelmap(node, s.key)
                self.assertTrue(np.allclose(matrix, mrml.ijk_to_ras(volumes[plane]), atol=1e-4))
            self.assertGreater(mrml.segment_labelmap(node, "femur")[0].sum(), 0)
        table = result.diagnosis_table
        self.assertEqual(table.GetNumberOfRows(), 8)
        weights = np.array([mrml.table_column(table, f"{p.capitalize()} weight") for p in PLANES])
        self.assertTrue(np.allclose(weights.sum(axis=0), 1.0, atol=1e-3))
        probabilities = np.array(mrml.table_column(table, "Probability"))
        self.assertTrue(((probabilities >= 0) & (probabilities <= 1)).all())
        self.assertIsNotNone(result.measures_table)
        self.assertTrue(result.report is not None and result.report.is_file())
        self.assertIsNotNone(logic.sankeyHtml(result))
        self.delayDisplay("Test passed")
