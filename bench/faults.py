"""Fault injection: kill -9 a training run while it writes checkpoints, on two filesystems, and a diverging
run; print what survived.

    python -m bench.faults               # 6 kills on the repository's filesystem, 6 on a private tmpfs, the NaN run
    python -m bench.faults --kills 2     # quicker

Each kill: a run that writes a checkpoint pair at every optimizer step (a model large enough that a write takes
a while) is killed at a random moment; then the checkpoints folder is read as a new run finds it (the pair's
steps, stray files), the run is resumed in its own folder (sortednet-train recovers the pair first) and must
finish. The tmpfs run uses a mount namespace (`unshare -m`), so its run folder is on another filesystem than the
system temporary folder: the case in which a rename-from-/tmp is a copy. Without `unshare`, it is skipped and
the reason printed.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

OUT = Path(__file__).parent / "out" / "faults"
TRAIN = [
    "callbacks.checkpoint.every_n_train_steps=1",
    "callbacks.progress=null",
    "callbacks.eval.enabled=false",
    "eval_table.enabled=false",
    "trainer.val_check_interval=100000",
    "model.config.hidden_size=192",  # ~3M parameters: a pair takes long enough to be hit mid-write
    "model.config.intermediate_size=768",
]


def env() -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}


def train(run: Path, *extra: str) -> subprocess.Popen:
    log = open(run.parent / f"{run.name}.log", "a")  # noqa: SIM115 (closed with the process)
    cmd = [sys.executable, "-m", "sortednet.train", *TRAIN, f"hydra.run.dir={run}", *extra]
    return subprocess.Popen(cmd, env=env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def pair_state(folder: Path) -> dict:
    """What a new run finds, before it recovers anything: files, and the steps of the committed pair."""
    import torch

    from sortednet.checkpoint import read_metadata

    state: dict = {"files": sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []}
    ckpt, one = folder / "last.ckpt", folder / "last.safetensors"
    try:
        state["ckpt_step"] = torch.load(ckpt, map_location="cpu", weights_only=True, mmap=True)["global_step"]
    except Exception as err:  # what a resume would meet
        state["ckpt_step"] = f"unreadable ({type(err).__name__})"
    try:
        state["one_file_step"] = read_metadata(one)["global_step"]
    except Exception as err:
        state["one_file_step"] = f"unreadable ({type(err).__name__})"
    return state


def kill_once(root: Path, trial: int, rng: random.Random) -> dict:
    run = root / f"run{trial}"
    proc = train(run, "trainer.max_steps=100000")
    checkpoints = run / "checkpoints"
    start = time.time()
    while not (checkpoints / "last.safetensors").exists() and time.time() - start < 300:
        time.sleep(0.05)
    time.sleep(rng.uniform(0.0, 6.0))
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    found = pair_state(checkpoints)
    resumed = train(
        run,
        f"ckpt_path={checkpoints / 'last.ckpt'}",
        "trainer.max_steps=1000000",
        "+trainer.max_time=00:00:00:08",
    )
    code = resumed.wait()
    after = pair_state(checkpoints)
    return {
        "trial": trial,
        "found": found,
        "consistent": found["ckpt_step"] == found["one_file_step"] or _completable(found),
        "resume_exit": code,
        "after_resume": after,
    }


def _completable(found: dict) -> bool:
    """The state after the commit point: the .ckpt renamed, its partner staged (recover completes it)."""
    return "last.safetensors.staged" in found["files"] and "last.ckpt.staged" not in found["files"]


def kill_loop(root: Path, kills: int, label: str) -> list[dict]:
    rng = random.Random(0)
    results = []
    for trial in range(kills):
        result = kill_once(root, trial, rng)
        results.append(result)
        f = result["found"]
        print(
            f"  [{label}] kill {trial}: found {f['files']}, .ckpt step {f['ckpt_step']}, .safetensors step "
            f"{f['one_file_step']} -> {'consistent' if result['consistent'] else 'INCONSISTENT'}; resume exit "
            f"{result['resume_exit']}, then {result['after_resume']['files']}",
            flush=True,
        )
    return results


def nan_run(root: Path) -> dict:
    run = root / "nan"
    proc = train(run, "optim.lr=1e6", "optim.warmup_steps=0", "trainer.max_steps=20")
    code = proc.wait()
    log = (root / "nan.log").read_text().strip().splitlines()
    return {
        "exit": code,
        "last_line": log[-1] if log else "",
        "files": sorted(str(p.relative_to(run)) for p in run.rglob("*") if p.is_file())
        if run.exists()
        else [],
    }


def inner(root: Path, kills: int, label: str) -> None:
    results = kill_loop(root, kills, label)
    (OUT / f"{label}.json").write_text(json.dumps(results, indent=1, default=str))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--kills", type=int, default=6)
    parser.add_argument("--inner", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    OUT.mkdir(parents=True, exist_ok=True)
    if args.inner:  # inside the mount namespace: the tmpfs is mounted at args.inner
        inner(Path(args.inner), args.kills, "tmpfs")
        return 0
    disk = Path(tempfile.mkdtemp(prefix="faults-", dir=OUT))
    print(
        f"kill -9 during checkpointing, {args.kills} times on the repository's filesystem ({disk})",
        flush=True,
    )
    inner(disk, args.kills, "disk")
    print(
        f"kill -9 during checkpointing, {args.kills} times on a private tmpfs (mount namespace)", flush=True
    )
    if shutil.which("unshare") is None:
        print("  skipped: no unshare command")
    else:
        mount = tempfile.mkdtemp(prefix="faults-tmpfs-")
        script = (
            f"mount -t tmpfs -o size=4g sortednet-faults {mount} && "
            f"{sys.executable} -m bench.faults --inner {mount} --kills {args.kills}"
        )
        done = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", script], env=env())
        if done.returncode:
            print(f"  skipped: unshare -m failed (exit {done.returncode}; needs CAP_SYS_ADMIN)")
    print("a diverging run: optim.lr=1e6 optim.warmup_steps=0 trainer.max_steps=20", flush=True)
    nan = nan_run(disk)
    print(f"  exit code {nan['exit']}; last line: {nan['last_line']}\n  files left: {nan['files']}")
    runs = [
        json.loads((OUT / f"{label}.json").read_text())
        for label in ("disk", "tmpfs")
        if (OUT / f"{label}.json").exists()
    ]
    bad = [r for rs in runs for r in rs if not r["consistent"] or r["resume_exit"] != 0]
    print(f"\n{sum(len(r) for r in runs)} kills: {len(bad)} left a pair that could not resume")
    shutil.rmtree(disk, ignore_errors=True)
    return 1 if bad or nan["exit"] != 1 else 0


if __name__ == "__main__":
    sys.exit(main())
