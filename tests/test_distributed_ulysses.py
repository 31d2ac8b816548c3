"""Ulysses sequence-parallel attention on CPU: gloo, 2 and 4 spawned processes.

Each world size is started once (module fixtures); the workers run every case and send back their
local outputs and gradients, and the tests here compare them with the single-process op on the
whole sequence (reference backend, float64). Masks keep at most 60% of the blocks, so a wrong
exchange (tokens or heads in the wrong place) changes the result.
"""

import math
import os
import pathlib
import subprocess
import sys
import zlib

import pytest
import torch

from radial_attention.distributed import local_length, run_workers
from radial_attention.mask import BlockSparseMask, radial_block_mask
from radial_attention.ops import block_sparse_attention

TIMEOUT_S = 150

CASES_2 = [
    dict(name="random_bshd", B=2, H=4, S=300, D=16, bs=64, layout="BSHD", mask="random", density=0.45),
    dict(name="radial_bhsd", B=1, H=2, S=512, D=8, bs=64, layout="BHSD", mask="radial", preset="wan", F=8, T=64),
    dict(
        name="per_head_uneven",
        B=2,
        H=4,
        S=301,
        D=8,
        bs=64,
        layout="BSHD",
        mask="per_head",
        density=0.5,
        key_lengths=[301, 190],
        garbage_pad=True,
    ),
    dict(
        name="bs128_batch_mask_uneven",
        B=2,
        H=2,
        S=259,
        D=8,
        bs=128,
        layout="BHSD",
        mask="per_batch",
        density=0.5,
        garbage_pad=True,
    ),
    dict(name="heads_error", B=1, H=3, S=64, D=8, bs=64, layout="BSHD", mask="random", density=0.5),
    # ulysses_radial_attention itself: prefix + video + extra tokens (7 + 8*64 + 10 = 529: one token of
    # tail padding on rank 1), and the same call with the extra tokens forgotten (a clear error on both
    # ranks, not attention over 519 tokens with 10 real ones taken for padding).
    dict(
        name="radial_op_prefix_extra",
        B=1,
        H=2,
        S=529,
        D=8,
        bs=64,
        layout="BSHD",
        mask="radial",
        preset="wan",
        F=8,
        T=64,
        X=10,
        Y=7,
        radial_op=True,
        garbage_pad=True,
    ),
    dict(
        name="radial_op_layout_error",
        B=1,
        H=2,
        S=529,
        D=8,
        bs=64,
        layout="BHSD",
        mask="radial",
        preset="wan",
        F=8,
        T=64,
        X=10,
        Y=7,
        radial_op=True,
        forget_extra=True,
    ),
    dict(
        name="local_mask_error", B=1, H=2, S=256, D=8, bs=64, layout="BSHD", mask="random", density=0.5, local_mask=True
    ),
    # The last rank passes one token less: a clear error on every rank, not a gloo abort.
    dict(
        name="rank_shapes_error",
        B=1,
        H=2,
        S=256,
        D=8,
        bs=64,
        layout="BSHD",
        mask="random",
        density=0.5,
        last_rank_short=True,
    ),
]
CASES_4 = [
    dict(
        name="uneven4_per_head",
        B=1,
        H=4,
        S=301,
        D=8,
        bs=64,
        layout="BSHD",
        mask="per_head",
        density=0.5,
        garbage_pad=True,
    ),
    dict(name="radial4_bhsd", B=1, H=8, S=768, D=8, bs=64, layout="BHSD", mask="radial", preset="hunyuan", F=12, T=64),
    dict(name="empty_last_rank", B=1, H=4, S=9, D=8, bs=64, layout="BSHD", mask="full", garbage_pad=True),
    dict(name="heads_error", B=1, H=6, S=64, D=8, bs=64, layout="BSHD", mask="random", density=0.5),
]


