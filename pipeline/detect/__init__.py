"""Pixels to classes: the MSCloudCAM model and its weights format, the peers, tiled prediction batched across
blocks on the model's device, and masks of any xarray cube."""
