"""Writes scikit-learn's bundled digits (no download) as an image folder for the CPU demo runs.

    python tools/prepare_digits.py --out=data/digits

Result: `OUT/train/<0-9>/*.png` (1,497 images) and `OUT/test/<0-9>/*.png` (300, 30 per class),
8x8 grayscale PNGs scaled to 0..255, a fixed stratified split (seed 0); see
`nf/data/digits.py`. Does nothing if `OUT/.complete` exists. The trainer calls the same
`nf.data.prepare_digits` itself when the folder is missing.
"""

from absl import app, flags

from nf.data.digits import prepare_digits

_OUT = flags.DEFINE_string("out", "data/digits", "output folder")


def main(argv):
    del argv
    out = prepare_digits(_OUT.value)
    print(f"digits ready in {out} (train/ and test/)")


if __name__ == "__main__":
    app.run(main)
