"""GenerateCT: synthetic chest CT from a radiology prompt, inside 3D Slicer.

Only Slicer calls live here; everything else is unit-tested without Slicer in the library: geometry, presets,
settings checks, progress text and time estimates in ``GenerateCTLib/slicer_support.py``; command lines, output
parsing, process trees and remote jobs in ``GenerateCTLib/slicer_worker.py``.
Generation runs in a separate Python process (``python -m GenerateCTLib.cli generate --progress json``) started
with ``qt.QProcess``, so the GUI never blocks. Research use only: every volume is synthetic.
"""

import os
import sys
import time
from pathlib import Path

import qt
import slicer
from slicer import vtkMRMLScalarVolumeNode
from slicer.i18n import tr as _
from slicer.parameterNodeWrapper import parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

MODULE_DIR = Path(__file__).resolve().parent
# Installed: GenerateCTLib/ is beside this file (CMake copies it there). Source tree: it is one level up.
LIBRARY_ROOT = MODULE_DIR if (MODULE_DIR / "GenerateCTLib").is_dir() else MODULE_DIR.parent
if str(LIBRARY_ROOT) not in sys.path:
    sys.path.insert(0, str(LIBRARY_ROOT))

from GenerateCTLib import slicer_support as support  # noqa: E402
from GenerateCTLib import slicer_worker as worker  # noqa: E402
from GenerateCTLib.io import read_volume  # noqa: E402


