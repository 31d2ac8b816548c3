"""The public surface of the top-level package, and every deprecated name: it warns and still works.

The deprecated names (0.1 -> removed in 0.2): ``radial_mask_from_preset`` and
``radial_mask_with_settings`` (now ``radial_block_mask(..., preset=...)``), ``text_tokens`` (now
``extra_tokens``: keyword, attribute, ``mask --text-tokens``), ``rank`` of ``TrainConfig`` (now
``lora_rank``; ``train-lora --rank``).
"""

import argparse
import dataclasses
import warnings

import pytest
import torch

import radial_attention
from radial_attention.cli.main import build_parser, run_command

PUBLIC = {
    # mask
    "BlockSparseMask",
    "RadialBlockMask",
    "PRESETS",
    "radial_block_mask",
    "video_layout",
    "VideoLayout",
    # ops
    "block_sparse_attention",
    "radial_attention",
    # distributed
    "ulysses_attention",
    "ulysses_radial_attention",
    # integrations
    "apply_radial_attention",
    "remove_radial_attention",
    "get_radial_state",
    "RadialAttentionConfig",
    "RadialState",
}


def test_the_public_surface_is_exactly_this():
    assert set(radial_attention.__all__) == PUBLIC | {"__version__"}
    assert set(dir(radial_attention)) >= PUBLIC


@pytest.mark.parametrize("name", sorted(PUBLIC))
def test_public_names_resolve(name):
    assert getattr(radial_attention, name) is not None


def test_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        radial_attention.nope  # noqa: B018 (the lazy __getattr__ raises)


def test_integration_names_are_the_integrations_own():
    from radial_attention.integrations import diffusers as integ

    assert radial_attention.RadialAttentionConfig is integ.RadialAttentionConfig
    assert radial_attention.RadialState is integ.RadialState
    assert radial_attention.get_radial_state is integ.get_radial_state


# ------------------------------------------------------------------ apply_radial_attention(model, config, **overrides)
@pytest.fixture(scope="module")
def tiny_wan():
    from radial_attention.testing.tiny import tiny_wan_transformer

    return tiny_wan_transformer("t2v", num_layers=2)


def test_apply_takes_a_config_and_keyword_overrides(tiny_wan):
    from radial_attention import (
        RadialAttentionConfig,
        apply_radial_attention,
        get_radial_state,
        remove_radial_attention,
    )

    config = RadialAttentionConfig(dense_steps=3, dense_layers=1, block_size=64, num_steps=10)
    state = apply_radial_attention(tiny_wan, config, dense_steps=5)
    try:
        assert get_radial_state(tiny_wan) is state
        # the config's fields, the keyword replacing one, and the preset resolved for the model
        assert state.config == dataclasses.replace(config, dense_steps=5, preset="wan")
    finally:
        remove_radial_attention(tiny_wan)
    # keywords alone, as before: the same settings
    state = apply_radial_attention(tiny_wan, dense_steps=5, dense_layers=1, block_size=64, num_steps=10)
    try:
        assert state.config == dataclasses.replace(config, dense_steps=5, preset="wan")
    finally:
        remove_radial_attention(tiny_wan)


def test_apply_refuses_a_wrong_config_or_keyword_before_touching_the_model(tiny_wan):
    from radial_attention import apply_radial_attention, get_radial_state

    with pytest.raises(
        TypeError, match=r"config must be a RadialAttentionConfig or None, got str 'wan'; pass settings by keyword"
    ):
        apply_radial_attention(tiny_wan, "wan")
    with pytest.raises(
        TypeError, match=r"unexpected keyword argument\(s\) \['dense_step'\]; the settings are \['preset'"
    ):
        apply_radial_attention(tiny_wan, dense_step=3)
    with pytest.raises(ValueError, match="dense_steps must be an integer >= 0, got -1"):
        apply_radial_attention(tiny_wan, radial_attention.RadialAttentionConfig(dense_steps=-1))
    assert get_radial_state(tiny_wan) is None


