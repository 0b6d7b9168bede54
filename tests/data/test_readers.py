import json

import pytest
from PIL import Image

from pixart_lab.data.images import BadImageError, ImageLimits, load_rgb
from pixart_lab.data.readers import ClassFolderReader, FolderReader, PixArtInfoReader


def write_png(path, size=(16, 12), colour=(200, 10, 10), mode="RGB"):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, colour).save(path)
    return path


@pytest.fixture
def messy_folder(tmp_path):
    """Two good pairs and one of each kind of bad entry."""
    write_png(tmp_path / "a.png")
    (tmp_path / "a.txt").write_text("a red square\n")
    write_png(tmp_path / "sub" / "b.png")
    (tmp_path / "sub" / "b.txt").write_text("  a   blue\tcircle ")
    write_png(tmp_path / "no_caption.png")
    write_png(tmp_path / "empty.png")
    (tmp_path / "empty.txt").write_text("   \n")
    write_png(tmp_path / "latin1.png")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    (tmp_path / "zero.png").write_bytes(b"")
    (tmp_path / "zero.txt").write_text("zero bytes")
    (tmp_path / "garbage.jpg").write_bytes(b"this is not an image")
    (tmp_path / "garbage.txt").write_text("garbage")
    return tmp_path


def test_folder_reader_keeps_good_pairs_and_counts_each_skip(messy_folder):
    reader = FolderReader(messy_folder)
    records = reader.records()
    assert [(r.key, r.dense_caption, r.height, r.width) for r in records] == [
        ("a.png", "a red square", 12, 16),
        ("sub/b.png", "a blue circle", 12, 16),
    ]
    report = reader.report.as_dict()
    assert report["kept"] == 2 and report["skipped"] == 5
    assert report["by_reason"] == {
        "caption is not valid UTF-8 (byte 3)": 1,
        "empty caption": 1,
        "missing caption file": 1,
        "unreadable image header (UnidentifiedImageError)": 1,
        "zero-byte image file": 1,
    }
    assert report["examples"]["missing caption file"] == ["no_caption.png"]


def test_pixart_info_reader_reads_the_pixart_layout(tmp_path):
    write_png(tmp_path / "img" / "x.png", size=(20, 10))
    write_png(tmp_path / "img" / "y.png")
    info = [
        {"path": "img/x.png", "prompt": "a cat", "ratio": 0.5, "height": 10, "width": 20},
        {"path": "img/y.png", "prompt": ""},
        {"path": "img/missing.png", "prompt": "gone", "height": 8, "width": 8},
        {"prompt": "no path"},
        {"path": "img/y.png", "prompt": "size from header", "sparse_prompt": "dog", "label": 3, "aesthetic": 5.5},
    ]
    (tmp_path / "data_info.json").write_text(json.dumps(info))
    reader = PixArtInfoReader(tmp_path / "data_info.json")
    records = reader.records()
    assert [(r.key, r.height, r.width) for r in records] == [("img/x.png", 10, 20), ("img/y.png", 12, 16)]
    assert (records[1].sparse_caption, records[1].label, records[1].aesthetic) == ("dog", 3, 5.5)
    assert reader.report.as_dict()["by_reason"] == {
        "empty caption": 1,
        "entry without 'path'": 1,
        "missing image file": 1,
    }


def test_pixart_info_reader_rejects_a_non_list_file_by_name(tmp_path):
    (tmp_path / "data_info.json").write_text('{"path": "x"}')
    with pytest.raises(ValueError, match=r"data_info.json: expected a JSON list of entries, found dict"):
        PixArtInfoReader(tmp_path / "data_info.json").records()


def test_class_folder_reader_labels_sorted_classes(tmp_path):
    write_png(tmp_path / "tabby_cat" / "1.png")
    write_png(tmp_path / "tabby_cat" / "2.jpg")
    write_png(tmp_path / "dog" / "1.png")
    (tmp_path / "dog" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    reader = ClassFolderReader(tmp_path, caption_template="a photo of a {name}")
    records = reader.records()
    assert reader.classes == ["dog", "tabby_cat"]
    assert [(r.key, r.label, r.dense_caption) for r in records] == [
        ("dog/1.png", 0, "a photo of a dog"),
        ("tabby_cat/1.png", 1, "a photo of a tabby cat"),
        ("tabby_cat/2.jpg", 1, "a photo of a tabby cat"),
    ]
    assert reader.report.total_skipped == 1


def test_embedded_corpus_reads_without_skips(tiny_corpus):
    reader = PixArtInfoReader(tiny_corpus / "train" / "data_info.json", key_prefix="train/")
    records = reader.records()
    assert len(records) == 24 and reader.report.total_skipped == 0
    assert records[0].key == "train/images/000000.png"
    assert records[0].scene["objects"] and records[0].sparse_caption and 0 <= records[0].label < 48


@pytest.mark.parametrize(
    "mode, colour, expected",
    [("RGBA", (255, 0, 0, 0), (255, 255, 255)), ("CMYK", (0, 255, 255, 0), (255, 0, 0)), ("L", 128, (128, 128, 128))],
)
def test_load_rgb_converts_modes(tmp_path, mode, colour, expected):
    path = tmp_path / f"x.{'jpg' if mode == 'CMYK' else 'png'}"
    Image.new(mode, (16, 16), colour).save(path)
    image = load_rgb(path)
    assert image.mode == "RGB"
    assert all(abs(a - b) <= 3 for a, b in zip(image.getpixel((8, 8)), expected))


def test_load_rgb_16_bit_greyscale_is_scaled_not_clipped(tmp_path):
    path = tmp_path / "deep.png"
    Image.new("I;16", (16, 16), 32768).save(path)
    assert load_rgb(path).getpixel((0, 0)) == (128, 128, 128)


def test_load_rgb_names_the_reason(tmp_path):
    truncated = tmp_path / "t.png"
    write_png(tmp_path / "full.png", size=(64, 64), colour=(1, 2, 3))
    data = (tmp_path / "full.png").read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(BadImageError, match="corrupt image") as e:
        load_rgb(truncated)
    assert e.value.path == str(truncated)
    write_png(tmp_path / "tiny.png", size=(1, 1))
    with pytest.raises(BadImageError, match=r"too small \(1x1"):
        load_rgb(tmp_path / "tiny.png")
    with pytest.raises(BadImageError, match=r"too large \(64x64 > 100 pixels\)"):
        load_rgb(tmp_path / "full.png", ImageLimits(max_pixels=100))
