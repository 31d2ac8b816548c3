"""Video sizes -> token layouts, against the table of docs/radial-mask.md."""

import pytest

from radial_attention.mask import video_layout


@pytest.mark.parametrize(
    "model,h,w,f,F,T,X",
    [
        ("wan2.1", 480, 832, 81, 21, 1560, 0),
        ("wan", 720, 1280, 81, 21, 3600, 0),
        ("wan2.2-a14b", 720, 1280, 81, 21, 3600, 0),
        ("wan2.2-ti2v-5b", 704, 1280, 121, 31, 880, 0),
        ("hunyuan", 720, 1280, 129, 33, 3600, 256),
        ("HunyuanVideo", 768, 1280, 117, 30, 3840, 256),
        ("mochi", 480, 848, 163, 28, 1590, 0),
        ("ltx-video", 512, 768, 161, 21, 384, 0),
        ("ltx-video", 704, 1216, 121, 16, 836, 0),
        ("ltx-2", 512, 768, 121, 16, 384, 0),
    ],
)
def test_layouts_of_the_spec_table(model, h, w, f, F, T, X):
    lay = video_layout(model, h, w, f)
    assert (lay.frames, lay.tokens_per_frame, lay.extra_tokens) == (F, T, X)
    assert lay.seq_len == F * T + X


def test_presets_per_family():
    assert video_layout("wan2.1", 480, 832, 81).preset == "wan"
    assert video_layout("wan2.2", 480, 832, 81).preset == "wan2.2"
    assert video_layout("hunyuan", 480, 832, 81).preset == "hunyuan"
    assert video_layout("hunyuan", 480, 832, 81, extra_tokens=0).extra_tokens == 0


@pytest.mark.parametrize(
    "model,h,w,f,needle",
    [
        ("wan2.1", 480, 830, 81, "width must be divisible by 16.*nearest valid: 816 or 832"),
        ("wan2.1", 470, 832, 81, "height must be divisible by 16"),
        ("wan2.2-ti2v-5b", 720, 1280, 121, "height must be divisible by 32"),
        ("wan2.1", 480, 832, 80, r"num_frames must be 4k\+1.*got 80.*77 or 81"),
        ("mochi", 480, 848, 81, r"num_frames must be 6k\+1"),
        ("sora", 480, 848, 81, "unknown model family 'sora'"),
        ("wan2.1", 0, 832, 81, "height must be a positive integer"),
    ],
)
def test_sizes_the_model_cannot_take(model, h, w, f, needle):
    with pytest.raises(ValueError, match=needle):
        video_layout(model, h, w, f)


def test_layout_seq_len_counts_tokens_before_the_video():
    """VideoLayout.prefix_tokens (default 0): tokens before the video, part of the self-attention."""
    lay = video_layout("wan2.1", 480, 832, 81)
    assert lay.prefix_tokens == 0 and lay.seq_len == lay.video_tokens
    cog = type(lay)(
        family="cogvideox", preset="hunyuan", frames=13, height_tokens=30, width_tokens=45, prefix_tokens=226
    )
    assert (cog.seq_len, cog.extra_tokens) == (226 + 13 * 1350, 0)
