"""sortednet-export: one sub-model of a checkpoint as a plain transformers folder (loads without sortednet).

    sortednet-export runs/digits_vit/<time> --subnet depth=4,heads=4,ffn=0.25 --out small/ [--dtype bf16]

The folder holds config.json and model.safetensors (read from the checkpoint's slices of that sub-model only),
the run's tokenizer or image processor, and sortednet.json (where it came from, its figures).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..atomic import finish_folder, fsync_dir
from .tools import (
    EXPORT_RECORD,
    Parser,
    check_out_dir,
    command,
    files_under,
    open_checkpoint,
    refuse_diverged,
)

PROG = "sortednet-export"
DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def char_tokenizer_fast(chars: str) -> Any:
    """A transformers fast tokenizer with the same ids as sortednet's CharTokenizer (one token per character,
    ids = positions in the sorted characters), so that pipeline("text-generation") works on the folder."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({c: i for i, c in enumerate(chars)}, unk_token=chars[0]))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=tok, model_max_length=None)


def image_processor_like_run(data: Mapping[str, Any], config: Any) -> Any:
    """An image processor that maps a PIL image the way the run's data module did (resize to the model's image
    size, [0, 255] -> [-1, 1] per channel). For digits: 8x8 grey ("L") images, values scaled to 0..255."""
    import transformers

    cls = getattr(transformers, "ViTImageProcessorPil", None) or transformers.ViTImageProcessor
    size, channels = int(config.image_size), int(getattr(config, "num_channels", 3))
    return cls(
        size={"height": size, "width": size},
        resample=3 if data.get("dataset") != "digits" else 2,  # PIL's default resize is bicubic
        rescale_factor=1 / 255,
        image_mean=[0.5] * channels,
        image_std=[0.5] * channels,
    )


def takes_grey(model: Any) -> bool:
    """A 1-channel image model (digits): its config says num_channels=1."""
    return int(getattr(getattr(model, "config", None), "num_channels", 0) or 0) == 1


def grey_to_rgb(model: Any) -> None:
    """Make a 1-channel image model take RGB: the first convolution's weights repeated over 3 channels and
    divided by 3, so a grey image given as RGB (R = G = B, as pipeline() makes every image) gives the same
    output up to float rounding. Works for every image family whose stem is one Conv2d on the pixels (ViT, DeiT,
    ResNet, ConvNeXt, Swin); the modules that check the channel count are told 3."""
    import torch
    from torch import nn

    stem = next(
        (
            (owner, name, conv)
            for owner in model.modules()
            for name, conv in owner.named_children()
            if isinstance(conv, nn.Conv2d) and conv.in_channels == 1
        ),
        None,
    )
    if not takes_grey(model) or stem is None:
        raise ValueError(
            f"--rgb is for 1-channel image models; {type(model).__name__} has no 1-channel first convolution"
        )
    owner, name, conv = stem
    rgb = nn.Conv2d(
        3, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, bias=conv.bias is not None
    ).to(dtype=conv.weight.dtype)
    with torch.no_grad():
        rgb.weight.copy_(conv.weight.repeat(1, 3, 1, 1) / 3)
        if conv.bias is not None:
            rgb.bias.copy_(conv.bias)
    setattr(owner, name, rgb)
    for module in model.modules():
        if getattr(module, "num_channels", None) == 1:
            module.num_channels = 3
    model.config.num_channels = 3


def preprocessor(meta: Mapping[str, Any], config: Any) -> tuple[Any, str | None, str]:
    """(processor to save_pretrained or None, CharTokenizer chars or None, what it is), from the run's data
    config; one-line ValueError when it cannot be loaded (offline, moved)."""
    try:
        return _preprocessor(meta, config)
    except (OSError, RuntimeError, ImportError) as err:
        first = (str(err).strip().splitlines() or [""])[0]
        raise ValueError(f"the run's tokenizer or image processor could not be loaded: {first}") from None
    except Exception as err:  # hydra's InstantiationException around the data module's own error
        cause = err.__cause__ or err
        if type(err).__name__ != "InstantiationException":
            raise
        raise ValueError(f"the run's data config could not be built: {cause}") from None


