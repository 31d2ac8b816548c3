"""The radial block mask: golden vectors, a brute-force token-level oracle, properties, bad input."""

import json
import math

import numpy as np
import pytest
import torch

from radial_attention.mask import (
    PRESETS,
    BlockSparseMask,
    RadialBlockMask,
    radial_block_mask,
)


# ----------------------------------------------------------------------------- golden vectors
def _golden_cases(data_dir):
    cases = json.loads((data_dir / "radial_masks.json").read_text())
    packed = np.load(data_dir / "radial_masks.npz")
    for case in cases:
        nb = case["blocks"]
        expected = np.unpackbits(packed[case["name"]])[: nb * nb].reshape(nb, nb).astype(bool)
        yield case, expected


def test_golden_vectors_bit_for_bit(data_dir):
    n = 0
    for case, expected in _golden_cases(data_dir):
        mask = radial_block_mask(
            case["frames"],
            case["tokens_per_frame"],
            block_size=case["block_size"],
            decay=case["decay"],
            sink=case["sink"],
            adjacent=case["adjacent"],
            extra_tokens=case["text_tokens"],  # the reference's name for them
        )
        got = mask.to_dense().numpy()
        assert got.shape == expected.shape, case["name"]
        mismatches = int((got != expected).sum())
        assert mismatches == 0, f"{case['name']}: {mismatches} blocks differ"
        assert mask.density == pytest.approx(case["density"], abs=1e-6)
        n += 1
    assert n == 8


def test_golden_vectors_through_presets(data_dir):
    for case, expected in _golden_cases(data_dir):
        preset = PRESETS[case["preset"]]
        assert (preset.sink, preset.adjacent) == (case["sink"], case["adjacent"])
        mask = radial_block_mask(
            case["frames"],
            case["tokens_per_frame"],
            preset=case["preset"],
            extra_tokens=case["text_tokens"],
            block_size=case["block_size"],
            decay=case["decay"],
            prefix_tokens=0,  # no prefix is the reference's layout, bit for bit
        )
        assert np.array_equal(mask.to_dense().numpy(), expected), case["name"]


def test_worked_example_from_spec():
    picture = ["#####.##", "######.#", "######.#", "########", "########", ".#######", "##.#####", "########"]
    expected = np.array([[c == "#" for c in row] for row in picture])
    mask = radial_block_mask(5, 200, block_size=128, decay=1.0, sink=False, adjacent="full")
    assert np.array_equal(mask.to_dense().numpy(), expected)
    assert mask.density == pytest.approx(0.921875)


