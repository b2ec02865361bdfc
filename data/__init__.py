"""Dataset builders and readers of busi-unet."""
