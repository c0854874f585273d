"""Time :func:`edgecrab.replies.chunking.split_text` on a 1 MB reply: ``python bench/chunking_bench.py``."""

from edgecrab.replies.chunking import bench

if __name__ == "__main__":
    print(f"split 1 MB of markdown in {bench() * 1000:.1f} ms (best of 3)")
