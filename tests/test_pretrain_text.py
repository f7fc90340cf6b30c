"""Text encoders of the image-text methods: the builtin BERT, a model folder on disk, refusals."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch

from bench.pretrain import text as txt
from bench.pretrain.text import TextEncoder, TextEncoderError

FINDINGS = ["pneumothorax", "pleural effusion", "consolidation", "atelectasis", "cardiomegaly"]
SIDES = ["right", "left", "bilateral"]
SENTENCES = [
    f"There is a small {side} {finding}." for finding in FINDINGS for side in SIDES
] + [f"No {finding} is seen." for finding in FINDINGS] + [
    f"The {side} lung is clear without {finding}." for side in SIDES[:2] for finding in FINDINGS
]  # fmt: skip
TEXTS = ["Small right pneumothorax.", "No pleural effusion or consolidation is seen today."]


@pytest.fixture
def no_network(monkeypatch):
    """Any socket connection or Hub download fails the test: nothing may be fetched."""
    calls = []

    def refuse(name):
        def _refuse(*args, **kwargs):
            calls.append(name)
            raise AssertionError(f"network call attempted: {name}{args!r}")

        return _refuse

    monkeypatch.setattr(socket.socket, "connect", refuse("socket.connect"))
    monkeypatch.setattr(socket, "create_connection", refuse("socket.create_connection"))
    monkeypatch.setattr(socket, "getaddrinfo", refuse("socket.getaddrinfo"))
    return calls


@pytest.fixture
def no_hub(monkeypatch, no_network):
    """No network, and no call at all into the Hub's download functions."""
    import huggingface_hub
    import transformers.utils.hub as tf_hub

    for module in (huggingface_hub, tf_hub):
        for name in ("hf_hub_download", "snapshot_download"):
            monkeypatch.setattr(module, name, lambda *a, _n=name, **k: no_network.append(_n))
    return no_network


@pytest.fixture(scope="module")
def builtin(tmp_path_factory):
    folder = tmp_path_factory.mktemp("builtin") / "text_encoder"
    model, tokenizer = txt.build_builtin_text_encoder(SENTENCES, folder, seed=0)
    return folder, model, tokenizer


