"""Doctor checks of the GPUs, from nvidia-smi's answers (`vidpipe/runtime/gpus.py`): the GPUs a run would get,
GPUs other processes already use, and how the visible GPUs connect (`nvidia-smi topo -m`)."""

from __future__ import annotations

import itertools
import re
import shutil

from vidpipe.doctor.check import INFO, OK, SKIPPED, WARN, Check
from vidpipe.runtime.gpus import GpuInfo


def describe_gpus(gpus: list[GpuInfo]) -> list[str]:
    """One line per visible GPU: its CUDA ordinal (and the driver's number when they differ), name, memory."""
    lines = []
    for ordinal, gpu in enumerate(gpus):
        label = f"cuda:{ordinal}" + (f" (GPU {gpu.index})" if gpu.index != ordinal else "")
        lines.append(f"{label} {gpu.name}: {gpu.memory_total_mib / 1024:.1f} GB, "
                     f"{gpu.memory_free_mib / 1024:.1f} GB free")
    return lines


def busy_gpus(gpus: list[GpuInfo], share: float = 0.1) -> list[int]:
    """CUDA ordinals of the GPUs on which other processes already hold more than `share` of the memory."""
    return [ordinal for ordinal, gpu in enumerate(gpus) if gpu.memory_used_mib > share * gpu.memory_total_mib]


def check_gpus(gpus: list[GpuInfo], cuda_visible_devices: str | None) -> Check:
    """The GPUs a run would get (CUDA_VISIBLE_DEVICES applied), their memory, and what that means for runs."""
    details = {"cuda_visible_devices": cuda_visible_devices, "gpus": [gpu.as_dict() for gpu in gpus]}
    if not gpus:
        if shutil.which("nvidia-smi") is None:
            return Check("gpus", INFO, "no GPU visible (no nvidia-smi: no NVIDIA driver)",
                         "runs use --device cpu: one process per rank, over gloo", details)
        return Check("gpus", WARN, f"no GPU visible (CUDA_VISIBLE_DEVICES={cuda_visible_devices!r})",
                     "runs use --device cpu; unset CUDA_VISIBLE_DEVICES or name GPUs nvidia-smi lists", details)
    found = "\n".join(describe_gpus(gpus))
    if len({gpu.name for gpu in gpus}) > 1:
        return Check("gpus", WARN, found, "mixed GPU models: every rank waits for the slowest, and auto plans for "
                                          "the smallest memory; set CUDA_VISIBLE_DEVICES to one model", details)
    busy = busy_gpus(gpus)
    if busy:
        return Check("gpus", WARN, found, f"other processes hold memory on cuda:{', cuda:'.join(map(str, busy))}: "
                                          "auto plans for the smallest free memory; free them or hide them with "
                                          "CUDA_VISIBLE_DEVICES", details)
    return Check("gpus", OK, found, details=details)


_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_GPU = re.compile(r"GPU\d+")


def parse_topology(text: str) -> dict[tuple[int, int], str]:
    """GPU-to-GPU links from `nvidia-smi topo -m`: {(0, 1): "NV18", ...} by driver index, first < second.

    The matrix starts with a header of GPU columns (then NICs, CPU and NUMA affinity); each GPU row gives its
    label and one link per GPU column (" X " for itself). Rows end at the legend.
    """
    links: dict[tuple[int, int], str] = {}
    columns: list[int] = []
    for line in _ANSI.sub("", text).splitlines():
        tokens = line.split()
        if tokens and tokens[0].startswith("Legend"):
            break
        if not tokens or not _GPU.fullmatch(tokens[0]):
            continue  # blank lines and NIC rows
        if not columns:  # the header comes first: its GPU columns lead
            columns = [int(token[3:]) for token in itertools.takewhile(_GPU.fullmatch, tokens)]
            continue
        row, values = int(tokens[0][3:]), tokens[1:1 + len(columns)]
        if len(values) == len(columns):
            for column, link in zip(columns, values, strict=True):
                if column != row:
                    links[(min(row, column), max(row, column))] = link
    return links


#: Link kinds from `nvidia-smi topo -m`'s legend, fastest first (NV# is NVLink; the rest cross PCIe).
LINK_MEANING = {"NV": "NVLink", "PIX": "one PCIe bridge", "PXB": "several PCIe bridges",
                "PHB": "a PCIe host bridge", "NODE": "host bridges in one NUMA node",
                "SYS": "between NUMA nodes (CPU sockets)", "other": "a kind this check does not know"}


def describe_links(links: dict[tuple[int, int], str]) -> str:
    """One line per kind of link, fastest first: 'NV18 (NVLink): 6 pairs (0-1, 0-2, ...)'."""
    by_link: dict[str, list[tuple[int, int]]] = {}
    for pair, link in sorted(links.items()):
        by_link.setdefault(link, []).append(pair)
    order = list(LINK_MEANING)
    lines = []
    for link, pairs in sorted(by_link.items(), key=lambda item: order.index(_link_kind(item[0]))):
        shown = ", ".join(f"{a}-{b}" for a, b in pairs[:4]) + (", ..." if len(pairs) > 4 else "")
        lines.append(f"{link} ({LINK_MEANING[_link_kind(link)]}): {len(pairs)} pair{'s' * (len(pairs) > 1)} "
                     f"({shown})")
    return "\n".join(lines)


def _link_kind(link: str) -> str:
    return "NV" if link.startswith("NV") else link if link in LINK_MEANING else "other"


def check_topology(gpus: list[GpuInfo], matrix: str | None) -> Check:
    """How the visible GPUs connect: NVLink everywhere, or some pairs over PCIe or across sockets."""
    if len(gpus) < 2:
        return Check("topology", SKIPPED, "fewer than two GPUs visible: no links to check")
    if not matrix:
        return Check("topology", WARN, "nvidia-smi topo -m gave no answer", "run it yourself to see the links")
    visible = {gpu.index for gpu in gpus}
    links = {pair: link for pair, link in parse_topology(matrix).items() if set(pair) <= visible}
    details = {"matrix": matrix, "links": {f"{a}-{b}": link for (a, b), link in links.items()}}
    if not links:
        return Check("topology", WARN, "no links between the visible GPUs in nvidia-smi topo -m",
                     "run nvidia-smi topo -m yourself to see the links", details)
    found = describe_links(links)
    if all(link.startswith("NV") for link in links.values()):
        return Check("topology", OK, found, details=details)
    return Check("topology", INFO, found, "plans that split one sample (cfg, sp, fsdp) exchange data every step: "
                                          "put their groups (consecutive ranks) on NVLinked GPUs with "
                                          "CUDA_VISIBLE_DEVICES, or use dp / pp across slow links", details)
