"""apply_radial_attention / remove_radial_attention on tiny real diffusers transformers (CPU, random weights).

The oracle is the unpatched model itself: its self-attention processors are handed the same
radial mask as a token-level boolean ``attention_mask`` (combined with the prompt padding mask
for HunyuanVideo), so diffusers' own SDPA path computes what radial attention must compute.
"""

import pytest
import torch

pytest.importorskip("diffusers")

from radial_attention.integrations.diffusers import (  # noqa: E402
    apply_radial_attention,
    attention_modules,
    get_radial_state,
    remove_radial_attention,
)
from radial_attention.testing import tiny  # noqa: E402
from radial_attention.mask import radial_block_mask  # noqa: E402

BS = 64  # block size for the tiny layouts


class TokenMaskProcessor:
    """Test-only processor: the original processor with a token-level mask as its attention_mask."""

    def __init__(self, original, token_mask):
        self.original = original
        self.token_mask = token_mask  # [1, 1, S, S] bool

    def __call__(
        self,
        attn,
        hidden_states,
        encoder_hidden_states=None,
        attention_mask=None,
        rotary_emb=None,
        image_rotary_emb=None,
    ):
        mask = self.token_mask if attention_mask is None else attention_mask.bool() & self.token_mask
        kwargs = {}
        if rotary_emb is not None:
            kwargs["rotary_emb"] = rotary_emb
        if image_rotary_emb is not None:
            kwargs["image_rotary_emb"] = image_rotary_emb
        return self.original(
            attn, hidden_states, encoder_hidden_states=encoder_hidden_states, attention_mask=mask, **kwargs
        )


def oracle(model, kwargs, mask, seq_len, layers=None):
    """Output of the unpatched model whose video self-attention (blocks ``layers``) uses ``mask`` token-wise."""
    paths = attention_modules(model)
    originals = {p: model.get_submodule(p).processor for p in paths}
    token_mask = mask.to_token_mask(seq_len)
    try:
        for i, p in enumerate(paths):
            if layers is None or i in layers:
                model.get_submodule(p).set_processor(TokenMaskProcessor(originals[p], token_mask))
        with torch.no_grad():
            return model(**kwargs)[0]
    finally:
        for p, proc in originals.items():
            model.get_submodule(p).set_processor(proc)


def run(model, kwargs):
    with torch.no_grad():
        return model(**kwargs)[0]


def _rel(a, b):
    return float((a - b).abs().max() / b.abs().max())


