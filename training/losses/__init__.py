"""DINOv2 objectives: DINO CLS loss, iBOT masked-patch loss, KoLeo regulariser, teacher centering; DINOv3's
Gram anchoring."""
from training.losses.centering import SoftmaxCentering, sinkhorn_knopp
from training.losses.dino import DINOLoss, cross_entropy_pairs
from training.losses.gram import gram_loss, resize_patch_features
from training.losses.ibot import ibot_masked_loss
from training.losses.koleo import koleo_loss

__all__ = ["DINOLoss", "SoftmaxCentering", "cross_entropy_pairs", "gram_loss", "ibot_masked_loss", "koleo_loss", "resize_patch_features", "sinkhorn_knopp"]