# ------------------------------------------------------------------ deprecations: each warns and still works
def test_radial_mask_from_preset_and_with_settings_are_radial_block_mask():
    from radial_attention.mask import radial_block_mask, radial_mask_from_preset, radial_mask_with_settings

    want = radial_block_mask(6, 50, preset="hunyuan", block_size=64, extra_tokens=9, decay=0.5)
    with pytest.warns(DeprecationWarning, match=r"radial_mask_from_preset.* is deprecated .*use radial_block_mask"):
        assert radial_mask_from_preset("hunyuan", 6, 50, text_tokens=9, block_size=64, decay=0.5) is want
    with pytest.warns(DeprecationWarning, match=r"radial_mask_with_settings.* is deprecated"):
        assert radial_mask_with_settings(6, 50, preset="hunyuan", decay=0.5, block_size=64, text_tokens=9) is want
    with pytest.warns(DeprecationWarning, match="radial_mask_from_preset"):
        assert (
            radial_attention.radial_mask_from_preset("hunyuan", 6, 50, text_tokens=9, block_size=64, decay=0.5) is want
        )
    assert "radial_mask_from_preset" not in dir(radial_attention)  # importable, not advertised


def test_text_tokens_is_a_deprecated_name_of_extra_tokens():
    from radial_attention.mask import get_model_family, radial_block_mask, video_layout

    want = radial_block_mask(5, 40, block_size=64, extra_tokens=9)
    assert want.extra_tokens == 9 and want.seq_len == 209
    with pytest.warns(
        DeprecationWarning, match=r"radial_block_mask\(text_tokens=...\) is deprecated .*use extra_tokens="
    ):
        assert radial_block_mask(5, 40, block_size=64, text_tokens=9) is want
    with pytest.warns(DeprecationWarning, match="RadialBlockMask.text_tokens"):
        assert want.text_tokens == 9
    with pytest.raises(TypeError, match="got both extra_tokens=3 and its deprecated name text_tokens=9"):
        radial_block_mask(5, 40, block_size=64, extra_tokens=3, text_tokens=9)

    layout = video_layout("hunyuan", 480, 832, 81, extra_tokens=7)
    with pytest.warns(DeprecationWarning, match=r"video_layout\(text_tokens=...\)"):
        assert video_layout("hunyuan", 480, 832, 81, text_tokens=7) == layout
    with pytest.warns(DeprecationWarning, match="VideoLayout.text_tokens"):
        assert layout.text_tokens == 7
    with pytest.warns(DeprecationWarning, match="ModelFamily.default_text_tokens"):
        assert (
            get_model_family("hunyuan").default_text_tokens == 256 == get_model_family("hunyuan").default_extra_tokens
        )


def test_renamed_attributes_warn_at_the_line_that_reads_them():
    # One helper makes every renamed attribute (_deprecation.renamed_attribute): same message, and the
    # warning names the reader's file, not the helper's.
    from radial_attention.mask import radial_block_mask, video_layout
    from radial_attention.train.config import TrainConfig

    cases = [
        (radial_block_mask(5, 40, block_size=64, extra_tokens=9), "text_tokens", "RadialBlockMask", 9),
        (video_layout("hunyuan", 480, 832, 81, extra_tokens=7), "text_tokens", "VideoLayout", 7),
        (TrainConfig(model="m", data="d", output_dir="o", lora_rank=3), "rank", "TrainConfig", 3),
    ]
    for obj, old, owner, value in cases:
        with pytest.warns(DeprecationWarning, match=rf"^{owner}\.{old} is deprecated") as record:
            assert getattr(obj, old) == value
        assert record[0].filename == __file__
        assert type(obj).__dict__[old].__doc__.startswith("Deprecated name of")


def test_radial_attention_op_takes_text_tokens_with_a_warning():
    from radial_attention.ops import radial_attention as op

    q = torch.randn(1, 2, 5 * 40 + 9, 16, generator=torch.Generator().manual_seed(0))
    want = op(q, q, q, frames=5, tokens_per_frame=40, extra_tokens=9, block_size=64, backend="reference")
    with pytest.warns(DeprecationWarning, match=r"radial_attention\(text_tokens=...\)"):
        got = op(q, q, q, frames=5, tokens_per_frame=40, text_tokens=9, block_size=64, backend="reference")
    assert torch.equal(got, want)


def test_ulysses_radial_attention_takes_text_tokens_with_a_warning():
    # One process (no group): the op itself, on q of the layout's length (it checks the length).
    from radial_attention.distributed import ulysses_radial_attention

    q = torch.randn(1, 1, 5 * 40 + 9, 4, generator=torch.Generator().manual_seed(0))
    layout = dict(frames=5, tokens_per_frame=40, block_size=64, backend="reference")
    want = ulysses_radial_attention(q, q, q, extra_tokens=9, **layout)
    with pytest.warns(DeprecationWarning, match=r"ulysses_radial_attention\(text_tokens=...\)"):
        got = ulysses_radial_attention(q, q, q, text_tokens=9, **layout)
    assert torch.equal(got, want)


