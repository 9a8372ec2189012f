"""Speed benchmarks, printed as plain figures: ``python -m gan_suite.bench [SECTION ...]``.

Sections are registered in ``SECTIONS`` (name -> function taking the parsed options); with no
section named, all of them run. ``make bench`` runs them all.

    python -m gan_suite.bench fid --n-images 64 --batch-size 32 --fid-repeats 1
    python -m gan_suite.bench train cyclegan --papers cyclegan --sizes 128 --batch-sizes 1 4
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

from gan_suite.bench_loop import PLAIN_VARIANTS, bench_cyclegan
from gan_suite.bench_train import add_arguments, bench_memory, bench_train


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
        for _ in range(args.fid_repeats):
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


# ---------------------------------------------------------------- neighbours (IC-GAN)


def _matmul_gflops(side: int, dim: int, repeats: int = 3) -> float:
    """The machine's own float32 matmul rate, best of ``repeats``: (side x dim) @ (dim x side),
    the shape of one similarity block of the exact search."""
    a, b = torch.randn(side, dim), torch.randn(dim, side)
    a @ b  # warm-up (thread pool, allocator)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * side * side * dim / best / 1e9


def _neighbours_child(
    n: int,
    dim: int,
    k: int,
    chunk: int,
    n_verify: int,
    searches: Sequence[str] = (),
    nlist: int | None = None,
    nprobe: int = 4,
) -> dict:
    """Runs in a fresh process, so ru_maxrss is the peak of this search alone (the exact
    search runs first; the faiss searches of ``searches`` after the peak is read)."""
    import resource

    from gan_suite.eval.neighbours import knn_cosine, knn_search

    def rss_mib() -> float:  # ru_maxrss is in KiB on Linux
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    torch.set_num_threads(torch.get_num_threads())
    g = torch.Generator().manual_seed(0)
    # clustered features (1000 centres + noise), like pooled CNN features of many classes
    centres = torch.randn(1000, dim, generator=g)
    feats = torch.empty(n, dim)
    for i in range(0, n, 10_000):
        rows = min(10_000, n - i)
        labels = torch.randint(0, 1000, (rows,), generator=g)
        feats[i : i + rows] = centres[labels] + 2.0 * torch.randn(rows, dim, generator=g)
    rss_features = rss_mib()
    start, cpu_start = time.perf_counter(), time.process_time()
    nn_idx = knn_cosine(feats, k, chunk_size=chunk)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    peak = rss_mib()
    # verify a random subsample against an exact float64 search over all N, by database chunk
    x = torch.nn.functional.normalize(feats, dim=1)
    rows = torch.randperm(n, generator=g)[:n_verify]
    q = x[rows].double()
    sims = torch.cat([q @ x[j : j + 8192].double().T for j in range(0, n, 8192)], dim=1)
    sims[torch.arange(len(rows)), rows] = -float("inf")  # self excluded, as knn_cosine does
    ref = torch.topk(sims, k, dim=1).indices
    same_sets = sum(set(a.tolist()) == set(b.tolist()) for a, b in zip(nn_idx[rows], ref))
    ours_sim = torch.gather(sims, 1, nn_idx[rows])
    ref_sim = torch.gather(sims, 1, ref)
    finite = torch.isfinite(ref_sim)
    max_diff = float((ours_sim - ref_sim)[finite].abs().max()) if finite.any() else 0.0
    # the symmetric search does N^2 D multiply-adds' worth of matmul: 2 N^2 D / 2 flops
    matmul = _matmul_gflops(min(chunk, n), dim)
    faiss_runs = []
    for search in searches:
        start = time.perf_counter()
        found = knn_search(feats, k, search=search, nlist=nlist, nprobe=nprobe)
        hits = sum(len(set(a.tolist()) & set(b.tolist())) for a, b in zip(found[rows], ref))
        faiss_runs.append((search, time.perf_counter() - start, hits / ref.numel()))
    return {
        "gflops": n * n * dim / seconds / 1e9,
        "matmul_gflops": matmul,
        "faiss": faiss_runs,
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
        "peak_mib": peak,
        "features_mib": rss_features,
        "same_sets": same_sets,
        "n_verify": len(rows),
        "exact_order": bool((nn_idx[rows] == ref).all()),
        "max_sim_diff": max_diff,
    }


def bench_neighbours(args: argparse.Namespace) -> None:
    """IC-GAN's k-NN search (gan_suite.eval.neighbours.knn_cosine): wall time and peak RSS of
    one exact search of N features against themselves, checked on a subsample against an
    exact float64 search; its matmul rate against the machine's own (one block's matmul,
    timed alone); then each faiss search of ``--nn-search`` with its recall@k on the
    subsample."""
    import multiprocessing

    n, dim, k, chunk = args.nn_n, args.nn_dim, args.nn_k, args.nn_chunk
    print(f"== neighbours: N={n} D={dim} k={k} chunk={chunk}, float32; {_machine()}")
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        r = pool.apply(
            _neighbours_child,
            (n, dim, k, chunk, args.nn_verify, args.nn_search, args.nn_nlist, args.nn_nprobe),
        )
    print(
        f"   knn_cosine: {r['seconds']:.1f} s wall ({r['cpu_seconds']:.0f} s CPU: a wall time "
        "far above CPU / threads means other processes shared the cores)"
    )
    print(
        f"   peak RSS {r['peak_mib']:.0f} MiB "
        f"(of which process + the N x D features {r['features_mib']:.0f} MiB)"
    )
    print(
        f"   check vs float64 brute force on {r['n_verify']} random rows: identical neighbour "
        f"sets {r['same_sets']}/{r['n_verify']}, identical order {r['exact_order']}, max |sim "
        f"diff| {r['max_sim_diff']:.2g}"
    )
    print(
        f"   matmul rate: {r['gflops']:.0f} GFLOP/s (N^2 D flops: the upper triangle) vs "
        f"{r['matmul_gflops']:.0f} GFLOP/s for one {min(chunk, n)}x{dim} block alone = "
        f"{r['gflops'] / r['matmul_gflops']:.0%} of the machine's matmul limit (the rest: top-k "
        "merges, block transposes)"
    )
    for search, seconds, recall in r["faiss"]:
        ivf = f" (nlist={args.nn_nlist or 'sqrt N'}, nprobe={args.nn_nprobe})"
        print(
            f"   {search}{ivf if search == 'faiss_ivf' else ''}: {seconds:.1f} s wall, "
            f"recall@{k} {recall:.3f} on the {r['n_verify']} rows"
        )


SECTIONS: dict[str, Callable[[argparse.Namespace], None]] = {
    "fid": bench_fid,
    "train": bench_train,
    "cyclegan": bench_cyclegan,
    "memory": bench_memory,
    "neighbours": bench_neighbours,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the named sections (all when none is named); returns the exit code."""
    parser = argparse.ArgumentParser(prog="python -m gan_suite.bench", description=__doc__)
    parser.add_argument("sections", nargs="*", help=f"any of {', '.join(SECTIONS)} (default all)")
    fid = parser.add_argument_group("fid")
    fid.add_argument("--n-images", type=int, default=64, help="real and fake images, each")
    fid.add_argument("--batch-size", type=int, default=32, help="images per forward, both tools")
    fid.add_argument(
        "--fid-repeats", type=int, default=1, help="alternating timed rounds, best kept"
    )
    fid.add_argument("--image-size", type=int, default=64, help="side of the square images, px")
    add_arguments(parser)
    parser.add_argument(
        "--variants",
        nargs="+",
        default=list(PLAIN_VARIANTS),
        choices=list(PLAIN_VARIANTS),
        help="cyclegan section: the switches compared (suite and plain loop)",
    )
    nn = parser.add_argument_group("neighbours")
    nn.add_argument("--nn-n", type=int, default=100_000, help="features searched")
    nn.add_argument("--nn-dim", type=int, default=2048, help="feature dimension")
    nn.add_argument("--nn-k", type=int, default=50, help="neighbours per feature")
    nn.add_argument("--nn-chunk", type=int, default=4096, help="similarity block side")
    nn.add_argument("--nn-verify", type=int, default=200, help="rows checked by brute force")
    nn.add_argument("--nn-search", nargs="*", default=[], help="also: faiss_flat faiss_ivf")
    nn.add_argument("--nn-nlist", type=int, default=None, help="faiss_ivf cells (sqrt N)")
    nn.add_argument("--nn-nprobe", type=int, default=4, help="faiss_ivf cells per query")
    args = parser.parse_args(argv)
    unknown = [s for s in args.sections if s not in SECTIONS]
    if unknown:
        parser.error(f"unknown section(s) {unknown}: expected any of {list(SECTIONS)}")
    for name in args.sections or list(SECTIONS):
        SECTIONS[name](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
