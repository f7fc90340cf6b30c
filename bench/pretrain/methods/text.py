"""The text side of the image-text methods: which text encoder, set up once per pretraining.

Owns :func:`text_encoder_for`: ``--text-encoder PATH`` (a Hugging Face model folder
on disk, loaded from local files only; ConVIRT freezes its embeddings and first 6
layers) or ``builtin`` (a small random BERT with a WordPiece tokenizer trained on the
pretraining reports, saved beside the checkpoint in ``text_encoder/``). Under DDP,
rank 0 builds the builtin encoder and the other ranks load what it saved.
"""

from __future__ import annotations

from bench.pretrain import text as txt


def report_sentences(records) -> list[list[str]]:
    return [r.report.sentences() if r.report is not None else [] for r in records]


def image_sentence_dataset(images, records, settings, ctx):
    """The items of both image-text methods: a view of the image and one report sentence."""
    from bench.pretrain.augment import image_text_transform
    from bench.pretrain.methods.items import ImageSentence

    return ImageSentence(images, report_sentences(records), image_text_transform(settings.image_size))


def text_encoder_for(settings, ctx, records, *, freeze: int, pooling: str) -> txt.TextEncoder:
    """The TextEncoder for ``settings.text_encoder`` ('builtin' or a folder); info into ctx.stats."""
    import torch.distributed as dist

    where = settings.text_encoder or "builtin"
    if where == "builtin":
        folder = ctx.out_dir / "text_encoder"
        sentences = [s for group in report_sentences(records) for s in group]
        if ctx.rank == 0 and not (folder / "config.json").exists():
            txt.build_builtin_text_encoder(sentences, folder, seed=settings.seed,
                                           max_length=settings.text_max_length)  # fmt: skip
        if ctx.world > 1:
            dist.barrier()
        model, tokenizer = txt.load_text_encoder(folder)
    else:
        model, tokenizer = txt.load_text_encoder(where)
        txt.freeze_bert_layers(model, freeze)
    encoder = txt.TextEncoder(model, tokenizer, max_length=settings.text_max_length, pooling=pooling)
    ctx.stats["text_encoder"] = {**txt.describe(model), "source": where, "pooling": pooling}
    return encoder
