"""CUDA C sources of pudrt's GPU kernels, shipped in the wheel as `pudrt.kernels` (see pudrt.engine.kernels)."""
