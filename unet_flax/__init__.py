"""JAX/Flax side of busi-unet: model, losses, metrics, training, evaluation, Grad-CAM."""
