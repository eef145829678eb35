#!/usr/bin/env python3
"""`tickinfer features` across a Dask cluster: one task per input file, gathered as one dataset.

    python3 scripts/features_dask.py --scheduler tcp://HOST:8786 --tickinfer /opt/tickinfer/bin/tickinfer \\
        --model models/lobster_stateful.toml --format lobster --out /shared/features DAY1.zip DAY2.zip ...
    python3 scripts/features_dask.py --local-workers 2 ...      # a LocalCluster on this machine

Each task runs the tickinfer binary on a worker (`tickinfer features --jobs 1`, one file), so the
rows are the server's own, computed by its own code, wherever they run; Dask only schedules the
files and gathers the Parquet files they write (`dask.dataframe.read_parquet`, one partition or
more per file, in input order). The binary, the manifest, the inputs and `--out` must be at the
same paths on every worker (a shared filesystem); no scheduler of tickinfer's own.

Needs: dask distributed pandas pyarrow (scripts/requirements-dask.txt).
"""
import argparse
import os
import subprocess
import sys


def output_path(out, input_path):
    """Where `tickinfer features` writes `input_path`'s rows (as dataset::output_name names it)."""
    name = os.path.basename(input_path)
    for ext in (".zst", ".zip", ".dbn", ".csv", ".bin", ".capture"):
        if name.endswith(ext):
            name = name[: -len(ext)]
    return os.path.join(out, name + ".parquet")


def run_one(tickinfer, model, input_path, fmt, out, extra=()):
    """One task: `tickinfer features` on one file; the Parquet file's path. Raises with the
    command's own error (its exit status 2 says the input was bad)."""
    cmd = [tickinfer, "features", "--model", model, "--input", input_path, "--format", fmt, "--out", out,
           "--jobs", "1", *extra]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: exit status {done.returncode}: {done.stderr.strip()}")
    path = done.stdout.strip().splitlines()[-1]
    assert path == output_path(out, input_path), (path, output_path(out, input_path))
    return path


def features(client, tickinfer, model, inputs, fmt, out, extra=()):
    """Run one task per input on `client`'s cluster; (the files' paths in input order, the dask
    DataFrame over them)."""
    import dask.dataframe as dd
    os.makedirs(out, exist_ok=True)
    futures = [client.submit(run_one, tickinfer, model, path, fmt, out, tuple(extra), pure=False, key=f"features-{i}")
               for i, path in enumerate(inputs)]
    paths = client.gather(futures)
    return paths, dd.read_parquet(paths)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("inputs", nargs="+", help="input files, one task each")
    ap.add_argument("--tickinfer", required=True, help="the tickinfer binary (same path on every worker)")
    ap.add_argument("--model", required=True, help="the manifest")
    ap.add_argument("--format", required=True, help="lobster | dbn | csv | capture")
    ap.add_argument("--out", required=True, help="output directory (shared by the workers)")
    where = ap.add_mutually_exclusive_group(required=True)
    where.add_argument("--scheduler", help="a running Dask scheduler's address")
    where.add_argument("--local-workers", type=int, help="start a LocalCluster of this many workers")
    args, extra = ap.parse_known_args()
    from distributed import Client, LocalCluster
    if args.scheduler:
        cluster, client = None, Client(args.scheduler)
    else:
        cluster = LocalCluster(n_workers=args.local_workers, threads_per_worker=1, processes=True)
        client = Client(cluster)
    try:
        paths, ddf = features(client, args.tickinfer, args.model, args.inputs, args.format, args.out, extra)
        print(f"{len(paths)} files, {len(ddf)} rows, {len(ddf.columns)} columns", file=sys.stderr)
        for p in paths:
            print(p)
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


if __name__ == "__main__":
    main()
