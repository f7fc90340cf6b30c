"""`bench pretrain`: produce an initialization (SimCLR, MoCo/MedAug, ConVIRT, CLIP, supervised)."""

from __future__ import annotations

import argparse

HELP = "pretrain an encoder (simclr, moco, convirt, clip, supervised) under one backbone"

_DESCRIPTION = """\
Pretrain a torchvision ResNet with one method on a chest X-ray corpus and register it
in the user catalogue, so `bench run --init NAME` evaluates it. Every method uses the
same backbone and data, so they compare fairly (Mueller et al. 2022). Flags left out
take the method's published recipe (below); every value is recorded in
OUT/NAME/pretrain.json.

Data layouts (--layout, auto-detected): mimic (MIMIC-CXR-JPG + reports), chexpert,
openi (Indiana University), nih (ChestX-ray14; it contains the RSNA and SIIM-ACR
images, so both become seen tasks of the result: the leakage guard flags them). `bench synth --task pretrain --out DIR` writes a synthetic
corpus (MIMIC layout, with reports) to try it.

Multi-GPU / multi-node: run the same command under torchrun, e.g.
  torchrun --nproc-per-node 4 -m bench pretrain --method convirt ...
--batch-size is the global batch; contrastive losses see all of it.
"""


def _recipes() -> str:
    from bench.pretrain.methods import all_methods

    lines = ["methods and their recipes:"]
    for m in all_methods():
        d = ", ".join(f"{k} {v}" for k, v in m.defaults.items())
        lines.append(f"  {m.name:<10} {m.recipe}\n             defaults: {d}\n             {m.citation}")
    return "\n".join(lines)


def add_parser(sub, epilog: str) -> None:
    from bench.pretrain.methods import METHOD_NAMES
    from bench.pretrain.pairs import LATERALITY, POSITIVES
    from corpora import LAYOUTS

    p = sub.add_parser("pretrain", help=HELP, description=_DESCRIPTION, epilog=_recipes() + "\n\n" + epilog,
                       formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    g = p.add_argument_group("what to pretrain")
    g.add_argument("--method", choices=METHOD_NAMES, required=True)
    g.add_argument("--data", required=True, help="corpus root in one of the layouts above")
    g.add_argument("--out", default="pretrained", help="parent folder of the output (default: %(default)s)")
    g.add_argument("--name", required=True,
                   help="name of the result: folder OUT/NAME and the --init name (not a packaged init's name)")
    g.add_argument("--layout", choices=LAYOUTS, help="the corpus layout (default: auto-detected)")
    g.add_argument("--views", choices=("frontal", "all"), default="frontal",
                   help="frontal (PA/AP) images only, or every view (default: %(default)s)")
    g.add_argument("--resume", action="store_true",
                   help="continue OUT/NAME after its last finished epoch (refused if settings differ)")
    g = p.add_argument_group("training (default: the method's recipe)")
    g.add_argument("--arch", choices=("resnet18", "resnet34", "resnet50"), default="resnet50",
                   help="(default: %(default)s)")
    g.add_argument("--image-size", type=int)
    g.add_argument("--epochs", type=int)
    g.add_argument("--batch-size", type=int, help="global batch over all processes")
    g.add_argument("--lr", type=float)
    g.add_argument("--weight-decay", type=float)
    g.add_argument("--optimizer", choices=("adam", "adamw", "sgd"))
    g.add_argument("--seed", type=int, default=0, help="(default: %(default)s)")
    g.add_argument("--device", default="auto", help="auto, cpu, cuda (default: %(default)s)")
    g.add_argument("--workers", type=int, default=0, help="DataLoader workers (default: %(default)s)")
    g = p.add_argument_group("method options (default: the method's recipe)")
    g.add_argument("--temperature", type=float,
                   help="contrastive temperature (clip: fixed at this value instead of learnable)")
    g.add_argument("--proj-dim", type=int, help="projection width")
    g.add_argument("--queue-size", type=int, help="moco: keys in the queue")
    g.add_argument("--momentum", type=float, help="moco: momentum of the key encoder")
    g.add_argument("--positives", choices=POSITIVES, help="moco (MedAug): where the key image comes from")
    g.add_argument("--laterality", choices=LATERALITY, help="moco (MedAug): view of the key relative to the query")
    g.add_argument("--lam", type=float, help="convirt: weight of the image->text loss")
    g.add_argument("--text-encoder", help="convirt/clip: 'builtin' (a small BERT trained from scratch) or a "
                                          "Hugging Face model folder on disk (never downloaded)")  # fmt: skip
    g.add_argument("--text-max-length", type=int, help="convirt/clip: tokens per sentence")
    g.add_argument("--crop-scale", type=float,
                   help="simclr: smallest random-resized-crop scale (recipe 0.08; raise it for tiny images)")
    g.add_argument("--freeze-text-layers", type=int,
                   help="convirt/clip: BERT layers (with the embeddings) kept frozen for a --text-encoder folder")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=main)


def main(args) -> int:
    from bench.pretrain.settings import PretrainSettings
    from bench.pretrain.train import pretrain

    fields = ("method", "data", "out", "name", "layout", "views", "arch", "image_size", "epochs", "batch_size",
              "lr", "weight_decay", "optimizer", "seed", "device", "workers", "temperature", "proj_dim",
              "queue_size", "momentum", "positives", "laterality", "lam", "text_encoder", "text_max_length",
              "freeze_text_layers", "crop_scale")  # fmt: skip
    settings = PretrainSettings(**{k: getattr(args, k) for k in fields})
    pretrain(settings, resume=args.resume, progress=not args.quiet)
    return 0
