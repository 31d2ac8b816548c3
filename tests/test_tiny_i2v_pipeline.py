"""The tiny Wan2.1 image-to-video pipeline: end to end on CPU, deterministic, save/load round trip,
and the two calls a training-data encoder makes (``prepare_latents``, ``encode_image``)."""

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("transformers")
PIL_Image = pytest.importorskip("PIL.Image")

from diffusers import WanImageToVideoPipeline, WanPipeline  # noqa: E402

from radial_attention.testing import tiny  # noqa: E402

HEIGHT, WIDTH, FRAMES = 64, 96, 9
LATENT_SHAPE = (1, 16, (FRAMES - 1) // 4 + 1, HEIGHT // 8, WIDTH // 8)  # [1, 16, 3, 8, 12]
PROMPT = "a red fox running in the snow"


@pytest.fixture(scope="module")
def pipe():
    return tiny.tiny_wan_i2v_pipeline(num_layers=2, seed=0)


@pytest.fixture(scope="module")
def image():
    rgb = np.random.default_rng(0).integers(0, 256, size=(HEIGHT, WIDTH, 3), dtype=np.uint8)
    return PIL_Image.fromarray(rgb)  # uint8 [H, W, 3] -> RGB


def _call(pipe, image, seed=0, **kwargs):
    kwargs.setdefault("prompt", PROMPT)
    out = pipe(
        image=image,
        height=HEIGHT,
        width=WIDTH,
        num_frames=FRAMES,
        num_inference_steps=2,
        guidance_scale=1.0,
        output_type="latent",
        max_sequence_length=512,
        generator=torch.Generator().manual_seed(seed),
        **kwargs,
    )
    return out.frames


@pytest.fixture(scope="module")
def reference(pipe, image):
    return _call(pipe, image)


def test_components_fit_together(pipe):
    tr = pipe.transformer
    assert isinstance(pipe, WanImageToVideoPipeline)
    assert tr.config.in_channels == 36 and tr.config.added_kv_proj_dim is not None
    # The pipeline feeds image_encoder(...).hidden_states[-2] into the transformer's image embedder.
    assert pipe.image_encoder.config.hidden_size == tr.config.image_dim
    size = pipe.image_encoder.config.image_size
    assert pipe.image_processor.crop_size == {"height": size, "width": size}
    assert pipe.vae.config.z_dim == 16
    assert tr.config.text_dim == pipe.text_encoder.config.d_model


def test_shares_t2v_text_side_and_vae():
    """Same tokenizer, text encoder and VAE weights as tiny_wan_pipeline("t2v"): a T2V latent
    layout (and a T2V LoRA's text conditioning) matches."""
    i2v = tiny.tiny_wan_i2v_pipeline(num_layers=1, seed=3)
    t2v = tiny.tiny_wan_pipeline("t2v", num_layers=1, seed=3)
    for name in ("text_encoder", "vae"):
        a, b = getattr(i2v, name).state_dict(), getattr(t2v, name).state_dict()
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a), name
    assert i2v.tokenizer.get_vocab() == t2v.tokenizer.get_vocab()
    assert dict(i2v.scheduler.config) == dict(t2v.scheduler.config)
    assert len(i2v.transformer.blocks) == 1


def test_seeded_and_leaves_global_rng_alone():
    torch.manual_seed(1234)
    expected = torch.rand(3)
    torch.manual_seed(1234)
    a = tiny.tiny_wan_i2v_pipeline(num_layers=1, seed=5)
    assert torch.equal(torch.rand(3), expected)
    b = tiny.tiny_wan_i2v_pipeline(num_layers=1, seed=5)
    c = tiny.tiny_wan_i2v_pipeline(num_layers=1, seed=6)
    sa, sb, sc = (p.image_encoder.state_dict() for p in (a, b, c))
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


def test_end_to_end_latents(pipe, image, reference):
    assert tuple(reference.shape) == LATENT_SHAPE
    assert reference.dtype == torch.float32
    assert torch.isfinite(reference).all()
    again = _call(pipe, image)
    assert torch.equal(again, reference)
    other_seed = _call(pipe, image, seed=1)
    assert not torch.allclose(other_seed, reference)


def test_image_embeddings_reach_the_transformer(pipe, image, reference):
    """With 512 text tokens the CLIP tokens go through the image cross-attention: zeroing them
    changes the result."""
    embeds = pipe.encode_image(image, torch.device("cpu"))
    # The pipeline refuses `image` together with `image_embeds`, but the VAE condition needs the
    # image: keep the image and make this instance's encode_image return zeros.
    pipe.encode_image = lambda *_a, **_k: torch.zeros_like(embeds)
    try:
        zeroed = _call(pipe, image)
    finally:
        del pipe.encode_image  # back to the class method
    assert torch.isfinite(zeroed).all()
    assert not torch.allclose(zeroed, reference)


