"""Images/s per host core of nf's training input pipeline, side by side with tf.data.

    python tools/input_benchmark.py --write_data=/tmp/photos            # 320 photo-like JPEGs
    python tools/input_benchmark.py --data=/tmp/photos --recipe=resnet \\
        --peer=tfdata --peer_python=/work/venv/bin/python --baseline_tree=/work/main --json=out.json

Each contender runs in its own Python process pinned to one core (`os.sched_setaffinity`), and
the contenders alternate in interleaved rounds (A B C, C B A, ...) so machine load hits them
alike; every figure is a median over rounds. A round builds the pipeline, takes one warm-up
batch, then times `--batches` batches of `--batch_size`:

* `nf`: `make_pipeline` of this tree with the recipe's data settings (worker_count=0,
  read_threads=1), the batch as the trainer gets it (uint8 images, which the train step
  normalizes on the device; one-hot targets), reading --data repeated to ImageNet's 1,281,167
  records (`RepeatedSource`, --records); `data.antialias` as the recipe sets it (off for the
  ImageNet recipes: tf.data's plain bicubic, the same per-image work as the tf.data side) or as
  --antialias=on|off says;
* `baseline` (with --baseline_tree): the same through another checkout of nf (e.g. the commit
  before a change), to measure a speed-up in the same run (a checkout from before
  `nf.data.LoaderSettings` always anti-aliases, with PIL);
* `tfdata` (with --peer=tfdata): the input of DeepMind's NFNet code and of big_vision in
  --peer_python (any Python with tensorflow): `sample_distorted_bounding_box` (area 0.08-1,
  aspect 3/4-4/3, 10 attempts), `decode_and_crop_jpeg` of that box, bicubic resize to the recipe's
  px, random flip, batch (float32 0..255 images: the resize's output); no RandAugment or MixUp on
  this side.

Both wall-clock images/s and images per CPU-second of the process (all its threads) are reported;
on a shared machine the CPU-second figure is the steadier per-core rate. With --scaling, nf's
rate on all cores is measured too, with in-process threads (read_threads = 1..cores) and with
grain worker processes (worker_count = 1..cores), so hosts can be sized.

--write_data writes `--num_images` photo-like JPEGs (quality 90) at ImageNet's usual sizes
(500x375, 375x500, 500x333, ...) into 10 class folders. They are synthetic (no photographs ship
offline): smooth multi-scale colour noise, blurred shapes with edges and a per-pixel texture,
tuned so the files are ~100-150 KB like ImageNet photographs of that size, because the JPEG
decode time follows the entropy-coded size.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

from provenance import cpu_model  # tools/provenance.py, beside this script

REPO = Path(__file__).resolve().parents[1]
SIZES = ((500, 375), (375, 500), (500, 333), (500, 400), (640, 480), (500, 500), (333, 500), (400, 300))
RECIPES = ("resnet", "nfnet_f0")
RECIPE_CONFIGS = {"resnet": "configs/resnet_imagenet.py:nf_resnet50", "nfnet_f0": "configs/nfnet_imagenet.py:f0"}
TFDATA_PEER = "tfdata"
PSNR_IDENTICAL = 100.0  # dB reported for identical images (JSON has no infinity)
IMAGENET_TRAIN_RECORDS = 1_281_167  # ImageNet-1k's train split: the source length nf's pipeline sees


# ------------------------------------------------------------------------------------------------
# Benchmark data.


def photo_like(rng, width: int, height: int):
    """A synthetic photograph-like RGB PIL image (module docstring)."""
    import numpy as np
    from PIL import Image, ImageDraw, ImageFilter

    base = np.full((height, width, 3), 128.0, np.float32)
    for cells, amplitude in ((4, 90.0), (16, 40.0), (64, 18.0)):  # colour fields, coarse to fine
        rows = cells * height // max(width, height) + 2
        small = np.clip(rng.normal(0, 1, (rows, cells + 2, 3)) * 40 + 128, 0, 255).astype(np.uint8)
        up = np.asarray(Image.fromarray(small).resize((width, height), Image.Resampling.BICUBIC), np.float32)
        base += (up - 128) * amplitude / 40
    img = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(6, 16))):  # objects with edges
        x0, y0 = int(rng.integers(0, width)), int(rng.integers(0, height))
        x1, y1 = x0 + int(rng.integers(20, width // 2)), y0 + int(rng.integers(20, height // 2))
        fill = tuple(int(c) for c in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((x0, y0, x1, y1), fill=fill)
    pixels = np.asarray(img.filter(ImageFilter.GaussianBlur(1.2)), np.float32)
    texture = rng.normal(0, 1, (height, width, 1)) * rng.uniform(16, 26) + rng.normal(0, 7, (height, width, 3))
    return Image.fromarray(np.clip(pixels + texture, 0, 255).astype(np.uint8))


def write_data(folder: str, num_images: int, seed: int = 0) -> dict:
    """`num_images` photo-like JPEGs (quality 90) in 10 class folders; returns size statistics."""
    import numpy as np

    rng = np.random.default_rng(seed)
    sizes = []
    for i in range(num_images):
        directory = Path(folder) / f"n{i % 10:08d}"
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"img_{i:05d}.JPEG"
        photo_like(rng, *SIZES[i % len(SIZES)]).save(path, "JPEG", quality=90)
        sizes.append(path.stat().st_size)
    return {"images": num_images, "mean_kb": float(np.mean(sizes)) / 1e3, "median_kb": float(np.median(sizes)) / 1e3}


# ------------------------------------------------------------------------------------------------
# Contenders (each runs in a child process: `--_run=nf|tfdata`).


def recipe_settings(recipe: str) -> dict:
    """The recipe config's data settings that decide the train transform's cost."""
    sys.path.insert(0, str(REPO))
    from nf.cli.common import load_config

    data = load_config(str(REPO / RECIPE_CONFIGS[recipe])).data
    return {
        "image_size": int(data.image_size),
        "mixup_alpha": float(data.mixup_alpha),
        "cutmix": bool(data.cutmix),
        "randaugment_layers": int(data.randaugment_layers),
        "randaugment_magnitude": float(data.randaugment_magnitude),
        "antialias": bool(data.get("antialias", True)),
    }


class RepeatedSource:
    """`source`'s records repeated to `length` records (record i is `source[i % len(source)]`).

    grain's index shuffle costs per record what the dataset's size makes it cost (on this machine
    ~90 us on 320 records, ~9 us on ImageNet's 1,281,167), so nf reads the benchmark folder as a
    source of ImageNet's length: the per-record cost is then that of training on ImageNet.
    """

    def __init__(self, source, length: int):
        self.source, self.length, self.num_classes = source, length, source.num_classes

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index):
        return self.source[int(index) % len(self.source)]


def benchmark_source(data: str, records: int):
    """The image folder `data` as nf's source, repeated to `records` records (0: as it is)."""
    from nf import data as nf_data

    source = nf_data.open_source(data)
    return RepeatedSource(source, records) if records else source


def nf_pipeline(data: str, settings: dict, batch_size: int, worker_count: int, read_threads: int, records: int):
    """nf's training iterator for `settings` (the one place that calls `make_pipeline`)."""
    from nf import data as nf_data

    source = benchmark_source(data, records)
    loader = dict(batch_size=batch_size, seed=0, worker_count=worker_count, read_threads=read_threads)
    if not hasattr(nf_data, "LoaderSettings"):  # a --baseline_tree from before nf.data.LoaderSettings
        settings = {k: v for k, v in settings.items() if k != "antialias"}  # it always anti-aliased (PIL)
        return nf_data.make_pipeline(source, train=True, **loader, **settings)
    transform = nf_data.ClassificationTrain(**settings)
    return nf_data.make_pipeline(source, transform, nf_data.LoaderSettings(**loader))


def tfdata_pipeline(data: str, image_size: int, batch_size: int):
    """The tf.data reference (module docstring) as a Python iterator of numpy batches."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow as tf

    files = sorted(str(p) for p in Path(data).glob("*/*") if p.suffix.lower() in (".jpeg", ".jpg"))

    def train_image(path):
        encoded = tf.io.read_file(path)
        whole = tf.constant([0.0, 0.0, 1.0, 1.0], tf.float32, [1, 1, 4])
        begin, size, _ = tf.image.sample_distorted_bounding_box(
            tf.io.extract_jpeg_shape(encoded),
            bounding_boxes=whole,
            min_object_covered=0.1,
            aspect_ratio_range=(3 / 4, 4 / 3),
            area_range=(0.08, 1.0),
            max_attempts=10,
            use_image_if_no_bounding_boxes=True,
        )
        top, left, _ = tf.unstack(begin)
        height, width, _ = tf.unstack(size)
        image = tf.io.decode_and_crop_jpeg(encoded, tf.stack([top, left, height, width]), channels=3)
        image = tf.image.resize(image, (image_size, image_size), method="bicubic")
        return tf.image.random_flip_left_right(image)

    ds = tf.data.Dataset.from_tensor_slices(files).shuffle(len(files), seed=0).repeat()
    ds = ds.map(train_image, num_parallel_calls=tf.data.AUTOTUNE).batch(batch_size, drop_remainder=True)
    return ds.prefetch(tf.data.AUTOTUNE).as_numpy_iterator()


def run_contender(args) -> dict:
    """Child process: pin, build the pipeline, time `args.batches` batches after one warm-up."""
    if args.cpus:
        os.sched_setaffinity(0, {int(c) for c in args.cpus.split(",")})
    settings = json.loads(args.settings)
    if args._run == TFDATA_PEER:
        it = tfdata_pipeline(args.data, settings["image_size"], args.batch_size)
    else:
        it = nf_pipeline(args.data, settings, args.batch_size, args.worker_count, args.read_threads, args.records)
    next(it)
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(args.batches):
        next(it)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    if args.worker_count:  # the grain workers' CPU time is not in this process's
        cpu = float("nan")
    images = args.batches * args.batch_size
    return {"images_per_sec": images / wall, "images_per_cpu_sec": images / cpu if cpu == cpu else None}


def _child(args, run: str, python: str, tree: Path, settings: dict, cpus: str, workers=0, threads=1) -> dict:
    cmd = [python, str(Path(__file__).resolve()), f"--_run={run}", f"--data={args.data}", f"--cpus={cpus}"]
    cmd += [f"--settings={json.dumps(settings)}", f"--batch_size={args.batch_size}", f"--batches={args.batches}"]
    cmd += [f"--worker_count={workers}", f"--read_threads={threads}", f"--records={args.records}"]
    env = {**os.environ, "PYTHONPATH": str(tree), "TF_CPP_MIN_LOG_LEVEL": "3"}
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if out.returncode:
        raise RuntimeError(f"{run} ({python}, {tree}) failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _median(rounds: list[dict], key: str) -> float | None:
    values = [r[key] for r in rounds if r.get(key) is not None]
    return statistics.median(values) if values else None


def benchmark(args) -> dict:
    settings = recipe_settings(args.recipe)
    if args.antialias != "recipe":
        settings["antialias"] = args.antialias == "on"
    contenders = {"nf": (sys.executable, REPO, "nf")}
    if args.baseline_tree:
        contenders["baseline"] = (sys.executable, Path(args.baseline_tree).resolve(), "nf")
    if args.peer:
        contenders[TFDATA_PEER] = (args.peer_python or sys.executable, REPO, TFDATA_PEER)
    cpu = str(sorted(os.sched_getaffinity(0))[0])
    rounds: dict[str, list[dict]] = {name: [] for name in contenders}
    order = list(contenders)
    for r in range(args.rounds):
        for name in order if r % 2 == 0 else order[::-1]:
            python, tree, run = contenders[name]
            rounds[name].append(_child(args, run, python, tree, settings, cpu))
            print(f"round {r} {name}: {rounds[name][-1]}", file=sys.stderr, flush=True)
    one_core = {
        name: {
            "images_per_sec": _median(rs, "images_per_sec"),
            "images_per_cpu_sec": _median(rs, "images_per_cpu_sec"),
            "rounds": rs,
        }
        for name, rs in rounds.items()
    }
    result = {"recipe": args.recipe, "settings": settings, "batch_size": args.batch_size, "one_core": one_core}
    for other in ("baseline", TFDATA_PEER):
        if other in one_core:
            for key in ("images_per_sec", "images_per_cpu_sec"):
                a, b = one_core["nf"][key], one_core[other][key]
                result[f"nf_over_{other}_{key}"] = a / b if a and b else None
    cpus = os.sched_getaffinity(0)
    if args.candidates:
        result["candidates_one_core"] = measure_candidates(args, settings["image_size"])
    if args.profile:
        result["profile"] = profile_nf(args, settings)
    os.sched_setaffinity(0, cpus)  # the two above pin this process to one core
    if args.scaling:
        all_cpus = ",".join(str(c) for c in sorted(os.sched_getaffinity(0)))
        counts = range(1, len(os.sched_getaffinity(0)) + 1)
        result["scaling"] = {
            "threads": {n: _child(args, "nf", sys.executable, REPO, settings, all_cpus, threads=n) for n in counts},
            "workers": {n: _child(args, "nf", sys.executable, REPO, settings, all_cpus, workers=n) for n in counts},
        }
    return result


def _candidates(px: int):
    """Per-image decode (+ crop + resize to px) candidates for the train transform: name -> fn(bytes, box)."""
    import io

    import cv2
    import numpy as np
    import simplejpeg
    from PIL import Image

    from nf.data import decode
    from nf.data import transforms as T

    bicubic = Image.Resampling.BICUBIC

    def pil_draft(data, box):  # nf at 9af7c21
        img, b = T._draft_for_box(Image.open(io.BytesIO(data)), box, px)
        return np.asarray(img.convert("RGB").resize((px, px), bicubic, box=b))

    def simplejpeg_pil(data, box):
        return np.asarray(Image.fromarray(simplejpeg.decode_jpeg(data, "RGB")).resize((px, px), bicubic, box=box))

    def reduced(data, box, resize):  # nf's decode: libjpeg-turbo, DCT reduction while the crop stays >= px
        header = decode.jpeg_header(data)
        array = decode.decode_jpeg(data, header, decode.dct_reduction(box, px))
        sx, sy = array.shape[1] / header.width, array.shape[0] / header.height
        box = (box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy)
        if any(b != int(b) for b in box):  # a reduced decode's fractional box: PIL, as nf does
            return np.asarray(Image.fromarray(array).resize((px, px), bicubic, box=box))
        return resize(array[int(box[1]) : int(box[3]), int(box[0]) : int(box[2])])

    def area_cubic(crop):  # nf before this change: area averaging when shrinking both axes
        shrink = crop.shape[0] > px and crop.shape[1] > px
        return cv2.resize(crop, (px, px), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_CUBIC)

    def plain_cubic(crop):  # tf.data's filter: bicubic without anti-aliasing
        return cv2.resize(crop, (px, px), interpolation=cv2.INTER_CUBIC)

    def nf_resize(crop):  # nf now
        return decode.crop_resize(crop, (0, 0, crop.shape[1], crop.shape[0]), px)

    def cv2_nf(data, box):
        return decode.crop_resize(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR_RGB), box, px)

    def cv2_reduced_2(data, box):  # half-resolution decode whatever the crop (changes the images)
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_REDUCED_COLOR_2)[..., ::-1]
        return cv2.resize(image[box[1] // 2 : box[3] // 2, box[0] // 2 : box[2] // 2], (px, px))

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow as tf

    @tf.function
    def tf_crop_resize(data, window):  # tf.data's per-image work (decode only the crop, bicubic)
        image = tf.io.decode_and_crop_jpeg(data, window, channels=3)
        return tf.cast(tf.clip_by_value(tf.round(tf.image.resize(image, (px, px), "bicubic")), 0, 255), tf.uint8)

    def tf_function(data, box):
        window = tf.constant([box[1], box[0], box[3] - box[1], box[2] - box[0]], tf.int32)
        return tf_crop_resize(tf.constant(data), window).numpy()

    return {  # names without dots: they are keys of the docs' figure markers (tests/test_docs_figures.py)
        "pil_draft+pil_resize (nf at 9af7c21)": pil_draft,
        "simplejpeg+pil_resize": simplejpeg_pil,
        "simplejpeg+cv2 INTER_AREA/cubic (nf before this change)": lambda data, box: reduced(data, box, area_cubic),
        "simplejpeg+cv2 Gaussian+cubic (nf now)": lambda data, box: reduced(data, box, nf_resize),
        "simplejpeg+cv2 plain cubic (the filter of tf_data, aliases)": lambda data, box: reduced(
            data, box, plain_cubic
        ),
        "cv2 imdecode+nf resize": cv2_nf,
        "cv2 IMREAD_REDUCED_COLOR_2+resize": cv2_reduced_2,
        "tf function decode_and_crop+bicubic per image": tf_function,
        "decode only: PIL": lambda data, box: np.asarray(Image.open(io.BytesIO(data)).convert("RGB")),
        "decode only: simplejpeg": lambda data, box: simplejpeg.decode_jpeg(data, "RGB"),
        "decode only: cv2": lambda data, box: cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR_RGB),
    }


def image_quality(candidate, encoded: list[bytes], boxes: list, px: int) -> dict | None:
    """PSNR (median, minimum) and Laplacian-energy sharpness of `candidate`'s px x px outputs
    relative to PIL's anti-aliased bicubic resize of the fully decoded box (timm's path); None for
    candidates that do not output px x px images."""
    import io
    import math

    import numpy as np
    from PIL import Image

    def energy(image):
        g = image.astype(np.float64).mean(-1)
        return float(np.std(4 * g[1:-1, 1:-1] - g[:-2, 1:-1] - g[2:, 1:-1] - g[1:-1, :-2] - g[1:-1, 2:]))

    psnrs, ours, theirs = [], [], []
    for data, box in zip(encoded, boxes):
        out = np.asarray(candidate(data, box))
        if out.shape != (px, px, 3):
            return None
        ref = np.asarray(
            Image.open(io.BytesIO(data)).convert("RGB").resize((px, px), Image.Resampling.BICUBIC, box=box)
        )
        mse = np.mean((out.astype(np.float64) - ref) ** 2)
        psnrs.append(min(10 * math.log10(255**2 / mse), PSNR_IDENTICAL) if mse else PSNR_IDENTICAL)
        ours.append(energy(out))
        theirs.append(energy(ref))
    return {
        "psnr_median_db": float(np.median(psnrs)),
        "psnr_min_db": float(np.min(psnrs)),
        "sharpness_ratio": float(np.mean(ours) / np.mean(theirs)),
    }


def measure_candidates(args, px: int) -> dict:
    """Images per CPU-second of each `_candidates` entry on this process's first core, interleaved,
    and its `image_quality` on the first 80 images."""
    import numpy as np

    from nf.data import decode
    from nf.data import transforms as T

    os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    files = sorted(p for p in Path(args.data).glob("*/*") if p.suffix.lower() in (".jpeg", ".jpg"))
    encoded = [p.read_bytes() for p in files]
    rng = np.random.default_rng(0)
    boxes = []
    for data in encoded:
        header = decode.jpeg_header(data)
        boxes.append(T.inception_crop_box(header.width, header.height, rng, fallback_fraction=px / (px + 32)))
    candidates = _candidates(px)
    rates: dict[str, list[float]] = {name: [] for name in candidates}
    for r in range(args.rounds):
        for name in list(candidates) if r % 2 == 0 else list(candidates)[::-1]:
            cpu = time.process_time()
            for data, box in zip(encoded, boxes):
                candidates[name](data, box)
            rates[name].append(len(encoded) / (time.process_time() - cpu))
    return {
        name: {
            "images_per_cpu_sec": statistics.median(v),
            "rounds": v,
            "quality_vs_pil_antialiased_bicubic": image_quality(candidates[name], encoded[:80], boxes[:80], px),
        }
        for name, v in rates.items()
    }


def profile_nf(args, settings: dict) -> list[dict]:
    """cProfile of nf's batches computed in this thread: the functions with the most own time."""
    import cProfile
    import pstats

    from nf import data as nf_data
    from nf.data.batching import build_batches

    os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    source, transform = (
        benchmark_source(args.data, args.records),
        nf_data.ClassificationTrain(**settings),
    )
    loader = nf_data.LoaderSettings(batch_size=args.batch_size, seed=0)
    batches = build_batches(
        source, transform.example_map(), transform.batch_map(source, loader), train=True, loader=loader
    )
    batches[0]
    profiler = cProfile.Profile()
    profiler.enable()
    for i in range(1, args.batches + 1):
        batches[i]
    profiler.disable()
    stats = pstats.Stats(profiler).stats
    total = sum(v[2] for v in stats.values())
    rows = sorted(((v[2], f"{k[0].split('/')[-1]}:{k[1]}({k[2]})") for k, v in stats.items()), reverse=True)
    return [{"function": name, "share_of_own_time": t / total} for t, name in rows[:12]]


