"""`lvd export`: a training checkpoint's final backbone as a file `lvd embed --model` loads."""
from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="export a trained backbone (lvd-backbone/v1) for `lvd embed --model`",
        description="Write the EMA teacher backbone (the student EMA for distillation runs) of a training "
        "checkpoint or run directory (its latest checkpoint) as an lvd-backbone/v1 file.",
    )
    p.add_argument("checkpoint", help="training run directory or checkpoints/step_* directory")
    p.add_argument("--out", required=True, help="output file, e.g. backbone.pth")
    p.add_argument("--with-heads", action="store_true", help="include the DINO/iBOT heads (a teacher for --distill-from)")
    p.add_argument("--format", choices=["lvd", "dinov2", "dinov3"], default="lvd",
                   help="lvd: lvd-backbone/v1 for lvd embed (default); dinov2 / dinov3: a plain state dict in the "
                   "official key layout, which torch.hub's builders and timm's vit_*_dinov2 / vit_*_dinov3 load as is")
    p.add_argument("--native-grid", action="store_true",
                   help="dinov2 format: keep the position table of the training resolution instead of resampling it "
                   "to the released 37 x 37 grid (518 px at patch 14) that torch.hub's builders expect")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from training.export import export_checkpoint, export_official, load_backbone

    if args.format != "lvd":
        if args.with_heads:
            from curation.core.errors import UserError

            raise UserError("--with-heads is for the lvd format (distillation teachers)")
        path, arch = export_official(args.checkpoint, args.out, args.format, args.native_grid)
        print(f"wrote {path}: {args.format} layout, ViT dim {arch.get('embed_dim')} depth {arch.get('depth')} "
              f"heads {arch.get('num_heads')} patch {arch.get('patch_size')}, registers {arch.get('num_register_tokens')}, "
              f"built for {arch.get('img_size')} px")
        return 0

    path = export_checkpoint(args.checkpoint, args.out, with_heads=args.with_heads)
    _, info = load_backbone(path)
    arch = info["arch"]
    print(f"wrote {path}: ViT dim {info['embed_dim']} depth {arch.get('depth')} patch {arch.get('patch_size')}, "
          f"img_size {info['img_size']}" + (", with heads" if args.with_heads else ""))
    return 0
