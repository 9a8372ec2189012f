"""Speed benchmarks, printed as plain figures: ``python -m gan_suite.bench [SECTION ...]``.

Sections are registered in ``SECTIONS`` (name -> function taking the parsed options); with no
section named, all of them run. ``make bench`` runs them all.

    python -m gan_suite.bench fid --n-images 64 --batch-size 32 --repeats 1
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch.utils.data import Dataset


def _machine() -> str:
    return (
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"cuda={'yes' if torch.cuda.is_available() else 'no'}"
    )


# ---------------------------------------------------------------- fid


class _Uint8Images(Dataset):
    """torch-fidelity's input format: a Dataset of uint8 (3, H, W) tensors."""

    def __init__(self, images: torch.Tensor) -> None:
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.images[i]


def _random_uint8_images(n: int, size: int, seed: int) -> torch.Tensor:
    """Smooth random uint8 images (n, 3, size, size): not noise, so features vary a little."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 3, 8, 8, generator=g)
    up = torch.nn.functional.interpolate(low, size=(size, size), mode="bilinear")
    return (up * 255).round().to(torch.uint8)


def bench_fid(args: argparse.Namespace) -> None:
    """FID evaluation throughput: gan_suite FIDKID vs torch-fidelity, same InceptionV3 weights."""
    import torch_fidelity

    from gan_suite.eval.features import make_feature_extractor, write_random_inception_weights
    from gan_suite.eval.fid import FIDKID

    n, bs, size = args.n_images, args.batch_size, args.image_size
    real_u8 = _random_uint8_images(n, size, seed=0)
    fake_u8 = _random_uint8_images(n, size, seed=1)
    # The same pixels for both: uint8 -> [-1, 1] -> uint8 round-trips exactly in FeatureWrapper.
    real, fake = real_u8.float() / 127.5 - 1, fake_u8.float() / 127.5 - 1

    print(f"== fid: {n} real + {n} fake images, {size}x{size}, batch {bs}; {_machine()}")
    print(
        "   InceptionV3 weights are RANDOM (no download possible here): compare throughput; "
        "the FID values only check that both tools see the same features."
    )
    with tempfile.TemporaryDirectory() as tmp:
        weights = write_random_inception_weights(Path(tmp) / "inception-random.pth", seed=0)

        # Untimed warm-up: the first convolutions of a process pay one-off oneDNN set-up costs
        # that would otherwise be charged to whichever tool runs first.
        make_feature_extractor("inception", weights_path=weights)(real[:2])

        def run_ours() -> tuple[dict, float, float]:
            start = time.perf_counter()
            metric = FIDKID(make_feature_extractor("inception", weights_path=weights))
            for i in range(0, n, bs):
                metric.update_real(real[i : i + bs])
            for i in range(0, n, bs):
                metric.update_fake(fake[i : i + bs])
            t_features = time.perf_counter() - start
            return metric.compute(), time.perf_counter() - start, t_features

        def run_theirs() -> tuple[dict, float]:
            start = time.perf_counter()
            out = torch_fidelity.calculate_metrics(
                input1=_Uint8Images(fake_u8),
                input2=_Uint8Images(real_u8),
                fid=True,
                kid=True,
                kid_subset_size=n,
                feature_extractor="inception-v3-compat",
                feature_extractor_weights_path=str(weights),
                batch_size=bs,
                cuda=False,
                cache=False,
                save_cpu_ram=True,  # DataLoader without workers: in-memory tensors need none
                verbose=False,
            )
            return out, time.perf_counter() - start

        # Both timings include building the extractor from the same local file (each tool does
        # it once per evaluation). Rounds alternate the tools and the best time of each is kept,
        # so load from other processes on a shared machine biases neither.
        t_ours = t_theirs = t_feat = float("inf")
        for _ in range(args.repeats):
            ours, t, tf = run_ours()
            t_ours, t_feat = min(t_ours, t), min(t_feat, tf)
            theirs, t = run_theirs()
            t_theirs = min(t_theirs, t)

    ips_ours, ips_theirs = 2 * n / t_ours, 2 * n / t_theirs
    fid_ours, fid_theirs = ours["fid"], theirs["frechet_inception_distance"]
    kid_theirs = theirs["kernel_inception_distance_mean"]
    print(
        f"   gan_suite FIDKID (FID+KID): {ips_ours:8.2f} images/s  ({t_ours:.1f} s, "
        f"of which build+features {t_feat:.1f} s, compute {t_ours - t_feat:.1f} s)"
    )
    print(f"   torch-fidelity   (FID+KID): {ips_theirs:8.2f} images/s  ({t_theirs:.1f} s)")
    print(f"   ratio ours/torch-fidelity : {ips_ours / ips_theirs:8.3f}")
    print(
        f"   FID  ours {fid_ours:.6g}  torch-fidelity {fid_theirs:.6g}  "
        f"|diff| {abs(fid_ours - fid_theirs):.3g} (rel {abs(fid_ours / fid_theirs - 1):.2g})"
    )
    print(
        f"   KID  ours {ours['kid_mean']:.6g}  torch-fidelity {kid_theirs:.6g}  "
        f"|diff| {abs(ours['kid_mean'] - kid_theirs):.3g}"
    )


# ---------------------------------------------------------------- registry and entry point

SECTIONS: dict[str, Callable[[argparse.Namespace], None]] = {
    "fid": bench_fid,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the named sections (all when none is named); returns the exit code."""
    parser = argparse.ArgumentParser(prog="python -m gan_suite.bench", description=__doc__)
    parser.add_argument("sections", nargs="*", help=f"any of {', '.join(SECTIONS)} (default all)")
    fid = parser.add_argument_group("fid")
    fid.add_argument("--n-images", type=int, default=64, help="real and fake images, each")
    fid.add_argument("--batch-size", type=int, default=32, help="images per forward, both tools")
    fid.add_argument("--repeats", type=int, default=1, help="alternating timed rounds, best kept")
    fid.add_argument("--image-size", type=int, default=64, help="side of the square images, px")
    args = parser.parse_args(argv)
    unknown = [s for s in args.sections if s not in SECTIONS]
    if unknown:
        parser.error(f"unknown section(s) {unknown}: expected any of {list(SECTIONS)}")
    for name in args.sections or list(SECTIONS):
        SECTIONS[name](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
