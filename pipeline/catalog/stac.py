"""STAC search with pystac-client: ``search_items(spec) -> [pystac.Item]`` (the only module importing pystac)."""

from __future__ import annotations

import json
import re

from pipeline.config import SearchSpec
from pipeline.errors import StacError
from pipeline.read.radiometry import processing_baseline


def _open(url: str):
    import pystac_client
    from pystac_client.exceptions import APIError

    try:
        return pystac_client.Client.open(url)
    except (APIError, OSError, ValueError) as exc:
        raise StacError(
            f"could not open the STAC API at {url}: {exc}; check the URL and that the server is up"
        ) from exc
    except Exception as exc:  # requests' ConnectionError and friends
        raise StacError(f"could not reach the STAC API at {url}: {type(exc).__name__}: {exc}") from exc


# items asked for per page: servers default to 10 (a page costs a round trip and a query: 60 ms on the local
# pgstac API, 8 of the 10 s a 1,280-scene search took); 200 stays well under the usual maxima (1,000 and more)
PAGE_SIZE = 200


def search_items(spec: SearchSpec) -> list:
    """Items matching ``spec``, duplicates of one tile and time collapsed to the newest processing baseline."""
    import pystac

    client = _open(spec.url)
    known = sorted(c.id for c in client.get_collections())
    if spec.collection not in known:
        raise StacError(
            f"collection {spec.collection!r} is not served by {spec.url}; it serves: {', '.join(known) or 'none'}"
        )
    query = {"eo:cloud_cover": {"lte": spec.max_cloud}} if spec.max_cloud is not None else None
    try:
        search = client.search(
            collections=[spec.collection],
            bbox=spec.bbox,
            intersects=spec.intersects,
            datetime=spec.datetime,
            query=query,
            max_items=spec.limit,
            limit=min(PAGE_SIZE, spec.limit) if spec.limit else PAGE_SIZE,
        )
        items = [
            pystac.Item.from_dict(feature, root=client, preserve_dict=False)
            for page in _prefetched(search.pages_as_dicts())
            for feature in page.get("features", [])
        ]
    except Exception as exc:
        raise StacError(f"search of {spec.collection!r} at {spec.url} failed: {exc}") from exc
    if not items:
        raise StacError(
            f"no items in {spec.collection!r} at {spec.url} for bbox={spec.bbox} datetime={spec.datetime} "
            f"max_cloud={spec.max_cloud}; widen the area, dates or cloud limit"
        )
    return dedupe(items)


def _prefetched(pages):
    """``pages`` (an iterator) with the next page fetched on a thread while the caller parses this one: the server's
    time per page and the client's parsing of the last (pystac's copies) overlap instead of adding up."""
    from concurrent.futures import ThreadPoolExecutor

    end = object()
    with ThreadPoolExecutor(1, thread_name_prefix="stac-pages") as fetcher:
        page = fetcher.submit(next, pages, end)
        while (current := page.result()) is not end:  # a failed fetch raises here, in the caller's thread
            page = fetcher.submit(next, pages, end)
            yield current


def acquisition_key(item) -> tuple:
    """What identifies one acquisition of one piece of ground across reprocessings: the tile, the time, and
    the datastrip's sensing start (``_S20250312T014547_`` in ``s2:datastrip_id``, the same for every
    reprocessing of that datastrip), else the footprint rounded to ~10 m. Two datastrips of one tile and
    datatake (Planetary Computer lists both under one datetime) differ here."""
    p = item.properties
    tile = p.get("s2:mgrs_tile") or p.get("grid:code") or p.get("mgrs:grid_square") or p.get("proj:code") or item.id
    strip = re.search(r"_S(\d{8}T\d{6})_", str(p.get("s2:datastrip_id") or ""))
    if strip:
        where = strip.group(1)
    else:
        where = json.dumps(item.geometry, sort_keys=True, default=str)
        where = re.sub(r"(\d+\.\d{4})\d*", r"\1", where)  # ~10 m: float noise between reprocessings
    return tile, p.get("datetime") or str(item.datetime), where


def dedupe(items: list) -> list:
    """Keep one item per acquisition (``acquisition_key``): the newest processing baseline, then the latest
    processing time. Different datastrips of one tile and time are different data and are all kept (each
    becomes its own time slice of the cube, with its own item id)."""
    best: dict = {}
    for item in items:
        p = item.properties
        key = acquisition_key(item)
        rank = (
            _baseline_key(processing_baseline(dict(p, id=item.id))),
            str(p.get("updated") or p.get("created") or ""),
            item.id,
        )
        if key not in best or rank > best[key][0]:
            best[key] = (rank, item)
    kept = [v[1] for v in best.values()]
    return sorted(kept, key=lambda i: (str(i.datetime), i.id))


def _baseline_key(baseline: str | None) -> tuple:
    try:
        return tuple(int(x) for x in (baseline or "0.0").split("."))
    except ValueError:
        return (0,)