def test_mask_cli_text_tokens_is_a_deprecated_alias(capsys):
    command = ["mask", "--latent-frames", "4", "--tokens-per-frame", "64", "--block-size", "64"]
    new = run_command(command + ["--extra-tokens", "32"])
    new_err = capsys.readouterr().err
    old = run_command(command + ["--text-tokens", "32"])
    old_err = capsys.readouterr().err
    assert "--text-tokens is deprecated" in old_err and "use --extra-tokens" in old_err and not new_err
    # The same report: every value but the build time (and the mask, rebuilt: compared by its blocks).
    values = lambda done: {k: v for k, v in done.report.items() if k not in ("build_ms", "mask")}  # noqa: E731
    assert new.code == old.code == 0 and values(old) == values(new) and new.report["extra_tokens"] == 32
    assert torch.equal(old.report["mask"].to_dense(), new.report["mask"].to_dense())


def test_train_config_rank_is_a_deprecated_name_of_lora_rank():
    from radial_attention.train import TrainConfig

    with pytest.warns(DeprecationWarning, match=r"TrainConfig\(rank=...\) is deprecated .*use lora_rank="):
        cfg = TrainConfig(model="m", data="d", output_dir="o", rank=4)
    assert cfg == TrainConfig(model="m", data="d", output_dir="o", lora_rank=4)
    with pytest.warns(DeprecationWarning, match="TrainConfig.rank"):
        assert cfg.rank == 4
    assert "rank" not in dataclasses.asdict(cfg) and dataclasses.asdict(cfg)["lora_rank"] == 4
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # replace() does not pass the old name on
        assert dataclasses.replace(cfg, lr=1e-3).lora_rank == 4
    with pytest.raises(TypeError, match="got both lora_rank=8 and its deprecated name rank=4"):
        TrainConfig(model="m", data="d", output_dir="o", lora_rank=8, rank=4)


def _train_parser():
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices["train-lora"]


def test_train_cli_rank_is_a_deprecated_alias(monkeypatch, tmp_path, capsys):
    from radial_attention.cli import train_cmd

    base = ["--model", "tiny-wan", "--data", str(tmp_path), "--output", str(tmp_path / "o")]
    parser = _train_parser()
    old = train_cmd.config_from_args(parser.parse_args(base + ["--rank", "4"]))
    assert "--rank is deprecated" in capsys.readouterr().err
    assert old == train_cmd.config_from_args(parser.parse_args(base + ["--lora-rank", "4"]))
    assert old.lora_rank == 4
    assert train_cmd.config_from_args(parser.parse_args(base)).lora_rank == 128
    assert "--rank" not in parser.format_help() and "--lora-rank" in parser.format_help()


# ------------------------------------------------------------------ train-lora's parser is TrainConfig's fields
def test_train_parser_is_generated_from_train_config():
    """Every TrainConfig field is an option (defaults, flags and required ones as the config says),
    and parsing nothing but the required options gives TrainConfig's defaults."""
    from radial_attention.cli import train_cmd
    from radial_attention.train.config import TrainConfig, cli_option

    fields = dataclasses.fields(TrainConfig)
    assert all(cli_option(f) is not None for f in fields), [f.name for f in fields if cli_option(f) is None]
    parser = _train_parser()
    options = {a.dest: a for a in parser._actions if a.help != argparse.SUPPRESS and a.dest != "help"}
    assert len(options) == len(fields)
    cfg = train_cmd.config_from_args(parser.parse_args(["--model", "m", "--data", "d", "--output", "o"]))
    assert cfg == TrainConfig(model="m", data="d", output_dir="o")
    flags = parser.parse_args(
        [
            "--model",
            "m",
            "--data",
            "d",
            "--output",
            "o",
            "--no-progress",
            "--no-gradient-checkpointing",
            "--train-ff",
            "--adam-betas",
            "0.8,0.9",
            "--device",
            "auto",
            "--adam-eps",
            "1e-6",
        ]
    )
    cfg = train_cmd.config_from_args(flags)
    assert (cfg.progress, cfg.gradient_checkpointing, cfg.train_ff) == (False, False, True)
    assert (cfg.adam_betas, cfg.device, cfg.adam_eps) == ((0.8, 0.9), None, 1e-6)
    assert options["model"].required and options["output"].required and not options["lr"].required
