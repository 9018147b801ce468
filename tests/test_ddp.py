"""DistributedDataParallel on CPU (gloo): two processes train and prune on a tiny generated image folder."""

from __future__ import annotations

import json
import os
import re
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

import registry


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _write_image_folder(root: Path, per_class: tuple[int, int] = (6, 3), size: int = 12) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, count in zip(("train", "val"), per_class):
        for c, cls in enumerate(("n01", "n02")):
            folder = root / split / cls
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                # class 0 dark, class 1 bright: learnable in a couple of epochs
                base = 40 if c == 0 else 200
                pixels = np.clip(rng.normal(base, 30, size=(size, size, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{cls}_{i}.png")


def _worker(rank: int, world: int, port: int, argv: list[str], out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank), PROJPRUNE_NO_TQDM="1")
    torch.set_num_threads(1)
    import main

    result = main.main(argv)
    state = result["model"].state_dict()
    summary = {"checksum": [float(v.double().sum()) for v in state.values()],
               "shapes": [list(v.shape) for v in state.values()],
               "best_acc": result.get("best_acc")}
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps(summary))


def _spawn(argv: list[str], out: Path) -> list[dict]:
    out.mkdir(parents=True, exist_ok=True)
    mp.spawn(_worker, args=(2, _free_port(), argv, str(out)), nprocs=2, join=True)
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]


@pytest.mark.slow
def test_ddp_pretrain_then_prune_two_cpu_ranks(tmp_path):
    data = tmp_path / "imagenet"
    _write_image_folder(data)
    runs = tmp_path / "run"
    common = ["--dataset", "imagenet", "--dataroot", str(data), "--image-size", "12", "--model", "resnet20",
              "--width-mult", "0.25", "--batch-size", "3", "--seed", "1", "--output-dir", str(runs)]
    ranks = _spawn(["--mode", "pretrain", *common, "--total-epochs", "2", "--lr", "0.05",
                    "--lr-decay-milestones", "1"], tmp_path / "pre")
    assert ranks[0] == ranks[1]  # replicas identical after DDP training, and the same all-reduced accuracy
    torch.manual_seed(1)
    fresh = registry.get_model("resnet20", 2, 3, 0.25, 12)
    assert [float(v.double().sum()) for v in fresh.state_dict().values()] != ranks[0]["checksum"]  # it trained
    log = (runs / "imagenet/pretrain/imagenet-resnet20.txt").read_text()
    assert len(re.findall(r"INFO: Epoch \d/2, Acc=", log)) == 2  # rank 0 alone writes the log
    ckpt = runs / "imagenet/pretrain/imagenet_resnet20.pth"
    assert ckpt.is_file()

    pruned = _spawn(["--mode", "prune", *common, "--restore", str(ckpt), "--method", "obdc", "--speed-up", "2",
                     "--global-pruning", "--finetune", "--total-epochs", "1", "--iterative-steps", "10"],
                    tmp_path / "prune")
    assert pruned[0] == pruned[1]
    # both ranks pruned the same channels (EigenDamage: data-dependent Fisher, same batches on every rank)
    assert pruned[0]["shapes"] != ranks[0]["shapes"]
    name = "imagenet-global-obdc-2.0-resnet20"
    prune_log = (runs / "imagenet/prune" / name / f"{name}.txt").read_text()
    assert re.search(r"FLOPs: .* => .*, (\d+\.\d\d)X \)", prune_log) and "Best Acc=" in prune_log