@torch.no_grad()  # as inside the pipeline: with autograd on, CPU kernels differ in the last bit
def test_prompt_embeds_without_ftfy_match_the_prompt(pipe):
    """The ftfy-free route: WanPipeline.encode_prompt (it skips ftfy when missing) on the same
    tokenizer and text encoder gives the I2V pipeline's own prompt embeddings, bit for bit, so
    they can be passed as ``prompt_embeds``."""
    t2v_view = WanPipeline(
        tokenizer=pipe.tokenizer,
        text_encoder=pipe.text_encoder,
        vae=pipe.vae,
        scheduler=pipe.scheduler,
        transformer=None,
    )
    cpu = torch.device("cpu")
    ours, _ = t2v_view.encode_prompt(PROMPT, do_classifier_free_guidance=False, max_sequence_length=512, device=cpu)
    theirs, _ = pipe.encode_prompt(PROMPT, do_classifier_free_guidance=False, max_sequence_length=512, device=cpu)
    assert ours.shape == (1, 512, pipe.transformer.config.text_dim)
    assert torch.equal(ours, theirs)
    n_words = len(PROMPT.split()) + 1  # + </s>; the rest of the 512 is zero padding
    assert ours[0, n_words:].abs().sum() == 0 and ours[0, :n_words].abs().sum() > 0


def test_save_and_reload(pipe, image, reference, tmp_path):
    pipe.save_pretrained(tmp_path / "i2v")
    loaded = WanImageToVideoPipeline.from_pretrained(tmp_path / "i2v")
    assert type(loaded.image_processor) is type(pipe.image_processor)
    assert loaded.image_processor.to_dict() == pipe.image_processor.to_dict()
    for name in ("text_encoder", "image_encoder", "transformer", "vae"):
        a, b = getattr(pipe, name).state_dict(), getattr(loaded, name).state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    # Same weights, same latents up to float32 rounding: safetensors maps the loaded weights at
    # 8-byte rather than 64-byte aligned addresses, and CPU GEMM kernels round differently for
    # them (about 5e-7 in the transformer output; bit-equal once the weights are copied).
    torch.testing.assert_close(_call(loaded, image), reference, rtol=1e-5, atol=1e-5)


def test_prepare_latents_and_encode_image(pipe, image):
    device = torch.device("cpu")
    pixels = pipe.video_processor.preprocess(image, height=HEIGHT, width=WIDTH).to(device, torch.float32)
    assert tuple(pixels.shape) == (1, 3, HEIGHT, WIDTH)
    latents, condition = pipe.prepare_latents(
        pixels,
        1,
        pipe.vae.config.z_dim,
        HEIGHT,
        WIDTH,
        FRAMES,
        torch.float32,
        device,
        torch.Generator().manual_seed(0),
    )
    assert tuple(latents.shape) == LATENT_SHAPE
    # condition = 4 mask channels (one per frame of the VAE's 4x temporal group) + 16 image latents.
    assert tuple(condition.shape) == (1, 4 + 16) + LATENT_SHAPE[2:]
    mask = condition[:, :4]
    assert torch.equal(mask[:, :, 0], torch.ones_like(mask[:, :, 0]))  # first latent frame: the image
    assert torch.equal(mask[:, :, 1:], torch.zeros_like(mask[:, :, 1:]))  # the rest: to generate
    assert torch.isfinite(condition).all()
    # Together with the noise they make the transformer's 36 input channels.
    assert latents.shape[1] + condition.shape[1] == pipe.transformer.config.in_channels

    embeds = pipe.encode_image(image, device)
    cfg = pipe.image_encoder.config
    n_tokens = (cfg.image_size // cfg.patch_size) ** 2 + 1  # patches + CLS
    assert tuple(embeds.shape) == (1, n_tokens, pipe.transformer.config.image_dim)
    assert torch.isfinite(embeds).all()
    # A batch of images encodes to one embedding per image, each equal to its single encoding.
    flipped = image.transpose(PIL_Image.Transpose.FLIP_LEFT_RIGHT)
    both = pipe.encode_image([image, flipped], device)
    assert both.shape[0] == 2
    torch.testing.assert_close(both[:1], embeds)
    assert not torch.allclose(both[1], both[0])


def test_clip_encoder_width_follows_image_dim():
    encoder, processor = tiny.tiny_clip_vision_encoder(40, seed=0)
    pixels = processor(images=PIL_Image.new("RGB", (50, 30)), return_tensors="pt")["pixel_values"]
    assert tuple(pixels.shape) == (1, 3, 32, 32)  # shortest edge resized to 32, center crop 32x32
    with torch.no_grad():
        hidden = encoder(pixel_values=pixels, output_hidden_states=True).hidden_states
    assert len(hidden) == encoder.config.num_hidden_layers + 1 and tuple(hidden[-2].shape) == (1, 17, 40)
    with pytest.raises(ValueError, match="image_dim must be a positive int, got 0"):
        tiny.tiny_clip_vision_encoder(0)