# (builder, inputs, frames, latent h, w, preset) per family; layouts keep <= 60% of the blocks.
CASES = {
    "wan2.1-t2v": (lambda: tiny.tiny_wan_transformer("t2v"), tiny.wan_inputs, dict(batch=2), "wan"),
    "wan2.1-i2v": (lambda: tiny.tiny_wan_transformer("i2v"), tiny.wan_inputs, dict(batch=1), "wan"),
    "wan2.2-ti2v-5b": (lambda: tiny.tiny_wan_transformer("ti2v"), tiny.wan_inputs, dict(batch=1), "wan"),
    "wan2.2-a14b-expert": (lambda: tiny.tiny_wan_transformer("a14b"), tiny.wan_inputs, dict(batch=1), "wan2.2"),
    # SkyReels-V2: Wan's architecture, Wan2.1's preset. Batch 2 (batched CFG) for all three.
    "skyreels-v2-t2v": (lambda: tiny.tiny_skyreels_transformer("t2v"), tiny.wan_inputs, dict(batch=2), "wan"),
    "skyreels-v2-i2v": (lambda: tiny.tiny_skyreels_transformer("i2v"), tiny.wan_inputs, dict(batch=2), "wan"),
    "skyreels-v2-df": (lambda: tiny.tiny_skyreels_transformer("df"), tiny.wan_inputs, dict(batch=2), "wan"),
    "hunyuan-t2v": (
        tiny.tiny_hunyuan_transformer,
        tiny.hunyuan_inputs,
        dict(batch=2, prompt_lengths=[5, 16]),
        "hunyuan",
    ),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_radial_equals_unpatched_model_with_the_mask_as_token_mask(name):
    build, inputs, extra, preset = CASES[name]
    model = build()
    F, H, W = 12, 14, 12  # T = 7 * 6 = 42 tokens per frame, S = 504 video tokens: not a multiple of 64
    kwargs = inputs(model, F, H, W, **extra)
    if name == "wan2.2-ti2v-5b":  # TI2V passes per-token timesteps [B, S], first frame at 0
        ts = torch.full((1, F * 42), 700.0)
        ts[:, :42] = 0.0
        kwargs["timestep"] = ts
    if name == "skyreels-v2-df":  # diffusion forcing: one timestep per latent frame [B, F]
        kwargs.update(timestep=torch.linspace(999, 0, F).expand(2, F), enable_diffusion_forcing=True)
    text = kwargs["encoder_hidden_states"].shape[1] if name.startswith("hunyuan") else 0
    S = F * 42 + text
    mask = radial_block_mask(F, 42, preset=preset, extra_tokens=text, block_size=BS)
    assert mask.density <= 0.6

    dense = run(model, kwargs)
    state = apply_radial_attention(model, preset=None if name != "wan2.2-a14b-expert" else "wan2.2", block_size=BS)
    radial = run(model, kwargs)
    assert state.config.preset == preset
    assert list(state.masks) == [(F, 42, 0, text)]
    assert torch.equal(state.masks[(F, 42, 0, text)].to_dense(), mask.to_dense())
    remove_radial_attention(model)

    expected = oracle(model, kwargs, mask, S)
    err = _rel(radial, expected)
    diff = _rel(radial, dense)
    assert err < 1e-5, f"radial differs from the masked unpatched model by {err}"
    # ~1.5e-2 here against ~2e-7 of numerical error: the test would see a wrong mask.
    assert diff > 5e-3 and diff > 1000 * err, f"radial output too close to dense ({diff}) to test anything"
    n = len(attention_modules(model))
    assert state.summary()["radial_calls"] == n


def test_hunyuan_prompt_padding_matters():
    # The same prompt with and without padding keys masked differ; radial must follow the padding.
    model = tiny.tiny_hunyuan_transformer()
    kwargs = tiny.hunyuan_inputs(model, 8, 16, 16, batch=1, prompt_lengths=[3])
    apply_radial_attention(model, block_size=BS)
    padded = run(model, kwargs)
    kwargs_full = dict(kwargs, encoder_attention_mask=torch.ones_like(kwargs["encoder_attention_mask"]))
    full = run(model, kwargs_full)
    remove_radial_attention(model)
    assert _rel(padded, full) > 1e-3
    mask = radial_block_mask(8, 64, preset="hunyuan", extra_tokens=16, block_size=BS)
    assert _rel(padded, oracle(model, kwargs, mask, 8 * 64 + 16)) < 1e-5


def test_all_dense_schedule_equals_unpatched_model_exactly():
    model = tiny.tiny_wan_transformer("t2v", num_layers=2)
    kwargs = tiny.wan_inputs(model, 12, 16, 16)
    dense = run(model, kwargs)
    state = apply_radial_attention(model, dense_layers=2, block_size=BS)
    assert torch.equal(run(model, kwargs), dense)
    remove_radial_attention(model)
    state = apply_radial_attention(model, dense_steps=1, block_size=BS)
    assert torch.equal(run(model, kwargs), dense)
    assert state.summary()["radial_calls"] == 0 and state.summary()["dense_calls"] == 2
    remove_radial_attention(model)


def test_dense_layers_match_oracle_with_mask_only_in_later_blocks():
    model = tiny.tiny_wan_transformer("t2v", num_layers=3)
    kwargs = tiny.wan_inputs(model, 12, 16, 16)
    apply_radial_attention(model, dense_layers=1, block_size=BS)
    radial = run(model, kwargs)
    remove_radial_attention(model)
    mask = radial_block_mask(12, 64, preset="wan", block_size=BS)
    assert _rel(radial, oracle(model, kwargs, mask, 12 * 64, layers={1, 2})) < 1e-5
    assert _rel(radial, oracle(model, kwargs, mask, 12 * 64)) > 1e-3


@pytest.mark.parametrize("builder", [lambda: tiny.tiny_wan_transformer("i2v"), tiny.tiny_hunyuan_transformer])
def test_remove_restores_the_model_exactly(builder):
    model = builder()
    inputs = tiny.wan_inputs if "Wan" in type(model).__name__ else tiny.hunyuan_inputs
    kwargs = inputs(model, 8, 16, 16)
    before = run(model, kwargs)
    modules = dict(model.named_modules())
    dicts = {name: set(vars(m)) for name, m in modules.items()}
    procs = {p: model.get_submodule(p).processor for p in attention_modules(model)}
    forwards = {name: m.forward for name, m in modules.items()}

    apply_radial_attention(model, block_size=BS)
    assert not torch.equal(run(model, kwargs), before)
    remove_radial_attention(model)

    assert torch.equal(run(model, kwargs), before)
    assert {name: set(vars(m)) for name, m in model.named_modules()} == dicts
    assert all(model.get_submodule(p).processor is proc for p, proc in procs.items())
    assert all(m.forward == forwards[name] for name, m in model.named_modules())
    assert get_radial_state(model) is None
    with pytest.raises(ValueError, match="no radial attention"):
        remove_radial_attention(model)


def test_schedule_counts_steps_with_cfg_as_two_calls():
    steps, layers = 6, 3
    model = tiny.tiny_wan_transformer("t2v", num_layers=layers)
    kwargs = tiny.wan_inputs(model, 4, 8, 8)
    state = apply_radial_attention(
        model, dense_steps=2, dense_last_steps=1, dense_layers=1, num_steps=steps, block_size=BS
    )
    timesteps = torch.linspace(999, 100, steps)
    for generation in range(2):  # the count starts over for a second generation
        for t in timesteps:
            for _ in ("cond", "uncond"):
                run(model, dict(kwargs, timestep=t.expand(1)))
    expected = {}
    for step in range(steps):
        for layer in range(layers):
            kind = "radial" if 2 <= step < steps - 1 and layer >= 1 else "dense"
            expected[(step, layer, kind)] = 4  # 2 generations x (cond + uncond)
    assert dict(state.calls) == expected


def test_schedule_batched_cfg_and_reset():
    model = tiny.tiny_wan_transformer("t2v", num_layers=1)
    kwargs = tiny.wan_inputs(model, 4, 8, 8, batch=2)
    state = apply_radial_attention(model, dense_steps=1, block_size=BS)
    for t in (900.0, 800.0, 800.0):  # batched CFG: one call a step; a repeated timestep is the same step
        run(model, dict(kwargs, timestep=torch.full((2,), t)))
    assert dict(state.calls) == {(0, 0, "dense"): 1, (1, 0, "radial"): 2}
    state.reset()
    run(model, dict(kwargs, timestep=torch.full((2,), 500.0)))
    assert state.step == 0 and state.calls[(0, 0, "dense")] == 2


def test_two_experts_share_one_step_count():
    t1, t2 = tiny.tiny_wan_a14b_transformers(num_layers=1)
    state = apply_radial_attention([t1, t2], dense_steps=2, dense_last_steps=1, num_steps=5, block_size=BS)
    assert state.config.preset == "wan2.2"
    kwargs = tiny.wan_inputs(t1, 4, 8, 8)
    for i, t in enumerate(torch.linspace(999, 50, 5)):
        expert = t1 if i < 3 else t2  # high-noise expert first, then the low-noise one
        run(expert, dict(kwargs, timestep=t.expand(1)))
    assert [state.calls[(s, 0, "radial")] for s in range(5)] == [0, 0, 1, 1, 0]
    assert get_radial_state(t2) is state
    remove_radial_attention([t1, t2])
    assert get_radial_state(t1) is None and get_radial_state(t2) is None


def test_new_latent_size_builds_a_new_mask():
    model = tiny.tiny_wan_transformer("t2v", num_layers=1)
    state = apply_radial_attention(model, block_size=BS)
    run(model, tiny.wan_inputs(model, 8, 16, 16))
    run(model, tiny.wan_inputs(model, 8, 16, 16, seed=1))
    assert list(state.masks) == [(8, 64, 0, 0)]
    run(model, tiny.wan_inputs(model, 12, 8, 24))  # 12 frames of 4 x 12 = 48 tokens
    assert list(state.masks) == [(8, 64, 0, 0), (12, 48, 0, 0)]
    assert state.masks[(12, 48, 0, 0)].num_blocks == -(-12 * 48 // BS)


def test_bad_settings_and_models_raise_clear_errors():
    model = tiny.tiny_wan_transformer("t2v", num_layers=1)
    with pytest.raises(ValueError, match="num_steps"):
        apply_radial_attention(model, dense_last_steps=2)
    with pytest.raises(ValueError, match="block_size"):
        apply_radial_attention(model, block_size=32)
    with pytest.raises(ValueError, match="preset"):
        apply_radial_attention(model, preset="nope")
    with pytest.raises(ValueError, match="dense_steps"):
        apply_radial_attention(model, dense_steps=-1)
    with pytest.raises(ValueError, match="backend"):
        apply_radial_attention(model, backend="cuda-magic")
    with pytest.raises(TypeError, match="WanTransformer3DModel"):
        apply_radial_attention(torch.nn.Linear(2, 2))
    model.blocks[0].attn1.set_attention_backend("flex")  # module-level: leaves the global backend alone
    with pytest.raises(ValueError, match="reset_attention_backend"):
        apply_radial_attention(model)
    model.blocks[0].attn1.set_attention_backend("native")
    apply_radial_attention(model, block_size=BS)
    with pytest.raises(ValueError, match="already has radial attention"):
        apply_radial_attention(model)
    remove_radial_attention(model)
    # A non-SDPA backend chosen globally at call time cannot be intercepted: a clear error, not dense.
    from diffusers.models.attention_dispatch import attention_backend

    other = tiny.tiny_wan_transformer("t2v", num_layers=1)
    apply_radial_attention(other, block_size=BS)
    with attention_backend("flex"), pytest.raises(RuntimeError, match="native attention backends"):
        run(other, tiny.wan_inputs(other, 4, 8, 8))


def _random_lora_dir(transformer, path, seed=0):
    """Write a LoRA for ``transformer``'s attention projections with diffusers' own saver."""
    from diffusers import WanPipeline
    from peft import LoraConfig, get_peft_model_state_dict

    donor = tiny.tiny_wan_transformer("t2v", num_layers=len(transformer.blocks))
    donor.add_adapter(
        LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"], init_lora_weights=False)
    )
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in donor.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    WanPipeline.save_lora_weights(path, transformer_lora_layers=get_peft_model_state_dict(donor))


def test_lora_loaded_through_diffusers_keeps_working(tmp_path):
    pytest.importorskip("peft")
    pipe = tiny.tiny_wan_pipeline("t2v")
    model = pipe.transformer
    kwargs = tiny.wan_inputs(model, 12, 16, 16)
    mask = radial_block_mask(12, 64, preset="wan", block_size=BS)
    _random_lora_dir(model, tmp_path)

    apply_radial_attention(pipe, block_size=BS)
    radial = run(model, kwargs)
    pipe.load_lora_weights(tmp_path, adapter_name="style")  # loaded after applying
    radial_lora = run(model, kwargs)
    assert _rel(radial_lora, radial) > 1e-2, "the LoRA does not change the radial model's output"
    remove_radial_attention(pipe)
    assert _rel(radial_lora, oracle(model, kwargs, mask, 12 * 64)) < 1e-5

    apply_radial_attention(pipe, block_size=BS)  # LoRA loaded before applying
    assert torch.allclose(run(model, kwargs), radial_lora, rtol=0, atol=1e-6)
    pipe.set_adapters(["style"], adapter_weights=[0.0])
    assert _rel(run(model, kwargs), radial) < 1e-5
    remove_radial_attention(pipe)


def test_gradients_with_gradient_checkpointing_match_the_oracle():
    # Training (LoRA length extension) runs the radial model under autograd, often with gradient
    # checkpointing, which reruns each block during backward: the layout and step must still hold.
    model = tiny.tiny_wan_transformer("t2v", num_layers=2).train()
    model.enable_gradient_checkpointing()
    kwargs = tiny.wan_inputs(model, 12, 16, 16)
    mask = radial_block_mask(12, 64, preset="wan", block_size=BS)
    weight = model.blocks[1].attn1.to_q.weight

    apply_radial_attention(model, block_size=BS)
    model(**kwargs)[0].square().mean().backward()
    grad_radial = weight.grad.clone()
    remove_radial_attention(model)
    model.zero_grad()

    paths = attention_modules(model)
    originals = {p: model.get_submodule(p).processor for p in paths}
    for p in paths:
        model.get_submodule(p).set_processor(TokenMaskProcessor(originals[p], mask.to_token_mask(12 * 64)))
    model(**kwargs)[0].square().mean().backward()
    for p, proc in originals.items():
        model.get_submodule(p).set_processor(proc)
    assert _rel(grad_radial, weight.grad) < 1e-4


def test_hunyuan_under_bf16_autocast_runs_in_the_autocast_dtype():
    # HunyuanVideo's q/k leave float32 norms while v is bf16 under autocast; SDPA would run all three
    # in bf16, so the radial call must too (it used to raise "v must have q's dtype").
    model = tiny.tiny_hunyuan_transformer()
    kwargs = tiny.hunyuan_inputs(model, 8, 16, 16, batch=1, prompt_lengths=[3])
    mask = radial_block_mask(8, 64, preset="hunyuan", extra_tokens=16, block_size=BS)
    expected = oracle(model, kwargs, mask, 8 * 64 + 16)
    apply_radial_attention(model, block_size=BS)
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = run(model, kwargs)
    finally:
        remove_radial_attention(model)
    assert got.dtype == torch.bfloat16 or got.dtype == torch.float32
    assert _rel(got.float(), expected) < 5e-2  # bf16 arithmetic against the float32 oracle