def make_case(spec):
    """Global float64 tensors of one case, the same in every process: q, k, v, dout [B, S, H, D],
    the block mask and key_lengths."""
    g = torch.Generator().manual_seed(zlib.crc32(spec["name"].encode()))  # same seed in every process
    B, H, S, D, bs = spec["B"], spec["H"], spec["S"], spec["D"], spec["bs"]
    q, k, v, dout = (torch.randn(B, S, H, D, generator=g, dtype=torch.float64) for _ in range(4))
    nb = math.ceil(S / bs)
    kind = spec["mask"]
    if kind == "radial":
        layout = dict(extra_tokens=spec.get("X", 0), prefix_tokens=spec.get("Y", 0))
        mask = radial_block_mask(spec["F"], spec["T"], preset=spec["preset"], block_size=bs, **layout)
        assert mask.seq_len == S
    elif kind == "full":
        mask = torch.ones(nb, nb, dtype=torch.bool)
    else:
        shape = {"random": (), "per_head": (1, H), "per_batch": (B, 1)}[kind]
        dense = torch.rand(*shape, nb, nb, generator=g) < spec["density"]
        dense[..., 0, :] = True  # one full query row
        if nb > 2:
            dense[..., 1, :] = False  # one empty query row (its output and gradients are 0)
        mask = BlockSparseMask(dense, bs) if kind == "per_head" else dense
    if spec.get("local_mask"):
        mask = torch.ones(math.ceil(S / 2 / bs), math.ceil(S / 2 / bs), dtype=torch.bool)
    kl = spec.get("key_lengths")
    key_lengths = None if kl is None else torch.tensor(kl)
    return q, k, v, dout, mask, key_lengths


def mask_density(mask):
    return mask.density if isinstance(mask, BlockSparseMask) else mask.float().mean().item()


def _run_cases(rank, world, specs):
    """Worker: every case's local output and q/k/v gradients, or the error it raised."""
    from radial_attention.distributed import shard_sequence, ulysses_attention, ulysses_radial_attention

    results = {}
    for spec in specs:
        q, k, v, dout, mask, key_lengths = make_case(spec)
        S = spec["S"]
        s_local = local_length(S, world)
        pad_rows = [i for i in range(s_local) if rank * s_local + i >= S]  # local rows past the end
        locals_ = []
        for t in (q, k, v, dout):
            t = shard_sequence(t, dim=1).clone()  # [B, S_local, H, D], tail-padded with zeros
            if spec.get("garbage_pad") and pad_rows:
                # Large junk in the padding: it must not reach any real output or gradient.
                t[:, pad_rows] = 1e3 * torch.randn(t[:, pad_rows].shape, dtype=t.dtype)
            if spec.get("last_rank_short") and rank == world - 1:
                t = t[:, :-1]
            if spec["layout"] == "BHSD":
                t = t.transpose(1, 2)  # a strided [B, H, S_local, D] view
            locals_.append(t)
        ql, kl, vl = (t.detach().requires_grad_() for t in locals_[:3])
        try:
            if spec.get("radial_op"):
                layout = dict(frames=spec["F"], tokens_per_frame=spec["T"], prefix_tokens=spec["Y"])
                layout["extra_tokens"] = 0 if spec.get("forget_extra") else spec["X"]
                out = ulysses_radial_attention(
                    ql,
                    kl,
                    vl,
                    **layout,
                    preset=spec["preset"],
                    block_size=spec["bs"],
                    layout=spec["layout"],
                    backend="reference",
                )
            else:
                out = ulysses_attention(
                    ql,
                    kl,
                    vl,
                    mask,
                    layout=spec["layout"],
                    seq_len=S,
                    block_size=spec["bs"],
                    key_lengths=key_lengths,
                    backend="reference",
                )
            (out * locals_[3]).sum().backward()
            results[spec["name"]] = dict(
                out=out.detach(),
                dq=ql.grad,
                dk=kl.grad,
                dv=vl.grad,
                pad_rows=pad_rows,
                s_local=s_local,
                layout_out=tuple(out.shape),
                contiguous=out.is_contiguous(),
            )
        except Exception as e:  # the error cases report their message
            results[spec["name"]] = dict(error=f"{type(e).__name__}: {e}")
    return results