# ----------------------------------------------------------------------------- brute force oracle
def brute_force_mask(F, T, B, d, sink, adjacent, X=0, ties=None, Y=0):
    """Token-level construction of the spec, step by step, sharing nothing with the library.

    ``Y`` tokens before the video, ``X`` after it (spec, "Extra tokens before and after the video")."""
    N = F * T
    nb = math.ceil((Y + N + X) / B)
    M = np.zeros((nb, nb), dtype=bool)
    # Step 0, token by token: a block is a dense row and column when it holds a token that is not
    # video, or the video's last token while the video does not end on a block boundary.
    for r in range(nb):
        tokens = np.arange(r * B, min((r + 1) * B, Y + N + X))
        holds_extra = bool(((tokens < Y) | (tokens >= Y + N)).any())
        holds_video_end = (Y + N) % B != 0 and r == (Y + N) // B
        if holds_extra or holds_video_end:
            M[r, :] = M[:, r] = True
    nf = math.ceil(T / B)
    k = np.arange(T)[:, None]
    l = np.arange(T)[None, :]
    for i in range(F):
        for j in range(F):
            D = abs(i - j)
            if sink and j == 0:
                P = np.ones((T, T), dtype=bool)
            else:
                if D == 0:
                    w = T
                elif D == 1:
                    w = T if adjacent == "full" else T // 2
                else:
                    L = 2 ** T.bit_length() / 2 ** D.bit_length() * d
                    w = L if L >= B else B
                P = np.abs(k - l) <= w
                Ls = 2 ** T.bit_length() / 2 ** D.bit_length()
                if Ls < 128:
                    s = int(128 / Ls)
                    if D % s != 0:
                        P = np.zeros((T, T), dtype=bool)
            ro, co = (Y + i * T) % B, (Y + j * T) % B  # frame i starts at token Y + i*T
            local = np.zeros((nf * B + T + B, nf * B + T + B), dtype=bool)
            local[ro : ro + T, co : co + T] = P
            local = local[: nf * B, : nf * B]  # the cut-off of step 3
            for a in range(nf):
                for b in range(nf):
                    blk = local[a * B : (a + 1) * B, b * B : (b + 1) * B]
                    counts = blk.sum(axis=0)
                    touched = int((counts > 0).sum())
                    dense = int((3 * counts > B).sum())
                    if ties is not None and touched and 5 * dense == 3 * touched:
                        ties.append((i, j, a, b))
                    if 5 * dense > 3 * touched:
                        M[(Y + i * T) // B + a, (Y + j * T) // B + b] = True
    return M


SMALL_SHAPES = [
    # (F, T, B): T < B, T not a multiple of B, T a multiple of B, frames starting mid-block
    (1, 5, 64),
    (3, 100, 128),
    (4, 30, 64),
    (2, 128, 128),
    (5, 200, 128),
    (6, 130, 64),
    (7, 96, 64),
    (9, 240, 128),
    (4, 257, 128),
    (11, 50, 64),
    (3, 300, 64),
    (8, 64, 64),
    (13, 40, 64),
    (5, 1000, 128),
    (17, 70, 128),
    (3, 129, 128),
]


@pytest.mark.parametrize("F,T,B", SMALL_SHAPES)
@pytest.mark.parametrize(
    "d,sink,adjacent,X",
    [
        (1.0, False, "full", 0),
        (0.2, True, "half", 0),
        (0.95, False, "full", 37),
        (0.5, True, "full", 0),
        (3.0, False, "half", 128),
    ],
)
def test_matches_brute_force(F, T, B, d, sink, adjacent, X):
    fast = (
        radial_block_mask(F, T, block_size=B, decay=d, sink=sink, adjacent=adjacent, extra_tokens=X).to_dense().numpy()
    )
    slow = brute_force_mask(F, T, B, d, sink, adjacent, X)
    assert fast.shape == slow.shape
    assert np.array_equal(fast, slow), f"{int((fast != slow).sum())} blocks differ"


def test_random_shapes_match_brute_force():
    rng = np.random.default_rng(1)
    for _ in range(25):
        F = int(rng.integers(1, 12))
        T = int(rng.integers(1, 400))
        B = int(rng.choice([64, 128]))
        d = float(rng.choice([0.1, 0.3, 0.8, 1.0, 1.7]))
        sink, adjacent = bool(rng.integers(2)), str(rng.choice(["full", "half"]))
        X = int(rng.choice([0, 0, 5, 256]))
        fast = (
            radial_block_mask(F, T, block_size=B, decay=d, sink=sink, adjacent=adjacent, extra_tokens=X)
            .to_dense()
            .numpy()
        )
        slow = brute_force_mask(F, T, B, d, sink, adjacent, X)
        assert np.array_equal(fast, slow), (F, T, B, d, sink, adjacent, X)


# ----------------------------------------------------------------------------- extra tokens before the video
def _fast(F, T, B, d, sink, adjacent, X=0, Y=0):
    return (
        radial_block_mask(F, T, block_size=B, decay=d, sink=sink, adjacent=adjacent, extra_tokens=X, prefix_tokens=Y)
        .to_dense()
        .numpy()
    )


@pytest.mark.parametrize("F,T,B", SMALL_SHAPES)
@pytest.mark.parametrize(
    "d,sink,adjacent,Y,X",
    [
        (1.0, False, "full", 37, 0),  # a prefix inside the first block
        (0.2, True, "half", 226, 0),  # CogVideoX's 226 text tokens: not a multiple of either block size
        (0.95, False, "full", 100, 37),  # before and after
        (0.5, True, "full", 128, 5),  # a whole number of blocks (both sizes)
        (3.0, False, "half", 1, 0),  # one token: every frame moves by one
    ],
)
def test_prefix_matches_brute_force(F, T, B, d, sink, adjacent, Y, X):
    fast = _fast(F, T, B, d, sink, adjacent, X, Y)
    slow = brute_force_mask(F, T, B, d, sink, adjacent, X, Y=Y)
    assert fast.shape == slow.shape
    assert np.array_equal(fast, slow), f"{int((fast != slow).sum())} blocks differ"


def test_random_shapes_with_prefix_match_brute_force():
    """About 100 random layouts with extra tokens before (and often after) the video."""
    rng = np.random.default_rng(12)
    seen = {"prefix off block": 0, "prefix on block": 0, "T < 128": 0, "both sides": 0, 64: 0, 128: 0}
    for _ in range(100):
        F = int(rng.integers(1, 11))
        T = int(rng.integers(1, 320))
        B = int(rng.choice([64, 128]))
        Y = int(rng.choice([int(rng.integers(1, 300)), B, 2 * B, 226]))
        X = int(rng.choice([0, 0, 7, 256]))
        d = float(rng.choice([0.1, 0.3, 0.8, 1.0, 1.7]))
        sink, adjacent = bool(rng.integers(2)), str(rng.choice(["full", "half"]))
        fast = _fast(F, T, B, d, sink, adjacent, X, Y)
        slow = brute_force_mask(F, T, B, d, sink, adjacent, X, Y=Y)
        assert np.array_equal(fast, slow), dict(F=F, T=T, B=B, Y=Y, X=X, d=d, sink=sink, adjacent=adjacent)
        seen["prefix off block" if Y % B else "prefix on block"] += 1
        seen["T < 128"] += T < 128
        seen["both sides"] += X > 0
        seen[B] += 1
    assert min(seen.values()) >= 10, seen  # the draw covers every kind of layout


@pytest.mark.parametrize("F,T,B", [(5, 200, 128), (7, 100, 64), (3, 129, 128), (9, 64, 64)])
@pytest.mark.parametrize("blocks", [1, 2])
def test_prefix_of_whole_blocks_shifts_the_mask(F, T, B, blocks):
    """A prefix of ``k*B`` tokens leaves every frame's offset inside its block unchanged: the mask is
    the prefix-free one with ``k`` dense rows and columns in front (no oracle involved)."""
    X = 33
    plain = _fast(F, T, B, 0.5, True, "half", X)
    shifted = _fast(F, T, B, 0.5, True, "half", X, Y=blocks * B)
    expected = np.ones((plain.shape[0] + blocks,) * 2, dtype=bool)
    expected[blocks:, blocks:] = plain
    assert np.array_equal(shifted, expected)


def test_a_prefix_off_the_block_grid_changes_the_video_part():
    """An unaligned prefix moves every frame inside its blocks: the video part is re-blocked, not
    just shifted (CogVideoX 1.0: 226 text tokens before 13 x 1350 video tokens)."""
    F, T, B = 13, 1350, 128
    before = radial_block_mask(F, T, preset="hunyuan", prefix_tokens=226, block_size=B)
    after = radial_block_mask(F, T, preset="hunyuan", extra_tokens=226, block_size=B)
    assert before.num_blocks == after.num_blocks == math.ceil((226 + F * T) / B)
    assert before.seq_len == after.seq_len == 226 + F * T
    head = math.ceil(226 / B)  # 2 blocks: the text, and the block where the text ends and the video starts
    m = before.to_dense()
    assert bool(m[:head, :].all()) and bool(m[:, :head].all())
    assert not bool(m[head, head:].all())  # the first video-only block row is sparse
    assert not np.array_equal(m[head:, head:].numpy(), after.to_dense()[:-head, :-head].numpy())
    # the figures docs/radial-mask.md quotes
    assert (before.density, after.density) == (pytest.approx(0.5646, abs=5e-5), pytest.approx(0.5580, abs=5e-5))


@pytest.mark.parametrize("F,T,Y,X,B", [(5, 200, 100, 0, 128), (7, 100, 77, 77, 64), (4, 128, 256, 1, 128)])
def test_head_and_tail_rows_and_columns_are_dense(F, T, Y, X, B):
    mask = _fast(F, T, B, 0.1, False, "half", X, Y)
    head, E = math.ceil(Y / B), (Y + F * T) // B
    assert mask.shape[0] == math.ceil((Y + F * T + X) / B)
    assert mask[:head, :].all() and mask[:, :head].all()
    assert mask[E:, :].all() and mask[:, E:].all()
    assert not mask[head:E, head:E].all()  # decay 0.1 leaves the video part sparse


def test_worked_example_with_extra_tokens_on_both_sides():
    """docs/radial-mask.md, "Extra tokens before and after the video"."""
    picture = [
        "#########",
        "#####..##",
        "#######.#",
        "#######.#",
        "#########",
        "#.#######",
        "#.#######",
        "##.######",
        "#########",
    ]
    expected = np.array([[c == "#" for c in row] for row in picture])
    mask = radial_block_mask(5, 200, prefix_tokens=100, extra_tokens=30)
    assert np.array_equal(mask.to_dense().numpy(), expected)
    assert mask.density == pytest.approx(74 / 81)
    assert (mask.prefix_tokens, mask.extra_tokens, mask.seq_len) == (100, 30, 1130)
    assert "prefix_tokens=100, extra_tokens=30" in repr(mask)


def test_prefix_is_part_of_the_cache_key():
    a = radial_block_mask(5, 200, extra_tokens=100)
    b = radial_block_mask(5, 200, prefix_tokens=100)
    assert a is not b and not torch.equal(a.to_dense(), b.to_dense())
    assert radial_block_mask(5, 200, prefix_tokens=100) is b
    assert radial_block_mask(5, 200, prefix_tokens=0) is radial_block_mask(5, 200)


def test_exact_sixty_percent_ties_are_not_kept():
    """Local blocks whose dense/touched ratio is exactly 0.6 must not be kept (``5*dense > 3*touched``).

    The oracle counts the ties it meets; on shapes where it met some, the fast mask must agree
    everywhere, so the ties were decided the same way."""
    total_ties = 0
    # found by searching the oracle over small shapes: each has one local block at exactly 0.6
    for F, T, B, d, sink in [(3, 153, 64, 0.5, False), (3, 153, 64, 0.2, True), (3, 202, 64, 0.5, False)]:
        ties = []
        slow = brute_force_mask(F, T, B, d, sink, "half", ties=ties)
        fast = radial_block_mask(F, T, block_size=B, decay=d, sink=sink, adjacent="half").to_dense().numpy()
        assert np.array_equal(fast, slow), (F, T, B, d, sink)
        total_ties += len(ties)
    assert total_ties > 0, "the searched shapes contain no exact 0.6 tie: pick others"


# ----------------------------------------------------------------------------- properties
@pytest.mark.parametrize("F,T,B", [(9, 240, 128), (13, 520, 64), (21, 300, 128), (16, 1024, 128)])
@pytest.mark.parametrize("sink,adjacent", [(False, "full"), (True, "half")])
def test_density_never_rises_as_decay_falls(F, T, B, sink, adjacent):
    decays = [4.0, 2.0, 1.0, 0.95, 0.8, 0.5, 0.3, 0.2, 0.1, 0.05]
    densities = [radial_block_mask(F, T, block_size=B, decay=d, sink=sink, adjacent=adjacent).density for d in decays]
    assert all(a >= b for a, b in zip(densities, densities[1:])), densities
    # and a falling decay really does remove blocks somewhere in the sweep
    assert densities[0] > densities[-1]


@pytest.mark.parametrize("F,T,X,B", [(5, 200, 0, 128), (7, 100, 77, 64), (4, 128, 256, 128), (3, 1000, 1, 128)])
def test_tail_rows_and_columns_are_dense(F, T, X, B):
    mask = radial_block_mask(F, T, block_size=B, decay=0.1, sink=False, adjacent="half", extra_tokens=X).to_dense()
    E = (F * T) // B
    assert mask.shape[0] == math.ceil((F * T + X) / B)
    assert bool(mask[E:, :].all()) and bool(mask[:, E:].all())


def test_density_falls_with_more_frames():
    d = [radial_block_mask(F, 1560, decay=0.2, sink=True, adjacent="half").density for F in (11, 21, 41, 81)]
    assert all(a > b for a, b in zip(d, d[1:])), d


def test_asymmetric_and_cached():
    a = radial_block_mask(5, 200)
    dense = a.to_dense()
    assert not torch.equal(dense, dense.T)  # the spec's worked example is asymmetric
    assert radial_block_mask(5, 200) is a  # cached by arguments
    assert isinstance(a, RadialBlockMask) and isinstance(a, BlockSparseMask)
    assert a.seq_len == 1000 and a.frames == 5 and a.tokens_per_frame == 200


# ----------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "args,kwargs,needle",
    [
        ((0, 100), {}, "frames"),
        ((-3, 100), {}, "frames"),
        ((4, 0), {}, "tokens_per_frame"),
        ((4, -1), {}, "tokens_per_frame"),
        ((4, 100), {"extra_tokens": -1}, "extra_tokens"),
        ((4, 100), {"prefix_tokens": -1}, "prefix_tokens"),
        ((4, 100), {"prefix_tokens": 2.5}, "prefix_tokens"),
        ((4, 100), {"prefix_tokens": True}, "prefix_tokens"),
        ((4, 100), {"adjacent": "quarter"}, "adjacent"),
        ((4, 100), {"block_size": 32}, "block_size"),
        ((4, 100), {"block_size": 256}, "block_size"),
        ((4, 100), {"decay": 0.0}, "decay"),
        ((4, 100), {"decay": -1.0}, "decay"),
        ((4, 100), {"decay": float("nan")}, "decay"),
        ((4.5, 100), {}, "frames"),
    ],
)
def test_bad_input_raises_value_error_naming_the_argument(args, kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        radial_block_mask(*args, **kwargs)


def test_explicit_settings_override_the_preset():
    """Each of decay / sink / adjacent given explicitly replaces the preset's; the rest stay the preset's."""
    wan = PRESETS["wan"]  # decay 0.2, sink, half
    m = radial_block_mask(12, 64, preset="wan", block_size=64, adjacent="full")
    assert (m.decay, m.sink, m.adjacent) == (wan.decay, wan.sink, "full")
    m = radial_block_mask(12, 64, preset="wan", block_size=64, sink=False, decay=0.5)
    assert (m.decay, m.sink, m.adjacent) == (0.5, False, wan.adjacent)
    # The same settings spelled out give the same (cached) mask; no preset means 1.0 / no sink / full.
    assert radial_block_mask(12, 64, preset="wan", block_size=64) is radial_block_mask(
        12, 64, block_size=64, decay=0.2, sink=True, adjacent="half"
    )
    plain = radial_block_mask(12, 64, block_size=64)
    assert (plain.decay, plain.sink, plain.adjacent) == (1.0, False, "full")


def test_unknown_preset():
    with pytest.raises(ValueError, match="unknown radial preset 'wan3'"):
        radial_block_mask(4, 100, preset="wan3")