def _preprocessor(meta: Mapping[str, Any], config: Any) -> tuple[Any, str | None, str]:
    data = dict((meta.get("train_config") or {}).get("data") or {})
    target = str(data.get("_target_", ""))
    if target.endswith("ImageClassificationDataModule"):
        if data.get("processor"):
            from transformers import AutoImageProcessor

            return (
                AutoImageProcessor.from_pretrained(data["processor"]),
                None,
                f"image processor {data['processor']}",
            )
        return image_processor_like_run(data, config), None, "image processor matching the run's transform"
    if target.endswith(("TextClassificationDataModule", "CausalLMDataModule")):
        name = data.get("tokenizer")
        if name == "char" and meta.get("char_vocab"):  # stored by training since the vocabulary is the run's
            chars = meta["char_vocab"]
            return char_tokenizer_fast(chars), chars, "character tokenizer"
        if name == "char":  # checkpoints written before the vocabulary was stored: rebuild it from the data
            import hydra

            module = hydra.utils.instantiate(data)
            module.setup("validate")  # the char vocabulary is that of the run's text
            chars = module.tokenizer.chars
            return char_tokenizer_fast(chars), chars, "character tokenizer"
        if name:
            from transformers import AutoTokenizer

            return AutoTokenizer.from_pretrained(name), None, f"tokenizer {name}"
    return None, None, "no tokenizer or image processor (the run had none)"