def _git(*cmd: str) -> str:
    return subprocess.run(["git", *cmd], cwd=REPO, capture_output=True, text=True, check=False).stdout.strip()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", help="image folder (class sub-folders of JPEGs)")
    parser.add_argument("--recipe", choices=RECIPES, default="resnet")
    parser.add_argument("--peer", choices=(TFDATA_PEER,), help="also measure the tf.data reference")
    parser.add_argument("--peer_python", help="the Python (with tensorflow) that runs the peer")
    parser.add_argument("--baseline_tree", help="another nf checkout to measure in the same rounds")
    parser.add_argument("--baseline_label", help="what --baseline_tree holds (default: its git commit)")
    parser.add_argument(
        "--antialias",
        choices=("recipe", "on", "off"),
        default="recipe",
        help="nf's data.antialias: the recipe's (off for the ImageNet recipes: tf.data's plain bicubic), or on/off",
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batches", type=int, default=10)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--scaling", action="store_true", help="also nf on all cores: threads and workers")
    parser.add_argument("--candidates", action="store_true", help="also per-image decode/resize candidates")
    parser.add_argument("--profile", action="store_true", help="also the functions taking nf's time (cProfile)")
    parser.add_argument("--json", nargs="?", const="-", help="write the result as JSON (to a path, or stdout)")
    parser.add_argument("--write_data", help="write --num_images photo-like JPEGs into this folder and exit")
    parser.add_argument("--num_images", type=int, default=320)
    parser.add_argument(
        "--records",
        type=int,
        default=IMAGENET_TRAIN_RECORDS,
        help="nf reads --data repeated to this many records (RepeatedSource; 0: the folder as it is)",
    )
    for name in ("_run", "cpus", "settings"):
        parser.add_argument(f"--{name}", help=argparse.SUPPRESS)
    parser.add_argument("--worker_count", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--read_threads", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args._run:
        print(json.dumps(run_contender(args)))
        return
    if args.write_data:
        print(json.dumps(write_data(args.write_data, args.num_images)))
        return
    if not args.data:
        parser.error("--data (or --write_data) is required")
    load_start = os.getloadavg()
    result = benchmark(args)
    result.update(
        {
            "machine": {"cpu_count": os.cpu_count(), "platform": sys.platform, "processor": cpu_model()},
            "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "commit": _git("rev-parse", "HEAD"),
            "baseline": args.baseline_label
            or (_git("-C", args.baseline_tree, "rev-parse", "HEAD") or args.baseline_tree)
            if args.baseline_tree
            else None,
            "command": shlex.join([Path(sys.executable).name, *sys.argv]),
            "loadavg_start": load_start,
            "loadavg_end": os.getloadavg(),
        }
    )
    summary = {k: v for k, v in result.items() if k.startswith("nf_over")}
    for name, r in result["one_core"].items():
        print(f"{name:10s} one core: {r['images_per_sec']:.0f} images/s wall, {r['images_per_cpu_sec']:.0f} per CPU-s")
    print(json.dumps(summary))
    if args.json == "-":
        print(json.dumps(result))
    elif args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
