"""Composes the bundled digits into 64x64 segmentation + depth scenes (no download).

    python tools/prepare_digit_scenes.py --out=data/digit_scenes

Writes OUT/voc (VOC format: JPEGImages, palette-PNG SegmentationClass with 11 classes -- 0 =
background, digit d = d + 1 -- and ImageSets/Segmentation/{train,val}.txt) and OUT/nyu (RGB PNG +
16-bit depth PNG in mm, lists train.txt / test.txt) from the same scenes; see
`nf/data/scenes.py`. Deterministic from --seed; does nothing if OUT already holds the same scenes.
The trainer calls the same `nf.data.prepare_digit_scenes` itself when the folder is missing.
"""

from absl import app, flags

from nf.data.scenes import prepare_digit_scenes

_OUT = flags.DEFINE_string("out", "data/digit_scenes", "output folder")
_NUM_TRAIN = flags.DEFINE_integer("num_train", 2000, "training scenes")
_NUM_VAL = flags.DEFINE_integer("num_val", 400, "validation (VOC val / NYU test) scenes")
_SEED = flags.DEFINE_integer("seed", 0, "scene i of a split is a function of (seed, split, i)")


def main(argv):
    del argv
    out = prepare_digit_scenes(_OUT.value, num_train=_NUM_TRAIN.value, num_val=_NUM_VAL.value, seed=_SEED.value)
    print(f"digit scenes ready in {out} (voc/ and nyu/)")


if __name__ == "__main__":
    app.run(main)
