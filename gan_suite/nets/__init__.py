"""Plain torch.nn building blocks (no Lightning, no data, no configs)."""

from gan_suite.nets.init import init_weights
from gan_suite.nets.norm import norm_layer
from gan_suite.nets.patchgan import PatchDiscriminator
from gan_suite.nets.resnet_generator import ResnetBlock, ResnetGenerator

__all__ = ["PatchDiscriminator", "ResnetBlock", "ResnetGenerator", "init_weights", "norm_layer"]
