"""`radial-attention mask` and the mask picture."""

import numpy as np
import pytest

from radial_attention.cli import mask_cmd
from radial_attention.cli.main import build_parser, main, run_command


def _report(*argv):
    return mask_cmd.build_report(build_parser().parse_args(["mask", *argv]))


def test_mask_report_default(tmp_path):
    png = tmp_path / "m.png"
    done = run_command(["mask", "--png", str(png)])
    assert done.code == 0 and done.report["png"] == str(png)  # the picture's path is reported
    assert png.read_bytes()[:4] == b"\x89PNG"
    r = _report()
    assert (r["frames"], r["tokens_per_frame"], r["extra_tokens"]) == (21, 3600, 0)  # Wan 720p, 81 frames
    assert r["mask"].density == pytest.approx(0.2443, abs=5e-5)  # `wan` preset (docs/performance.md: 0.244)
    assert r["heads"] == 40 and r["preset"] == "wan"
    assert r["flops"]["dense"] == pytest.approx(4 * 40 * 128 * 75_600**2)


def test_mask_heads_default_from_the_family():
    assert _report("--model", "hunyuan", "--frames", "33", "--height", "320", "--width", "512")["heads"] == 24
    assert _report("--model", "wan2.2-ti2v-5b", "--height", "704", "--width", "1280", "--frames", "121")["heads"] == 24
    assert _report("--model", "wan2.1")["heads"] == 40
    assert (
        _report("--model", "hunyuan", "--heads", "7", "--frames", "33", "--height", "320", "--width", "512")["heads"]
        == 7
    )


def test_mask_report_direct_layout():
    r = _report("--latent-frames", "5", "--tokens-per-frame", "200", "--preset", "hunyuan", "--decay", "1.0")
    assert r["mask"].num_blocks == 8 and int(r["mask"].to_dense().sum()) == 59


def test_mask_family_is_honoured_with_a_direct_layout():
    """--model with --latent-frames/--tokens-per-frame sets preset, extra tokens and heads (it used to be ignored)."""
    r = _report("--model", "hunyuan", "--latent-frames", "3", "--tokens-per-frame", "100")
    assert (r["preset"], r["extra_tokens"], r["heads"], r["seq_len"]) == ("hunyuan", 256, 24, 556)
    assert r["desc"].startswith("hunyuan")
    plain = _report("--latent-frames", "3", "--tokens-per-frame", "100")
    assert (plain["preset"], plain["extra_tokens"], plain["heads"]) == ("wan", 0, 40)


def test_mask_size_zero_is_an_error_not_the_default(capsys):
    assert main(["mask", "--height", "0"]) == 2
    assert "--height: expected a positive integer" in capsys.readouterr().err


def test_mask_bad_size_is_a_clear_error(capsys):
    assert main(["mask", "--model", "wan2.1", "--width", "1281"]) == 2
    assert "width must be divisible by 16" in capsys.readouterr().err


def test_mask_conflicting_layout_args(capsys):
    assert main(["mask", "--latent-frames", "5", "--tokens-per-frame", "200", "--frames", "81"]) == 2
    assert "not both" in capsys.readouterr().err


def test_flop_units_fit_the_size():
    assert mask_cmd.format_flop_pair(28.5e12, 117.1e12) == "28.5 of 117.1 TFLOP"
    assert mask_cmd.format_flop_pair(8.19e6, 8.19e6) == "8.19 of 8.19 MFLOP"
    assert mask_cmd.format_flop_pair(0.467e15, 4.35e15) == "0.467 of 4.35 PFLOP"
    assert mask_cmd.format_flop_pair(0.0, 500.0) == "0.000 of 500.0 FLOP"


def test_png_without_extension_gets_png_and_the_real_path_is_reported(tmp_path):
    stem = tmp_path / "noext"
    done = run_command(["mask", "--latent-frames", "2", "--tokens-per-frame", "10", "--png", str(stem)])
    assert done.code == 0 and done.report["png"] == f"{stem}.png"  # the path written, suffix included
    assert (tmp_path / "noext.png").is_file() and not stem.exists()


def test_png_draws_legend_colours_and_frame_boundaries(tmp_path):
    """The picture has the kept colour, white skipped blocks and the frame-boundary colour (legend and lines)."""
    import matplotlib.image as mpimg
    from matplotlib.colors import to_rgb

    from radial_attention.mask import radial_block_mask
    from radial_attention.mask import render

    mask = radial_block_mask(4, 256, block_size=64, decay=0.2, sink=True, adjacent="half")
    path = mask.save_png(tmp_path / "m", title=None)
    assert path == str(tmp_path / "m.png")
    img = mpimg.imread(path)[..., :3]
    assert img.shape[0] >= 480 and img.shape[1] >= 480  # small masks are drawn big enough to read

    def share(colour):
        return float(np.mean(np.all(np.abs(img - np.array(to_rgb(colour))) < 0.02, axis=-1)))

    assert share(render.KEPT_COLOR) > 0.05 and share(render.SKIPPED_COLOR) > 0.05
    # boundary lines are drawn semi-transparent over the blocks: count orange-ish pixels (red well above blue);
    # 3 boundaries a side over a ~600 px picture are thousands of pixels, the legend alone about a hundred
    orange = float(np.mean(img[..., 0] - img[..., 2] > 0.4))
    assert orange > 0.005
    assert "F=4 latent frames x T=256 tokens" in render.default_title(mask)


def test_png_name_with_another_extension_is_refused():
    from radial_attention.mask.render import png_path

    assert png_path("a/b") == "a/b.png" and png_path("a.PNG") == "a.PNG"
    with pytest.raises(ValueError, match="ending in .png"):
        png_path("mask.jpg")


def test_mask_flags_override_the_presets_settings_one_by_one():
    # The command resolves the preset the library's way (radial_block_mask): a flag given overrides
    # only its own setting; the report says what the mask was built with.
    from radial_attention.mask import get_preset, radial_block_mask

    layout = ("--latent-frames", "6", "--tokens-per-frame", "128", "--block-size", "64", "--preset", "hunyuan")
    hunyuan = get_preset("hunyuan")
    r = _report(*layout)
    assert (r["decay"], r["sink"], r["adjacent"]) == (hunyuan.decay, hunyuan.sink, hunyuan.adjacent)
    sink = "off" if hunyuan.sink else "on"
    adjacent = "half" if hunyuan.adjacent == "full" else "full"
    r = _report(*layout, "--sink", sink, "--adjacent", adjacent)
    assert (r["decay"], r["sink"], r["adjacent"]) == (hunyuan.decay, not hunyuan.sink, adjacent)
    want = radial_block_mask(6, 128, block_size=64, preset="hunyuan", sink=not hunyuan.sink, adjacent=adjacent)
    assert np.array_equal(r["mask"].to_dense().numpy(), want.to_dense().numpy())
    assert want.density != radial_block_mask(6, 128, block_size=64, preset="hunyuan").density  # the flags mattered
    assert _report(*layout, "--decay", "0.5")["decay"] == 0.5
