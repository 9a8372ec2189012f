"""Weight initialisation shared by the papers' networks."""

from __future__ import annotations

from torch import nn


def init_weights(net: nn.Module, init_type: str = "normal", gain: float = 0.02) -> nn.Module:
    """Initialise conv/linear weights and norm layers in place, as CycleGAN/pix2pix do.

    ``normal``: conv and linear weights ~ N(0, gain), biases 0; affine norm layers get
    weight ~ N(1, gain) and bias 0 (the DCGAN convention the CycleGAN paper follows).
    ``xavier``/``kaiming``/``orthogonal`` are offered for the other papers.
    """
    if init_type not in {"normal", "xavier", "kaiming", "orthogonal"}:
        raise ValueError(
            f"init_type={init_type!r}: expected one of normal, xavier, kaiming, orthogonal"
        )

    def _init(m: nn.Module) -> None:
        name = type(m).__name__
        if hasattr(m, "weight") and m.weight is not None and ("Conv" in name or "Linear" in name):
            if init_type == "normal":
                nn.init.normal_(m.weight, 0.0, gain)
            elif init_type == "xavier":
                nn.init.xavier_normal_(m.weight, gain=gain)
            elif init_type == "kaiming":
                nn.init.kaiming_normal_(m.weight, a=0, mode="fan_in")
            else:
                nn.init.orthogonal_(m.weight, gain=gain)
            if getattr(m, "bias", None) is not None:
                nn.init.zeros_(m.bias)
        elif "Norm" in name and getattr(m, "weight", None) is not None:
            nn.init.normal_(m.weight, 1.0, gain)
            nn.init.zeros_(m.bias)

    net.apply(_init)
    return net
