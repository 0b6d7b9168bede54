import math

import pytest

from pixart_lab.data.buckets import EMBEDDED_RATIOS, aspect_ratio_table, bucket_table, closest_bucket, pixart_aspect_ratio_table

PIXART_LIKE_RATIOS = (0.25, 0.33, 0.5, 0.6, 0.75, 1.0, 1.33, 1.67, 2.0, 3.0, 4.0)


@pytest.mark.parametrize(("base", "multiple"), [(64, 8), (128, 8), (256, 16), (512, 32), (1024, 64)])
def test_table_keeps_area_sides_and_ratio(base, multiple):
    table = aspect_ratio_table(base, PIXART_LIKE_RATIOS, multiple)
    assert list(table) == [str(float(r)) for r in PIXART_LIKE_RATIOS]
    for key, (height, width) in table.items():
        assert height % multiple == 0 and width % multiple == 0, (key, height, width)
        assert abs(height * width / base**2 - 1) < 0.15, (key, height, width)
        # The bucket's shape is within rounding of its nominal ratio (log-space, so 0.25 and 4 alike).
        assert abs(math.log(height / width / float(key))) < 0.15, (key, height, width)


def test_square_bucket_is_base_by_base_and_table_mirrors():
    table = aspect_ratio_table(1024, (0.5, 1.0, 2.0), 64)
    assert table["1.0"] == (1024, 1024)
    assert table["0.5"] == table["2.0"][::-1]
    assert table["2.0"][0] > table["2.0"][1]  # ratio is height / width, as in PixArt's tables


def test_embedded_default_table_at_128():
    table = aspect_ratio_table(128, EMBEDDED_RATIOS, 8)
    assert set(table) == {"0.5", "0.75", "1.0", "1.33", "2.0"}
    assert table["1.0"] == (128, 128)
    assert table["0.5"] == (88, 184)
    assert table["2.0"] == (184, 88)


@pytest.mark.parametrize("base", [64, 128, 256, 512, 1024])
def test_every_bucket_maps_back_to_its_own_key(base):
    table = aspect_ratio_table(base, EMBEDDED_RATIOS, 8)
    for key, (height, width) in table.items():
        assert closest_bucket(height, width, table) == key


@pytest.mark.parametrize(
    ("height", "width", "expected"),
    [
        (100, 200, "0.5"), (10, 100, "0.5"), (30, 40, "0.75"), (64, 64, "1.0"),
        (300, 200, "1.33"), (640, 240, "2.0"),
    ],  # fmt: skip
)
def test_closest_bucket_picks_nearest_ratio(height, width, expected):
    assert closest_bucket(height, width, aspect_ratio_table(128, EMBEDDED_RATIOS, 8)) == expected


def test_invalid_inputs_are_rejected():
    with pytest.raises(ValueError, match="positive"):
        aspect_ratio_table(128, (0.0,), 8)
    with pytest.raises(ValueError, match="empty"):
        closest_bucket(1, 1, {})


@pytest.mark.parametrize(("base", "multiple"), [(256, 16), (512, 32), (1024, 64)])
def test_pixarts_tables_agree_with_diffusers_and_add_its_seven_extreme_buckets(base, multiple):
    from diffusers.pipelines.pixart_alpha import pipeline_pixart_alpha

    table = pixart_aspect_ratio_table(base)
    binned = getattr(pipeline_pixart_alpha, f"ASPECT_RATIO_{base}_BIN")  # diffusers' inference bins
    assert len(table) == 40 and table["1.0"] == (base, base) and table["4.0"] == (2 * base, base // 2)
    assert {k: tuple(int(x) for x in v) for k, v in binned.items()} == {k: table[k] for k in binned}
    assert sorted(set(table) - set(binned), key=float) == ["0.26", "0.27", "2.89", "3.11", "3.62", "3.75", "3.88"]
    for key, (height, width) in table.items():
        assert height % multiple == 0 and width % multiple == 0
        assert 0.9 < height * width / base**2 < 1.1, (key, height, width)
        assert key == str(round(height / width, 2))
        assert closest_bucket(height, width, table) == key


def test_split_specs_take_pixarts_table_by_name():
    from pixart_lab.data.features import SplitSpec

    assert SplitSpec("aesthetic", 1024, "pixart").buckets()["0.57"] == (768, 1344)
    assert bucket_table(128, EMBEDDED_RATIOS, 8) == aspect_ratio_table(128, EMBEDDED_RATIOS, 8)
    with pytest.raises(ValueError, match=r"PixArt's aspect-ratio tables exist for \(256, 512, 1024\) px, not 128"):
        bucket_table(128, "pixart")
    with pytest.raises(ValueError, match="aspect_ratios='square': expected 'pixart' or a list of ratios"):
        bucket_table(128, "square")