def _run_sharding(rank, world):
    """Worker: shard_sequence / gather_sequence round trip and the gather's gradient."""
    from radial_attention.distributed import gather_sequence, shard_sequence

    g = torch.Generator().manual_seed(7)
    x = torch.randn(2, 9, 3, generator=g, dtype=torch.float64)
    w = torch.randn(2, 9, 3, generator=g, dtype=torch.float64)
    xl = shard_sequence(x, dim=1).detach().requires_grad_()
    full = gather_sequence(xl, dim=1, seq_len=9)
    (full * w).sum().backward()
    return dict(x=x, w=w, local=xl.detach(), full=full.detach(), grad=xl.grad)


def single_process(spec):
    """The op on the whole sequence in one process: output and q/k/v gradients, [B, S, H, D]."""
    q, k, v, dout, mask, key_lengths = make_case(spec)
    qh, kh, vh = (t.transpose(1, 2).detach().requires_grad_() for t in (q, k, v))
    out = block_sparse_attention(qh, kh, vh, mask, block_size=spec["bs"], key_lengths=key_lengths, backend="reference")
    (out * dout.transpose(1, 2)).sum().backward()
    return {
        name: t.transpose(1, 2)
        for name, t in (("out", out.detach()), ("dq", qh.grad), ("dk", kh.grad), ("dv", vh.grad))
    }


@pytest.fixture(scope="module")
def world2():
    return run_workers(_run_cases, 2, CASES_2, timeout_s=TIMEOUT_S)


@pytest.fixture(scope="module")
def world4():
    return run_workers(_run_cases, 4, CASES_4, timeout_s=TIMEOUT_S)


def check_against_single_process(results, spec):
    expected = single_process(spec)
    for key in ("out", "dq", "dk", "dv"):
        parts = []
        for rank, res in enumerate(results):
            r = res[spec["name"]]
            assert "error" not in r, r.get("error")
            t = r[key] if spec["layout"] == "BSHD" else r[key].transpose(1, 2)  # -> [B, S_local, H, D]
            pad = r["pad_rows"]
            if pad:
                # Padding never gets an output or a gradient, whatever junk it held.
                assert torch.count_nonzero(t[:, pad]) == 0, f"{key}: padded rows of rank {rank} are not zero"
            parts.append(t[:, : r["s_local"] - len(pad)])
        got = torch.cat(parts, dim=1)
        assert got.shape == expected[key].shape, (key, got.shape, expected[key].shape)
        torch.testing.assert_close(got, expected[key], rtol=1e-10, atol=1e-10, msg=lambda m: f"{key}: {m}")


@pytest.mark.parametrize("spec", [c for c in CASES_2 if "error" not in c["name"]], ids=lambda c: c["name"])
def test_two_ranks_match_single_process(world2, spec):
    _, _, _, _, mask, _ = make_case(spec)
    assert mask_density(mask) <= 0.6  # the mask matters: most blocks are skipped
    check_against_single_process(world2, spec)
    r = world2[0][spec["name"]]
    assert r["contiguous"]
    B, H, S_loc = spec["B"], spec["H"], local_length(spec["S"], 2)
    assert r["layout_out"] == ((B, S_loc, H, spec["D"]) if spec["layout"] == "BSHD" else (B, H, S_loc, spec["D"]))


@pytest.mark.parametrize("spec", [c for c in CASES_4 if "error" not in c["name"]], ids=lambda c: c["name"])
def test_four_ranks_match_single_process(world4, spec):
    _, _, _, _, mask, _ = make_case(spec)
    if spec["mask"] != "full":
        assert mask_density(mask) <= 0.6
    check_against_single_process(world4, spec)


def test_empty_last_rank_is_all_padding(world4):
    # S=9 on 4 ranks: 3 + 3 + 3 + 0 real tokens; the last rank holds only padding.
    r = world4[3]["empty_last_rank"]
    assert r["pad_rows"] == [0, 1, 2]
    assert torch.count_nonzero(r["out"]) == 0