def export_subnet(
    ckpt: str | Path,
    subnet: str,
    out: str | Path,
    dtype: str = "fp32",
    force: bool = False,
    rgb: bool | None = None,
    calibration_batches: int = 20,
) -> dict[str, Any]:
    """Write member `subnet` of `ckpt` to the folder `out` (all or nothing: built in a temp folder, then renamed).
    A nested sub-model or an anchor is a plain transformers folder; a stitch of two anchors, which no transformers
    class runs, is `stitched.safetensors` (that network alone; sn.load reads it back). A BatchNorm network's
    subnet is exported with calibrated statistics: those the checkpoint stores, else computed on
    `calibration_batches` of the run's training data and stored in the checkpoint first. A 1-channel image model
    takes RGB (`rgb=None` or True: `grey_to_rgb`, equal outputs on grey images given as RGB, so pipeline() runs
    it); `rgb=False` keeps its 1-channel input."""
    import torch
    from transformers.utils import logging as hf_logging

    from sortednet import sentence_export
    from sortednet.api import check_tensors, kind_of
    from sortednet.many import ManyInOneModel

    hf_logging.disable_progress_bar()

    if dtype not in DTYPES:
        raise ValueError(f"--dtype {dtype!r} is unknown; allowed: bf16, fp16, fp32")
    path, meta = open_checkpoint(ckpt)
    run = path.parent.parent if path.parent.name == "checkpoints" else path.parent
    out = check_out_dir(out, force, protect=[path, run / "checkpoints"])
    kind = kind_of(meta)
    whole = kind.empty(meta)  # on the meta device: the member's spelling and its exact parameter count
    check_tensors(path, meta, whole)
    member = whole.space.normalize(subnet)
    if meta.get("bn_calibrated") is not None:  # BatchNorm: the subnet's own statistics
        meta = calibrated_meta(path, meta, member, calibration_batches)
    model = kind.read_submodel(path, meta, member)
    refuse_diverged(path, meta, dict(model.named_parameters()))
    stitched = isinstance(model, ManyInOneModel)
    pooled = (meta.get("options") or {}).get("pooling") == "mean"
    if rgb and not takes_grey(model):
        raise ValueError(
            f"--rgb is for 1-channel image models; {type(model).__name__} takes {getattr(model.config, 'num_channels', 'no')} channels"
        )
    rgb = takes_grey(model) and rgb is not False and not stitched
    if rgb:
        grey_to_rgb(model)
    model = model.to(getattr(torch, DTYPES[dtype]))
    config = next(iter(model.anchors.values())).config if stitched else model.config
    processor, chars, what = preprocessor(meta, config)
    row = next((r for r in meta.get("eval_table") or [] if r["subnet"] == str(member)), None)
    info = {
        "source": str(path.resolve()),
        "subnet": str(member),
        "params": whole.num_params(member),
        "dtype": DTYPES[dtype],
        "model_class": type(model.base_model if pooled else model).__name__,
        "preprocessor": what,
        "rgb_from_grey": rgb,
        "evaluation": row,
        "global_step": meta.get("global_step"),
        "channels": getattr(config, "num_channels", None),
        "pooling": "mean" if pooled else None,
        "stitch": f"sn.load('{out}/{STITCH_FILE}')" if stitched else None,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        if stitched:
            model.save(tmp / STITCH_FILE, {"train_config": meta.get("train_config")})
        elif pooled:  # no transformers class pools by mean: the exact sentence-transformers form
            max_length = ((meta.get("train_config") or {}).get("data") or {}).get("max_length") or 512
            sentence_export.write(model, tmp, max_length, processor)
            processor = None
        else:
            model.save_pretrained(tmp)
        if processor is not None:
            processor.save_pretrained(tmp)
        if chars is not None:  # sortednet's own CharTokenizer JSON too (CharTokenizer.load reads it)
            (tmp / "char_tokenizer.json").write_text(
                json.dumps({"chars": chars}, ensure_ascii=False), "utf-8"
            )
        info["files"] = sorted(files_under(tmp) | {EXPORT_RECORD})
        (tmp / EXPORT_RECORD).write_text(json.dumps(info, indent=2) + "\n")
        finish_folder(tmp)  # mkdtemp and safetensors make private files; an export is an ordinary output
        replace_folder(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return info


STITCH_FILE = "stitched.safetensors"


def replace_folder(new: Path, out: Path) -> None:
    """Put the finished folder `new` at `out`. An existing `out` was checked by check_out_dir (empty, or an
    earlier export holding only its own files): it is moved aside first, so `out` is never half-written."""
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old.{os.getpid()}")
        out.rename(old)
    new.rename(out)
    fsync_dir(out.parent)
    if old is not None:
        shutil.rmtree(old)


def report(info: Mapping[str, Any], out: str | Path) -> None:
    from ..report import human

    print(
        f"exported {info['subnet']} ({human(info['params'])} params, {info['dtype']}, {info['model_class']}) "
        f"-> {out}/"
    )
    print(f"  {', '.join(info['files'])}")
    if info.get("stitch"):
        print(
            f"  a stitch joins blocks of two widths, which no transformers class runs: not a plain transformers "
            f"model; {STITCH_FILE} holds this one network (sortednet reads it: {info['stitch']})"
        )
    if info.get("pooling") == "mean":
        print(
            "  pooling=mean: no transformers class pools by mean before this head, so this is the exact form: "
            "AutoModel.from_pretrained(folder) loads the encoder, SentenceTransformer(folder).encode(texts) gives "
            "the logits (mean pooling + the head as Dense modules)"
        )
    print(f"  {info['preprocessor']}")
    if info["rgb_from_grey"]:
        print(
            "  1-channel model exported for RGB input (its first convolution's grey weights / 3 on each channel: "
            "a grey image given as RGB gives the same logits), so pipeline() takes it; --grey keeps 1 channel"
        )
    elif info.get("channels") == 1:
        print(
            '  --grey: a 1-channel model; call the image processor and the model on grey ("L") images '
            "(pipeline() converts images to RGB: export without --grey for it)"
        )
    if "char_tokenizer.json" in info["files"]:
        print(
            "  char_tokenizer.json: sortednet's CharTokenizer vocabulary (CharTokenizer.load); "
            "tokenizer.json is the same vocabulary as a transformers tokenizer (AutoTokenizer, pipeline())"
        )


def calibrated_meta(path: Path, meta: Mapping[str, Any], subnet: Any, batches: int) -> Mapping[str, Any]:
    """The checkpoint's header once `subnet` has calibrated BatchNorm statistics in the file."""
    import sortednet as sn

    from .bn_calibration import calibrate_missing, store

    nested = sn.load(path)
    if calibrate_missing(nested, [subnet], meta, batches):
        store(nested, path)
        return sn.read_metadata(path)
    return meta


@command(PROG)
def main(argv: Sequence[str] | None = None) -> None:
    parser = Parser(
        prog=PROG, description="Export one sub-model of a checkpoint as a plain transformers folder."
    )
    parser.add_argument("ckpt", help="a sortednet .safetensors checkpoint or a run folder")
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--subnet", help="e.g. depth=4,ffn=0.5 (dimensions not given: full size)")
    which.add_argument(
        "--slice", metavar="NAME", help="a slice of the checkpoint's slicing config (sortednet-search)"
    )
    parser.add_argument("--slices", metavar="FILE.csv", help="with --slice: a slicing-config file instead")
    parser.add_argument("--out", required=True, help="the folder to write (new or empty)")
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16"], help="default: fp32")
    parser.add_argument(
        "--force", action="store_true", help="replace an earlier export in --out (never other files)"
    )
    channels = parser.add_mutually_exclusive_group()
    channels.add_argument(
        "--rgb",
        action="store_const",
        const=True,
        dest="rgb",
        help="1-channel image models take RGB input (the default): grey weights / 3 per channel, so pipeline(), "
        "which converts every image to RGB, gives the sub-model's own logits",
    )
    channels.add_argument(
        "--grey",
        action="store_const",
        const=False,
        dest="rgb",
        help="1-channel image models keep their 1-channel input (give them grey images; not for pipeline())",
    )
    parser.add_argument(
        "--calibration-batches",
        type=int,
        default=20,
        help="BatchNorm networks: training batches that calibrate a subnet the checkpoint has no statistics for",
    )
    args = parser.parse_args(argv)
    subnet = args.subnet
    if args.slice is not None:
        from ..slicing import find, read_slices

        _, meta = open_checkpoint(args.ckpt)
        subnet = find(read_slices(args.slices) if args.slices else meta.get("slices") or [], args.slice)
    info = export_subnet(
        args.ckpt, subnet, args.out, args.dtype, args.force, args.rgb, args.calibration_batches
    )
    report(info, args.out)


if __name__ == "__main__":
    main()
