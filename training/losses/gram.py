"""DINOv3's Gram anchoring loss: the student's patch-to-patch similarities follow a Gram teacher's.

For each image (`img_level`) the Gram matrix of its L2-normalised patch features, [P, P], is
computed for the student and for the Gram teacher (an earlier copy of the EMA teacher, possibly at
higher resolution with its features resized to the student's grid), and the loss is the mean squared
difference of the two matrices. It constrains only the similarity structure of the patch features
(their local consistency), not the features themselves.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def gram_loss(student: torch.Tensor, teacher: torch.Tensor, normalized: bool = True, img_level: bool = True,
              remove_neg: bool = False) -> torch.Tensor:
    """MSE between Gram matrices of student and teacher patch features [B, P, D] (float32)."""
    student, teacher = student.float(), teacher.float()
    if normalized:
        student, teacher = F.normalize(student, dim=-1), F.normalize(teacher, dim=-1)
    if not img_level:
        student, teacher = student.flatten(0, 1), teacher.flatten(0, 1)
    g_student = student @ student.transpose(-1, -2)
    g_teacher = teacher @ teacher.transpose(-1, -2)
    if remove_neg:
        g_student, g_teacher = g_student.clamp(min=0), g_teacher.clamp(min=0)
    return F.mse_loss(g_student, g_teacher)


def resize_patch_features(patches: torch.Tensor, grid: tuple[int, int], size: tuple[int, int]) -> torch.Tensor:
    """[B, h*w, D] features on an h x w grid -> [B, H*W, D] on `size` (bicubic, no antialias, as DINOv3
    resizes its high-resolution Gram teacher's output)."""
    if tuple(grid) == tuple(size):
        return patches
    b, _, d = patches.shape
    x = patches.transpose(1, 2).reshape(b, d, *grid).float()
    x = F.interpolate(x, size=size, mode="bicubic", align_corners=False, antialias=False)
    return x.flatten(2).transpose(1, 2).to(patches.dtype)
