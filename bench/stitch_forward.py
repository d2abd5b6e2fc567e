"""11. Stitch forward: a stitched model under `use(stitch)` against the same blocks run as one plain model.

The plain side is the back anchor's transformers model (an unstitched copy) whose layer list is an
nn.ModuleList of exactly the stitch's blocks (the front's first, the stitching layer, the back's last) and whose
embeddings are the front's: the same modules and weights, no routing. The stitched side includes entering and
leaving `use()`, i.e. two switches per forward.
"""

from __future__ import annotations

import copy

import torch
import transformers as T
from torch import nn

import sortednet as sn
from sortednet.stitch.anchors import embeddings_of

from .common import Result, build, forward_vs_plain, text_batch

TARGET = 1.05


def plain_twin(stitched: sn.StitchedModel, member: sn.Stitch) -> nn.Module:
    anchors = copy.deepcopy(stitched).unstitch()
    front, back = anchors[member.front], anchors[member.back]
    blocks = [*front.base_model.layers[: member.cut], stitched.stitches[str(member)]]
    back.base_model.layers = nn.ModuleList([*blocks, *back.base_model.layers[member.resume :]])
    back.config.num_hidden_layers = len(back.base_model.layers)
    path = stitched.kind.embeddings
    setattr(back.base_model, path, embeddings_of(front, stitched.kind))
    return back.eval()


def _case(name: str, anchors: dict[str, nn.Module], member: str, batch: dict, quick: bool) -> Result:
    stitched = sn.stitch(anchors).eval()
    chosen = stitched.space.normalize(member)
    plain = plain_twin(stitched, chosen)
    with torch.no_grad(), stitched.use(chosen):
        torch.testing.assert_close(stitched(**batch).logits, plain(**batch).logits, rtol=0, atol=0)

    paired = forward_vs_plain(stitched, chosen, plain, batch, quick)
    return Result(
        f"stitch forward / plain blocks, {name}",
        paired.ratio,
        TARGET,
        detail=f"{member}; " + paired.describe("stitched", "plain"),
        busy=paired.busy,
    )


def _vit(hidden: int, layers: int, image: int, patch: int) -> T.ViTForImageClassification:
    config = T.ViTConfig(
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=hidden // 64,
        intermediate_size=4 * hidden,
        image_size=image,
        patch_size=patch,
        num_labels=1000,
    )
    return build(T.ViTForImageClassification, config)


def _llama(hidden: int, layers: int) -> T.LlamaForCausalLM:
    config = T.LlamaConfig(
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=hidden // 64,
        num_key_value_heads=max(1, hidden // 256),
        head_dim=64,
        intermediate_size=int(2.75 * hidden),
        vocab_size=8000,
    )
    return build(T.LlamaForCausalLM, config)


def run(quick: bool) -> list[Result]:
    if quick:
        vits = {"ti": _vit(128, 4, 32, 8), "s": _vit(256, 4, 32, 8)}
        llamas = {"s": _llama(128, 4), "l": _llama(256, 4)}
        images, seq = torch.randn(4, 3, 32, 32), 32
    else:  # DeiT-Ti -> DeiT-S widths and depth (192 -> 384, 12 blocks) on 112 px / 16; LLaMA 512 -> 1024
        vits = {"ti": _vit(192, 12, 112, 16), "s": _vit(384, 12, 112, 16)}
        llamas = {"s": _llama(512, 4), "l": _llama(1024, 4)}
        images, seq = torch.randn(8, 3, 112, 112), 64
    cut = len(vits["ti"].base_model.layers) // 2
    return [
        _case("ViT (DeiT-Ti -> DeiT-S shapes)", vits, f"ti:{cut}>s:{cut}", {"pixel_values": images}, quick),
        _case("LLaMA (width x2)", llamas, "s:2>l:2", text_batch(llamas["l"].config, 8, seq, None), quick),
    ]
