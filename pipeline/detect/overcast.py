"""The overcast check: a second, far view of a tile that cloud may fill, adding the cloud its own view missed.

The starters normalise what they see tile by tile (the patch embedding's LayerNorm, then GroupNorm), which leaves a
tile that one layer of cloud or haze fills with little but texture: its own view calls part of it clear (the L1C
starter on one 256 px tile, as ``tests/model/test_overcast_scenes.py`` runs it: eo-learn's fully cloudy scene 0
mirrored to fill the tile 67.4 % cloud, the haze of scene 1 80.9 %). The
same cloud seen as a patch with an edge -- eo-learn's 101 × 100 px scenes as they lie in a nodata canvas, or the
starter chips' overcast windows (``pipeline/training/datasets/overcast.py``) -- is called cloud. So a tile is
looked at again from afar: averaged 2 × 2 to half its side, in the middle of a nodata canvas of the tile's size,
and that view's probabilities brought back to the tile's pixels (bilinear).

Which tiles (:func:`needs_far_view`, all three conditions, so the check runs on few tiles and never where the own
view can be trusted): every pixel valid (a tile with nodata has an edge already); a median NDSI
``(B03 − B11) / (B03 + B11)`` under ``SNOW_NDSI`` (Dozier's snow threshold: snow and ice are bright in blue and
uniform too, but dark in the shortwave infrared, where cloud is bright; the starters' snow is their own
limitation, which the check must not spread over a tile); and an own view that already calls at least
``SEEN_CLOUD`` of the tile cloud (the failure is a fully cloudy tile called *partly* clear; a tile called all clear
is left as it is, so bright clear land is never looked at again). There is no gate on brightness: one at a median
blue (B02) reflectance of 0.10 held back no tile of any real scene here (``cloudmask benchmark overcast`` gives the
same table without it), but it held back haze once atmospheric correction has taken its path radiance off (eo-learn
scene 1 as simulated L2A: median blue 0.094), where the L2A starter needs the far view.

What it changes (:func:`overcast_merge`): only when the far view calls at least ``OVERCAST`` of the tile cloud
(thick or thin), i.e. sees an overcast tile, the own view's *clear* pixels that the far view calls cloud take the
far view's probabilities. It only ever adds cloud: the own view's cloud, thick/thin split and shadow stay. The
pixels it made cloud are counted per scene (``pct_overcast_check`` in the statistics table: pixels whose class is
cloud where the tiles the check changed carry most of the blend weight; exact without tile overlap, close within
the overlaps). ``--no-overcast-check`` turns it off; weights without Sentinel-2's ``B03`` and ``B11`` (other
sensors) never run it, and their statistics leave the column empty. Measured on the real scenes (``docs/performance.md``, "The overcast check").

Tensors here are on the model's device: tiles ``(N, band, T, T)`` float32 (DN / divisor, nodata 0), probabilities
``(N, class, T, T)`` float32.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported where used: the job's client asks overcast_check_runs without loading torch
    import torch

SNOW_NDSI = 0.4  # a tile whose median NDSI reaches this is snow or ice, not looked at again
SEEN_CLOUD = 0.25  # share of the tile its own view must already call cloud
OVERCAST = 0.90  # share of the tile the far view must call cloud for its cloud to be taken
FAR = 2  # the far view averages FAR × FAR pixels
BANDS = ("B03", "B11")  # what the check reads (Sentinel-2 weights only)


def overcast_check_runs(meta, no_overcast_check: bool) -> bool:
    """Whether the check runs for weights ``meta`` (``pipeline.detect.weights.WeightsMeta``): not turned off, the
    bands it reads among the weights', and clear, thick and thin cloud among their classes."""
    return (
        not no_overcast_check
        and set(BANDS) <= set(meta.bands)
        and {"clear", "thick_cloud", "thin_cloud"} <= set(meta.classes)
    )


def needs_far_view(tiles: torch.Tensor, own: torch.Tensor, bands: tuple[int, int], cloud: list[int]) -> torch.Tensor:
    """``(N,)`` bool: which of ``tiles`` (model input; ``bands`` the indices of B03 and B11) with their own view's
    probabilities ``own`` get a far view (the module's three conditions)."""
    full = (tiles != 0).any(dim=1).flatten(1).all(dim=1)
    candidates = full & (_cloud(own, cloud).flatten(1).float().mean(dim=1) >= SEEN_CLOUD)
    if not bool(candidates.any()):  # most tiles: no medians to take
        return candidates
    green, swir = (tiles[:, b].flatten(1) for b in bands)
    snow = ((green - swir) / (green + swir).clamp_min(1e-6)).median(dim=1).values >= SNOW_NDSI
    return candidates & ~snow


def far_view_input(tiles: torch.Tensor) -> tuple[torch.Tensor, tuple[slice, slice]]:
    """``(N, band, T, T)`` tiles seen from afar: each averaged ``FAR`` × ``FAR`` into the middle of a zero (nodata)
    canvas of its size; and the window ``(rows, cols)`` of the canvas the tile lies in."""
    import torch

    t = tiles.shape[-1]
    s = t // FAR
    o = (t - s) // 2
    canvas = torch.zeros_like(tiles)
    window = (slice(o, o + s), slice(o, o + s))
    canvas[:, :, window[0], window[1]] = torch.nn.functional.avg_pool2d(tiles, FAR)
    return canvas, window


def overcast_merge(
    own: torch.Tensor, far: torch.Tensor, window: tuple[slice, slice], clear: int, cloud: list[int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """The tiles' probabilities after the check, and ``(N, T, T)`` bool: the pixels whose class it made cloud.

    ``own``: the tiles' own view ``(N, class, T, T)``; ``far``: the far view's canvas probabilities (of
    :func:`far_view_input`'s canvases), of which ``window`` is the tile."""
    import torch

    t = own.shape[-1]
    far = torch.nn.functional.interpolate(
        far[:, :, window[0], window[1]], size=(t, t), mode="bilinear", align_corners=False
    )
    far_cloud = _cloud(far, cloud)
    overcast = far_cloud.flatten(1).float().mean(dim=1) >= OVERCAST
    took = far_cloud & (own.argmax(dim=1) == clear) & overcast[:, None, None]
    return torch.where(took[:, None], far, own), took


def _cloud(probs: torch.Tensor, cloud: list[int]) -> torch.Tensor:
    """``(N, T, T)`` bool: pixels whose most probable class is one of ``cloud`` (class indices)."""
    import torch

    return torch.isin(probs.argmax(dim=1), torch.tensor(cloud, device=probs.device))
