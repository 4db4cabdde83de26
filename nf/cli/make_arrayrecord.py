"""Converts an image folder (`SRC/<class>/<image>`) into ArrayRecord shards for `nf.data`.

    nf-make-arrayrecord --src=data/digits/train --dst=data/digits_ar/train --num_shards=4

Writes `DST/images.array_record-0000i-of-0000n` and `DST/metadata.json` (classes, record
count, shard names). Each record is one image in the NFI1 format (see `nf/data/sources.py`):
the encoded file bytes as they are, its label and its path relative to SRC; no TensorFlow.
Read it back with `nf.data.ArrayRecordImageSource(DST)` (or `nf.data.open_source(DST)`);
record i equals record i of `nf.data.ImageFolderSource(SRC)`.
"""

from absl import app, flags, logging

from nf.data.sources import ImageFolderSource, write_arrayrecord

_SRC = flags.DEFINE_string("src", None, "image folder: one sub-folder per class", required=True)
_DST = flags.DEFINE_string("dst", None, "output directory (created; must not hold a dataset already)", required=True)
_NUM_SHARDS = flags.DEFINE_integer("num_shards", 1, "number of ArrayRecord files")


def main(argv):
    del argv
    source = ImageFolderSource(_SRC.value)
    logging.info(
        "%s: %d images in %d classes -> %s (%d shards)",
        _SRC.value,
        len(source),
        source.num_classes,
        _DST.value,
        _NUM_SHARDS.value,
    )
    out = write_arrayrecord(source, _DST.value, _NUM_SHARDS.value)
    print(f"wrote {len(source)} records in {_NUM_SHARDS.value} shards to {out}")


def run() -> None:
    app.run(main)


if __name__ == "__main__":
    run()