class GenerateCT(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("GenerateCT")
        self.parent.categories = [_("Image Synthesis")]
        self.parent.dependencies = []
        self.parent.contributors = ["GenerateCT contributors"]
        self.parent.helpText = _(
            "Generate a synthetic 3-D chest CT from age, sex and a radiology impression (GenerateCT, ECCV 2024). "
            "Research use only: the volumes are synthetic and must not be used for diagnosis."
        )
        self.parent.acknowledgementText = _("Based on GenerateCT by Hamamci et al. (ECCV 2024), trained on CT-RATE.")


@parameterNodeWrapper
class GenerateCTParameterNode:
    """Panel state saved with the scene. The server URL and token are not here: they live in QSettings."""

    age: int = 65
    sex: str = "male"
    impression: str = ""
    seed: str = "random"
    # the request's own defaults, written once (slicer_support.GenerationRequest)
    slices: int = support.GenerationRequest.slices
    quality: str = support.GenerationRequest.quality
    steps: int = support.GenerationRequest.steps
    guidance: float = support.GenerationRequest.guidance
    temperature: float = support.GenerationRequest.temperature
    srSteps: int = support.GenerationRequest.sr_steps
    compute: str = support.GenerationRequest.compute
    model: str = "Demo (bundled)"
    outputVolume: vtkMRMLScalarVolumeNode


class GenerateCTWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._heatmaps = {}  # label -> volume node of the current result
        self._progress = None  # a slicer_support.ProgressClock while a task runs
        self._modelGuidance = support.GenerationRequest.guidance  # the guidance the chosen model was tuned for

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(str(support.find_resource(MODULE_DIR, "UI/GenerateCT.ui")))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = GenerateCTLogic()
        self.logic.logCallback = self.appendLog
        self.logic.progressCallback = self.onProgress
        self.logic.finishedCallback = self.onFinished

        menu = qt.QMenu(self.ui.examplesButton)
        for age, sex, impression in support.EXAMPLE_PROMPTS:
            action = menu.addAction(f"{age} {sex}: {impression}")
            action.triggered.connect(lambda _checked=False, a=age, s=sex, i=impression: self.setPrompt(a, s, i))
        self.ui.examplesButton.setMenu(menu)

        settings = qt.QSettings()
        self.ui.serverUrlLineEdit.text = settings.value(support.SETTINGS_KEYS["serverUrl"], "")
        self.ui.serverTokenLineEdit.text = settings.value(support.SETTINGS_KEYS["serverToken"], "")
        self.ui.pacsUrlLineEdit.text = settings.value(support.SETTINGS_KEYS["pacsUrl"], "")
        self.ui.customModelPathLineEdit.currentPath = settings.value(support.SETTINGS_KEYS["customModelFolder"], "")
        for widget in (self.ui.serverUrlLineEdit, self.ui.serverTokenLineEdit, self.ui.pacsUrlLineEdit):
            widget.editingFinished.connect(self.saveSettings)
        self.ui.customModelPathLineEdit.currentPathChanged.connect(self.saveSettings)
        self.ui.customModelPathLineEdit.currentPathChanged.connect(self.updateVisibility)

        self.ui.generateButton.clicked.connect(self.onGenerateOrCancel)
        self.ui.testConnectionButton.clicked.connect(self.onTestConnection)
        self.ui.downloadModelButton.clicked.connect(self.onDownloadModel)
        self.ui.computeComboBox.currentTextChanged.connect(self.updateVisibility)
        self.ui.modelComboBox.currentTextChanged.connect(self.updateVisibility)
        for name, _window, _level in support.window_presets():
            getattr(self.ui, f"{name.lower()}WindowButton").clicked.connect(lambda _c=False, n=name: self.onWindow(n))
        self.ui.attentionComboBox.currentTextChanged.connect(self.updateHeatmap)
        self.ui.attentionOpacitySlider.valueChanged.connect(self.updateHeatmap)
        self.ui.attentionThresholdSlider.valueChanged.connect(self.updateHeatmap)
        self.ui.showAttentionCheckBox.toggled.connect(self.updateHeatmap)
        self.ui.attentionLegendCheckBox.toggled.connect(self.updateHeatmap)
        self.ui.saveDicomButton.clicked.connect(self.onSaveDicom)

        self.heartbeat = qt.QTimer()
        self.heartbeat.setInterval(1000)  # the progress text (elapsed, ETA) moves every second
        self.heartbeat.timeout.connect(self.onHeartbeat)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.initializeParameterNode()
        self.updateVisibility()

    def cleanup(self):
        self.logic.cancel()
        self.removeObservers()
        if self._parameterNode and self._parameterNodeGuiTag:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)

    def enter(self):
        self.initializeParameterNode()

    def onSceneStartClose(self, caller, event):
        if self._parameterNode and self._parameterNodeGuiTag:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNode = self._parameterNodeGuiTag = None

    def onSceneEndClose(self, caller, event):
        self._heatmaps = {}
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self):
        if self._parameterNode is None:
            self._parameterNode = self.logic.getParameterNode()
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.ui.impressionTextEdit.setPlainText(self._parameterNode.impression)

    def saveSettings(self):
        settings = qt.QSettings()
        settings.setValue(support.SETTINGS_KEYS["serverUrl"], self.ui.serverUrlLineEdit.text.strip())
        settings.setValue(support.SETTINGS_KEYS["serverToken"], self.ui.serverTokenLineEdit.text.strip())
        settings.setValue(support.SETTINGS_KEYS["pacsUrl"], self.ui.pacsUrlLineEdit.text.strip())
        settings.setValue(support.SETTINGS_KEYS["customModelFolder"], self.ui.customModelPathLineEdit.currentPath)

    def updateVisibility(self, _text=None):
        remote = self.ui.computeComboBox.currentText == "Remote"
        self.ui.remoteGroupBox.setVisible(remote)
        choice = self.ui.modelComboBox.currentText
        self.ui.customModelPathLineEdit.setEnabled(choice == "Custom folder" and not remote)
        self.ui.downloadModelButton.setVisible(choice == "Official" and not remote)
        self.ui.modelStatusLabel.text = support.model_status(choice, MODULE_DIR,
                                                             self.ui.customModelPathLineEdit.currentPath, remote=remote)
        default, maximum = support.panel_slice_limits(choice, MODULE_DIR, self.ui.customModelPathLineEdit.currentPath,
                                                      remote=remote)
        self.ui.slicesSpinBox.setMaximum(maximum)  # what the chosen model can generate (the demo: 33)
        if self.ui.slicesSpinBox.value > maximum:
            self.ui.slicesSpinBox.setValue(default)
        guidance = support.panel_guidance(choice, MODULE_DIR, self.ui.customModelPathLineEdit.currentPath,
                                          remote=remote)
        if self.ui.guidanceSpinBox.value == self._modelGuidance:  # not changed by the user: follow the model
            self.ui.guidanceSpinBox.setValue(guidance)
        self._modelGuidance = guidance

    def setPrompt(self, age, sex, impression):
        self.ui.ageSpinBox.setValue(age)
        self.ui.sexComboBox.setCurrentText(sex)
        self.ui.impressionTextEdit.setPlainText(impression)

    def appendLog(self, text):
        self.ui.logTextEdit.appendPlainText(text)

    def request(self):
        self._parameterNode.impression = self.ui.impressionTextEdit.toPlainText()
        return support.GenerationRequest.from_panel(self._parameterNode)

    def onGenerateOrCancel(self):
        if self.logic.isRunning():
            self.logic.cancel()
            return
        self.ui.logTextEdit.clear()
        with slicer.util.tryWithErrorDisplay(_("Cannot start the generation."), waitCursor=True):
            request = self.request()
            support.check_request(request, self.ui.serverUrlLineEdit.text, self.ui.serverTokenLineEdit.text)
            if request.compute == "Remote":
                if not slicer.util.confirmOkCancelDisplay(
                        _("The prompt text is sent to the server. Do not type patient-identifying information."),
                        dontShowAgainSettingsKey=support.SETTINGS_KEYS["remoteNotice"]):
                    return
                self.logic.startRemote(request, self.ui.serverUrlLineEdit.text.strip(),
                                       self.ui.serverTokenLineEdit.text.strip(), self.ui.verifyTlsCheckBox.checked)
            else:
                modelChoice = self._parameterNode.model
                model = support.resolve_model(modelChoice, MODULE_DIR, self.ui.customModelPathLineEdit.currentPath)
                if not self.logic.setupPythonRequirements():
                    return
                estimate = support.cpu_warning(request, model, support.cuda_available())  # None: no warning
                if estimate is not None and not slicer.util.confirmOkCancelDisplay(_(
                        "This full-resolution run will use the CPU and may take about {estimate}. Preview "
                        "quality or a GPU is much faster. Continue?").format(estimate=estimate)):
                    return
                self.logic.startLocal(request, model, modelChoice)
            self.taskStarted(_("Starting (loading the model)…"), request.super_resolve)

    def taskStarted(self, label, superResolve=True):
        self.ui.generateButton.text = _("Cancel")
        self.ui.progressBar.setValue(0)
        self._progress = support.ProgressClock(label, super_resolve=superResolve)
        self.heartbeat.start()

    def onProgress(self, event):
        """A ProgressLine, or a download percentage (int)."""
        self._progress.update(event)
        self.onHeartbeat()

    def onHeartbeat(self):
        percent, text = self._progress.display(_("{task} {elapsed} elapsed"))
        if percent is not None:
            self.ui.progressBar.setValue(percent)
        self.ui.statusLabel.text = text

    def onFinished(self, message, volumeNode, heatmaps):
        self.heartbeat.stop()
        self.ui.generateButton.text = _("Generate")
        self.ui.statusLabel.text = message
        if volumeNode is None:
            return
        self.ui.progressBar.setValue(100)
        self._parameterNode.outputVolume = volumeNode
        self._heatmaps = heatmaps
        self.ui.attentionComboBox.clear()
        self.ui.attentionComboBox.addItems(list(heatmaps))
        self.updateHeatmap()

    def onWindow(self, name):
        if self._parameterNode.outputVolume:
            self.logic.applyWindowPreset(self._parameterNode.outputVolume, name)

    def updateHeatmap(self, _value=None):
        volume = self._parameterNode.outputVolume if self._parameterNode else None
        heat = self._heatmaps.get(self.ui.attentionComboBox.currentText)
        if volume is None:
            return
        show = self.ui.showAttentionCheckBox.checked and heat is not None
        self.logic.showHeatmap(volume, heat if show else None, self.ui.attentionOpacitySlider.value,
                               self.ui.attentionThresholdSlider.value, self.ui.attentionLegendCheckBox.checked)

    def onTestConnection(self):
        with slicer.util.tryWithErrorDisplay(_("Connection test failed."), waitCursor=True):
            url, token = self.ui.serverUrlLineEdit.text.strip(), self.ui.serverTokenLineEdit.text.strip()
            support.check_server(url, token)
            self.saveSettings()
            info = self.logic.testConnection(url, token, self.ui.verifyTlsCheckBox.checked)
            slicer.util.infoDisplay(_("Connected.") + "\n" + support.server_info_text(info))

    def onDownloadModel(self):
        if slicer.util.confirmOkCancelDisplay(_("Download the official GenerateCT weights (several GB) once into "
                                                "the user cache and convert them?")):
            self.logic.downloadOfficial()
            self.taskStarted(_("Downloading the official weights…"))

    def onSaveDicom(self):
        with slicer.util.tryWithErrorDisplay(_("Saving to DICOM failed."), waitCursor=True):
            volume = self._parameterNode.outputVolume
            if volume is None:
                raise ValueError(_("Generate a volume first."))
            pacs = self.ui.pacsUrlLineEdit.text.strip() if self.ui.pushToPacsCheckBox.checked else ""
            self.saveSettings()
            self.logic.saveDicom(volume, self.ui.includePromptCheckBox.checked, pacs)
            self.taskStarted(_("Writing the DICOM series…"))


