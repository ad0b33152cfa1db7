"""Named problem sizes: ``--shapes small,lm-32k`` or custom ``NxV`` / ``NxDxV``.

One :class:`Shape` serves every op: ``n`` rows (batch x sequence) by ``v`` classes
(vocabulary).  Elementwise ops (BCE, hinge) read it as ``n x v`` independent
elements; the fused linear cross-entropy also needs ``d``, the hidden size.
"""

from __future__ import annotations

import dataclasses
import re


@dataclasses.dataclass(frozen=True)
class Shape:
    """Problem size of one benchmark case."""

    name: str  # preset name, or the label for a custom shape
    n: int  # rows
    v: int  # classes (vocabulary); elementwise ops: n * v elements
    d: int | None = None  # hidden size (fused linear cross-entropy only)

    @property
    def label(self) -> str:
        return f"{self.n}x{self.v}" if self.d is None else f"{self.n}x{self.d}x{self.v}"

    @property
    def describe(self) -> str:
        return f"N={self.n}, V={self.v}" + ("" if self.d is None else f", D={self.d}")

    @property
    def elements(self) -> int:
        return self.n * self.v

    def as_dict(self) -> dict:
        return {"name": self.name, "n": self.n, "v": self.v, "d": self.d, "label": self.label}

    @classmethod
    def from_dict(cls, d: dict) -> Shape:
        return cls(d["name"], d["n"], d["v"], d.get("d"))


PRESETS: dict[str, Shape] = {
    # Smoke-test sizes (--quick).
    "tiny": Shape("tiny", 64, 512, 64),
    "small": Shape("small", 512, 4096, 256),
    # ImageNet: 1000 classes, a ResNet-50 feature size for the fused op.
    "imagenet": Shape("imagenet", 1024, 1000, 2048),
    # 2^22 independent binary logits (multi-label with 1024 labels per row).
    "binary": Shape("binary", 4096, 1024),
    # Language-model heads: 4096 tokens at 32k, 2048 at 128k, 1024 at 256k classes.
    "lm-32k": Shape("lm-32k", 4096, 32768, 1024),
    "lm-128k": Shape("lm-128k", 2048, 131072, 1024),
    "lm-256k": Shape("lm-256k", 1024, 262144, 1024),
}

_CUSTOM = re.compile(r"^(\d+)x(\d+)(?:x(\d+))?$")


def parse_shape(text: str) -> Shape:
    """A preset name, ``NxV`` or ``NxDxV`` (e.g. ``4096x1024x32768``)."""
    text = text.strip()
    if text in PRESETS:
        return PRESETS[text]
    m = _CUSTOM.match(text)
    if not m:
        raise ValueError(
            f"unknown shape {text!r}: use a preset ({', '.join(PRESETS)}), NxV or NxDxV"
        )
    a, b, c = (int(g) if g else None for g in m.groups())
    if c is None:
        return Shape(text, a, b)
    return Shape(text, a, c, b)


def parse_shapes(text: str) -> list[Shape]:
    return [parse_shape(t) for t in text.split(",") if t.strip()]
