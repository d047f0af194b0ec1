"""Where does post-training int8 lose accuracy on a BiT? Train small BiTs of several shapes on scikit-learn's digits
and compare the fp32 and full-integer int8 accuracy under the settings that usually hurt post-training
quantization: per-tensor instead of per-channel weights, and one calibration image instead of 300.

    .venv/bin/python benchmarks/ptq_search_bit.py                  # ~12 min on 2 busy cores
    .venv/bin/python benchmarks/ptq_search_bit.py --shapes 1,1,1,1:64
    .venv/bin/python benchmarks/ptq_search_bit.py --outlier       # make one, then QAT vs PTQ (~25 min)
    .venv/bin/python benchmarks/ptq_search_bit.py --outlier --model 1x192   # no sweep: that model only

A model where int8 loses at least a point is what the QAT target needs (QAT int8 >= post-training int8
there). No trained BiT here is one (the search), so --outlier makes one: trained networks often carry a few
activation channels far larger than the rest, and that is reproduced exactly on the trained digits BiT by a
function-preserving rescale (outlier_rescale): the pre-head GroupNorm's gamma and beta of a few channels times k,
the head's weights reading those channels divided by k. ReLU is positively homogeneous and global average pooling
linear, so the float logits do not change (asserted), but the per-tensor int8 scale of every tensor those channels
pass through is now set by them. The sweep finds the fewest channels and smallest k at which post-training int8
loses at least a point; that model is then fine-tuned the same number of steps once in float (then post-training
int8) and once quantization-aware (`liteship qat bit`: learned activation ranges, which the int8 conversion then
uses for those tensors instead of calibrating them).
Writes benchmarks/results/bit_ptq_search.md (the search) or benchmarks/results/bit_qat_outlier.md (--outlier).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from accuracy_bit import arrays, train, write_digits  # noqa: E402

from liteship.runtime.bench import machine_summary  # noqa: E402
from liteship.runtime.files import write_atomic  # noqa: E402

RESULTS = HERE / "results" / "bit_ptq_search.md"
OUTLIER_RESULTS = HERE / "results" / "bit_qat_outlier.md"
# the tensors the pre-head outlier passes through that QAT gives a learned range (convert/bit/weights.py's names)
HEAD_SITES = ("group_norm.scale", "group_norm.scaled", "group_norm__relu", "pool", "head__conv2d")
HEAD_GAMMA, HEAD_BETA, HEAD_KERNEL = ("resnet/group_norm/gamma", "resnet/group_norm/beta",
                                      "resnet/head/conv2d/kernel")  # (C,), (C,), (1, 1, C, classes)
SETTINGS = (("fp32", "fp32", None, False), ("int8, per-channel, 300 images", "int8", 300, False),
            ("int8, per-tensor, 300 images", "int8", 300, True), ("int8, per-channel, 1 image", "int8", 1, False),
            ("int8, per-tensor, 1 image", "int8", 1, True))


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def shape(text: str) -> tuple[tuple[int, ...], int]:
    """"3,4,6,3:32" -> ((3, 4, 6, 3), 32): bottleneck units per block, stem width."""
    units, width = text.split(":")
    return tuple(int(u) for u in units.split(",")), int(width)


def search(units, width, data, work: Path, size: int, epochs: int) -> dict:
    import numpy as np

    from liteship.convert.bit.config import tiny
    from liteship.convert.bit.export import build_keras, calibration_dataset, load_checkpoint, preprocessing_block
    from liteship.convert.bit.prune import tflite_accuracy
    from liteship.convert.bit.train import checkpoint_tensors, save_npz, training_model
    from liteship.convert.tflite import convert_saved_model, export_keras_to_saved_model

    preprocessing = preprocessing_block(size, "-1,1")
    x_train, y_train = arrays(data["train"], preprocessing)
    x_test, y_test = arrays(data["test"], preprocessing)
    config = tiny(num_classes=10, image_size=size).replace(base_width=width, block_units=units)
    model = training_model(config, size)
    log(f"training BiT {units} stem width {width} ({model.count_params():,} parameters) for {epochs} epochs")
    trained = train(model, x_train, y_train, epochs=epochs, minutes=30, batch_size=32, learning_rate=2e-3)
    npz = work / "model.npz"
    save_npz(checkpoint_tensors(model, config), npz)
    saved_model = work / "saved_model"
    export_keras_to_saved_model(build_keras(load_checkpoint(npz, config, input_range="-1,1"), image_size=size),
                                saved_model)
    accuracy = {}
    for name, quant, images, per_tensor in SETTINGS:
        rep = calibration_dataset(data["calibration"], preprocessing, limit=images) if images else None

        def configure(converter, per_tensor=per_tensor):
            # one scale per weight tensor: the converter's private switch (TensorFlow 2.21)
            converter._experimental_disable_per_channel = per_tensor

        tflite, _ = convert_saved_model(saved_model, quant, representative_dataset=rep, configure=configure)
        accuracy[name] = tflite_accuracy(tflite, x_test, y_test)
        log(f"  {name}: {accuracy[name]:.4f}")
    shutil.rmtree(saved_model)
    return {"units": units, "width": width, "params": model.count_params(), "epochs": trained["epochs"],
            "train_accuracy": trained["train_accuracy"], "accuracy": accuracy, "test": int(np.size(y_test))}


# ---- making one: outlier channels by a function-preserving rescale ---------------------------------------------

def outlier_channels(tensors: dict, count: int) -> list[int]:
    """The `count` pre-head channels the head leans on most (|gamma| x L1 norm of the head weights reading it):
    outliers there cost int8 the most, as large-activation channels in trained networks tend to be important."""
    import numpy as np

    score = np.abs(tensors[HEAD_GAMMA]) * np.abs(tensors[HEAD_KERNEL]).sum(axis=(0, 1, 3))  # (C,)
    return sorted(int(c) for c in np.argsort(-score, kind="stable")[:count])


def outlier_rescale(tensors: dict, channels: list[int], factor: float) -> dict:
    """A copy of the BiT tensors computing the same float function with `channels` of the pre-head activation
    `factor` times larger: GroupNorm's affine part (gamma, beta) times `factor` for those channels, ReLU(k y) =
    k ReLU(y) for k > 0, global average pooling is linear, and the head's weights reading them are divided by
    `factor`. The group statistics come from the GroupNorm's input, which is untouched."""
    out = {name: value.copy() for name, value in tensors.items()}
    out[HEAD_GAMMA][channels] *= factor
    out[HEAD_BETA][channels] *= factor
    out[HEAD_KERNEL][:, :, channels, :] /= factor
    return out