def test_heads_not_divisible_is_a_clear_error(world2, world4):
    for results, H, n in ((world2, 3, 2), (world4, 6, 4)):
        for res in results:
            msg = res["heads_error"]["error"]
            assert msg.startswith("ValueError"), msg
            assert f"H={H} heads" in msg and f"among {n} ranks" in msg and "divides" in msg


def test_ranks_with_different_shapes_get_the_same_clear_error(world2):
    msgs = [res["rank_shapes_error"]["error"] for res in world2]
    assert msgs[0] == msgs[1], msgs  # the same error on every rank
    assert msgs[0].startswith("ValueError") and "ranks passed different inputs" in msgs[0], msgs[0]
    assert "rank 0: q (1, 128, 2, 8)" in msgs[0] and "rank 1: q (1, 127, 2, 8)" in msgs[0], msgs[0]


def test_radial_op_checks_the_layout_on_every_rank(world2):
    msgs = [res["radial_op_layout_error"]["error"] for res in world2]
    assert msgs[0] == msgs[1], msgs  # the same error on every rank
    assert msgs[0].startswith("ValueError"), msgs[0]
    assert "slices of S_local=265 tokens" in msgs[0] and "hold a sequence of 529..530 tokens" in msgs[0], msgs[0]
    assert "prefix_tokens + frames * tokens_per_frame + extra_tokens = 7 + 8 * 64 + 0 = 519" in msgs[0], msgs[0]


def test_local_mask_is_a_clear_error(world2):
    msg = world2[0]["local_mask_error"]["error"]
    assert msg.startswith("ValueError") and "whole sequence of seq_len=256" in msg, msg


def test_shard_gather_round_trip_and_gradient():
    results = run_workers(_run_sharding, 4, timeout_s=TIMEOUT_S)
    x, w = results[0]["x"], results[0]["w"]
    assert [tuple(r["local"].shape) for r in results] == [(2, 3, 3)] * 4
    assert torch.count_nonzero(results[3]["local"]) == 0  # 9 tokens on 4 ranks: the last is padding
    for rank, r in enumerate(results):
        torch.testing.assert_close(r["full"], x, rtol=0, atol=0)
        real = w[:, rank * 3 : rank * 3 + 3]
        torch.testing.assert_close(r["grad"][:, : real.shape[1]], real, rtol=0, atol=0)
        assert torch.count_nonzero(r["grad"][:, real.shape[1] :]) == 0


def test_single_process_without_a_group_is_the_op():
    # No torch.distributed: ulysses_attention is the op (with tail padding cut and returned as 0).
    from radial_attention.distributed import ulysses_attention

    spec = CASES_2[0]
    q, k, v, _, mask, _ = make_case(spec)
    expected = block_sparse_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), mask, block_size=64)
    pad = torch.zeros(2, 5, 4, 16, dtype=torch.float64)
    got = ulysses_attention(
        torch.cat([q, pad], 1),
        torch.cat([k, pad], 1),
        torch.cat([v, pad], 1),
        mask,
        layout="BSHD",
        seq_len=300,
        block_size=64,
    )
    torch.testing.assert_close(got[:, :300], expected.transpose(1, 2), rtol=0, atol=0)
    assert torch.count_nonzero(got[:, 300:]) == 0


def test_radial_op_without_a_group_is_the_op():
    # One process: ulysses_radial_attention is ops.radial_attention, prefix and extra tokens included,
    # and checks the layout against q as the op does (no silent tail padding of a forgotten extra_tokens).
    from radial_attention.distributed import ulysses_radial_attention
    from radial_attention.ops import radial_attention

    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(1, 2, 7 + 3 * 40 + 9, 8, generator=g, dtype=torch.float64) for _ in range(3))
    layout = dict(frames=3, tokens_per_frame=40, extra_tokens=9, prefix_tokens=7, preset="hunyuan", block_size=64)
    expected = radial_attention(q, k, v, **layout)
    got = ulysses_radial_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), layout="BSHD", **layout)
    torch.testing.assert_close(got, expected.transpose(1, 2), rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"hold a sequence of 136 tokens .* = 7 \+ 3 \* 40 \+ 0 = 127"):
        ulysses_radial_attention(q, k, v, **dict(layout, extra_tokens=0))
    with pytest.raises(ValueError, match="prefix_tokens must be"):
        ulysses_radial_attention(q, k, v, **dict(layout, prefix_tokens=-1))


