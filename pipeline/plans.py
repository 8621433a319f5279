"""What the job does with each STAC item, decided from its metadata before any cluster starts or any store is
touched: ``ScenePlan`` (sensor and level, the asset of every band, the pixel grid, the model to run).

``plan_scene(item, detector)`` plans one item or raises ``InputError`` with the reason (the scene then fails
alone); ``check_items(items, detector)`` is the pre-flight check: it raises ``PreflightError`` (exit status 2 in
the CLI, one line saying what the items offer and what would work) when none of the first items can be run.
"""

from __future__ import annotations

from dataclasses import dataclass

from .assets import asset_resolution, band_assets, sensor_of
from .errors import CloudmaskError, InputError
from .model.weights import STARTERS, Weights
from .peers import PEER_MODELS, peer_sensor_bands, peer_source
from .sensors import SENSOR_ALIASES, SENSORS, Profile, Sensor
from .store import Grid

SAMPLE = 10  # items the pre-flight check looks at


class PreflightError(CloudmaskError):
    """The items found cannot be run with this model: nothing was started."""


@dataclass(frozen=True)
class ScenePlan:
    """One item's plan: ``sensor``, ``assets`` (band -> asset key, in the model's band order), the ``grid`` of
    its finest band, and ``model``: what the tasks run (a weights path or URL, or a peer's source name)."""

    item_id: str
    sensor: Sensor
    assets: dict
    grid: Grid
    model: str

    @property
    def bands(self) -> tuple[str, ...]:
        return tuple(self.assets)


def weights_sensor(weights: Weights) -> Sensor | None:
    """The sensor and level a weights file was trained for (None when it names an unknown one)."""
    name = SENSOR_ALIASES.get(weights.meta.sensor, weights.meta.sensor)
    return SENSORS.get(f"{name}-{weights.meta.level}".lower())


def model_for(weights: Weights, sensor: Sensor) -> tuple[str, tuple[str, ...]]:
    """``(model source, bands)`` to run ``weights`` (a weights file's record or a peer's) on ``sensor``'s
    products; ``InputError`` saying why not."""
    name = weights.meta.model.partition("@")[0]
    if name in PEER_MODELS:
        bands = peer_sensor_bands(name, sensor)
        if bands is None:
            raise InputError(f"{name} does not run on {sensor.title}")
        return peer_source(name, sensor), bands
    trained = weights_sensor(weights)
    also = trained is not None and trained.name == sensor.name and sensor.level in weights.meta.also_levels
    if trained is None or (trained.key != sensor.key and not also):
        what = trained.title if trained else f"{weights.meta.sensor} {weights.meta.level}"
        raise InputError(f"the weights {weights.source} were trained on {what}, not {sensor.title}")
    return weights.source, tuple(weights.meta.bands)


def grid_of(item, assets: dict) -> Grid:
    """The grid of the finest-resolution asset among ``assets`` (band -> key) from its projection metadata
    (the asset's own, else the item's): ``proj:code``/``proj:epsg``, ``proj:shape``, ``proj:transform``."""
    key = min(assets.values(), key=lambda k: (asset_resolution(item, k) or 1e9, k))
    extra = {**item.properties, **{k: v for k, v in item.assets[key].extra_fields.items() if v is not None}}
    code = extra.get("proj:code") or (f"EPSG:{extra['proj:epsg']}" if extra.get("proj:epsg") else None)
    shape, t = extra.get("proj:shape"), extra.get("proj:transform")
    if not code or not str(code).upper().startswith("EPSG:") or not str(code).split(":")[-1].isdigit():
        raise InputError(f"item {item.id}: asset {key!r} has no usable CRS (proj:code={extra.get('proj:code')!r}, "
                         f"proj:epsg={extra.get('proj:epsg')!r}); expected an EPSG code")
    if not (shape and t and len(shape) == 2 and len(t) >= 6):
        raise InputError(f"item {item.id}: asset {key!r} lacks proj:shape/proj:transform (its grid)")
    a, b, c, d, e, f = (float(v) for v in t[:6])
    return Grid(f"EPSG:{int(str(code).split(':')[-1])}", (c, a, b, f, d, e), (int(shape[0]), int(shape[1])))


def plan_scene(item, weights: Weights, profile: Profile | None = None) -> ScenePlan:
    """The plan of one item (a ``pystac.Item``) for ``weights``; ``InputError`` when it cannot be run."""
    sensor = profile.sensor if profile is not None else sensor_of(item)
    try:
        model, bands = model_for(weights, sensor)
    except InputError as exc:
        raise InputError(f"item {item.id}: {exc}") from None
    assets = band_assets(item, sensor, bands, profile)
    return ScenePlan(item.id, sensor, assets, grid_of(item, assets), model)


def check_items(items: list, weights: Weights, where: str, profile: Profile | None = None,
                sample: int = SAMPLE) -> tuple:
    """``(item, plan)`` of the first of the first ``sample`` items that can be run with ``weights``; else
    ``PreflightError`` with one line naming what they are and what would work. ``where``: the collection and
    API, for the message."""
    reasons, sensors = [], []
    for item in items[:sample]:
        try:
            return item, plan_scene(item, weights, profile)
        except InputError as exc:
            reasons.append(str(exc))
            try:
                sensors.append(sensor_of(item))
            except InputError:
                pass
    hint = _what_would_work(weights, sensors)
    raise PreflightError(f"none of the first {len(reasons)} items of {where} can be run: {reasons[0]}"
                         f"{'; ' + hint if hint else ''}")


def _what_would_work(weights: Weights, sensors: list[Sensor]) -> str:
    if not sensors:
        return "give --profile for a catalogue without band metadata"
    sensor = sensors[0]
    options = []
    name = weights.meta.model.partition("@")[0]
    if name not in PEER_MODELS or peer_sensor_bands(name, sensor) is None:
        if sensor.name == "sentinel-2" and sensor.level in STARTERS and not weights.source.endswith(STARTERS[sensor.level]):
            options.append(f"the shipped {sensor.level} starter (no --weights)")
        options.append(f"weights trained on {sensor.key} (--weights)")
        if peer_sensor_bands("ukis-csmask", sensor) is not None and name != "ukis-csmask":
            options.append("--model ukis-csmask")
    trained = weights_sensor(weights) if name not in PEER_MODELS else None
    if trained is not None and trained.key != sensor.key:
        options.append(f"a {trained.key} collection (e.g. --collection {trained.key})")
    return "use " + ", or ".join(options) if options else ""
