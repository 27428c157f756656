"""Where a decode step's GPU time goes, kernel by kernel (the README's breakdown).

Run a model's single-token steps under Nsight Compute, then sum the CSV by kernel name:

  EOQ_CUDA_GRAPHS=0 ncu --clock-control none --cache-control none \\
      --metrics gpu__time_duration.sum --csv --log-file /tmp/ncu.csv \\
      --launch-skip 430 --launch-count 430 python tools/ncu_decode_profile.py run model.gguf
  python tools/ncu_decode_profile.py sum /tmp/ncu.csv

(`run` evaluates three single tokens from an empty cache; a decode step of the 8B shape launches
about 420 kernels, so skipping the first 430 launches and counting 430 covers the second step.)
"""
import collections
import csv
import sys


def run(model: str, steps: int = 3) -> None:
    from eoq import _core

    e = _core.Engine(model, n_ctx=4096, n_threads=1, kv="f16", device="cuda")
    for i in range(steps):
        e.eval([7 + i])


def summarize(path: str, top: int = 25) -> None:
    scale = {"ns": 1e-3, "nsecond": 1e-3, "us": 1.0, "usecond": 1.0, "ms": 1e3, "msecond": 1e3}
    with open(path) as fh:
        lines = [ln for ln in fh if ln.startswith('"')]  # ncu prefixes its log lines with ==PROF==
    tot, cnt = collections.defaultdict(float), collections.Counter()
    for r in csv.DictReader(lines):
        if r.get("Metric Name") != "gpu__time_duration.sum":
            continue
        name = r["Kernel Name"][:60]
        tot[name] += float(r["Metric Value"].replace(",", "")) * scale.get(r.get("Metric Unit", "us"), 1.0)
        cnt[name] += 1
    total = sum(tot.values())
    print(f"{sum(cnt.values())} launches, {total:.1f} us total")
    for name, us in sorted(tot.items(), key=lambda x: -x[1])[:top]:
        print(f"{us:9.1f} us {100 * us / total:5.1f}%  x{cnt[name]:4d}  {us / cnt[name]:7.2f} us/launch  {name}")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "run":
        run(sys.argv[2])
    elif len(sys.argv) == 3 and sys.argv[1] == "sum":
        summarize(sys.argv[2])
    else:
        sys.exit(__doc__)
