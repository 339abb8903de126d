"""Config files: inheritance from default.yaml, bundled names, typed overrides, rejected typos."""
from __future__ import annotations

import pytest

from curation.core.errors import UserError
from training.config import DEFAULT_PATH, load_config


def test_bundled_configs_inherit_the_defaults():
    default = load_config()
    assert default.optim.base_lr == 0.004 and default.dino.head_n_prototypes == 65536 and default.crops.local_crops_size == 98
    g = load_config("vitg14")  # vitg14 -> vitl14 -> default
    assert g.model.arch == "vit_giant2" and g.train.batch_size_per_gpu == 12
    assert g.teacher.centering == "sinkhorn_knopp" and g.dino.head_n_prototypes == 131072 and g.ibot.separate_head
    assert g.optim.weight_decay == 0.04  # untouched default
    assert load_config("training/configs/tiny.yaml").model.embed_dim == load_config("tiny.yaml").model.embed_dim == 128


def test_overrides_are_typed():
    cfg = load_config("tiny", ["optim.base_lr=1e-3", "train.max_steps=7", "ibot.mask_ratio_min_max=[0.2, 0.4]",
                               "model.num_register_tokens=4", "crops.blur_as_official=true"])
    assert cfg.optim.base_lr == 0.001 and cfg.train.max_steps == 7 and cfg.ibot.mask_ratio_min_max == [0.2, 0.4]
    assert cfg.model.num_register_tokens == 4 and cfg.crops.blur_as_official is True
    for bad, message in [("optim.lr=1", "unknown config key 'optim.lr'"), ("train.batch_size_per_gpu=big", "must be int"),
                         ("crops.blur_as_official=1", "must be bool"), ("teacher.centering=ema", "teacher.centering"),
                         ("crops.global_crops_size=50", "multiple of model.patch_size"), ("noequals", "key.sub=value")]:
        with pytest.raises(UserError, match=message):
            load_config("tiny", [bad])


def test_bad_files(tmp_path):
    (tmp_path / "typo.yaml").write_text("_base_: " + str(DEFAULT_PATH) + "\noptim:\n  base_lrr: 1\n")
    with pytest.raises(UserError, match="unknown config key 'optim.base_lrr'"):
        load_config(tmp_path / "typo.yaml")
    (tmp_path / "a.yaml").write_text("_base_: b.yaml\n")
    (tmp_path / "b.yaml").write_text("_base_: a.yaml\n")
    with pytest.raises(UserError, match="loop"):
        load_config(tmp_path / "a.yaml")
    (tmp_path / "bad.yaml").write_text("model: [unclosed\n")
    with pytest.raises(UserError, match="not valid YAML"):
        load_config(tmp_path / "bad.yaml")
