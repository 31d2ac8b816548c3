"""Training data folder (format, validation errors) and the flow-matching objective."""

import json

import pytest
import torch

from radial_attention.testing.data import write_synthetic_dataset
from radial_attention.train.data import (
    DataError,
    LatentDataset,
    ModelSpec,
    collate,
    read_manifest,
    validate_dataset,
    write_manifest,
    write_sample,
)
from radial_attention.train.objective import FlowMatching, shift_sigmas

WAN = ModelSpec("wan", in_channels=16, patch_size=(1, 2, 2), text_dim=32)
HUNYUAN = ModelSpec("hunyuan", in_channels=16, patch_size=(1, 2, 2), text_dim=16, pooled_dim=8)


def _folder(tmp_path, spec=WAN, n=3, shape=(16, 4, 8, 12), text_len=6):
    root = tmp_path / "data"
    write_synthetic_dataset(root, spec, num_samples=n, latent_shape=shape, text_len=text_len, seed=1)
    return root


# ------------------------------------------------------------------------------- format
def test_roundtrip_and_dataset(tmp_path):
    root = _folder(tmp_path, n=3)
    doc, samples = validate_dataset(root, WAN, batch_size=3)
    assert doc["model_family"] == "wan" and len(samples) == 3
    assert samples[0].latent_shape == (16, 4, 8, 12)
    ds = LatentDataset(root, WAN)
    item = ds[1]
    assert item["latents"].shape == (16, 4, 8, 12) and item["prompt_embeds"].shape == (6, 32)
    batch = collate([ds[0], ds[2]])
    assert batch["latents"].shape == (2, 16, 4, 8, 12)
    assert not torch.equal(batch["latents"][0], batch["latents"][1])


def test_hunyuan_roundtrip(tmp_path):
    root = _folder(tmp_path, spec=HUNYUAN, n=2)
    item = LatentDataset(root, HUNYUAN)[0]
    assert item["pooled_prompt_embeds"].shape == (8,)
    assert item["prompt_attention_mask"].dtype == torch.int64 and item["prompt_attention_mask"][0] == 1


def test_write_sample_accepts_batch_of_one_and_rejects_bad_dims(tmp_path):
    shapes = write_sample(tmp_path / "a.safetensors", torch.zeros(1, 16, 2, 4, 4), torch.zeros(1, 3, 32))
    assert shapes == {"latents": (16, 2, 4, 4), "prompt_embeds": (3, 32)}
    with pytest.raises(DataError, match=r"latents must have 4 dims.*\(2, 16, 2, 4, 4\)"):
        write_sample(tmp_path / "b.safetensors", torch.zeros(2, 16, 2, 4, 4), torch.zeros(3, 32))


# ------------------------------------------------------------------------------- bad data
def _rewrite(root, n, **tensors):
    """Overwrite sample n with the given tensors."""
    doc = json.loads((root / "manifest.json").read_text())
    path = root / doc["samples"][n]["file"]
    from safetensors.torch import load_file, save_file

    t = load_file(str(path))
    t.update(tensors)
    for k in [k for k, v in tensors.items() if v is None]:
        del t[k]
    save_file({k: v for k, v in t.items() if v is not None}, str(path))
    return path


