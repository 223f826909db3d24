"""Deployment engines: ONNX export and verification, gradient graphs, runners, GPU kernels."""

from pudrt.engine.export import Agreement, compare, export_onnx, verify_onnx
from pudrt.engine.runners import OrtRunner, TorchRunner, TrtRunner, open_runner

__all__ = ["Agreement", "OrtRunner", "TorchRunner", "TrtRunner", "compare", "export_onnx", "open_runner",
           "verify_onnx"]
