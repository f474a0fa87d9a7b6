"""One LightningModule per encoder stage on a shared base (:mod:`.base`)."""

from visctr.encoders.methods.base import EncoderMethod
from visctr.encoders.methods.resnet_c import ResNetCMethod
from visctr.encoders.methods.s1 import S1Method
from visctr.encoders.methods.s2 import S2Method
from visctr.encoders.objectives import S1Objective

__all__ = ["EncoderMethod", "ResNetCMethod", "S1Method", "S1Objective", "S2Method"]
