"""The training loop; `python -m training.train` is the torchrun entry point, `lvd train` calls `run_training`.

    torchrun --nproc_per_node=8 -m training.train --config training/configs/vitl14.yaml \
        --data gs://bucket/lvd/output --out runs/vitl14 [key=value ...]

One iteration: teacher targets -> student losses -> backward -> per-module gradient clipping ->
AdamW step with scheduled lr / weight decay -> EMA teacher update. Every rank seeds its RNG from
(seed, iteration, rank), so a resumed run draws the same drop-path subsets. Outputs under `--out`:
`config.yaml`, `log.jsonl` (one line per logged iteration), `checkpoints/step_*`, and at the end
`backbone.pth` (the exported teacher, see `training.export`).
"""
from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import torch

from curation.core.errors import UserError
from training import distributed as dist_utils
from training.arguments import add_arguments, init_overrides
from training.checkpoint import checkpoint_dirs, load_checkpoint, save_checkpoint
from training.config import Config, load_config, save_config
from training.data.augment import CropSpec
from training.data.loader import DataState, HomogeneousSpec, MaskSpec, MultiCropBatches, build_loader
from training.data.shards import list_shards, plan_dataset_units, plan_units
from training.export import IMAGENET_MEAN, IMAGENET_STD, save_backbone, teacher_payload
from training.meta_arch import SSLMetaArch
from training.official_init import apply_init_arch, read_init
from training.models import build_vit
from training.optim import apply_schedules, build_optimizer
from training.schedules import build_schedules

log = logging.getLogger("training")


def pick_device() -> torch.device:
    if torch.cuda.is_available():
        device = torch.device("cuda", dist_utils.local_rank())
        torch.cuda.set_device(device)
        return device
    return torch.device("cpu")


def use_bf16(cfg: Config, device: torch.device) -> bool:
    p = cfg.train.precision
    return p == "bf16" or (p == "auto" and device.type == "cuda")


def gram_crop_size(cfg: Config, global_size: int) -> int:
    """Side of the Gram teacher's crops: `gram.teacher_crops_scale` x the global side, in whole patches."""
    patch = int(cfg.model.patch_size)
    return max(1, round(global_size * float(cfg.gram.teacher_crops_scale) / patch)) * patch


def crop_spec(cfg: Config, highres: bool) -> CropSpec:
    c = cfg.crops
    sizes = cfg.highres if highres else c
    gram = gram_crop_size(cfg, int(sizes.global_crops_size)) if cfg.gram.enabled else 0
    return CropSpec(global_size=int(sizes.global_crops_size), local_size=int(sizes.local_crops_size),
                    global_scale=tuple(c.global_crops_scale), local_scale=tuple(c.local_crops_scale),
                    n_local=int(c.local_crops_number), blur_as_official=bool(c.blur_as_official),
                    mean=IMAGENET_MEAN, std=IMAGENET_STD, gram_size=gram)


def shard_meta_arch(meta: SSLMetaArch, bf16: bool) -> None:
    """FSDP2 over blocks, backbones and heads of every network of the meta-architecture."""
    from torch.distributed.fsdp import register_fsdp_forward_method

    nets = [meta.student, meta.teacher] + ([meta.student_ema] if meta.distillation else [])
    nets += [{"backbone": meta.gram_teacher}] if meta.gram else []
    for net in nets:
        backbone = net["backbone"]
        dist_utils.shard_model(backbone, list(backbone.blocks), bf16)
        register_fsdp_forward_method(backbone, "forward_features")
        for name in ("dino_head", "ibot_head"):
            if name in net:
                dist_utils.shard_model(net[name], [], bf16)


def clip_gradients(meta: SSLMetaArch, max_norm: float) -> dict[str, float]:
    """Clip backbone and each head separately (DINOv2); returns the pre-clip norms."""
    norms = {}
    for name, module in meta.student.items():
        params = [p for p in module.parameters() if p.grad is not None]
        if params and max_norm > 0:
            norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
            norms[f"grad_norm_{name}"] = float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)
    return norms


def training_step(meta: SSLMetaArch, optimizer: torch.optim.Optimizer, batch: dict[str, Any], values: dict[str, float],
                  clip_grad: float, bf16: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, float]]:
    """One optimisation step at schedule `values`; returns (loss, loss parts, gradient norms)."""
    apply_schedules(optimizer, values["lr"], values["last_layer_lr"], values["weight_decay"])
    optimizer.zero_grad(set_to_none=True)
    device_type = batch["global_crops"].device.type
    with torch.autocast(device_type, dtype=torch.bfloat16, enabled=bf16):
        loss, parts = meta(batch, values["teacher_temp"], values.get("gram_weight", 0.0))
    if not torch.isfinite(loss):
        raise RuntimeError(f"non-finite loss: {({k: float(v) for k, v in parts.items()})}")
    loss.backward()
    norms = clip_gradients(meta, clip_grad)
    optimizer.step()
    meta.update_teacher(values["momentum"])
    return loss, parts, norms


