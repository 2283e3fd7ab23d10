"""Exporters: a model of torchcells layers as a file another runtime reads (ONNX)."""

from .onnx_export import OnnxCheckError, export_onnx

__all__ = ["OnnxCheckError", "export_onnx"]