def _tiny_bert_folder(folder, *, tokenizer=True):
    """A 2-layer BertModel (+ a word-level BERT tokenizer) saved with save_pretrained."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *"no small right left .".split()]
    config = BertConfig(vocab_size=len(words), hidden_size=16, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=32, max_position_embeddings=64)  # fmt: skip
    torch.manual_seed(0)
    BertModel(config).save_pretrained(folder)
    if tokenizer:
        vocab = {w: i for i, w in enumerate(words)}
        BertTokenizerFast(vocab=vocab, model_max_length=64).save_pretrained(folder)
    return folder


def _eval_encoder(model, tokenizer, **kw):
    return TextEncoder(model, tokenizer, **kw).eval()


# --- builtin ---------------------------------------------------------------------------


def test_builtin_saved_folder_reloads_to_identical_outputs(builtin, no_network):
    folder, model, tokenizer = builtin
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= set(os.listdir(folder))
    before = {k: os.environ.get(k) for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    model2, tokenizer2 = txt.load_text_encoder(folder)
    assert {k: os.environ.get(k) for k in before} == before  # offline switch restored
    assert tokenizer2.get_vocab() == tokenizer.get_vocab()
    with torch.no_grad():
        a = _eval_encoder(model, tokenizer)(TEXTS)
        b = _eval_encoder(model2, tokenizer2)(TEXTS)
    assert torch.equal(a, b)
    info = txt.describe(model2)
    assert info["source"] == "builtin" and info["model_type"] == "bert"
    assert (info["hidden_size"], info["n_layers"], info["n_frozen_params"]) == (128, 2, 0)
    assert not no_network


def test_builtin_tokenizer_knows_the_report_words(builtin):
    _, _, tokenizer = builtin
    assert tokenizer.tokenize("Pneumothorax") == ["pneumothorax"]
    assert len(tokenizer.tokenize("cardiomegaly")) <= 2
    assert "[UNK]" not in tokenizer.tokenize("Pneumonia, 3 cm.")  # unseen word: characters
    ids = tokenizer("No pneumothorax.")["input_ids"]
    assert ids[0] == tokenizer.cls_token_id and ids[-1] == tokenizer.sep_token_id


@pytest.mark.parametrize("pooling", txt.POOLINGS)
def test_output_shape_and_padding_is_ignored(builtin, pooling):
    _, model, tokenizer = builtin
    encoder = _eval_encoder(model, tokenizer, pooling=pooling)
    assert encoder.out_dim == 128
    with torch.no_grad():
        both = encoder(TEXTS)
        alone = encoder(TEXTS[:1])  # no padding when alone
    assert both.shape == (2, 128)
    torch.testing.assert_close(both[:1], alone, rtol=1e-5, atol=1e-5)


def test_tokenize_pads_truncates_and_forward_takes_a_batch(builtin):
    _, model, tokenizer = builtin
    encoder = _eval_encoder(model, tokenizer, max_length=6)
    batch = encoder.tokenize(TEXTS)
    assert batch["input_ids"].shape == (2, 6) and batch["attention_mask"].shape == (2, 6)
    with torch.no_grad():
        assert torch.equal(encoder(batch), encoder(TEXTS))


def test_builtin_is_deterministic_for_a_seed(builtin, tmp_path):
    _, model, tokenizer = builtin
    rng = torch.get_rng_state()
    same, tok_same = txt.build_builtin_text_encoder(SENTENCES, tmp_path / "a", seed=0)
    other, _ = txt.build_builtin_text_encoder(SENTENCES, tmp_path / "b", seed=1)
    assert torch.equal(torch.get_rng_state(), rng)  # the caller's RNG is untouched
    assert tok_same.get_vocab() == tokenizer.get_vocab()
    ref, new, diff = model.state_dict(), same.state_dict(), other.state_dict()
    assert all(torch.equal(ref[k], new[k]) for k in ref)
    assert not torch.equal(ref["encoder.layer.0.attention.self.query.weight"],
                           diff["encoder.layer.0.attention.self.query.weight"])  # fmt: skip


def test_gradients_reach_every_trainable_parameter(tmp_path):
    model, tokenizer = txt.build_builtin_text_encoder(SENTENCES, tmp_path, seed=0)
    encoder = TextEncoder(model, tokenizer).train()
    assert model.pooler is None  # unused by the pooling: removed, so DDP sees no idle parameter
    encoder(TEXTS).pow(2).sum().backward()
    missing = [n for n, p in encoder.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing
    assert all(torch.isfinite(p.grad).all() for p in encoder.parameters())


def test_builtin_refuses_no_sentences_and_bad_settings(builtin, tmp_path):
    with pytest.raises(TextEncoderError, match="no report sentences"):
        txt.build_builtin_text_encoder(["", "  "], tmp_path)
    _, model, tokenizer = builtin
    with pytest.raises(TextEncoderError, match="pooling"):
        TextEncoder(model, tokenizer, pooling="first")
    with pytest.raises(TextEncoderError, match="positions"):
        TextEncoder(model, tokenizer, max_length=4096)


# --- a model folder on disk ------------------------------------------------------------


def test_model_folder_loads_and_freezes_embeddings_and_first_layers(tmp_path, no_network):
    folder = _tiny_bert_folder(tmp_path / "bert")
    model, tokenizer = txt.load_text_encoder(folder)
    assert type(model).__name__ == "BertModel"
    assert tokenizer("no small .")["input_ids"][0] == tokenizer.cls_token_id
    frozen = txt.freeze_bert_layers(model, n_layers=1)
    names = {n: p for n, p in model.named_parameters()}
    frozen_names = [n for n, p in names.items() if not p.requires_grad]
    trainable = [n for n, p in names.items() if p.requires_grad]
    assert frozen_names and all(
        n.startswith(("embeddings.", "encoder.layer.0.")) for n in frozen_names
    )
    assert [n for n in names if n.startswith(("embeddings.", "encoder.layer.0."))] == frozen_names
    assert trainable and all(n.startswith(("encoder.layer.1.", "pooler.")) for n in trainable)
    assert frozen == sum(names[n].numel() for n in frozen_names)
    info = txt.describe(model)
    assert info["n_frozen_params"] == frozen and info["source"] == str(folder)
    with torch.no_grad():
        assert _eval_encoder(model, tokenizer, max_length=16)(["no small", "left"]).shape == (2, 16)
    assert not no_network


def test_freeze_refuses_what_it_cannot_freeze(tmp_path):
    model, _ = txt.load_text_encoder(_tiny_bert_folder(tmp_path / "bert"))
    with pytest.raises(TextEncoderError, match="3 layers of 2"):
        txt.freeze_bert_layers(model, n_layers=3)
    with pytest.raises(TextEncoderError, match="BertModel-like"):
        txt.freeze_bert_layers(torch.nn.Linear(2, 2), n_layers=6)
    assert txt.freeze_bert_layers(model, n_layers=0) == 0


def _config_only(folder, text='{"model_type": "bert"}'):
    folder.mkdir()
    (folder / "config.json").write_text(text)
    return folder


BAD_FOLDERS = {
    "missing": (lambda d: d / "nowhere", "no such folder"),
    "a file": (lambda d: (d / "f.txt").write_text("x") and d / "f.txt", "not a directory"),
    "empty": (lambda d: (d / "empty").mkdir() or d / "empty", "no config.json"),
    "no model_type": (lambda d: _config_only(d / "c", "{}"), "no model_type"),
    "config, no weights": (lambda d: _config_only(d / "c"), "no weights"),
    "weights, no tokenizer": (lambda d: _tiny_bert_folder(d / "w", tokenizer=False), "no tokenizer"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(BAD_FOLDERS))
def test_a_folder_that_is_not_a_model_is_refused_by_name(case, tmp_path, no_hub):
    make, missing = BAD_FOLDERS[case]
    folder = make(tmp_path)
    with pytest.raises(TextEncoderError) as err:
        txt.load_text_encoder(folder)
    message = str(err.value)
    assert str(folder) in message and missing in message
    assert "No download is attempted" in message and "config.json" in message
    assert isinstance(err.value, ValueError)
    assert not no_hub


def test_a_hub_id_is_not_fetched(tmp_path, monkeypatch, no_hub):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(TextEncoderError) as err:
        txt.load_text_encoder("emilyalsentzer/Bio_ClinicalBERT")
    message = str(err.value)
    assert "'emilyalsentzer/Bio_ClinicalBERT'" in message and "No download is attempted" in message
    assert "hf download emilyalsentzer/Bio_ClinicalBERT --local-dir DIR" in message
    assert "huggingface-cli download emilyalsentzer/Bio_ClinicalBERT --local-dir DIR" in message
    assert not no_hub


def test_unreadable_weights_are_refused_by_name(tmp_path, no_hub):
    folder = _tiny_bert_folder(tmp_path / "bert")
    (folder / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(TextEncoderError, match="does not load") as err:
        txt.load_text_encoder(folder)
    assert str(folder) in str(err.value)
    assert not no_hub


def test_vocabulary_is_the_same_in_another_process():
    import json
    import subprocess
    import sys

    code = (
        "import json, sys; from bench.pretrain.text import train_wordpiece; "
        "print(json.dumps(train_wordpiece(json.loads(sys.stdin.read()))))"
    )
    out = subprocess.run([sys.executable, "-c", code], input=json.dumps(SENTENCES),
                         capture_output=True, text=True, check=True, cwd=Path(__file__).parents[1])  # fmt: skip
    assert json.loads(out.stdout) == txt.train_wordpiece(SENTENCES)
