"""How far the model's probabilities can be trusted: the reliability diagram before and after
calibration with the 15-bin ECE and the temperature, and the "unknown" threshold slider with
what it does on the validation images (computed by the session; this panel only shows it).

pyqtgraph costs ~0.4 s to import, so the plot is built when the first evaluation arrives.
"""

from __future__ import annotations

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import QHBoxLayout, QLabel, QPushButton, QSlider, QVBoxLayout, QWidget

from app.core.trust.unknown import KNN_K, SCORES

BEFORE, AFTER = "#ff7f0e", "#1f77b4"


class TrustPanel(QWidget):
    threshold_moved = Signal(float)  # the threshold the slider now stands for

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.plot = None  # pyqtgraph PlotWidget, built on first use
        self.curves: dict[str, object] = {}
        self.ece = QLabel("")
        self.ece.setWordWrap(True)
        self.ece.setToolTip("Expected calibration error over 15 confidence bins: the mean gap "
                            "between how sure the model says it is and how often it is right "
                            "(test images). 0 is perfect.")
        self.slider = QSlider(Qt.Orientation.Horizontal)
        self.slider.setToolTip("Images whose score is below this threshold are answered "
                               "\"Unknown\" (on the Predict page and in the exported model)")
        self.slider.setEnabled(False)
        self.slider.setPageStep(50)
        self.slider.setSingleStep(5)
        self.slider.valueChanged.connect(self._moved)
        self.reset = QPushButton("&Default")
        self.reset.setToolTip("The threshold fitted after training: it keeps 95% of the known "
                              "images known (validation images; for the nearest-images "
                              "scores also training images, each scored without itself)")
        self.reset.setEnabled(False)
        self.reset.clicked.connect(self._reset)
        self.effect = QLabel("")
        self.effect.setWordWrap(True)
        self.scale = None  # app.core.pipeline.review.ThresholdScale
        self.default = None
        self.method: str | None = None
        self._layout = QVBoxLayout(self)
        self._layout.setContentsMargins(0, 0, 0, 0)
        self.title = QLabel("<b>Are its probabilities right?</b> (reliability, test images)")
        self._layout.addWidget(self.title)
        self._layout.addWidget(self.ece)
        self._layout.addWidget(QLabel("<b>“Unknown” threshold</b>"))
        row = QHBoxLayout()
        row.addWidget(self.slider, 1)
        row.addWidget(self.reset)
        self._layout.addLayout(row)
        self._layout.addWidget(self.effect)

    def _build_plot(self) -> None:
        import pyqtgraph as pg

        self.plot = pg.PlotWidget()
        self.count_labels: list = []
        self.plot.setBackground(None)
        self.plot.setMinimumHeight(120)
        item = self.plot.getPlotItem()
        item.setLabel("bottom", "confidence (how sure it says it is)")
        item.setLabel("left", "accuracy")
        item.setXRange(0, 1, padding=0.02)
        item.setYRange(0, 1.12, padding=0)  # room for the counts above the top bins
        item.showGrid(x=True, y=True, alpha=0.2)
        item.setMouseEnabled(False, False)
        item.hideButtons()
        self.curves["ideal"] = item.plot([0, 1], [0, 1],
                                         pen=pg.mkPen("#888", width=1,
                                                      style=Qt.PenStyle.DashLine))
        entries = ["<span style='color:#888'>- - perfect</span>"]
        for key, colour, name in (("before", BEFORE, "before calibration"),
                                  ("after", AFTER, "after calibration")):
            self.curves[key] = item.plot([], [], pen=pg.mkPen(colour, width=2),
                                         symbol="o", symbolSize=6, symbolBrush=colour,
                                         symbolPen=None)
            entries.append(f"<span style='color:{colour}'>●— {name}</span>")
        # the legend is a line of text above the plot: inside it, it hid the curves (seen with
        # a model too sure at the top left and one not sure enough at the bottom right)
        legend = self.legend = QLabel(" &nbsp; ".join(entries))
        self._layout.insertWidget(1, legend)
        self._layout.insertWidget(2, self.plot, 1)

    def show_calibration(self, calibration: dict | None, bins: dict | None) -> None:
        """``calibration``: {"temperature", "ece_before", "ece_after"}; ``bins``: {"before",
        "after"} reliability bins (app.core.trust.calibration.reliability)."""
        if self.plot is None:
            self._build_plot()
        import pyqtgraph as pg

        for w in (self.plot, self.legend):
            w.setVisible(True)
        self.title.setText("<b>Are its probabilities right?</b> (reliability, test images)")
        for label in self.count_labels:
            self.plot.removeItem(label)
        self.count_labels = []
        for key in ("before", "after"):
            table = (bins or {}).get(key) or []
            used = [b for b in table if b["count"]]
            most = max([b["count"] for b in used] + [1])
            # a bin's dot grows with its images: a far-off bin of 2 images must not look
            # like the verdict (the calibrated line looked worse while its error dropped)
            self.curves[key].setData([b["confidence"] for b in used],
                                     [b["accuracy"] for b in used],
                                     symbolSize=[4 + 10 * (b["count"] / most) ** 0.5
                                                 for b in used])
            if key == "after":
                for b in used:
                    label = pg.TextItem(str(b["count"]), color=AFTER, anchor=(0.5, 1.2))
                    label.setPos(b["confidence"], b["accuracy"])
                    self.plot.addItem(label)
                    self.count_labels.append(label)
        if not calibration or calibration.get("ece_before") is None:
            self.ece.setText("No test images: calibration cannot be judged.")
            return
        t = calibration["temperature"]
        self.ece.setText(
            f"ECE (15 bins): <b>{calibration['ece_before']:.3f}</b> before → "
            f"<b>{calibration['ece_after']:.3f}</b> after calibration · T = {t:.2f}"
            + (f"<br>{calibration['note']}" if calibration.get("note") else ""))
        self.ece.setToolTip(
            f"{self.ece.toolTip().split(chr(10))[0]}\nThe probabilities are softmax(logits / "
            f"T), T fitted on the validation images: "
            f"{'T > 1 softens over-confident' if t > 1 else 'T < 1 sharpens timid'} answers.")

    def show_tag_calibration(self) -> None:
        """A model of several tags a photo: no reliability curve of one answer a photo; what
        calibrates its probabilities, in words."""
        for w in (self.plot, getattr(self, "legend", None)):
            if w is not None:
                w.setVisible(False)
        self.title.setText("<b>Its probabilities</b>")
        self.ece.setText("Each tag's probability is calibrated by a temperature of its own, "
                         "fitted on the validation photos; a tag is given at or above its "
                         "threshold (the sliders beside).")

    def set_threshold_range(self, scale, threshold: float | None, method: str | None,
                            why: str = "") -> None:
        """A new model: the slider spans ``scale`` and stands at ``threshold``; without
        them it is off and ``why`` says why."""
        self.scale, self.default, self.method = scale, threshold, method
        on = scale is not None and threshold is not None
        self.slider.setEnabled(on)
        self.reset.setEnabled(on)
        if not on:
            self.effect.setText(why or "No “unknown” answers: the validation split is empty.")
            return
        self.slider.blockSignals(True)
        self.slider.setRange(0, scale.steps)
        self.slider.setValue(scale.position(threshold))
        self.slider.blockSignals(False)  # shown, not moved: nothing is announced

    def show_effect(self, effect: dict | None) -> None:
        """What the threshold does on the validation images (from the session)."""
        if effect is None:
            self.effect.setText("")
            return
        t = effect["threshold"]
        shown = _probability(t) if self.method == "max_probability" else f"{t:.3g}"
        kind = SCORES.get(self.method)
        what = kind.said(KNN_K) if kind is not None else f"{self.method} score"
        fraction = effect["fraction"]
        share = "—" if fraction is None else f"{fraction:.1%}"
        warning = ""
        if fraction is not None and fraction >= 0.5:
            warning = (" <span style='color:#b8860b'>⚠ Most photos of your own classes would "
                       "be answered “Unknown”" + (": every one of them" if fraction >= 1
                                                   else "") + ". Move the slider left.</span>")
        self.effect.setText(
            f"Unknown when the {what} is below <b>{shown}</b>: <b>{share}</b> of the "
            f"{effect['count']} validation images ({effect['flagged']}) would be answered "
            f"“Unknown”.{warning}")

    def _moved(self, position: int) -> None:
        if self.scale is not None:
            self.threshold_moved.emit(self.scale.value(position))

    def _reset(self) -> None:
        if self.scale is not None and self.default is not None:
            self.slider.blockSignals(True)
            self.slider.setValue(self.scale.position(self.default))
            self.slider.blockSignals(False)
            self.threshold_moved.emit(self.default)


def _probability(p: float) -> str:
    """A threshold on a probability, with the digits that tell 99.97% from 100%."""
    if p >= 1 or p <= 0:
        return "100%" if p >= 1 else "0%"
    for digits in (1, 2, 3, 4):
        text = f"{p:.{digits}%}"
        if not text.startswith("100") and float(text[:-1]) > 0:
            return text
    return "> 99.99%" if p > 0.5 else "< 0.01%"