def outlier_ratio(npz: Path, channels: list[int]) -> float:
    """How far the outliers stand out: the smallest |gamma| among `channels` over the median |gamma| of the other
    pre-head channels (what the per-tensor int8 scale of the GroupNorm output is set by)."""
    import numpy as np

    gamma = np.abs(np.load(npz)[HEAD_GAMMA])
    others = np.delete(gamma, channels)
    return float(gamma[channels].min() / np.median(others))


def float_logits(npz: Path, config, size: int, x):
    from liteship.convert.bit.export import build_keras, load_checkpoint

    return build_keras(load_checkpoint(npz, config, input_range="-1,1"), image_size=size).predict(
        x, batch_size=64, verbose=0)  # (N, classes)


def runtime_accuracy(npz: Path, config, data: dict, size: int, quant: str, work: Path, x, y) -> float:
    """Accuracy of the bundle `liteship convert bit --quant QUANT --calibration` (all 300 images) makes."""
    from liteship.convert.bit.export import export_bit
    from liteship.convert.bit.prune import tflite_accuracy

    bundle = export_bit(npz, work / f"{npz.stem}-{quant}", variant=config, quant=quant,
                        calibration=data["calibration"] if quant == "int8" else None, image_size=size,
                        input_range="-1,1", calibration_limit=None)
    accuracy = tflite_accuracy((bundle / "model.tflite").read_bytes(), x, y)
    shutil.rmtree(bundle)
    return accuracy


