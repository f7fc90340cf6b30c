"""The text encoders of the image-text methods (ConVIRT, CLIP): a BERT and its tokenizer.

Owns two sources of a text encoder and the module that turns sentences into vectors:

* :func:`load_text_encoder` (``--text-encoder PATH``): a Hugging Face model folder on
  disk (e.g. Bio_ClinicalBERT), loaded with ``AutoModel`` / ``AutoTokenizer`` from local
  files only, with the Hub switched offline around the load. A folder that is not a
  model, or a Hub id, is a :class:`TextEncoderError` naming what is missing; nothing is
  ever downloaded. :func:`freeze_bert_layers` freezes the embeddings and the first
  layers (ConVIRT freezes embeddings + layers 0-5 of ClinicalBERT).
* :func:`build_builtin_text_encoder` (``builtin``): a small random BERT
  (``transformers.BertConfig``, initialized from a seed) and a BERT WordPiece tokenizer
  (``tokenizers``' WordPiece model, BERT normalizer and pre-tokenizer, [CLS]/[SEP]) whose
  vocabulary is the pretraining report sentences' words, both saved with
  ``save_pretrained`` (safetensors) so that :func:`load_text_encoder` reloads them.
* :class:`TextEncoder`: tokenize (pad, truncate) and pool the last hidden states to
  one vector per text. The default pooling is ConVIRT's: its text encoder is BERT
  followed by max-pooling over all output vectors (Zhang et al., "Contrastive Learning
  of Medical Visual Representations from Paired Images and Text", MLHC 2022,
  arXiv:2010.00747, method section), here over the non-padding tokens. ``"cls"`` (the
  [CLS] vector: for a BERT, the counterpart of CLIP's one-token [EOS] feature) and
  ``"mean"`` (masked mean) are the alternatives.

:func:`describe` is what a run record says about the text encoder.
"""

from __future__ import annotations

import json
import os
import string
import tempfile
from collections import Counter
from collections.abc import Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

POOLINGS = ("max", "mean", "cls")
BUILTIN_MARK = "cxrbench_builtin"  # extra key in a builtin encoder's config.json
SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
ALPHABET = string.ascii_lowercase + string.digits + string.punctuation
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin",
                "model.safetensors.index.json", "pytorch_model.bin.index.json")  # fmt: skip
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "spiece.model",
                   "sentencepiece.bpe.model", "tokenizer.model")  # fmt: skip
MUST_CONTAIN = (
    "No download is attempted. A text encoder folder must contain config.json (with "
    "model_type), the weights (model.safetensors or pytorch_model.bin) and the "
    "tokenizer files (tokenizer.json or vocab.txt, with tokenizer_config.json)."
)


class TextEncoderError(ValueError):
    """A text encoder that cannot be used: a folder that is not a model, a Hub id, bad settings."""


# --- route 1: a model folder on disk -------------------------------------------------


def _refuse(folder, missing: str) -> TextEncoderError:
    return TextEncoderError(f"text encoder {str(folder)!r}: {missing}. {MUST_CONTAIN}")


def _looks_like_hub_id(path) -> bool:
    text = str(path)
    return text.count("/") == 1 and not text.startswith(("/", ".", "~")) and "\\" not in text


def _not_a_path(path) -> TextEncoderError:
    name = path if _looks_like_hub_id(path) else "ORG/NAME"
    return _refuse(path, (
        "no such folder (Hub ids are not fetched: on a machine with network run "
        f"`hf download {name} --local-dir DIR` (older huggingface_hub: `huggingface-cli "
        f"download {name} --local-dir DIR`), copy DIR here and pass --text-encoder DIR)"
    ))  # fmt: skip


def _model_type(config_file: Path, folder: Path) -> str:
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise _refuse(folder, f"config.json is not readable JSON ({e})") from e
    if not isinstance(config, dict) or not config.get("model_type"):
        raise _refuse(folder, "config.json has no model_type")
    return str(config["model_type"])


def check_model_folder(path) -> Path:
    """The folder if it holds config.json (model_type), weights and a tokenizer; else the error."""
    folder = Path(path).expanduser()
    if not folder.exists():
        raise _not_a_path(path)
    if not folder.is_dir():
        raise _refuse(folder, "not a directory")
    if not (folder / "config.json").is_file():
        raise _refuse(folder, "no config.json")
    _model_type(folder / "config.json", folder)
    if not any((folder / name).is_file() for name in WEIGHT_FILES):
        raise _refuse(folder, f"no weights (none of {', '.join(WEIGHT_FILES)})")
    if not any((folder / name).is_file() for name in TOKENIZER_FILES):
        raise _refuse(folder, f"no tokenizer (none of {', '.join(TOKENIZER_FILES)})")
    return folder


