"""pooling="mean": the model's own first-token head reads the masked mean; exact through save/load, refused where
a plain model cannot express it, and exported exactly as encoder + mean pooling + head (sentence-transformers)."""

from __future__ import annotations

import pytest
import torch
import transformers as T
from tiny import build, inputs

import sortednet as sn
from sortednet import sentence_export
from sortednet.pooling import masked_mean

SPACE = dict(depth=[2, 4], ffn=[0.5, 1.0])


def by_hand(model, batch):
    """The mean-pooled logits computed from the plain model's pieces."""
    hidden = model.base_model(**batch).last_hidden_state
    pooled = masked_mean(hidden, batch["attention_mask"])
    if isinstance(model, T.RobertaForSequenceClassification):
        head = model.classifier
        return head.out_proj(torch.tanh(head.dense(pooled)))
    return model.classifier(model.bert.pooler.activation(model.bert.pooler.dense(pooled)))


@pytest.mark.parametrize("name", ["bert", "roberta"])
def test_the_head_reads_the_masked_mean_at_every_size(name):
    nested = sn.nest(build(name), SPACE, pooling="mean")
    batch = inputs(name)
    with torch.no_grad():
        for subnet in ("depth=2,ffn=0.5", "depth=4,ffn=1.0"):
            with nested.use(subnet):
                got = nested(**batch).logits
            want = by_hand(nested.extract_plain(subnet), batch)
            assert (got - want).abs().max().item() <= 1e-5, subnet


def test_padding_does_not_change_the_prediction():
    nested = sn.nest(build("bert"), SPACE, pooling="mean")
    batch = inputs("bert", batch=1, seq=6)
    padded = {k: torch.cat([v, torch.zeros_like(v[:, :3])], dim=1) for k, v in batch.items()}
    with torch.no_grad(), nested.use("depth=2,ffn=0.5"):
        assert torch.allclose(nested(**batch).logits, nested(**padded).logits, atol=1e-6)


def test_plain_forms_are_refused_and_the_checkpoint_keeps_pooling(tmp_path):
    nested = sn.nest(build("bert"), SPACE, pooling="mean")
    for call in (lambda: nested.extract("depth=2"), nested.unnest):
        with pytest.raises(
            ValueError, match=r"pools by mean .* no plain transformers model gives its outputs"
        ) as err:
            call()
        assert "\n" not in str(err.value)
    path = tmp_path / "m.safetensors"
    nested.save(path)
    with pytest.raises(ValueError, match=r"load_submodel\(\): this model pools by mean"):
        sn.load_submodel(path, "depth=2,ffn=0.5")
    loaded = sn.load(path)
    batch = inputs("bert")
    with torch.no_grad(), nested.use("depth=2,ffn=0.5"), loaded.use("depth=2,ffn=0.5"):
        assert torch.equal(nested(**batch).logits, loaded(**batch).logits)


def test_a_model_without_a_first_token_head_is_refused():
    with pytest.raises(ValueError, match=r"model.pooling='mean' needs a head that reads the first token"):
        sn.nest(build("gpt2"), SPACE, pooling="mean")
    with pytest.raises(ValueError, match=r"model.pooling='max' is unknown; allowed: cls, mean"):
        sn.nest(build("bert"), SPACE, pooling="max")


@pytest.mark.parametrize("name", ["bert", "roberta"])
def test_the_sentence_transformers_form_is_exact(name, tmp_path):
    st = pytest.importorskip("sentence_transformers")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *[f"w{i}" for i in range(59)]]
    (tmp_path / "vocab.txt").write_text("\n".join(vocab))
    tokenizer = T.BertTokenizerFast(vocab_file=str(tmp_path / "vocab.txt"))
    nested = sn.nest(build(name), SPACE, pooling="mean").eval()
    texts = ["w1 w2 w3", "w4 w5 w6 w7 w8 w9 w10", "w11"]
    batch = dict(tokenizer(texts, padding=True, return_tensors="pt"))
    batch.pop("token_type_ids")
    for subnet in ("depth=2,ffn=0.5", "depth=4,ffn=1.0"):
        folder = tmp_path / subnet
        sentence_export.write(nested.extract_plain(subnet), folder, 32, tokenizer)
        with torch.no_grad(), nested.use(subnet):
            want = nested(**batch).logits
        got = st.SentenceTransformer(str(folder), device="cpu").encode(texts, convert_to_tensor=True)
        assert (got - want).abs().max().item() <= 1e-5
        encoder = T.AutoModel.from_pretrained(folder)  # transformers alone reads the encoder
        assert type(encoder) is type(nested.model.base_model)
        assert encoder.config.num_hidden_layers == int(subnet.split(",")[0].split("=")[1])
