import pytest
import torch

from pixart_lab.evaluation.ceiling import RoundTripGenerator
from pixart_lab.models.vae import round_trip_uint8


def test_round_trip_generator_answers_registered_conditions_with_their_round_trips(tiny_vae):
    images = torch.randint(0, 256, (3, 3, 16, 16), dtype=torch.uint8)
    others = torch.randint(0, 256, (2, 3, 16, 16), dtype=torch.uint8)
    generate = RoundTripGenerator(tiny_vae)
    generate.register(["a", "b", "c"], images)
    generate.register(["a", "d"], others)  # the same caption in another list is another request
    out = generate(["a", "b", "c"])
    assert out.dtype == torch.uint8 and out.shape == images.shape
    assert torch.equal(out, round_trip_uint8(tiny_vae, images))
    assert not torch.equal(out, images)  # an untrained VAE changes what it carries
    assert torch.equal(generate(["a", "d"]), round_trip_uint8(tiny_vae, others))


def test_round_trip_generator_refuses_what_it_has_no_images_for(tiny_vae):
    generate = RoundTripGenerator(tiny_vae)
    with pytest.raises(ValueError, match="2 conditions but 1 images"):
        generate.register(["a", "b"], torch.zeros(1, 3, 8, 8, dtype=torch.uint8))
    with pytest.raises(KeyError, match="no real images registered for these 1 conditions"):
        generate(["unseen"])
