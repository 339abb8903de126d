"""Schedules at key iterations and the optimizer's per-parameter multipliers."""
from __future__ import annotations

import math

import pytest

from training.config import load_config
from training.meta_arch import SSLMetaArch, build_network, head_config, student_arch
from training.optim import apply_schedules, build_optimizer, parameter_multipliers
from training.schedules import Cosine, build_schedules, scaled_lr


def test_cosine_key_points():
    c = Cosine(base=1.0, final=0.1, total=110, warmup=10, start=0.0)
    assert c(0) == 0.0
    assert c(5) == pytest.approx(0.5)
    assert c(10) == pytest.approx(1.0)
    assert c(60) == pytest.approx(0.55)  # halfway through the cosine: mean of base and final
    assert c(109) == pytest.approx(0.1, abs=1e-3)
    assert c(110) == c(10_000) == 0.1
    values = [c(i) for i in range(10, 110)]
    assert all(a >= b for a, b in zip(values, values[1:]))


def test_dinov2_default_schedules():
    cfg = load_config()  # default.yaml: 100 epochs x 1250 iterations
    s = build_schedules(cfg, global_batch=1024)
    e = 1250
    assert s.total_iters == 125_000
    assert scaled_lr(0.004, 256, "sqrt_wrt_1024") == pytest.approx(0.002)
    v0, v_warm, v_end = s.at(0), s.at(10 * e), s.at(125_000 - 1)
    assert v0["lr"] == 0.0 and v_warm["lr"] == pytest.approx(0.004)
    assert v_end["lr"] == pytest.approx(1e-6, rel=1e-2)
    assert v0["last_layer_lr"] == 0.0 and s.at(e - 1)["last_layer_lr"] == 0.0
    assert s.at(e)["last_layer_lr"] == s.at(e)["lr"] > 0
    assert v0["weight_decay"] == pytest.approx(0.04) and v_end["weight_decay"] == pytest.approx(0.4, rel=1e-4)
    assert s.at(62_500)["weight_decay"] == pytest.approx(0.22)
    assert v0["momentum"] == pytest.approx(0.992) and v_end["momentum"] == pytest.approx(1.0, abs=1e-7)
    assert v0["teacher_temp"] == pytest.approx(0.04)
    assert s.at(15 * e)["teacher_temp"] == pytest.approx(0.055)
    assert s.at(30 * e)["teacher_temp"] == s.at(100 * e)["teacher_temp"] == pytest.approx(0.07)


def test_layer_decay_patch_embed_and_weight_decay_multipliers():
    depth, d = 12, 0.9
    m = lambda name: parameter_multipliers(name, depth, d, 0.2)  # noqa: E731
    assert m("backbone.blocks.0.attn.qkv.weight")["lr_mult"] == pytest.approx(d**12)
    assert m("backbone.blocks.11.mlp.fc1.weight")["lr_mult"] == pytest.approx(d)
    assert m("backbone.pos_embed")["lr_mult"] == pytest.approx(d**13)
    assert m("backbone.patch_embed.proj.weight")["lr_mult"] == pytest.approx(d**13 * 0.2)
    assert m("backbone.norm.weight") == {"lr_mult": 1.0, "wd_mult": 0.0, "is_last_layer": False}
    assert m("dino_head.mlp.0.weight") == {"lr_mult": 1.0, "wd_mult": 1.0, "is_last_layer": False}
    assert m("dino_head.last_layer.weight_v")["is_last_layer"] is True
    assert m("backbone.blocks.3.ls1.gamma")["wd_mult"] == 0.0
    assert m("backbone.blocks.3.attn.qkv.bias")["wd_mult"] == 0.0


def test_optimizer_groups_follow_schedules():
    cfg = load_config("training/configs/tiny.yaml", ["optim.layerwise_decay=0.5"])
    student = build_network(student_arch(cfg), head_config(cfg))
    opt = build_optimizer(student, 4, cfg)
    n_params = sum(len(g["params"]) for g in opt.param_groups)
    assert n_params == len(list(student.parameters()))
    apply_schedules(opt, lr=1.0, last_layer_lr=0.0, weight_decay=0.1)
    by_param = {id(p): g for g in opt.param_groups for p in g["params"]}
    assert by_param[id(student["dino_head"].last_layer.weight_v)]["lr"] == 0.0
    assert by_param[id(student["backbone"].blocks[0].attn.qkv.weight)]["lr"] == pytest.approx(0.5**4)
    assert by_param[id(student["backbone"].patch_embed.proj.weight)]["lr"] == pytest.approx(0.5**5 * 0.2)
    assert by_param[id(student["backbone"].blocks[0].attn.qkv.weight)]["weight_decay"] == pytest.approx(0.1)
    assert by_param[id(student["backbone"].blocks[0].norm1.weight)]["weight_decay"] == 0.0


def test_teacher_starts_as_student_copy_and_follows_by_ema():
    cfg = load_config("training/configs/tiny.yaml")
    meta = SSLMetaArch(cfg)
    s, t = meta.student["backbone"].pos_embed, meta.teacher["backbone"].pos_embed
    assert t.data.equal(s.data) and not t.requires_grad
    before = t.detach().clone()
    s.data.add_(1.0)
    meta.update_teacher(0.75)
    assert t.detach().sub(before).mean().item() == pytest.approx(0.25, rel=1e-5)
    assert math.isclose(meta.teacher["backbone"].blocks[0].drop_path, 0.0)
    assert meta.student["backbone"].blocks[0].drop_path == pytest.approx(0.1)
