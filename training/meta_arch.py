"""Student, teacher and the DINOv2 objective.

`SSLMetaArch(cfg)` holds `student` and `teacher` (`ModuleDict`s with `backbone`, `dino_head` and,
with `ibot.separate_head`, `ibot_head`), the teacher centering state and, with `gram.enabled`,
DINOv3's `gram_teacher` (a backbone copied from the EMA teacher at scheduled iterations). `forward(batch, teacher_temp)`
returns the total loss and its parts; `update_teacher(momentum)` is the EMA step.

Self-distillation: the teacher starts as a copy of the student and follows it by EMA.
Distillation (`teacher_payload` given): the teacher is a frozen, loaded backbone + heads, the
student's heads take the teacher's head shapes, and `student_ema` (an EMA of the student, the
model DINOv2 keeps from distillation) is what gets exported.
"""
from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from training.losses import DINOLoss, SoftmaxCentering, gram_loss, ibot_masked_loss, koleo_loss, resize_patch_features, sinkhorn_knopp
from training.models import DINOHead, build_vit
from training.models.vit import arch_kwargs


def student_arch(cfg: Any) -> dict[str, Any]:
    """Keyword arguments of `build_vit` for the student backbone (what exports store)."""
    m = cfg.model
    extra = {k: m[k] for k in ("embed_dim", "depth", "num_heads", "ffn_layer") if m[k] is not None}
    return arch_kwargs(
        m.arch, img_size=int(m.img_size or cfg.crops.global_crops_size), patch_size=int(m.patch_size),
        drop_path_rate=float(m.drop_path_rate), layerscale_init=float(m.layerscale_init),
        num_register_tokens=int(m.num_register_tokens), qkv_bias=m.qkv_bias, proj_bias=m.proj_bias,
        ffn_bias=m.ffn_bias, interpolate_antialias=m.interpolate_antialias,
        interpolate_offset=float(m.interpolate_offset), mlp_ratio=float(m.mlp_ratio), norm_eps=float(m.norm_eps),
        pos_embed=m.pos_embed, rope_base=float(m.rope_base),
        rope_rescale_coords=None if m.rope_rescale_coords is None else float(m.rope_rescale_coords),
        mask_k_bias=bool(m.mask_k_bias), swiglu_align=int(m.swiglu_align), **extra,
    )


def head_config(cfg: Any) -> dict[str, Any]:
    """Shapes of the DINO and iBOT heads (stored with distillation teachers)."""
    d, i = cfg.dino, cfg.ibot
    return {
        "dino": dict(out_dim=d.head_n_prototypes, nlayers=d.head_nlayers, hidden_dim=d.head_hidden_dim, bottleneck_dim=d.head_bottleneck_dim),
        "ibot": dict(out_dim=i.head_n_prototypes, nlayers=i.head_nlayers, hidden_dim=i.head_hidden_dim, bottleneck_dim=i.head_bottleneck_dim),
        "separate": bool(i.separate_head),
    }


def build_network(arch: dict[str, Any], heads: dict[str, Any]) -> nn.ModuleDict:
    backbone = build_vit(**arch)
    parts = {"backbone": backbone, "dino_head": DINOHead(backbone.embed_dim, **heads["dino"])}
    if heads["separate"]:
        parts["ibot_head"] = DINOHead(backbone.embed_dim, **heads["ibot"])
    return nn.ModuleDict(parts)


def _set_drop_path(backbone: nn.Module, rate: float) -> None:
    for block in backbone.blocks:
        block.drop_path = rate


