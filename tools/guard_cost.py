"""Cost of the trainer's per-step non-finite guard (`nf.train.guard`): the trainer's own train step
with and without the guard, same model, shapes and optimizer, one process, rounds interleaved.

    python tools/guard_cost.py --model=nf_resnet50 --image_size=128 --batch_size=16 --rounds=7

Prints the median seconds per step of each and the guard's cost in percent (median of the per-round
ratios, so slow drift of a shared machine cancels).
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from nf.tasks import get_task
from nf.train import guard, recipes
from nf.train.optim import learning_rate_schedule, make_optimizer
from nf.train.trainer import ModelFns, make_train_step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="nf_resnet50")
    parser.add_argument("--image_size", type=int, default=128)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=2, help="steps per timed call")
    parser.add_argument("--ab", type=int, default=1, help="0: time the guard alone only (no step compiles)")
    args = parser.parse_args()

    config = recipes.resnet_imagenet(args.model, regularized=False)
    config.batch_size = args.batch_size
    config.data.image_size = args.image_size
    task = get_task(config, recipes.IMAGENET_CLASSES)
    model = task.build_model()
    fns = ModelFns(model)
    params, model_state = fns.init_values(model)
    opt = config.optimizer
    schedule = learning_rate_schedule(opt.lr, config.total_steps, opt.warmup_steps, 0.0)
    tx = make_optimizer(
        fns.info, learning_rate=schedule, momentum=opt.momentum, nesterov=opt.nesterov, weight_decay=opt.weight_decay
    )
    rng = np.random.default_rng(0)
    batch = {
        "image": jnp.asarray(rng.normal(size=(args.batch_size, args.image_size, args.image_size, 3)), jnp.float32),
        "label": jnp.asarray(rng.integers(0, 1000, args.batch_size)),
    }

    def fresh_state():
        return {
            "step": jnp.zeros((), jnp.int32),
            "params": jax.tree.map(jnp.copy, params),
            "opt_state": tx.init(params),
            "ema": jax.tree.map(jnp.copy, params),
            "model_state": jax.tree.map(jnp.copy, model_state),
        }

    step = make_train_step(fns, tx, schedule, config, task)
    plain = jax.jit(step, donate_argnums=0)
    guarded = jax.jit(guard.guarded(step, 1), donate_argnums=(0, 2))
    runs = {"plain": [fresh_state(), None], "guarded": [fresh_state(), guard.init_counters()]}

    def call(name):
        s, c = runs[name]
        for _ in range(args.steps):
            if name == "plain":
                s, m = plain(s, batch)
            else:
                s, m, c = guarded(s, batch, c)
        jax.block_until_ready((s, m))
        runs[name] = [s, c]

    times = {name: [float("nan")] for name in runs}
    for name in runs if args.ab else ():  # compile and warm up
        t = time.perf_counter()
        call(name)
        print(f"{name}: first call (compile) {time.perf_counter() - t:.1f} s", flush=True)
    if args.ab:
        times = {name: [] for name in runs}
    for r in range(args.rounds if args.ab else 0):
        order = list(runs) if r % 2 == 0 else list(reversed(runs))
        for name in order:
            t = time.perf_counter()
            call(name)
            times[name].append((time.perf_counter() - t) / args.steps)
        print(f"round {r}: " + ", ".join(f"{n} {times[n][-1]:.4f} s" for n in runs), flush=True)
    # The guard's own work alone (finite checks + keeping the previous state), same tree, same
    # program shape as inside the step: less noisy than the difference of two whole steps.
    state, new_state = fresh_state(), fresh_state()
    only = jax.jit(lambda s, n, loss, gn: guard.keep_finite(s, n, loss, gn), donate_argnums=1)
    loss, gn = jnp.float32(1.0), jnp.float32(1.0)
    new_state, _ = jax.block_until_ready(only(state, new_state, loss, gn))
    alone = []
    for _ in range(5 * args.rounds):
        t = time.perf_counter()
        new_state, _ = jax.block_until_ready(only(state, new_state, loss, gn))
        alone.append(time.perf_counter() - t)
    print(
        f"guard alone: {np.median(alone) * 1e3:.1f} ms (median of {len(alone)}) = "
        f"{100 * np.median(alone) / np.median(times['plain']):.2f} % of the plain step",
        flush=True,
    )
    ratios = np.asarray(times["guarded"]) / np.asarray(times["plain"])
    print(
        f"{args.model} {args.image_size}px batch {args.batch_size}: plain {np.median(times['plain']):.4f} s/step, "
        f"guarded {np.median(times['guarded']):.4f} s/step; guard cost {100 * (np.median(ratios) - 1):+.2f} % "
        f"(median of {args.rounds} per-round ratios; min {100 * (ratios.min() - 1):+.2f} %, "
        f"max {100 * (ratios.max() - 1):+.2f} %)",
        flush=True,
    )


if __name__ == "__main__":
    main()
