"""Data-parallel training: ``torchrun`` with 2 CPU processes (gloo) runs ``radial-attention
train-lora`` and gives the same run as one process with twice the batch.

Each sample's noise level and noise are seeded by (seed, epoch, sample index), and rank ``r``
gets items ``r, r+2, ..`` of each epoch's permutation, so 2 processes x batch 1 see exactly the
samples and draws of 1 process x batch 2; DDP's gradient average equals the batch mean.
"""

import json
import os
import socket
import subprocess
import sys

import pytest
import torch

from radial_attention.testing.data import write_synthetic_dataset
from radial_attention.train.model import load_transformer, model_spec
from radial_attention.train.trainer import LoRATrainer, TrainConfig


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_two_process_gloo_ddp_equals_single_process(tmp_path):
    data = tmp_path / "data"
    write_synthetic_dataset(
        data, model_spec(load_transformer("tiny-wan")), num_samples=4, latent_shape=(16, 8, 16, 24), text_len=16, seed=3
    )
    args = [
        "--model",
        "tiny-wan",
        "--data",
        str(data),
        "--block-size",
        "64",
        "--lora-rank",
        "8",
        "--lr",
        "1e-2",
        "--max-steps",
        "3",
        "--checkpoint-every",
        "2",
        "--no-progress",
        "--seed",
        "0",
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        "2",
        "--master-addr",
        "127.0.0.1",
        "--master-port",
        str(_free_port()),
        "-m",
        "radial_attention",
        "train-lora",
        "--output",
        str(tmp_path / "ddp"),
        "--batch-size",
        "1",
        *args,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert json.loads((tmp_path / "ddp" / "train_config.json").read_text())["world_size"] == 2
    ddp_log = [json.loads(x) for x in (tmp_path / "ddp" / "loss.jsonl").read_text().splitlines()]
    assert [r["step"] for r in ddp_log] == [1, 2, 3]  # one log, written by rank 0
    ckpt = tmp_path / "ddp" / "checkpoints" / "step-000002"
    assert sorted(p.name for p in ckpt.glob("rng-rank*.pt")) == ["rng-rank0.pt", "rng-rank1.pt"]

    single = LoRATrainer(
        TrainConfig(
            model="tiny-wan",
            data=str(data),
            output_dir=str(tmp_path / "one"),
            block_size=64,
            lora_rank=8,
            lr=1e-2,
            max_steps=3,
            checkpoint_every=0,
            progress=False,
            seed=0,
            batch_size=2,
        )
    ).train()
    torch.testing.assert_close(
        torch.tensor([r["loss"] for r in ddp_log]), torch.tensor(single.losses), atol=1e-5, rtol=1e-5
    )
    from safetensors.torch import load_file

    a = load_file(str(tmp_path / "ddp" / "pytorch_lora_weights.safetensors"))
    b = load_file(str(single.lora_path))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=1e-4)
    assert max((a[k] - load_file(str(ckpt / "pytorch_lora_weights.safetensors"))[k]).abs().max() for k in a) > 0
