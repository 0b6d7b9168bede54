import math

import pytest
import torch

from pixart_lab.data.transforms import model_range_to_uint8, uint8_to_model_range
from pixart_lab.models.vae import build_vae, load_vae, measure_scaling_factor, psnr, reconstruct, round_trip_uint8, vae_loss


def test_downsampling_factor_and_latent_shape(tiny_vae):
    posterior = tiny_vae.encode(torch.zeros(2, 3, 64, 48)).latent_dist
    assert posterior.mean.shape == (2, 4, 16, 12)  # 3 blocks -> factor 4


def test_psnr_matches_the_closed_form():
    target = torch.zeros(1, 3, 8, 8)
    # an error of 0.2 in [-1, 1] is 0.1 in [0, 1]: PSNR = 10 log10(1 / 0.01) = 20 dB
    assert psnr(target + 0.2, target).item() == pytest.approx(20.0, abs=1e-4)


def test_save_and_load_round_trip_keeps_scaling_and_outputs(tiny_vae, tmp_path):
    tiny_vae.register_to_config(scaling_factor=0.5)
    tiny_vae.save_pretrained(tmp_path / "vae")
    loaded = load_vae(str(tmp_path / "vae")).eval()
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    assert loaded.config.scaling_factor == 0.5
    torch.testing.assert_close(reconstruct(loaded, x), reconstruct(tiny_vae, x), rtol=0, atol=0)
    assert load_vae(str(tmp_path / "vae"), scaling_factor=0.18215).config.scaling_factor == 0.18215


def test_uint8_round_trip_is_the_reconstruction_in_pixels_whatever_the_batching(tiny_vae):
    images = torch.randint(0, 256, (5, 3, 32, 32), dtype=torch.uint8)
    whole = round_trip_uint8(tiny_vae.eval(), images, batch_size=8)
    assert whole.dtype == torch.uint8 and whole.shape == images.shape
    assert torch.equal(whole, model_range_to_uint8(reconstruct(tiny_vae, uint8_to_model_range(images))))
    batched = round_trip_uint8(tiny_vae, images, batch_size=2)  # float kernels may round one level apart
    assert (batched.int() - whole.int()).abs().max() <= 1


def test_uint8_conversions_invert_each_other_and_clip():
    images = torch.arange(256, dtype=torch.uint8).view(1, 1, 16, 16)
    assert torch.equal(model_range_to_uint8(uint8_to_model_range(images)), images)
    assert model_range_to_uint8(torch.tensor([-1.5, 1.5])).tolist() == [0, 255]


def test_scaling_factor_makes_latents_unit_variance(tiny_vae):
    images = torch.rand(32, 3, 32, 32) * 2 - 1
    scale = measure_scaling_factor(tiny_vae, images, batch_size=8)
    torch.manual_seed(1)
    latents = tiny_vae.encode(images).latent_dist.sample() * scale
    assert latents.std().item() == pytest.approx(1.0, rel=0.05)


def test_a_few_steps_lower_the_reconstruction_loss():
    torch.manual_seed(0)
    vae = build_vae(block_out_channels=(8, 16), norm_num_groups=4)
    images = (torch.rand(4, 3, 1, 1) * 2 - 1).expand(4, 3, 16, 16).contiguous()  # flat colours
    optimizer = torch.optim.Adam(vae.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        loss = vae_loss(vae, images, kl_weight=1e-4)
        optimizer.zero_grad()
        loss["loss"].backward()
        optimizer.step()
        losses.append(loss["mse"].item())
    assert losses[-1] < 0.5 * losses[0]
    assert math.isfinite(loss["kl"].item()) and loss["kl"].item() >= 0


def test_centring_zeroes_the_latent_mean_and_keeps_reconstructions():
    from pixart_lab.models.vae import build_vae, centre_latents

    torch.manual_seed(1)
    vae = build_vae(block_out_channels=(8, 16, 16), latent_channels=4, norm_num_groups=4, sample_size=64).eval()
    images = torch.rand(6, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        vae.quant_conv.bias[:4] += torch.tensor([1.0, -0.5, 0.25, 2.0])  # a clearly off-centre encoder
        before = vae.encode(images).latent_dist.mean
        reconstruction = reconstruct(vae, images)
        removed = centre_latents(vae, images, batch_size=4)
        after = vae.encode(images).latent_dist
    torch.testing.assert_close(removed, before.mean(dim=(0, 2, 3)))
    torch.testing.assert_close(after.mean.mean(dim=(0, 2, 3)), torch.zeros(4), atol=1e-5, rtol=0)
    torch.testing.assert_close(after.std, vae.encode(images).latent_dist.std)
    torch.testing.assert_close(reconstruct(vae, images), reconstruction, atol=1e-5, rtol=0)