class GenerateCTLogic(ScriptedLoadableModuleLogic):
    """Runs the worker process and turns its files into nodes. Reports through callbacks (no GUI needed):
    ``logCallback(text)``, ``progressCallback(ProgressLine)``, ``finishedCallback(message, volume, heatmaps)``."""

    def __init__(self):
        ScriptedLoadableModuleLogic.__init__(self)
        self.logCallback = print
        self.progressCallback = lambda event: None
        self.finishedCallback = lambda message, volume, heatmaps: None
        self.process = None
        self.remote = None  # a slicer_worker.RemoteGeneration, polled by remoteTimer
        self.remoteTimer = qt.QTimer()
        self.remoteTimer.setInterval(2000)  # each poll is one short HTTP request (10 s timeout) on the GUI thread
        self.remoteTimer.timeout.connect(self._pollRemote)
        self.python = worker.worker_python()

    def getParameterNode(self):
        return GenerateCTParameterNode(super().getParameterNode())

    def isRunning(self):
        return self.process is not None or self.remote is not None

    # -- dependencies -------------------------------------------------------------------------------------------
    def setupPythonRequirements(self):
        """Torch through the PyTorch extension, the rest with pip; asks first. Returns False if declined."""
        try:
            import PyTorchUtils
        except ImportError:
            slicer.util.errorDisplay(_("Install the PyTorch extension (Extensions Manager), restart, then retry."))
            return False
        torchLogic = PyTorchUtils.PyTorchUtilsLogic()
        missing = worker.missing_requirements()
        if torchLogic.torchInstalled() and not missing:
            return True
        if not slicer.util.confirmOkCancelDisplay(
                _("GenerateCT needs PyTorch and these packages, installed once into Slicer's Python:"),
                detailedText="\n".join(["torch>=2.4 (PyTorch extension)", *missing])):
            return False
        if not torchLogic.torchInstalled():
            torchLogic.installTorch(askConfirmation=False, torchVersionRequirement=">=2.4")
        if missing:
            slicer.util.pip_install(" ".join(missing))
        return True

    # -- local worker process -------------------------------------------------------------------------------------
    def _run(self, command, compute, onDone, extraPaths=()):
        if self.isRunning():
            raise RuntimeError(_("A GenerateCT task is already running."))
        self.process, self._onDone = qt.QProcess(), onDone
        self._job = worker.WorkerRun(self.logCallback, self.progressCallback)  # a ProgressLine or a download %
        env = qt.QProcessEnvironment()
        for key, value in worker.subprocess_environment(os.environ, LIBRARY_ROOT, compute, extraPaths).items():
            env.insert(key, value)
        self.process.setProcessEnvironment(env)
        self.process.setProcessChannelMode(qt.QProcess.MergedChannels)
        self.process.readyReadStandardOutput.connect(self._onOutput)
        self.process.finished.connect(self._onProcessFinished)
        self.logCallback("$ " + " ".join(command[:4]) + " …")
        self.process.start(command[0], command[1:])

    def _onOutput(self):
        self._job.feed(self.process.readAllStandardOutput().data())

    def _onProcessFinished(self, exitCode, exitStatus=None):
        self._job.flush()
        process, self.process = self.process, None
        if self._job.cancelled:
            self.finishedCallback(_("Cancelled."), None, {})
        elif exitCode != 0:
            self.finishedCallback(_("Failed (exit code {code}); see the log.").format(code=exitCode), None, {})
        else:
            with slicer.util.tryWithErrorDisplay(_("Loading the result failed.")):
                self._onDone(self._job.done)
        process.deleteLater()

    def cancel(self):
        """Stops the worker and every process it started (PythonSlicer is a launcher: kill the tree)."""
        if self.remote is not None:
            self._finishRemote(self.remote.cancel())
        elif self.process is not None:
            self._job.cancelled = True
            worker.kill_process_tree(int(self.process.processId()))

    def startLocal(self, request, model, modelLabel):
        outDir = Path(slicer.util.tempDirectory("GenerateCT"))
        command = worker.build_generate_command(self.python, request, model, outDir / "ct.nrrd")
        self._run(command, request.compute, lambda done: self._loadDone(done, modelLabel))

    def downloadOfficial(self):
        self._run(worker.build_download_command(self.python), "Auto",
                  lambda done: self.finishedCallback(_("Official weights are ready."), None, {}))

    # -- remote ----------------------------------------------------------------------------------------------------
    def testConnection(self, url, token, verify):
        return worker.remote_client(url, token, verify).info()

    def startRemote(self, request, url, token, verify):
        outDir = slicer.util.tempDirectory("GenerateCT")
        self.remote = worker.RemoteGeneration(request, url, token, outDir, verify=verify)
        self.remoteTimer.start()

    def _pollRemote(self):
        result = self.remote.poll()
        if result.progress is not None:
            self.progressCallback(result.progress)
        if result.finished:
            self._finishRemote(result)

    def _finishRemote(self, result):
        self.remoteTimer.stop()
        self.remote = None
        if result.done is not None:
            with slicer.util.tryWithErrorDisplay(_("Loading the result failed.")):
                self._loadDone(result.done, "remote")
        elif result.state == "cancelled" and not result.error:
            self.finishedCallback(_("Cancelled."), None, {})
        else:
            message = _("Remote job {state}: {error}").format(state=result.state, error=result.error or "")
            self.finishedCallback(message, None, {})

    # -- results ---------------------------------------------------------------------------------------------------
    def _loadDone(self, done, modelLabel):
        if done is None:
            raise RuntimeError(_("The worker ended without reporting a result."))
        prompt, model = support.provenance_summary(done.provenance, modelLabel)
        volume = self.loadVolume(done.volume, prompt, done.seeds, model)
        heatmaps = {label: self.loadVolume(path, label, None, None, heatmap=True)
                    for label, path in support.attention_entries(done.attention or "")}
        self.finishedCallback(_("Done: {name}").format(name=volume.GetName()), volume, heatmaps)

    def loadVolume(self, path, prompt, seeds, model, heatmap=False):
        """A scalar volume with IJK→RAS from the file's LPS geometry (slicer_support.ijk_to_ras)."""
        array, geometry = read_volume(path)
        name = prompt if heatmap else support.volume_node_name(prompt)
        node = slicer.util.addVolumeFromArray(array, ijkToRAS=support.ijk_to_ras(geometry),
                                              name=slicer.mrmlScene.GenerateUniqueName(name),
                                              nodeClassName="vtkMRMLScalarVolumeNode")
        if heatmap:
            node.SetAttribute("GenerateCT.heatmap", "true")
            return node
        for key, value in support.node_attributes(prompt, seeds, model, file=path).items():
            node.SetAttribute(key, value)
        displayNode = node.GetDisplayNode()
        displayNode.ResetWindowLevelPresets()
        for _name, window, level in support.window_presets():
            displayNode.AddWindowLevelPreset(window, level)
        self.applyWindowPreset(node, "Lung")
        if slicer.app.layoutManager() is not None:
            slicer.app.layoutManager().setLayout(slicer.vtkMRMLLayoutNode.SlicerLayoutConventionalView)
        slicer.util.setSliceViewerLayers(background=node, foreground=None, fit=True)
        return node

    def applyWindowPreset(self, volumeNode, name):
        preset = support.window_preset(name)
        displayNode = volumeNode.GetDisplayNode()
        displayNode.AutoWindowLevelOff()
        displayNode.SetWindowLevel(preset.width_hu, preset.level_hu)

    def showHeatmap(self, volumeNode, heatNode, opacity=0.4, threshold=0.3, legend=True):
        """The heatmap as foreground (cold-to-hot, [0, 1], values below ``threshold`` transparent)."""
        if heatNode is None:
            slicer.util.setSliceViewerLayers(background=volumeNode, foreground=None)
            return
        displayNode = heatNode.GetDisplayNode()
        displayNode.SetAndObserveColorNodeID("vtkMRMLColorTableNodeFileColdToHotRainbow.txt")
        displayNode.AutoWindowLevelOff()
        displayNode.SetWindowLevelMinMax(0.0, 1.0)
        displayNode.SetApplyThreshold(1)
        displayNode.SetLowerThreshold(threshold)
        displayNode.SetUpperThreshold(1.0)
        displayNode.SetInterpolate(1)
        colorLogic = slicer.modules.colors.logic()
        legendNode = colorLogic.GetColorLegendDisplayNode(heatNode) or colorLogic.AddDefaultColorLegendDisplayNode(
            heatNode)
        legendNode.SetTitleText(heatNode.GetName())
        legendNode.SetVisibility(bool(legend))
        slicer.util.setSliceViewerLayers(background=volumeNode, foreground=heatNode, foregroundOpacity=opacity)

    def saveDicom(self, volumeNode, includePrompt, pacsUrl=""):
        """Library writer (synthetic-marked, in the worker with a private pydicom>=3) → DICOM database → PACS."""
        source = volumeNode.GetAttribute("GenerateCT.file")
        if not source or not Path(source).is_file():
            raise ValueError(_("The generated file of this volume is gone; generate it again."))
        series = Path(slicer.util.tempDirectory("GenerateCT-DICOM")) / "series"
        deps = worker.private_packages_dir()
        steps = worker.build_dicom_commands(self.python, source, series, deps, include_prompt=includePrompt,
                                            pacs_url=pacsUrl)

        def runNext(_done=None, index=0):
            if index == len(steps) - (1 if pacsUrl else 0):  # after the export, before the push
                from DICOMLib import DICOMUtils

                DICOMUtils.importDicom(str(series))
                self.logCallback(_("Imported into the DICOM database: {folder}").format(folder=series))
            if index == len(steps):
                self.finishedCallback(_("Saved to DICOM."), None, {})
                return
            self._run(steps[index], "CPU", lambda done: runNext(done, index + 1), extraPaths=[deps])

        runNext()


