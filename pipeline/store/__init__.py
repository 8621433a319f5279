"""Classes into a Zarr v3 mask cube: where a store lives, its writer lock or lease, the layout, manifest and
per-scene statistics, and its verification."""
