"""The accelerators ``--target`` compiles for, without one: topologies and peak figures.

A TPU target is a topology of libtpu (``v5e:2x2``: ``*:1x1`` does not exist, so one
device is ``devices[:1]`` of a 2x2); an NVIDIA GPU is the CUDA plugin given a
``GpuTargetConfigProto`` in text form (``h100-target-config.txtpb`` beside this file:
an H100 SXM, 132 SMs, sm_90, 3.35 TB/s, 50 MiB L2, 80 GB).

Peak figures are the vendors' published numbers per chip:

- TPU: Google Cloud TPU documentation, "System architecture" tables of
  https://cloud.google.com/tpu/docs/v5e (197 TFLOP/s bf16, 16 GB, 819 GB/s),
  https://cloud.google.com/tpu/docs/v6e (918 TFLOP/s bf16, 32 GB, 1638 GB/s),
  https://cloud.google.com/tpu/docs/v5p (459 TFLOP/s bf16, 95 GB, 2765 GB/s),
  https://cloud.google.com/tpu/docs/v4 (275 TFLOP/s bf16, 32 GiB, 1200 GB/s).
  No float32 figure is published: XLA:TPU runs a float32 dot at the default precision
  as one bfloat16 pass (the bf16 peak) and at ``HIGHEST`` as six (a sixth of it).
- H100 SXM: the NVIDIA H100 Tensor Core GPU datasheet: 989 TFLOP/s bf16 dense (1979
  with sparsity), 495 TF32 dense (XLA:GPU's default for a float32 dot), 67 FP32,
  80 GB HBM3 at 3.35 TB/s.

A v4 chip has two TensorCores and libtpu makes each one device, so a v4 device gets half
of the chip's figures; v5p's two cores are one (megacore) device.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
H100_CONFIG = HERE / "h100-target-config.txtpb"


@dataclasses.dataclass(frozen=True)
class Target:
    name: str
    platform: str  # "tpu" | "cuda"
    topology: str  # libtpu topology, or the GPU's name for get_topology_desc
    chip: str
    bf16_tflops: float  # dense matmul peak per chip
    fp32_tflops: float | None  # float32 (non tensor-core) peak, where published
    tf32_tflops: float | None  # float32 dots at default precision (GPU)
    hbm_gbps: float  # GB/s per chip
    hbm_bytes: int  # capacity per chip
    source: str
    cores_per_chip: int = 1  # devices libtpu makes of one chip

    def gpu_topology(self, devices: int) -> str:
        return f"1x1x{devices}"

    def per_device(self) -> dict[str, Any]:
        """Peak figures of one JAX device (a v4 device is half a chip)."""
        c = self.cores_per_chip
        return {
            "bf16_tflops": self.bf16_tflops / c,
            "fp32_tflops": None if self.fp32_tflops is None else self.fp32_tflops / c,
            "tf32_tflops": None if self.tf32_tflops is None else self.tf32_tflops / c,
            "hbm_gbps": self.hbm_gbps / c,
            "hbm_bytes": self.hbm_bytes // c,
        }

    def peak_flops(self, flop_class: str) -> float:
        """Peak flop/s of one device for dots of ``flop_class`` (operand dtype, and
        ``-highest`` for float32 at HIGHEST precision)."""
        p = self.per_device()
        bf16 = p["bf16_tflops"] * 1e12
        if flop_class in ("f32", "f64"):
            if self.platform == "tpu":
                return bf16  # one bf16 pass at the default precision
            return (p["tf32_tflops"] or bf16 / 2) * 1e12
        if flop_class in ("f32-highest", "f64-highest"):
            if self.platform == "tpu":
                return bf16 / 6
            return (p["fp32_tflops"] or bf16 / 16) * 1e12
        return bf16

    def as_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["per_device"] = self.per_device()
        return d


_GCP = "Google Cloud TPU docs, https://cloud.google.com/tpu/docs/"
TARGETS: dict[str, Target] = {
    "tpu-v5e": Target("tpu-v5e", "tpu", "v5e:2x2", "TPU v5e (v5 lite)", 197.0, None, None,
                      819.0, 16 * 10**9, _GCP + "v5e"),
    "tpu-v6e": Target("tpu-v6e", "tpu", "v6e:2x2", "TPU v6e (Trillium)", 918.0, None, None,
                      1638.0, 32 * 10**9, _GCP + "v6e"),
    "tpu-v5p": Target("tpu-v5p", "tpu", "v5p:2x2x1", "TPU v5p", 459.0, None, None,
                      2765.0, 95 * 10**9, _GCP + "v5p"),
    "tpu-v4": Target("tpu-v4", "tpu", "v4:2x2x1", "TPU v4", 275.0, None, None,
                     1200.0, 32 * 2**30, _GCP + "v4", cores_per_chip=2),
    "h100": Target("h100", "cuda", "h100", "NVIDIA H100 SXM 80GB", 989.0, 67.0, 494.7,
                   3350.0, 80 * 10**9, "NVIDIA H100 Tensor Core GPU datasheet (SXM5)"),
}


def get(name: str) -> Target:
    try:
        return TARGETS[name]
    except KeyError:
        raise ValueError(f"unknown target {name!r}; one of {', '.join(TARGETS)}") from None


def topology_devices(target: Target, devices: int) -> list:
    """The first ``devices`` devices of the target's topology (deviceless)."""
    from jax.experimental import topologies

    if target.platform == "tpu":
        topo = topologies.get_topology_desc(target.topology, platform="tpu")
    else:
        topo = topologies.get_topology_desc(
            target.topology, "cuda", target_config=H100_CONFIG.read_text(),
            topology=target.gpu_topology(devices))
    devs = list(topo.devices)
    if len(devs) < devices:
        raise ValueError(f"{target.name}: the topology {target.topology} has {len(devs)} "
                         f"devices, fewer than --devices {devices}")
    return devs[:devices]


def mesh(target: Target, devices: int):
    """A 1-D ``"data"`` mesh over ``devices`` devices of the target."""
    import numpy as np
    from jax.sharding import Mesh

    return Mesh(np.array(topology_devices(target, devices)), ("data",))