@contextmanager
def hub_offline():
    """HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE on (env and huggingface_hub's flag), then restored."""
    import huggingface_hub.constants as hub_constants

    saved_env = {k: os.environ.get(k) for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    saved_flag = hub_constants.HF_HUB_OFFLINE
    os.environ.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    hub_constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        hub_constants.HF_HUB_OFFLINE = saved_flag
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextmanager
def _no_progress_bars():
    """transformers' own bars ("Loading weights", "Writing model shards") off for a while:
    a small model loads in milliseconds, and the bars ignore ``--quiet``."""
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            hf_logging.enable_progress_bar()


def load_text_encoder(path):
    """(model, tokenizer) from a Hugging Face model folder on disk; local files only."""
    folder = check_model_folder(path)
    from transformers import AutoModel, AutoTokenizer

    with hub_offline(), _no_progress_bars():
        try:
            model = AutoModel.from_pretrained(str(folder), local_files_only=True)
        except Exception as e:  # any failure here means the folder is not a usable model
            raise _refuse(folder, f"the model does not load ({e})") from e
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        except Exception as e:
            raise _refuse(folder, f"the tokenizer does not load ({e})") from e
    return model, tokenizer


def _bert_parts(model):
    base = getattr(model, "base_model", model)
    layers = getattr(getattr(base, "encoder", None), "layer", None)
    if getattr(base, "embeddings", None) is None or layers is None:
        raise TextEncoderError(
            f"cannot freeze BERT layers of a {type(model).__name__}: it has no "
            "'.embeddings' and '.encoder.layer' (a BertModel-like model is needed); "
            "pass 0 layers to freeze nothing"
        )
    return base.embeddings, layers


def freeze_bert_layers(model, n_layers: int = 6) -> int:
    """Freeze the embeddings and the first ``n_layers`` layers; the number of parameters frozen.

    ConVIRT (Zhang et al. 2022) freezes the embeddings and the first 6 layers of its
    ClinicalBERT and fine-tunes the last 6. ``n_layers=0`` freezes nothing.
    """
    if n_layers == 0:
        return 0
    embeddings, layers = _bert_parts(model)
    if not 0 < n_layers <= len(layers):
        raise TextEncoderError(f"cannot freeze {n_layers} layers of {len(layers)} (text encoder)")
    frozen = 0
    for module in [embeddings, *list(layers)[:n_layers]]:
        for p in module.parameters():
            frozen += p.numel() if p.requires_grad else 0
            p.requires_grad_(False)
    return frozen


# --- route 2: the builtin encoder ----------------------------------------------------


def _word_counts(sentences: Sequence[str]) -> Counter:
    """Words as BERT's normalizer (lower case, no accents) and pre-tokenizer split them, counted."""
    from tokenizers import normalizers, pre_tokenizers

    norm, pre = normalizers.BertNormalizer(lowercase=True), pre_tokenizers.BertPreTokenizer()
    counts: Counter = Counter()
    for sentence, n in Counter(sentences).items():  # reports repeat sentences: split each once
        for word, _ in pre.pre_tokenize_str(norm.normalize_str(sentence)):
            counts[word] += n
    return counts


def train_wordpiece(sentences: Sequence[str], vocab_size: int = 2000) -> dict[str, int]:
    """A lower-cased BERT WordPiece vocabulary of the sentences; the same sentences, the same ids.

    The special tokens, every character (ASCII letters, digits, punctuation and any seen)
    alone and as a ``##`` continuation, so that no word becomes [UNK], then the most
    frequent words whole (ties alphabetical) up to ``vocab_size``. tokenizers'
    WordPieceTrainer is not used: it breaks ties between equally frequent pairs in hash
    order, which changes from process to process, so that the same sentences gave
    different vocabularies and a seed did not repeat a run.
    """
    counts = _word_counts(sentences)
    chars = sorted(set(ALPHABET).union(*counts))
    tokens = [*SPECIAL_TOKENS, *chars, *("##" + c for c in chars)]
    words = sorted((w for w in counts if len(w) > 1), key=lambda w: (-counts[w], w))
    tokens += words[: max(vocab_size - len(tokens), 0)]
    return {token: i for i, token in enumerate(tokens)}


def _bert_tokenizer(vocab: dict[str, int], max_length: int):
    # in transformers 5, BertTokenizerFast is the tokenizers-backed BertTokenizer
    from transformers import BertTokenizerFast

    return BertTokenizerFast(vocab=vocab, do_lower_case=True, model_max_length=max_length)


def _random_bert(vocab_size: int, pad_id: int, *, seed: int, hidden: int, layers: int,
                 heads: int, max_length: int):  # fmt: skip
    from transformers import BertConfig, BertModel

    if hidden % heads:
        raise TextEncoderError(f"hidden size {hidden} is not a multiple of {heads} heads")
    config = BertConfig(
        vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=layers,
        num_attention_heads=heads, intermediate_size=2 * hidden,
        max_position_embeddings=max(128, max_length), pad_token_id=pad_id,
    )  # fmt: skip
    setattr(config, BUILTIN_MARK, True)
    with torch.random.fork_rng(devices=[]):  # the caller's RNG stream is left as it was
        torch.manual_seed(seed)
        return BertModel(config)


def _save_together(model, tokenizer, out_dir: Path) -> None:
    """save_pretrained both into a temporary folder, then move the files in; config.json last."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".saving-") as tmp, _no_progress_bars():
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        names = sorted(os.listdir(tmp), key=lambda n: n == "config.json")
        for name in names:
            os.replace(os.path.join(tmp, name), out_dir / name)


def build_builtin_text_encoder(sentences: Sequence[str], out_dir, *, seed: int = 0,
                               vocab_size: int = 2000, hidden: int = 128, layers: int = 2,
                               heads: int = 2, max_length: int | None = 64):  # fmt: skip
    """Train a WordPiece tokenizer on the sentences and seed a small BERT; both saved to out_dir.

    Returns (model, tokenizer); :func:`load_text_encoder` of out_dir gives the same pair.
    """
    sentences = [s for s in sentences if s and s.strip()]
    if not sentences:
        raise TextEncoderError("builtin text encoder: no report sentences to train a tokenizer on")
    max_length = max_length or 64
    tokenizer = _bert_tokenizer(train_wordpiece(sentences, vocab_size), max_length)
    model = _random_bert(len(tokenizer), tokenizer.pad_token_id, seed=seed, hidden=hidden,
                         layers=layers, heads=heads, max_length=max_length)  # fmt: skip
    _save_together(model, tokenizer, Path(out_dir))
    return model, tokenizer


# --- the module the methods train ----------------------------------------------------


def _pool(hidden: torch.Tensor, mask: torch.Tensor, pooling: str) -> torch.Tensor:
    if pooling == "cls":
        return hidden[:, 0]
    keep = mask.unsqueeze(-1).to(hidden.dtype)
    if pooling == "mean":
        return (hidden * keep).sum(1) / keep.sum(1).clamp_min(1.0)
    return hidden.masked_fill(keep == 0, torch.finfo(hidden.dtype).min).amax(1)


class TextEncoder(nn.Module):
    """Sentences -> (B, out_dim): tokenize (pad, truncate to max_length), run the model, pool.

    The model's own pooler (BERT's dense + tanh on [CLS]), which none of these poolings
    uses, is removed from the model, so every parameter left gets a gradient (DDP).
    """

    def __init__(self, model, tokenizer, *, max_length: int | None = 64, pooling: str = "max"):
        super().__init__()
        if pooling not in POOLINGS:
            raise TextEncoderError(f"unknown text pooling {pooling!r}; one of {POOLINGS}")
        max_length = max_length or 64
        limit = getattr(model.config, "max_position_embeddings", None)
        if limit is not None and max_length > limit:
            raise TextEncoderError(f"text max_length {max_length} > the model's {limit} positions")
        if getattr(model, "pooler", None) is not None:
            model.pooler = None
        self.model, self.tokenizer = model, tokenizer
        self.max_length, self.pooling = int(max_length), pooling
        self.out_dim = int(model.config.hidden_size)

    def tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        texts = [texts] if isinstance(texts, str) else list(texts)
        if not texts:
            raise TextEncoderError("no texts to encode")
        batch = self.tokenizer(texts, padding=True, truncation=True,
                               max_length=self.max_length, return_tensors="pt")  # fmt: skip
        return dict(batch)

    def _inputs(self, texts_or_batch) -> dict[str, torch.Tensor]:
        """The model's inputs on its device, from strings or an already-tokenized batch."""
        is_batch = isinstance(texts_or_batch, Mapping)
        batch = texts_or_batch if is_batch else self.tokenize(texts_or_batch)
        names = set(getattr(self.tokenizer, "model_input_names", None) or ()) | {"input_ids"}
        device = next(self.model.parameters()).device
        inputs = {k: torch.as_tensor(v).to(device) for k, v in batch.items() if k in names}
        if "attention_mask" not in inputs:
            inputs["attention_mask"] = torch.ones_like(inputs["input_ids"])
        return inputs

    def forward(self, texts_or_batch) -> torch.Tensor:
        inputs = self._inputs(texts_or_batch)
        hidden = self.model(**inputs).last_hidden_state
        return _pool(hidden, inputs["attention_mask"], self.pooling)


def describe(model) -> dict:
    """For the run record: model type, sizes, parameter counts, where it came from."""
    config = model.config
    params = list(model.parameters())
    frozen = sum(p.numel() for p in params if not p.requires_grad)
    path = str(getattr(config, "_name_or_path", "") or "")
    return {
        "model_type": getattr(config, "model_type", type(model).__name__),
        "hidden_size": getattr(config, "hidden_size", None),
        "n_layers": getattr(config, "num_hidden_layers", None),
        "n_params": sum(p.numel() for p in params),
        "n_frozen_params": frozen,
        "source": "builtin" if getattr(config, BUILTIN_MARK, False) else path,
        "path": path or None,
    }
