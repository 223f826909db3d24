"""Deployment engines: ONNX export and verification, gradient graphs, runners, GPU kernels."""

from pudrt.engine.cascade import CascadeRunner, margin_for_share, write_cascade
from pudrt.engine.export import Agreement, compare, export_onnx, verify_onnx
from pudrt.engine.runners import OrtRunner, TorchRunner, TrtRunner, open_runner

__all__ = ["Agreement", "CascadeRunner", "OrtRunner", "TorchRunner", "TrtRunner", "compare", "export_onnx",
           "margin_for_share", "open_runner", "verify_onnx", "write_cascade"]