def head_ranges(npz: Path, config, size: int, x) -> dict:
    """{site: {"float": the checkpoint's float range on `x`, "qat": the range it carries}} for the tensors the
    outlier passes through."""
    from liteship.convert.bit.export import load_checkpoint
    from liteship.convert.bit.prune import float_ranges
    from liteship.convert.bit.train import model_from_layers

    checkpoint = load_checkpoint(npz, config, input_range="-1,1")
    floats = float_ranges(model_from_layers(checkpoint.config, checkpoint.layers, size), x)
    return {site: {"float": floats[site], "qat": checkpoint.qat_ranges.get(site)} for site in HEAD_SITES}


def outlier_experiment(data: dict, work: Path, size: int, epochs: int, counts: list[int], factors: list[float],
                       steps: int, learning_rate: float, forced: bool = False) -> dict:
    """`forced`: one count and one factor given (--model): that model is compared whatever its int8 loss."""
    import numpy as np

    from liteship.convert import prune as P
    from liteship.convert.bit.config import tiny
    from liteship.convert.bit.export import preprocessing_block
    from liteship.convert.bit.prune import prune_bit
    from liteship.convert.bit.train import checkpoint_tensors, save_npz, training_model

    preprocessing = preprocessing_block(size, "-1,1")
    x_train, y_train = arrays(data["train"], preprocessing)
    x_test, y_test = arrays(data["test"], preprocessing)
    config = tiny(num_classes=10, image_size=size).replace(base_width=64)  # the pruning benchmark's model
    model = training_model(config, size)
    log(f"training BiT (1,1,1,1), stem 64 ({model.count_params():,} parameters) for {epochs} epochs")
    trained = train(model, x_train, y_train, epochs=epochs, minutes=30, batch_size=32, learning_rate=2e-3)
    base = work / "trained.npz"
    tensors = checkpoint_tensors(model, config)
    save_npz(tensors, base)
    reference = float_logits(base, config, size, x_test)
    rows = {"trained": {name: runtime_accuracy(base, config, data, size, name, work, x_test, y_test)
                        for name in ("fp32", "int8")}}
    rows["trained"]["ratio"] = outlier_ratio(base, outlier_channels(tensors, 1))
    log(f"  trained: {rows['trained']}")
    fp32 = rows["trained"]["fp32"]
    sweep, chosen = [], None
    for count in counts:
        if chosen is not None and count > chosen["count"]:
            break  # fewer channels already lose a point
        channels = outlier_channels(tensors, count)
        for factor in factors:
            npz = work / f"outlier-{count}x{factor:g}.npz"
            save_npz(outlier_rescale(tensors, channels, factor), npz)
            logits = float_logits(npz, config, size, x_test)
            drift = float(np.abs(logits - reference).max() / np.abs(reference).max())
            assert drift < 1e-4, f"the rescale changed the float logits by {drift:.2e} of their range"
            agree = float(np.mean(logits.argmax(-1) == reference.argmax(-1)))
            int8 = runtime_accuracy(npz, config, data, size, "int8", work, x_test, y_test)
            loses = int8 <= fp32 - 0.01
            sweep.append({"count": count, "channels": channels, "factor": factor, "drift": drift, "agree": agree,
                          "int8": int8, "loses": loses})
            log(f"  {count} channel(s) {channels} x{factor:g}: float logits drift {drift:.1e}, int8 {int8:.4f}")
            if loses:
                chosen = chosen or sweep[-1]
                if int8 <= fp32 - 0.05:
                    break  # past the threshold: larger factors only lose more
    if forced:
        chosen = sweep[-1]
    if chosen is None:
        return {"trained": trained, "rows": rows, "sweep": sweep, "chosen": None, "test": len(y_test)}
    # the threshold model, and (if the sweep went further at that channel count) the most severe one
    severe = max((r for r in sweep if r["count"] == chosen["count"]), key=lambda r: r["factor"])
    models = [chosen] + ([severe] if severe["factor"] > chosen["factor"] and severe["loses"] else [])
    comparisons = []
    for picked in models:
        npz = work / f"outlier-{picked['count']}x{picked['factor']:g}.npz"
        name = f"outlier ({picked['count']} channel(s) x{picked['factor']:g})"
        rows[name] = {"fp32": runtime_accuracy(npz, config, data, size, "fp32", work, x_test, y_test),
                      "int8": picked["int8"], "ratio": outlier_ratio(npz, picked["channels"])}
        tuned = {}
        for label, qat in (("fine-tuned in float, then post-training int8", False),
                           ("quantization-aware fine-tuned (liteship qat bit), then int8", True)):
            out = work / f"tuned-{npz.stem}-{int(qat)}.npz"
            options = P.PruneOptions(method="none", sparsity=0.0, steps=steps, learning_rate=learning_rate,
                                     batch_size=32, qat=qat)
            log(f"{name}, {label}: {options}")
            record = prune_bit(npz, out, data["test_dir"].parent / "train", options, variant=config,
                               image_size=size, convert=False, progress=log)
            tuned[f"{name}, {label}"] = {q: runtime_accuracy(out, config, data, size, q, work, x_test, y_test)
                                         for q in ("fp32", "int8")}
            tuned[f"{name}, {label}"]["ratio"] = outlier_ratio(out, picked["channels"])
            if qat:
                tuned[f"{name}, {label}"]["fake_quantized"] = record["quality"]["fake_quantized"]
                tuned[f"{name}, {label}"]["ranges"] = head_ranges(out, config, size, x_train)
            log(f"  {tuned}")
        rows |= tuned
        comparisons.append({"name": name, "outlier": rows[name], "ptq": list(tuned.values())[0],
                            "qat": list(tuned.values())[1]})
    return {"trained": trained, "rows": rows, "sweep": sweep, "chosen": chosen, "test": len(y_test),
            "comparisons": comparisons, "params": model.count_params(), "steps": steps, "lr": learning_rate}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shapes", nargs="+", type=shape, default=[shape("1,1,1,1:64"), shape("3,4,6,3:32")],
                    help="UNITS:STEM_WIDTH, e.g. 1,1,1,1:64 (the pruning benchmark's model), 3,4,6,3:32 (R50 depth)")
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--image-size", type=int, default=32)
    ap.add_argument("--outlier", action="store_true",
                    help="make a BiT where post-training int8 loses (outlier channels), then QAT vs PTQ on it")
    ap.add_argument("--counts", type=int, nargs="+", default=[1, 2, 4, 8], help="--outlier: channels rescaled, fewest first")
    ap.add_argument("--factors", type=float, nargs="+", default=[8, 16, 32, 64, 128, 160, 192, 224, 256],
                    help="--outlier: the factors k tried, smallest first")
    ap.add_argument("--model", default=None, metavar="COUNTxFACTOR",
                    help="--outlier: skip the sweep and compare QAT with PTQ on this model (e.g. 1x192)")
    ap.add_argument("--steps", type=int, default=300, help="--outlier: fine-tuning steps (the pruning rows' budget)")
    ap.add_argument("--learning-rate", type=float, default=5e-4)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="liteship-ptq-search-"))
    if args.outlier:
        try:
            data = write_digits(work / "digits", test_fraction=0.25, calibration_count=300)
            counts, factors = args.counts, args.factors
            if args.model:
                count, factor = args.model.split("x")
                counts, factors = [int(count)], [float(factor)]
            result = outlier_experiment(data, work, args.image_size, args.epochs, counts, factors,
                                        args.steps, args.learning_rate, forced=bool(args.model))
        finally:
            shutil.rmtree(work, ignore_errors=True)
        info = {"date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                "machine": machine_summary(), "size": args.image_size, "epochs": args.epochs,
                "load": os.getloadavg(), "model": args.model}
        text = outlier_markdown(result, info)
        print(text)
        if not args.no_write:
            write_atomic(OUTLIER_RESULTS, text, mkdir=True)
            log(f"wrote {OUTLIER_RESULTS}")
        return 0
    try:
        data = write_digits(work / "digits", test_fraction=0.25, calibration_count=300)
        results = [search(units, width, data, work, args.image_size, args.epochs) for units, width in args.shapes]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    info = {"date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "machine": machine_summary(),
            "size": args.image_size}
    text = markdown(results, info)
    print(text)
    if not args.no_write:
        tmp = RESULTS.with_suffix(".md.partial")
        tmp.write_text(text)
        tmp.replace(RESULTS)
        log(f"wrote {RESULTS}")
    return 0


