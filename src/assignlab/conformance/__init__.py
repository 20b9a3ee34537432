"""Conformance runner: replay reference fixtures (mmdetection, YOLOv5, Ultralytics, YOLOX) through
assignlab and compare. ``python -m assignlab.conformance DIR [DIR ...]``."""

from .runner import CaseResult, run_folder

__all__ = ["CaseResult", "run_folder"]