def test_bad_arguments_without_a_group():
    from radial_attention.distributed import ulysses_attention

    q = torch.randn(1, 2, 64, 8)
    mask = torch.ones(1, 1, dtype=torch.bool)
    with pytest.raises(ValueError, match="layout must be one of"):
        ulysses_attention(q, q, q, mask, layout="SBHD", block_size=64)
    with pytest.raises(ValueError, match="seq_len must be an integer in 1..N\\*S_local"):
        ulysses_attention(q, q, q, mask, seq_len=65, block_size=64)
    with pytest.raises(ValueError, match="one shape"):
        ulysses_attention(q, q[:, :1], q, mask, block_size=64)


# ---------------------------------------------------------------------- Triton kernels on the exchanged views
# After the all-to-all, q/k/v are strided views of the receive buffer ([B, H/N, S, D] with an
# S stride of 3*B*(H/N)*D): the fast kernels must read them as they are. The Triton backend runs
# here under its CPU interpreter, which has to be switched on before Triton is imported, so the
# workers are started from a fresh interpreter with TRITON_INTERPRET=1.
TRITON_SPEC = dict(name="triton", B=1, H=2, S=201, D=64, bs=64, layout="BSHD", mask="random", density=0.5)


def _run_triton(rank, world):
    from radial_attention.distributed import shard_sequence, ulysses_attention

    q, k, v, dout, mask, _ = make_case(TRITON_SPEC)
    q, k, v, dout = (t.float() for t in (q, k, v, dout))
    ql, kl, vl = (shard_sequence(t, dim=1).detach().requires_grad_() for t in (q, k, v))
    out = ulysses_attention(ql, kl, vl, mask, layout="BSHD", seq_len=201, block_size=64, backend="triton")
    (out * shard_sequence(dout, dim=1)).sum().backward()
    return dict(out=out.detach(), dq=ql.grad, dk=kl.grad, dv=vl.grad)


def triton_child(path):
    results = run_workers(
        _run_triton, 2, timeout_s=TIMEOUT_S, preload=["torch", "torch.distributed", "radial_attention.distributed"]
    )
    torch.save(results, path)


def test_triton_backend_reads_the_exchanged_views(tmp_path):
    pytest.importorskip("triton")
    path = tmp_path / "triton.pt"
    code = (
        f"import sys; sys.path.insert(0, {str(pathlib.Path(__file__).parent)!r}); "
        f"import test_distributed_ulysses as t; t.triton_child({str(path)!r})"
    )
    env = dict(os.environ, TRITON_INTERPRET="1", OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    results = torch.load(path, weights_only=False)
    q, k, v, dout, mask, _ = make_case(TRITON_SPEC)
    qh, kh, vh = (t.float().transpose(1, 2).requires_grad_() for t in (q, k, v))
    ref = block_sparse_attention(qh, kh, vh, mask, block_size=64, backend="reference")
    (ref * dout.float().transpose(1, 2)).sum().backward()
    expected = {"out": ref.detach(), "dq": qh.grad, "dk": kh.grad, "dv": vh.grad}
    for key, want in expected.items():
        got = torch.cat([r[key] for r in results], dim=1)  # [B, 202, H, D]: 101 per rank, 1 padding
        assert torch.count_nonzero(got[:, 201:]) == 0
        got = got[:, :201]
        torch.testing.assert_close(got, want.transpose(1, 2), rtol=1e-4, atol=1e-4, msg=lambda m: f"{key}: {m}")