def markdown(results: list[dict], info: dict) -> str:
    names = [name for name, *_ in SETTINGS]
    lines = [
        "# Where does post-training int8 lose on a BiT? (the search the QAT target needs)",
        "",
        f"- date: {info['date']}; machine: {info['machine']} (shared and busy; no timings here)",
        f"- small BiTs trained on scikit-learn digits at {info['size']}x{info['size']} (1347 train images), accuracy "
        f"on the {results[0]['test']} held-out digits (one image is {100 / results[0]['test']:.2f} points) through "
        "LiteRT; int8 is full-integer, calibrated on the first N of 300 shuffled training images",
        "",
        "| model | parameters | " + " | ".join(names) + " |",
        "|---|---:|" + "---:|" * len(names),
    ]
    for r in results:
        fp32 = r["accuracy"]["fp32"]
        cells = [f"{100 * r['accuracy'][n]:.2f}%" + (f" ({100 * (r['accuracy'][n] - fp32):+.2f})" if n != "fp32"
                                                    else "") for n in names]
        lines.append(f"| units {','.join(map(str, r['units']))}, stem {r['width']} | {r['params']:,} | "
                     + " | ".join(cells) + " |")
    worst = min(100 * (r["accuracy"][n] - r["accuracy"]["fp32"]) for r in results for n in names)
    lines += [
        "",
        f"- the largest int8 loss against fp32 is {-worst:.2f} points"
        + (": no model here loses a point, so the QAT target's precondition is not met by any of them. Weight "
           "standardization gives every output channel the same weight statistics (per-tensor scales cost nothing) "
           "and GroupNorm before every convolution keeps the activation ranges alike across images (one "
           "calibration image suffices): BiT's design is what makes its post-training int8 robust."
           if worst > -1 else ""),
    ]
    return "\n".join(lines) + "\n"


