"""`radial-attention mask`."""

from radial_attention.cli.main import main


def test_mask_report_default(capsys, tmp_path):
    png = tmp_path / "m.png"
    assert main(["mask", "--png", str(png)]) == 0
    out = capsys.readouterr().out
    assert "F=21 latent frames x T=45x80=3600" in out
    assert "density       0.2443" in out  # Wan 720p, `wan` preset (docs/performance.md: 0.244)
    assert "build time" in out and "saved" in out
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_mask_report_direct_layout(capsys):
    assert main(["mask", "--latent-frames", "5", "--tokens-per-frame", "200", "--preset", "hunyuan", "--decay", "1.0"]) == 0
    out = capsys.readouterr().out
    assert "blocks        8 x 8 = 64, kept 59" in out


def test_mask_bad_size_is_a_clear_error(capsys):
    assert main(["mask", "--model", "wan2.1", "--width", "1281"]) == 2
    assert "width must be divisible by 16" in capsys.readouterr().err


def test_mask_conflicting_layout_args(capsys):
    assert main(["mask", "--latent-frames", "5", "--tokens-per-frame", "200", "--frames", "81"]) == 2
    assert "not both" in capsys.readouterr().err
