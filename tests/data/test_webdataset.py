import io
import json
import tarfile

import pytest
from PIL import Image

from pixart_lab.data.images import load_rgb
from pixart_lab.data.transforms import load_images
from pixart_lab.data.webdataset import TarMember, WebDatasetReader, expand_braces, write_shard


def jpeg(size=(16, 12), colour=(200, 10, 10)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, "JPEG", quality=95)
    return buffer.getvalue()


def sample(caption="a red square", size=(16, 12), colour=(200, 10, 10), **meta) -> dict[str, bytes]:
    return {"jpg": jpeg(size, colour), "txt": caption.encode(), "json": json.dumps({"caption": caption, **meta}).encode()}


def test_brace_ranges_keep_zero_padding_and_alternatives_expand():
    assert expand_braces("s/{00008..00011}.tar") == [f"s/{i:05d}.tar" for i in (8, 9, 10, 11)]
    assert expand_braces("{a,b}/{0..1}.tar") == ["a/0.tar", "a/1.tar", "b/0.tar", "b/1.tar"]
    with pytest.raises(ValueError, match="two integers"):
        expand_braces("{a..b}.tar")


def test_reader_reads_img2dataset_shards_in_place(tmp_path):
    write_shard(tmp_path / "00000.tar", [sample("a red square", aesthetic=6.5), sample("a wide one", size=(32, 8))])
    write_shard(tmp_path / "00001.tar", [sample("a blue one", colour=(0, 0, 255), label=3)], keys=["000000002"])
    reader = WebDatasetReader(str(tmp_path / "{00000..00001}.tar"), key_prefix="train/")
    records = reader.records()
    assert [r.key for r in records] == ["train/000000000", "train/000000001", "train/000000002"]
    assert [r.dense_caption for r in records] == ["a red square", "a wide one", "a blue one"]
    assert [(r.height, r.width) for r in records] == [(12, 16), (8, 32), (12, 16)]
    assert records[0].aesthetic == 6.5 and records[2].label == 3 and records[1].label is None
    member = records[2].image_path
    assert isinstance(member, TarMember) and member.name == "000000002.jpg" and str(member).endswith("00001.tar#000000002.jpg")
    assert load_rgb(member).getpixel((8, 6))[2] > 240  # the member's own pixels, read at its offset
    images, kept = load_images(records, 8, 8, progress=False)
    assert images.shape == (3, 3, 8, 8) and len(kept) == 3
    assert reader.report.kept == 3 and reader.report.total_skipped == 0


def test_local_glob_fsspec_url_and_pipe_name_the_same_records(tmp_path):
    write_shard(tmp_path / "00000.tar", [sample("one"), sample("two")])
    by_path = WebDatasetReader(str(tmp_path / "*.tar")).records()
    by_url = WebDatasetReader(f"file://{tmp_path}/00000.tar").records()
    by_pipe = WebDatasetReader(f"pipe:cat {tmp_path}/00000.tar").records()
    for records in (by_url, by_pipe):
        assert [(r.key, r.dense_caption, r.height) for r in records] == [(r.key, r.dense_caption, r.height) for r in by_path]
    assert by_pipe[1].image_path.read_bytes() == by_path[1].image_path.read_bytes()


def test_corrupt_members_are_skipped_and_counted_by_reason(tmp_path):
    bad = [
        sample("good"),
        {"jpg": b"not a jpeg at all", "txt": b"garbage image"},
        {"jpg": jpeg()},  # no caption anywhere
        {"jpg": jpeg(), "txt": b"   "},
        {"jpg": jpeg(), "txt": b"broken metadata", "json": b"{not json"},
        {"txt": b"caption without an image"},
        {"jpg": b"", "txt": b"zero bytes"},
        {"jpg": jpeg((4, 4)), "txt": b"too small"},
        sample("also good"),
    ]
    write_shard(tmp_path / "00000.tar", bad)
    reader = WebDatasetReader(str(tmp_path / "00000.tar"))
    records = reader.records()
    assert [r.dense_caption for r in records] == ["good", "also good"]
    assert reader.report.kept == 2
    assert dict(reader.report.skipped) == {
        "unreadable image header (UnidentifiedImageError)": 1,
        "missing caption (.txt member or json 'caption')": 1,
        "empty caption": 1,
        "unreadable json metadata (JSONDecodeError)": 1,
        "no image member (jpg, jpeg, png, webp)": 1,
        "zero-byte image file": 1,
        "too small (4x4 < 8 px side)": 1,
    }
    assert reader.report.examples["empty caption"] == ["000000003"]


def test_a_damaged_tar_keeps_the_samples_before_the_damage(tmp_path):
    path = write_shard(tmp_path / "00000.tar", [sample(f"caption {i}") for i in range(4)])
    write_shard(tmp_path / "00001.tar", [sample("next shard")], keys=["000000009"])
    data = bytearray(path.read_bytes())
    third_header = [m.offset for m in tarfile.open(path)][6]  # sample 2's first member
    data[third_header : third_header + 100] = b"\x07" * 100  # its header: name and checksum destroyed
    path.write_bytes(bytes(data))
    reader = WebDatasetReader([str(tmp_path / "00000.tar"), str(tmp_path / "00001.tar")])
    records = reader.records()
    # Sample 1 is still open when the damage is found (more of its members could follow), so it goes too.
    assert [r.dense_caption for r in records] == ["caption 0", "next shard"]
    (reason,) = reader.report.skipped
    assert reason == "damaged tar shard, its remaining samples skipped (ReadError)"
    assert "after 1 samples kept: bad checksum at byte" in reader.report.examples[reason][0]


def test_a_truncated_shard_is_counted_and_its_member_read_refused(tmp_path):
    path = write_shard(tmp_path / "00000.tar", [sample("first"), sample("second"), sample("third")])
    records = WebDatasetReader(str(path)).records()
    path.write_bytes(path.read_bytes()[: records[2].image_path.offset + 10])  # a partial download
    reader = WebDatasetReader(str(path))
    assert [r.dense_caption for r in reader.records()] == ["first"]  # "second" was still open
    assert dict(reader.report.skipped) == {"damaged tar shard, its remaining samples skipped (ReadError)": 1}
    with pytest.raises(OSError, match=r"truncated shard \(read 10 of \d+ bytes\)"):
        records[2].image_path.read_bytes()


def test_missing_shards_and_failing_commands_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="tar shard not found: .*00003.tar"):
        WebDatasetReader(str(tmp_path / "00003.tar"))
    with pytest.raises(FileNotFoundError, match="no tar shard matches"):
        WebDatasetReader(str(tmp_path / "*.tar"))
    reader = WebDatasetReader("pipe:exit 3")
    assert reader.records() == []
    (reason,) = reader.report.skipped
    assert reason.startswith("damaged tar shard")
