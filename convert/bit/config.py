"""BiT (Big Transfer) architecture configs.

BiT is a pre-activation ResNetV2 whose BatchNorm is replaced by GroupNorm (32 groups) and whose convolutions are
weight-standardized (Kolesnikov et al. 2019, arXiv:1912.11370). "BiT-S" (ImageNet-1k) and "BiT-M" (ImageNet-21k)
are weight sets trained on different data, not different architectures: both use the presets below, and the class
count comes from the checkpoint's head, never from the preset.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from liteship.errors import ConvertError


@dataclass(frozen=True)
class BiTConfig:
    block_units: tuple[int, int, int, int]  # bottleneck units in block1..block4
    width_factor: int  # multiplies every channel count (the "x1", "x3" in R50x3)
    num_classes: int = 21843  # head size; the loader replaces it with the checkpoint head's size
    num_groups: int = 32  # GroupNorm groups everywhere, as in BiT
    base_width: int = 64  # stem filters at width_factor 1; block b's bottleneck has base_width * wf * 2**b
    gn_epsilon: float = 1e-5  # GroupNorm eps of bit_tf2 / bit_pytorch / bit_jax
    ws_epsilon: float = 1e-10  # weight standardization eps of the released BiT code (var + 1e-10)
    image_size: int = 224  # default export resolution; BiT is fully convolutional, any size >= 32 works
    # Structured pruning (convert/bit/prune.py) narrows bottlenecks unit by unit: (a width, b width) of every unit
    # in order, block1 unit01 first. None: every unit has its block's bottleneck_width. The loader reads the
    # widths off the checkpoint's kernels, so a pruned .npz needs no other marker.
    unit_widths: tuple[tuple[int, int], ...] | None = None

    @property
    def root_width(self) -> int:
        return self.base_width * self.width_factor  # stem conv filters

    def bottleneck_width(self, block: int) -> int:
        """Middle (a/b) width of block `block` (0-based); the unit output is 4x this."""
        return self.base_width * self.width_factor * 2**block

    def mid_widths(self, block: int, unit: int) -> tuple[int, int]:
        """(a, b) conv output widths of unit `unit` (1-based) of block `block` (0-based)."""
        if self.unit_widths is None:
            return self.bottleneck_width(block), self.bottleneck_width(block)
        return self.unit_widths[sum(self.block_units[:block]) + unit - 1]

    @property
    def feature_width(self) -> int:
        return 4 * self.bottleneck_width(3)  # channels entering the pre-head GroupNorm and the head

    def replace(self, **changes) -> "BiTConfig":
        return dataclasses.replace(self, **changes)


PRESETS: dict[str, BiTConfig] = {
    # params: body (without head) / with BiT-M's 21843-class head
    "R50x1": BiTConfig(block_units=(3, 4, 6, 3), width_factor=1),  # 23.5M / 68.2M
    "R101x1": BiTConfig(block_units=(3, 4, 23, 3), width_factor=1),  # 42.5M / 87.2M
    "R50x3": BiTConfig(block_units=(3, 4, 6, 3), width_factor=3),  # 211M / 345M
    "R101x3": BiTConfig(block_units=(3, 4, 23, 3), width_factor=3),  # 382M / 516M
    "R152x2": BiTConfig(block_units=(3, 8, 36, 3), width_factor=2),  # 232M / 322M
    "R152x4": BiTConfig(block_units=(3, 8, 36, 3), width_factor=4),  # 928M / 1107M
}


def tiny(num_classes: int = 10, image_size: int = 64) -> BiTConfig:
    """A BiT small enough for unit tests (~2M params): one unit per block, still 32 GroupNorm groups."""
    # base_width 32 is the smallest that keeps 32 groups: the narrowest GroupNorm (block1's 32 channels) gets
    # groups of 1 channel and the pre-head one (1024 channels) groups of 32, so real grouping is exercised.
    return BiTConfig(block_units=(1, 1, 1, 1), width_factor=1, base_width=32, num_classes=num_classes,
                     image_size=image_size)


def get_config(variant: str) -> BiTConfig:
    """The preset for "R50x1", "BiT-M-R50x1", "bit-s-r50x1", ... ; "tiny" for tests."""
    name = variant.strip()
    for prefix in ("BiT-M-", "BiT-S-", "bit-m-", "bit-s-"):
        if name.startswith(prefix):
            name = name[len(prefix):]
    if name.lower() == "tiny":
        return tiny()
    for key, config in PRESETS.items():
        if key.lower() == name.lower():
            return config
    raise ConvertError(f"unknown BiT variant {variant!r}; choose one of {', '.join(PRESETS)} "
                       "(optionally prefixed BiT-M- or BiT-S-)")
