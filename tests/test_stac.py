"""STAC search against a real stac-fastapi-pgstac server on 127.0.0.1 (PostgreSQL + PostGIS + pgstac)."""

import pytest

from flows.stacserver import local_stac_api
from pipeline.catalog.stac import StacError, search_items
from pipeline.config import SearchSpec
from pipeline.errors import ConfigError

COLLECTION = {
    "type": "Collection",
    "stac_version": "1.0.0",
    "id": "sentinel-2-l1c",
    "description": "test archive",
    "license": "proprietary",
    "links": [],
    "extent": {"spatial": {"bbox": [[-180, -90, 180, 90]]}, "temporal": {"interval": [["2015-01-01T00:00:00Z", None]]}},
}


def item(item_id, day, cloud, baseline, tile="33UUU", lon=13.0, updated="2020-01-01T00:00:00Z"):
    return {
        "type": "Feature",
        "stac_version": "1.0.0",
        "id": item_id,
        "collection": "sentinel-2-l1c",
        "geometry": {
            "type": "Polygon",
            "coordinates": [[[lon, 52], [lon + 1, 52], [lon + 1, 53], [lon, 53], [lon, 52]]],
        },
        "bbox": [lon, 52, lon + 1, 53],
        "assets": {},
        "links": [],
        "properties": {
            "datetime": f"2022-06-{day:02d}T10:00:00Z",
            "eo:cloud_cover": cloud,
            "s2:mgrs_tile": tile,
            "s2:processing_baseline": baseline,
            "updated": updated,
        },
    }


ITEMS = [
    item("A_N0400", 1, 5.0, "04.00"),
    item("A_N0509", 1, 5.0, "05.09"),  # the same acquisition reprocessed: wins
    item("B", 3, 80.0, "04.00"),
    item("C", 5, 30.0, "04.00"),
    item("D", 7, 9.5, "04.00", tile="33UVU", lon=20.0),  # elsewhere
]


@pytest.fixture(scope="module")
def api():
    with local_stac_api([COLLECTION], ITEMS) as url:
        yield url


def test_search_filters_area_time_cloud_and_collapses_reprocessed(api):
    found = search_items(SearchSpec(api, "sentinel-2-l1c", bbox=(13.2, 52.2, 13.5, 52.5), max_cloud=40))
    assert [i.id for i in found] == ["A_N0509", "C"]
    found = search_items(SearchSpec(api, "sentinel-2-l1c", datetime="2022-06-02/2022-06-30"))
    assert [i.id for i in found] == ["B", "C", "D"]
    found = search_items(SearchSpec(api, "sentinel-2-l1c", intersects={"type": "Point", "coordinates": [20.5, 52.5]}))
    assert [i.id for i in found] == ["D"]
    assert len(search_items(SearchSpec(api, "sentinel-2-l1c", limit=2))) <= 2


def test_cloud_cover_compares_numerically(api):
    # as text "9.5" > "40"; the to_float queryable makes it a number
    found = search_items(SearchSpec(api, "sentinel-2-l1c", max_cloud=10))
    assert {i.id for i in found} == {"A_N0509", "D"}


def test_errors_say_what_to_fix(api):
    with pytest.raises(StacError, match="'sentinel-2-l2a' is not served.*it serves: sentinel-2-l1c"):
        search_items(SearchSpec(api, "sentinel-2-l2a"))
    with pytest.raises(StacError, match="no items.*widen"):
        search_items(SearchSpec(api, "sentinel-2-l1c", datetime="2019-01-01/2019-02-01"))
    with pytest.raises(StacError, match="could not (open|reach) the STAC API at http://127.0.0.1:9"):
        search_items(SearchSpec("http://127.0.0.1:9", "sentinel-2-l1c"))


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(bbox=(14, 52, 13, 53)), r"bbox \[14, 52, 13, 53\] must be"),
        (dict(bbox=(13, 52, 14)), "bbox"),
        (dict(datetime="2022-13-01/.."), "'2022-13-01' is not an RFC 3339"),
        (dict(max_cloud=120), "max_cloud=120"),
        (dict(limit=0), "limit=0"),
    ],
)
def test_bad_search_settings_are_named(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        SearchSpec("http://127.0.0.1:1", "sentinel-2-l1c", **kwargs)
    with pytest.raises(ConfigError, match="must start with http"):
        SearchSpec("127.0.0.1:1", "c")


def test_pages_are_fetched_ahead_in_order_and_a_failed_fetch_is_raised_where_they_are_read():
    import threading

    from pipeline.catalog.stac import _prefetched

    fetched = []

    def pages(n, fail_at=None):
        for i in range(n):
            if i == fail_at:
                raise ConnectionError(f"page {i} failed")
            fetched.append(i)
            yield {"features": [i]}

    assert [p["features"][0] for p in _prefetched(pages(7))] == list(range(7))
    fetched.clear()
    with pytest.raises(ConnectionError, match="page 3 failed"):
        for _ in _prefetched(pages(7, fail_at=3)):
            pass
    assert fetched == [0, 1, 2]
    fetched.clear()
    reader = _prefetched(pages(100))
    assert next(reader)["features"] == [0]
    reader.close()  # the caller stops reading: the fetching thread ends without fetching the rest
    for thread in threading.enumerate():
        if thread.name.startswith("stac-pages"):
            thread.join(5)
    assert not any(t.name.startswith("stac-pages") for t in threading.enumerate()) and len(fetched) <= 4
