"""Training checkpoints with torch distributed checkpoint (DCP): sharded save, resharded load.

Layout: `OUT/checkpoints/step_00000123/` holds the DCP files of `{"model", "optim"}` plus
`trainer_state.json` (iteration, data-stream positions, world size, network shapes) and
`config.yaml`. A checkpoint is written under a temporary name and renamed when complete, so a
killed run always leaves only complete checkpoints; resume picks the latest. DCP reshards on load,
so a run may resume on a different number of ranks.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

from curation.core.errors import UserError
from training.distributed import is_distributed, rank

STATE_FILE = "trainer_state.json"
FORMAT = "lvd-train-checkpoint/v1"


@contextlib.contextmanager
def _single_process_quiet():
    """DCP warns on every single-process save/load even when asked for one (`no_dist`); that is our intent."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield


def _barrier() -> None:
    if is_distributed():
        torch.distributed.barrier()


def checkpoint_dirs(root: str | Path) -> list[Path]:
    """Complete checkpoints under `root/checkpoints`, oldest first."""
    ckpts = Path(root) / "checkpoints"
    if not ckpts.is_dir():
        return []
    return sorted(p for p in ckpts.iterdir() if p.name.startswith("step_") and (p / STATE_FILE).is_file())


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint directory from a checkpoint itself or a run directory (its latest checkpoint)."""
    path = Path(path)
    if (path / STATE_FILE).is_file():
        return path
    found = checkpoint_dirs(path)
    if not found:
        raise UserError(f"no training checkpoint at {path} (expected a run directory with checkpoints/step_*)")
    return found[-1]


def read_trainer_state(ckpt: str | Path) -> dict[str, Any]:
    state = json.loads((Path(ckpt) / STATE_FILE).read_text())
    if state.get("format") != FORMAT:
        raise UserError(f"{ckpt} is not an {FORMAT} checkpoint")
    return state


def save_checkpoint(out_dir: str | Path, iteration: int, model: nn.Module, optimizer: torch.optim.Optimizer,
                    trainer_state: dict[str, Any], config_text: str, keep: int) -> Path:
    """Collective: every rank writes its shards; rank 0 finalises, renames and prunes old checkpoints."""
    root = Path(out_dir) / "checkpoints"
    final = root / f"step_{iteration:08d}"
    tmp = root / f".tmp-step_{iteration:08d}"
    if rank() == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    _barrier()
    model_sd, optim_sd = get_state_dict(model, optimizer)
    with _single_process_quiet():
        dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=str(tmp), no_dist=not is_distributed())
    if rank() == 0:
        payload = dict(trainer_state, format=FORMAT, iteration=iteration)
        (tmp / STATE_FILE).write_text(json.dumps(payload, indent=1, sort_keys=True))
        (tmp / "config.yaml").write_text(config_text)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        for old in checkpoint_dirs(out_dir)[:-keep] if keep > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    _barrier()
    return final


def load_checkpoint(ckpt: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Restore model and optimizer in place (any world size); returns the trainer state."""
    model_sd, optim_sd = get_state_dict(model, optimizer)
    state = {"model": model_sd, "optim": optim_sd}
    with _single_process_quiet():
        dcp.load(state, checkpoint_id=str(ckpt), no_dist=not is_distributed())
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
    return read_trainer_state(ckpt)


def load_submodule(ckpt: str | Path, module: nn.Module, prefix: str) -> None:
    """Load only `prefix.*` of the checkpointed model into a plain (unsharded) `module`, in one process."""
    own = module.state_dict()
    state = {"model": {f"{prefix}.{k}": v for k, v in own.items()}}
    with _single_process_quiet():
        dcp.load(state, checkpoint_id=str(ckpt), no_dist=True)
    module.load_state_dict({k[len(prefix) + 1 :]: v for k, v in state["model"].items()}, strict=True)
