"""What the numbers were measured on: backend, device, versions, flags, CPU model."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import re
import subprocess
import sys
from typing import Any

import jax

_PACKAGES = ("jax", "jaxlib", "lossax", "optax", "numpy", "tokamax", "jax-cce", "ml_dtypes",
             "jax-cuda12-plugin", "jax-cuda13-plugin", "libtpu")
_ENV_FLAGS = ("XLA_FLAGS", "JAX_PLATFORMS", "JAX_ENABLE_X64", "LIBTPU_INIT_ARGS",
              "XLA_PYTHON_CLIENT_PREALLOCATE", "XLA_PYTHON_CLIENT_MEM_FRACTION",
              "CUDA_VISIBLE_DEVICES", "OMP_NUM_THREADS")
_CONFIG = ("jax_enable_x64", "jax_default_matmul_precision", "jax_numpy_dtype_promotion",
           "jax_numpy_rank_promotion")


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    if sys.platform == "darwin":
        try:
            return subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string"],
                                  capture_output=True, text=True, check=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            pass
    return platform.processor() or platform.machine() or "unknown"


def versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version()}
    for p in _PACKAGES:
        try:
            out[p] = importlib.metadata.version(p)
        except importlib.metadata.PackageNotFoundError:
            out[p] = None
    return out


def collect() -> dict[str, Any]:
    devs = jax.devices()
    dev = devs[0]
    try:
        platform_version = dev.client.platform_version
    except Exception:
        platform_version = None
    flags: dict[str, Any] = {k: os.environ.get(k) for k in _ENV_FLAGS if os.environ.get(k)}
    config = {}
    for k in _CONFIG:
        try:
            config[k] = getattr(jax.config, k)
        except AttributeError:
            pass
    return {
        "backend": jax.default_backend(),
        "device_kind": dev.device_kind,
        "device_count": len(devs),
        "platform_version": platform_version,
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "host": platform.platform(),
        "versions": versions(),
        "flags": flags,
        "jax_config": config,
    }


def describe(env: dict[str, Any]) -> str:
    """One line: ``cpu: AMD EPYC, 2 cores`` or ``gpu: NVIDIA H100 80GB HBM3 x1``."""
    if env["backend"] == "cpu":
        return f"cpu: {env['cpu_model']}, {env['cpu_count']} cores"
    return f"{env['backend']}: {env['device_kind']} x{env['device_count']}"


def slug(env: dict[str, Any]) -> str:
    """``cpu-amd-epyc-2c`` / ``gpu-nvidia-h100-80gb-hbm3``: names committed results."""
    def clean(s: str) -> str:
        s = re.sub(r"\(r\)|\(tm\)|cpu @.*|processor|\d+-core", "", s.lower())
        return re.sub(r"[^a-z0-9]+", "-", s).strip("-")[:40] or "unknown"

    if env["backend"] == "cpu":
        return f"cpu-{clean(env['cpu_model'])}-{env['cpu_count']}c"
    return f"{env['backend']}-{clean(env['device_kind'])}"