def export_final_backbone(meta: SSLMetaArch, path: Path, img_size: int) -> Path | None:
    """Collective: gather the (possibly sharded) final backbone; rank 0 writes it as `lvd-backbone/v1`."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    state = get_model_state_dict(meta.final_backbone, options=options)
    if dist_utils.rank() != 0:
        return None
    backbone = build_vit(**meta.arch)
    backbone.load_state_dict(state)
    return save_backbone(backbone, path, meta.arch, img_size, IMAGENET_MEAN, IMAGENET_STD)


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: (v.to(device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in batch.items()}


def iteration_seed(seed: int, iteration: int, rank: int) -> int:
    return (seed * 1_000_003 + iteration * 7919 + rank) % (2**63)


class ProgressLog:
    """Rank 0's `log.jsonl` (one record per logged iteration) and progress lines with throughput and ETA.

    On resume, records past the resumed iteration (written by the interrupted run after its last
    checkpoint) are dropped, so the file holds each iteration once.
    """

    def __init__(self, path: Path, start: int, total: int, global_batch: int, active: bool) -> None:
        self.path, self.total, self.global_batch, self.active = path, total, global_batch, active
        self.last_it, self.last_t = start, time.perf_counter()
        if active and path.exists():
            kept = [l for l in path.read_text().splitlines() if l.strip() and json.loads(l).get("iteration", -1) < start]
            path.write_text("".join(l + "\n" for l in kept))

    def record(self, it: int, loss: torch.Tensor, parts: dict[str, torch.Tensor], extra: dict[str, float]) -> dict[str, Any]:
        """Collective (averages the losses over ranks); returns the record."""
        stats = torch.stack([loss.detach().float()] + [v.float() for v in parts.values()])
        stats = (dist_utils.all_reduce_sum(stats) / dist_utils.world_size()).tolist()
        now = time.perf_counter()
        seconds = (now - self.last_t) / max(it + 1 - self.last_it, 1)
        self.last_it, self.last_t = it + 1, now
        rec = {"iteration": it, "loss": stats[0], **dict(zip(parts, stats[1:])), **extra,
               "seconds_per_iteration": seconds, "images_per_second": self.global_batch / seconds}
        if self.active:
            with self.path.open("a") as f:
                f.write(json.dumps(rec) + "\n")
            eta = seconds * (self.total - it - 1)
            log.info("it %d/%d loss %.4f (dino %.3f/%.3f ibot %.3f koleo %.3f) lr %.2e %.1f img/s eta %.0fs", it + 1,
                     self.total, rec["loss"], rec["dino_global"], rec["dino_local"], rec["ibot"], rec["koleo"], rec["lr"],
                     rec["images_per_second"], eta)
        return rec


def _data_state(ds: DataState) -> dict[str, Any]:
    states = dist_utils.all_gather_objects(ds)
    return states[0].merged(states[1:]).to_json()


def run_training(cfg: Config, data: str, out_dir: str | Path, distill_from: str | None = None) -> dict[str, Any]:
    """Train (or resume the run in `out_dir`); returns a summary with the last losses and paths."""
    device = pick_device()
    dist_utils.init_from_env(device)
    rank, world = dist_utils.rank(), dist_utils.world_size()
    shard_paths = list_shards(data)  # before creating anything: a wrong --data leaves no trace
    out = Path(out_dir)
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
    bf16 = use_bf16(cfg, device)
    batch = int(cfg.train.batch_size_per_gpu)
    sched = build_schedules(cfg, batch * world)
    readers = max(int(cfg.data.num_workers), 1)

    found = checkpoint_dirs(out)
    init_state = None
    if cfg.model.init:
        name, init_arch, init_state = read_init(cfg.model.init)
        apply_init_arch(cfg, name, init_arch)
        if found:
            init_state = None  # resuming: the run's checkpoint holds the weights
        else:
            log.info("initialising student and teacher backbones from %s (%s)", cfg.model.init, name)

    torch.manual_seed(int(cfg.train.seed))  # identical initial weights on every rank
    payload = teacher_payload(distill_from) if distill_from else None
    meta = SSLMetaArch(cfg, payload, init_state).to(device)
    del init_state
    meta.train()
    if world > 1:
        shard_meta_arch(meta, bf16)
    if cfg.train.compile and device.type == "cuda":
        for block in meta.student["backbone"].blocks:
            block.compile()
    optimizer = build_optimizer(meta.student, len(meta.student["backbone"].blocks), cfg)

    start, data_state = 0, None
    if found:
        state = load_checkpoint(found[-1], meta, optimizer)
        start, data_state = int(state["iteration"]), DataState.from_json(state["data"])
        log.info("resumed from %s (iteration %d, %d ranks before, %d now)", found[-1], start, state["world_size"], world)
    if data_state is None:
        streams = int(cfg.data.num_streams) or world * readers
        data_state = DataState(streams, layout=(world, readers))
    units = plan_units(shard_paths, min_units=data_state.num_streams)
    homogeneous = None
    if cfg.data.homogeneous_dataset:
        dataset = str(cfg.data.homogeneous_dataset)
        homogeneous = HomogeneousSpec(dataset, float(cfg.data.homogeneous_fraction),
                                      tuple(plan_dataset_units(shard_paths, dataset, min_units=data_state.num_streams)))

    total = sched.total_iters
    stop = min(total, int(cfg.train.max_steps)) if cfg.train.max_steps else total
    highres_start = total - int(cfg.highres.iterations) if int(cfg.highres.iterations) > 0 else total + 1
    if rank == 0:
        save_config(cfg, out / "config.yaml")  # the config in force now (overrides may change on resume)
    config_text = (out / "config.yaml").read_text() if rank == 0 else ""
    progress = ProgressLog(out / "log.jsonl", start, total, batch * world, active=rank == 0)

    def make_iter(it: int):
        ds = MultiCropBatches(units, data_state, batch, crop_spec(cfg, it >= highres_start),
                              MaskSpec(tuple(cfg.ibot.mask_ratio_min_max), float(cfg.ibot.mask_sample_probability)),
                              int(cfg.model.patch_size), int(cfg.train.seed), rank, world, int(cfg.data.num_workers),
                              int(cfg.data.shuffle_buffer), steps_done=it, homogeneous=homogeneous)
        return iter(build_loader(ds, pin_memory=device.type == "cuda"))

    def checkpoint(it: int) -> Path:
        trainer_state = {"data": _data_state(data_state), "world_size": world, "arch": meta.arch,
                         "heads": meta.heads, "distillation": meta.distillation}
        return save_checkpoint(out, it, meta, optimizer, trainer_state, config_text, int(cfg.train.keep_checkpoints))

    batches = make_iter(start)
    last: dict[str, Any] = {}
    for it in range(start, stop):
        if it == highres_start and it != start:
            batches = make_iter(it)
        step = next(batches)
        data_state.update(step.pop("data_state"))
        step.pop("seed_datasets", None)
        homogeneous_batch = step.pop("homogeneous", None)
        step = to_device(step, device)
        torch.manual_seed(iteration_seed(int(cfg.train.seed), it, rank))
        values = sched.at(it)
        if meta.gram:
            if meta.gram_refresh_due(it):
                meta.refresh_gram()
            values["gram_weight"] = float(cfg.gram.loss_weight) if it >= int(cfg.gram.start_iteration) else 0.0
        loss, parts, norms = training_step(meta, optimizer, step, values, float(cfg.optim.clip_grad), bf16)
        done = it + 1
        if done % int(cfg.train.log_period) == 0 or done == stop or it == start:
            extra = {"global_crops_size": int(step["global_crops"].shape[-1])}
            if homogeneous_batch is not None:
                extra["homogeneous"] = float(homogeneous_batch)
            last = progress.record(it, loss, parts, {**values, **norms, **extra})
        if done % int(cfg.train.checkpoint_period) == 0 or done == stop:
            checkpoint(done)
    summary: dict[str, Any] = {"iterations": stop, "last": last, "out": str(out)}
    if stop == total:
        path = export_final_backbone(meta, out / "backbone.pth", int(cfg.crops.global_crops_size))
        if path is not None:
            summary["backbone"] = str(path)
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    """torchrun entry point: same arguments as `lvd train`."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m training.train", description=__doc__.splitlines()[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        cfg = load_config(args.config, init_overrides(args))
        run_training(cfg, args.data, args.out, args.distill_from)
    except UserError as exc:
        print(f"training: error: {exc}", file=sys.stderr)
        return 2
    finally:
        dist_utils.teardown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