def outlier_markdown(result: dict, info: dict) -> str:
    test = result["test"]
    fp32 = result["rows"]["trained"]["fp32"]
    lines = [
        "# A BiT where post-training int8 loses, made by outlier channels; QAT against it",
        "",
        f"- date: {info['date']}; machine: {info['machine']}; load average at the end "
        f"{', '.join(f'{v:.2f}' for v in info['load'])} (shared and busy; no timings here)",
        f"- base: the pruning benchmark's tiny BiT (one unit per block, stem width 64) trained "
        f"{result['trained']['epochs']} epochs on scikit-learn digits at {info['size']}x{info['size']}; accuracy on "
        f"the {test} held-out digits (one image is {100 / test:.2f} points) through LiteRT; int8 = `liteship convert "
        "bit --quant int8` (full-integer, per-channel weights, calibrated on 300 training images)",
        "- outliers made by `outlier_rescale` (benchmarks/ptq_search_bit.py): the pre-head GroupNorm's gamma and beta "
        "of the chosen channels times k, the head's weights reading them divided by k; channels chosen as those the "
        "head leans on most (|gamma| x L1 of their head weights). The float logits are unchanged: the largest "
        "change of any logit over the held-out images, as a fraction of the largest logit, is listed ('drift'; "
        "asserted < 1e-4)",
        "",
        "## The sweep: fewest channels, smallest k at which post-training int8 loses a point",
        "",
        f"Against the trained model's fp32 accuracy {100 * fp32:.2f}% (the rescale leaves fp32 as it is). "
        + (f"Run with `--model {info['model']}`: no sweep, that model only (the threshold an earlier full sweep "
           "found)." if info.get("model") else "For each channel count, k grows until int8 loses at least a point."),
        "",
        "| channels | k | drift | float top-1 agreement | int8 accuracy | int8 vs fp32 (points) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for row in result["sweep"]:
        lines.append(f"| {row['count']} ({', '.join(map(str, row['channels']))}) | {row['factor']:g} | "
                     f"{row['drift']:.1e} | {100 * row['agree']:.2f}% | {100 * row['int8']:.2f}% | "
                     f"{100 * (row['int8'] - fp32):+.2f} |")
    chosen = result["chosen"]
    if chosen is None:
        lines += ["", "- no rescale in the sweep made post-training int8 lose a point"]
        return "\n".join(lines) + "\n"
    lines += [
        "",
        (f"- the model compared: {chosen['count']} channel(s) x{chosen['factor']:g}, given with --model "
         f"(post-training int8 {100 * (chosen['int8'] - fp32):+.2f} points against fp32)" if info.get("model") else
         f"- the threshold model: {chosen['count']} channel(s) x{chosen['factor']:g}, the first in the sweep (fewest "
         f"channels, then smallest k) at which int8 loses at least a point ({100 * (chosen['int8'] - fp32):+.2f})"),
        "",
        "## QAT against post-training int8 on those models, in one run",
        "",
        f"Both fine-tunings {result['steps']} steps (Adam, lr {result['lr']}, batch 32) from the outlier model, the "
        "pruning rows' budget: once in float (then post-training int8), once quantization-aware with `liteship qat "
        "bit` (TFMOT quantize_model with learned activation ranges: every convolution, ReLU, Add, the pooled "
        "features, the logits and GroupNorm's two gamma-carrying inner tensors; the checkpoint carries the ranges "
        "and `liteship convert bit --quant int8` gives those tensors them instead of calibrating, every other "
        "tensor calibrated on the same 300 images).",
        "",
        "| model | fp32 | int8 | int8 vs fp32 (points) | outlier gamma / median abs(gamma) of the others |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, row in result["rows"].items():
        lines.append(f"| {name} | {100 * row['fp32']:.2f}% | {100 * row['int8']:.2f}% | "
                     f"{100 * (row['int8'] - row['fp32']):+.2f} | {row['ratio']:.1f} |")
    lines.append("")
    for c in result["comparisons"]:
        ptq, qat = c["ptq"]["int8"], c["qat"]["int8"]
        lines.append(f"- {c['name']}: QAT int8 {100 * qat:.2f}% vs post-training int8 {100 * ptq:.2f}% after the same "
                     f"fine-tuning (target QAT >= PTQ: {'met' if qat >= ptq else 'NOT met'}); before fine-tuning "
                     f"int8 {100 * c['outlier']['int8']:.2f}% vs fp32 {100 * c['outlier']['fp32']:.2f}%")
    for c in result["comparisons"]:
        qat = c["qat"]
        lines += [
            f"- {c['name']}: the QAT model itself (fake-quantized weights and activations, in TensorFlow) scores "
            f"{100 * qat['fake_quantized']:.2f}% on the fifth of the training folder `liteship qat bit` holds out "
            f"(not the held-out digits above, where its int8 bundle scores {100 * qat['int8']:.2f}%)",
            "",
            "Ranges of the tensors the outlier passes through, after QAT: its float weights' range on the "
            "training images (what calibration would set) against the range QAT learned, which the bundle uses.",
            "",
            "| tensor | float min | float max | QAT min | QAT max | float width / QAT width |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for site, pair in qat["ranges"].items():
            (flo, fhi), learned = pair["float"], pair["qat"]
            if learned is None:
                lines.append(f"| {site} | {flo:.4g} | {fhi:.4g} | - | - | - |")
                continue
            lines.append(f"| {site} | {flo:.4g} | {fhi:.4g} | {learned[0]:.4g} | {learned[1]:.4g} | "
                         f"{(fhi - flo) / (learned[1] - learned[0]):.2f} |")
        lines.append("")
    fine = [r for r in result["sweep"] if r["count"] == chosen["count"] and r["factor"] < chosen["factor"]]
    if fine:
        last_fine = max(r["factor"] for r in fine)
        max_before = max(100 * (fp32 - r["int8"]) for r in fine)
        lines.append(
            f"- the loss comes at a cliff: int8 loses at most {max_before:.2f} points up to x{last_fine:g}, then "
            f"{-100 * (chosen['int8'] - fp32):.2f} at x{chosen['factor']:g}. Consistent with the per-tensor step "
            "(range / 255) of the tensors the outlier passes through growing past the other channels' values, so "
            "that they round together (inferred from the sweep, not traced tensor by tensor).")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
