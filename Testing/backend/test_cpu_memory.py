"""--cpu-allocator: huge pages cut the page faults of large CPU tensors; bad names are refused."""

import json
import subprocess
import sys

import pytest

from voco_backend.cpu_memory import huge_pages_available, use_cpu_allocator

# A fresh process per allocator: PyTorch reads its switch once, at the first large tensor.
PROBE = """
import json, resource, sys
from voco_backend.cpu_memory import use_cpu_allocator
applied = use_cpu_allocator(sys.argv[1])
import torch
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(8):
    x = torch.ones(64 * 1024 * 1024)  # 256 MB, freed each time as activations are
    del x
print(json.dumps({"applied": applied, "faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before}))
"""


def page_faults(allocator: str) -> dict:
    done = subprocess.run([sys.executable, "-c", PROBE, allocator], capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_hugepages_fault_far_fewer_pages_than_the_default():
    default, huge = page_faults("default"), page_faults("hugepages")
    assert default["applied"]
    assert huge["applied"] == huge_pages_available()
    if huge["applied"]:
        assert huge["faults"] * 5 < default["faults"], (huge, default)
    else:  # a kernel without transparent huge pages: the default stays, and the command says so
        assert huge["faults"] > default["faults"] / 2


def test_unknown_allocator_is_refused():
    with pytest.raises(ValueError, match="unknown CPU allocator 'jemalloc'"):
        use_cpu_allocator("jemalloc")