def test_missing_folder_and_manifest(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        validate_dataset(tmp_path / "nope", WAN)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no manifest.json.*radial-attention encode"):
        validate_dataset(tmp_path / "empty", WAN)


def test_missing_file(tmp_path):
    root = _folder(tmp_path)
    (root / "samples" / "000001.safetensors").unlink()
    with pytest.raises(DataError, match=r"sample #1: file .*000001.safetensors.* does not exist"):
        validate_dataset(root, WAN)


def test_corrupt_file(tmp_path):
    root = _folder(tmp_path)
    (root / "samples" / "000002.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(DataError, match=r"sample #2: .* not a readable safetensors file"):
        validate_dataset(root, WAN)


def test_wrong_channels(tmp_path):
    root = _folder(tmp_path)
    _rewrite(root, 0, latents=torch.zeros(4, 4, 8, 12))
    with pytest.raises(DataError, match=r"latents have 4 channels but the model takes 16"):
        validate_dataset(root, WAN)


def test_latent_not_multiple_of_patch(tmp_path):
    root = _folder(tmp_path)
    _rewrite(root, 2, latents=torch.zeros(16, 4, 9, 12))
    with pytest.raises(DataError, match=r"4x9x12 must be positive multiples of the model's patch size 1x2x2"):
        validate_dataset(root, WAN)


def test_latent_wrong_rank(tmp_path):
    root = _folder(tmp_path)
    _rewrite(root, 0, latents=torch.zeros(16, 8, 12))
    with pytest.raises(DataError, match=r"latents must be \[C, F, H, W\], got shape \(16, 8, 12\)"):
        validate_dataset(root, WAN)


def test_wrong_text_dim(tmp_path):
    root = _folder(tmp_path)
    _rewrite(root, 1, prompt_embeds=torch.zeros(6, 64))
    with pytest.raises(DataError, match=r"prompt_embeds must be \[L, 32\] for this model, got shape \(6, 64\)"):
        validate_dataset(root, WAN)


def test_missing_tensor(tmp_path):
    root = _folder(tmp_path)
    _rewrite(root, 0, prompt_embeds=None)
    with pytest.raises(DataError, match=r"has no 'prompt_embeds' tensor"):
        validate_dataset(root, WAN)


def test_integer_latents_rejected(tmp_path):
    root = _folder(tmp_path)
    _rewrite(root, 0, latents=torch.zeros(16, 4, 8, 12, dtype=torch.int32))
    with pytest.raises(DataError, match=r"'latents' must be a float tensor, got dtype I32"):
        validate_dataset(root, WAN)


def test_hunyuan_needs_pooled_and_mask(tmp_path):
    root = _folder(tmp_path, spec=HUNYUAN)
    _rewrite(root, 0, pooled_prompt_embeds=torch.zeros(9))
    with pytest.raises(DataError, match=r"pooled_prompt_embeds must be \[8\] for this model, got \(9,\)"):
        validate_dataset(root, HUNYUAN)
    _rewrite(root, 0, pooled_prompt_embeds=torch.zeros(8), prompt_attention_mask=torch.ones(5, dtype=torch.int64))
    with pytest.raises(DataError, match=r"prompt_attention_mask must be \[6\]"):
        validate_dataset(root, HUNYUAN)


def test_family_mismatch(tmp_path):
    root = _folder(tmp_path, spec=HUNYUAN)
    with pytest.raises(DataError, match=r"encoded for model family 'hunyuan' but the model being trained is 'wan'"):
        validate_dataset(root, WAN)


def test_mixed_shapes_need_batch_size_one(tmp_path):
    root = _folder(tmp_path)
    _rewrite(root, 2, latents=torch.zeros(16, 4, 8, 16))
    validate_dataset(root, WAN, batch_size=1)  # fine with batch size 1
    with pytest.raises(DataError, match=r"batch_size 2 needs every sample to share one latents shape"):
        validate_dataset(root, WAN, batch_size=2)


def test_too_few_samples(tmp_path):
    root = _folder(tmp_path, n=3)
    with pytest.raises(
        DataError, match=r"3 samples are fewer than one batch per process \(batch_size 2 x 2 processes\)"
    ):
        validate_dataset(root, WAN, batch_size=2, world_size=2)


def test_manifest_errors(tmp_path):
    root = _folder(tmp_path)
    doc = json.loads((root / "manifest.json").read_text())
    (root / "manifest.json").write_text(json.dumps(dict(doc, format="something-else")))
    with pytest.raises(DataError, match="expected \"format\": 'radial-attention-latents'"):
        read_manifest(root)
    (root / "manifest.json").write_text(json.dumps(dict(doc, samples=[])))
    with pytest.raises(DataError, match="non-empty list"):
        read_manifest(root)
    (root / "manifest.json").write_text("{not json")
    with pytest.raises(DataError, match="not valid JSON"):
        read_manifest(root)
    with pytest.raises(DataError, match="model_family must be one of"):
        write_manifest(root, "mochi", [])


# ------------------------------------------------------------------------------- objective
def test_objective_formulas():
    x0 = torch.randn(3, 4, 2, 4, 4, dtype=torch.float64)
    noise = torch.randn_like(x0)
    sigma = torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)
    x_t, t, target, s = FlowMatching.make(x0, noise.float(), sigma)
    for i in range(3):
        expect = (1 - sigma[i]) * x0[i] + sigma[i] * noise[i]
        torch.testing.assert_close(x_t[i].double(), expect, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(target.double(), (noise - x0), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(t, (sigma * 1000).float())


@pytest.mark.parametrize("shift", [1.0, 3.0, 7.0])
def test_shift_matches_diffusers_scheduler(shift):
    from diffusers import FlowMatchEulerDiscreteScheduler

    sched = FlowMatchEulerDiscreteScheduler(shift=shift)
    u = torch.linspace(1, 1000, 1000).flip(0) / 1000  # the scheduler's unshifted training sigmas
    torch.testing.assert_close(shift_sigmas(u, shift), sched.sigmas.float(), atol=1e-6, rtol=1e-6)
    # The training timestep of a sigma is what the scheduler calls the transformer with.
    torch.testing.assert_close(sched.timesteps.float(), sched.sigmas.float() * 1000, atol=1e-3, rtol=0)


def test_target_is_the_velocity_the_euler_sampler_integrates():
    """A model predicting the training target exactly moves x_t along the straight path: the
    pipeline's Euler step from sigma to sigma_next lands on (1 - sigma_next) x0 + sigma_next noise."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    sched = FlowMatchEulerDiscreteScheduler(shift=3.0)
    sched.set_timesteps(10)
    x0 = torch.randn(1, 4, 2, 4, 4)
    noise = torch.randn_like(x0)
    i = 3
    sigma, sigma_next = sched.sigmas[i], sched.sigmas[i + 1]
    x_t, timestep, target, _ = FlowMatching.make(x0, noise, sigma.view(1))
    torch.testing.assert_close(timestep, sched.timesteps[i].view(1).float(), atol=1e-3, rtol=0)
    sched._step_index = i
    x_next = sched.step(target, sched.timesteps[i], x_t, return_dict=False)[0]
    torch.testing.assert_close(x_next, (1 - sigma_next) * x0 + sigma_next * noise, atol=1e-5, rtol=1e-5)


def test_sampling_per_item_generators_and_range():
    fm = FlowMatching(shift=3.0)
    x0 = torch.zeros(2, 4, 2, 4, 4)
    g = lambda s: torch.Generator().manual_seed(s)  # noqa: E731
    a = fm.sample(x0, [g(1), g(2)])
    b = fm.sample(x0[:1], [g(2)])
    # Item 1 of the batch equals the same sample drawn alone with its own generator.
    torch.testing.assert_close(a[0][1], b[0][0])
    torch.testing.assert_close(a[3][1], b[3][0])
    s = fm.sample_sigmas(10_000, g(0))
    assert 0 < s.min() and s.max() <= 1
    # shift 3 pushes noise levels up: median of shift(u) is shift(0.5) = 0.75
    assert abs(s.median().item() - 0.75) < 0.02
    ln = FlowMatching(shift=1.0, sampling="logit_normal").sample_sigmas(10_000, g(0))
    assert abs(ln.median().item() - 0.5) < 0.02
    with pytest.raises(ValueError, match="timestep sampling must be one of"):
        FlowMatching(sampling="cosine")
    with pytest.raises(ValueError, match="expected one generator per batch item"):
        fm.sample(x0, [g(1)])


@pytest.mark.parametrize("sampling", ["uniform", "logit_normal"])
def test_sigma_range_is_the_distribution_restricted_to_the_range(sampling):
    """One Wan2.2 A14B expert's noise levels: the same distribution, conditioned on the range."""
    g = lambda s: torch.Generator().manual_seed(s)  # noqa: E731
    full = FlowMatching(shift=12.0, sampling=sampling).sample_sigmas(200_000, g(0))
    for lo, hi in ((0.875, 1.0), (0.0, 0.875), (0.3, 0.5)):
        part = FlowMatching(shift=12.0, sampling=sampling, sigma_range=(lo, hi)).sample_sigmas(50_000, g(1))
        assert part.min() >= lo and part.max() <= hi
        conditional = full[(full >= lo) & (full <= hi)]
        for q in (0.1, 0.5, 0.9):  # quantiles of the restricted draw = those of the conditioned full draw
            assert abs(torch.quantile(part, q) - torch.quantile(conditional, q)) < 0.01, (lo, hi, q)
    with pytest.raises(ValueError, match=r"sigma_range must be \(lo, hi\) with 0 <= lo < hi <= 1, got \(0.9, 0.5\)"):
        FlowMatching(sigma_range=(0.9, 0.5))