class GenerateCTTest(ScriptedLoadableModuleTest):
    """Runs the logic with the bundled demo model in Preview quality (small, CPU). Needs the PyTorch extension
    with torch installed and the demo model shipped; it has not been run outside Slicer's factory."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_GenerateDemoVolume()

    def test_GenerateDemoVolume(self):
        model = support.find_demo_model(MODULE_DIR)
        if model is None:
            self.delayDisplay("Demo model not shipped in this build: nothing to generate")
            return
        logic, results = GenerateCTLogic(), []
        logic.finishedCallback = lambda message, volume, heatmaps: results.append((message, volume, heatmaps))
        request = support.GenerationRequest(age=65, sex="male", impression="Cardiomegaly.", seed=1, slices=9,
                                            quality="Preview", steps=2, compute="CPU")
        logic.startLocal(request, str(model), "demo")
        deadline = time.monotonic() + 600
        while not results and time.monotonic() < deadline:
            slicer.app.processEvents()
            time.sleep(0.05)
        self.assertTrue(results, "the worker did not finish in 10 minutes")
        message, volume, heatmaps = results[0]
        self.assertIsNotNone(volume, message)
        self.assertEqual(volume.GetAttribute("GenerateCT.synthetic"), "true")
        self.assertEqual(slicer.util.arrayFromVolume(volume).shape[0], 9)
        self.assertTrue(heatmaps)
        self.delayDisplay("GenerateCT demo volume generated")