class SSLMetaArch(nn.Module):
    def __init__(self, cfg: Any, teacher_payload: dict[str, Any] | None = None,
                 init_backbone: dict[str, torch.Tensor] | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.distillation = teacher_payload is not None
        self.arch = student_arch(cfg)
        if self.distillation:
            self.heads = teacher_payload["heads"]["config"]
            self.student = build_network(self.arch, self.heads)
            if init_backbone is not None:
                self.student["backbone"].load_state_dict(init_backbone, strict=True)
            t_arch = dict(teacher_payload["arch"], drop_path_rate=0.0)
            self.teacher = build_network(t_arch, self.heads)
            state = {f"backbone.{k}": v for k, v in teacher_payload["state_dict"].items()}
            state.update(teacher_payload["heads"]["state_dict"])
            self.teacher.load_state_dict(state, strict=True)
            self.student_ema = copy.deepcopy(self.student)
            _set_drop_path(self.student_ema["backbone"], 0.0)
            self.student_ema.requires_grad_(False)
        else:
            self.heads = head_config(cfg)
            self.student = build_network(self.arch, self.heads)
            if init_backbone is not None:  # continued pretraining: backbones from a checkpoint, heads fresh
                self.student["backbone"].load_state_dict(init_backbone, strict=True)
            self.teacher = copy.deepcopy(self.student)
            _set_drop_path(self.teacher["backbone"], 0.0)
        self.teacher.requires_grad_(False)
        # DINOv3's Gram anchoring: a frozen copy of the EMA backbone, refreshed now and then (`refresh_gram`).
        self.gram = bool(cfg.gram.enabled)
        if self.gram:
            self.gram_teacher = copy.deepcopy(self.ema_target["backbone"])
            self.gram_teacher.requires_grad_(False)
        self.dino_loss = DINOLoss(float(cfg.dino.student_temp))
        self.dino_center = SoftmaxCentering(self.heads["dino"]["out_dim"], float(cfg.teacher.center_momentum))
        ibot_dim = self.heads["ibot" if self.heads["separate"] else "dino"]["out_dim"]
        self.ibot_center = SoftmaxCentering(ibot_dim, float(cfg.teacher.center_momentum))

    def train(self, mode: bool = True) -> "SSLMetaArch":
        super().train(mode)
        self.teacher.eval()  # the teacher never drops paths
        if self.distillation:
            self.student_ema.eval()
        if self.gram:
            self.gram_teacher.eval()
        return self

    @property
    def ema_target(self) -> nn.ModuleDict:
        """The network the EMA writes into: the teacher, or `student_ema` when distilling."""
        return self.student_ema if self.distillation else self.teacher

    @property
    def final_backbone(self) -> nn.Module:
        """The backbone to export: the EMA teacher (self-distillation) or the student EMA (distillation)."""
        return self.ema_target["backbone"]

    def _heads(self, net: nn.ModuleDict, cls: torch.Tensor, patches: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """DINO logits of `cls` and iBOT logits of `patches`; one head call when the head is shared."""
        if self.heads["separate"]:
            return net["dino_head"](cls), net["ibot_head"](patches)
        out = net["dino_head"](torch.cat([cls, patches]))
        return out[: cls.shape[0]], out[cls.shape[0] :]

    def _centered(self, logits: torch.Tensor, center: SoftmaxCentering, temp: float) -> torch.Tensor:
        if self.cfg.teacher.centering == "sinkhorn_knopp":
            return sinkhorn_knopp(logits, temp, int(self.cfg.teacher.sinkhorn_iterations))
        probs = center(logits, temp)
        center.update(logits)
        return probs

    @torch.no_grad()
    def teacher_targets(self, batch: dict[str, torch.Tensor], teacher_temp: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Teacher probabilities for the CLS of each global crop and for each masked patch."""
        out = self.teacher["backbone"].forward_features(batch["global_crops"])
        patches = out["patches"].flatten(0, 1)[batch["mask_indices"]]
        cls_logits, patch_logits = self._heads(self.teacher, out["cls"], patches)
        return (self._centered(cls_logits.float(), self.dino_center, teacher_temp),
                self._centered(patch_logits.float(), self.ibot_center, teacher_temp))

    def gram_refresh_due(self, iteration: int) -> bool:
        """Whether the Gram teacher is (re)copied from the EMA teacher before this iteration's step: at
        `gram.start_iteration`, then every `gram.update_frequency` iterations, `gram.max_updates` times."""
        g = self.cfg.gram
        if not self.gram or iteration < int(g.start_iteration):
            return False
        k, rest = divmod(iteration - int(g.start_iteration), int(g.update_frequency))
        return rest == 0 and (g.max_updates is None or k <= int(g.max_updates))

    @torch.no_grad()
    def refresh_gram(self) -> None:
        """Gram teacher <- EMA backbone (local shards under FSDP: both are sharded alike)."""
        src = [_local(p) for p in self.ema_target["backbone"].parameters()]
        dst = [_local(p) for p in self.gram_teacher.parameters()]
        torch._foreach_copy_(dst, src)

    def gram_anchoring(self, batch: dict[str, torch.Tensor], student_patches: torch.Tensor) -> torch.Tensor:
        """Gram loss between the student's patch features of the (masked) global crops and the Gram
        teacher's on the Gram crops (`gram_crops`, or the global crops), resized to the student's grid."""
        g = self.cfg.gram
        crops = batch.get("gram_crops", batch["global_crops"])
        with torch.no_grad():
            teacher = self.gram_teacher.forward_features(crops)["patches"]
        p = self.arch["patch_size"]
        student_grid = (batch["global_crops"].shape[-2] // p, batch["global_crops"].shape[-1] // p)
        teacher = resize_patch_features(teacher, (crops.shape[-2] // p, crops.shape[-1] // p), student_grid)
        return gram_loss(student_patches, teacher, bool(g.normalized), bool(g.img_level), bool(g.remove_neg))

    def forward(self, batch: dict[str, torch.Tensor], teacher_temp: float,
                gram_weight: float = 0.0) -> tuple[torch.Tensor, dict[str, float]]:
        cfg = self.cfg
        n_global, n_local = int(batch["n_global"]), int(batch["n_local"])
        t_cls, t_patches = self.teacher_targets(batch, teacher_temp)

        backbone = self.student["backbone"]
        g = backbone.forward_features(batch["global_crops"], masks=batch["masks"])
        cls = [g["cls"]]
        if n_local:
            cls.append(backbone.forward_features(batch["local_crops"])["cls"])
        patches = g["patches"].flatten(0, 1)[batch["mask_indices"]]
        cls_logits, patch_logits = self._heads(self.student, torch.cat(cls), patches)
        n_g = g["cls"].shape[0]
        dino_global, dino_local = self.dino_loss(cls_logits[:n_g], cls_logits[n_g:] if n_local else None, t_cls, n_global, n_local)
        ibot = ibot_masked_loss(patch_logits, t_patches, batch["masks"], float(cfg.dino.student_temp))
        koleo = sum(koleo_loss(c) for c in g["cls"].chunk(n_global))

        total = (float(cfg.dino.loss_weight) * (dino_global + dino_local)
                 + float(cfg.ibot.loss_weight) * ibot + float(cfg.dino.koleo_loss_weight) * koleo)
        parts = {"dino_global": dino_global.detach(), "dino_local": dino_local.detach(), "ibot": ibot.detach(), "koleo": koleo.detach()}
        if self.gram:  # logged (as 0 before the Gram phase) whenever the option is on
            gram = self.gram_anchoring(batch, g["patches"]) if gram_weight > 0 else koleo.new_zeros(())
            total = total + gram_weight * gram
            parts["gram"] = gram.detach()
        return total, parts

    @torch.no_grad()
    def update_teacher(self, momentum: float) -> None:
        """EMA: target = momentum * target + (1 - momentum) * student, on local shards under FSDP."""
        src = [_local(p) for p in self.student.parameters()]
        dst = [_local(p) for p in self.ema_target.parameters()]
        torch._foreach_lerp_(dst, src, 1.0 - momentum)


def _local(t: torch.Tensor) -> torch.Tensor:
    to_local = getattr(t, "to_local", None)
    return to_local() if to_local is not None else t
