"""Models: PixArt DiT, class-conditional DiT and its re-parameterisation, baselines, text encoder, VAE."""
