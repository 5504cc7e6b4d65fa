"""Summarises a py-spy raw profile (collapsed stacks): where each thread spends its samples.

    python bench/profile_summary.py bench/results/profile-async-in-memory-1000.txt [--top 25]

Per thread: its share of all samples, the frames holding the most samples inclusively
(anything in the stack) and by self time (the leaf). Recorded with --gil, samples are those
where the thread held the GIL: one process has one GIL, so this is the CPU it can use.
"""

import argparse
import collections
import re


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("profile")
    parser.add_argument("--top", type=int, default=20)
    parser.add_argument("--match", default="", help="only frames containing this text")
    args = parser.parse_args()
    threads: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    leaves: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    totals: collections.Counter = collections.Counter()
    with open(args.profile) as f:
        lines = f.read().splitlines()
    for line in lines:
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():  # py-spy may cut a line short at SIGINT
            continue
        n = int(count)
        frames = stack.split(";")
        thread = re.sub(r"\s*\(\d+\)", "", frames[0])  # pool threads, whatever their id
        thread = re.sub(r"_\d+$", "", thread)
        totals[thread] += n
        for frame in set(frames[1:]):
            threads[thread][frame] += n
        leaves[thread][frames[-1]] += n
    all_samples = sum(totals.values())
    for thread, samples in totals.most_common():
        print(f"\n== {thread}: {samples} samples ({samples / all_samples:.0%} of all)")
        print("   inclusive:")
        shown = 0
        for frame, n in threads[thread].most_common():
            if args.match in frame:
                print(f"   {n / samples:6.1%}  {frame}")
                shown += 1
            if shown >= args.top:
                break
        print("   self:")
        for frame, n in leaves[thread].most_common(args.top // 2):
            print(f"   {n / samples:6.1%}  {frame}")


if __name__ == "__main__":
    main()
