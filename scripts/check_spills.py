"""Fails (exit 1) when a kernel in a build log spills registers to local memory, unless its source
explains why that is acceptable with a comment `TD_SPILL_OK(<kernel name>): <reason>` in csrc/ (or
`TD_SPILL_OK(<kernel name><leading template arguments>)`, e.g. `TD_SPILL_OK(k<128, true>)`, which allows
only the instantiations that start with those arguments), and when
ptxas serialized a kernel's wgmma instructions (C7510 / C7511 "Potential Performance Loss": e.g. a call,
such as a device assert, inside the wgmma pipeline, or too few registers for it), which has no excuse.

The build passes `-Xptxas=-warn-spills --resource-usage`, so ptxas reports, per function:
  ptxas info    : Function properties for <mangled name>
      <n> bytes stack frame, <s> bytes spill stores, <l> bytes spill loads
Usage: python scripts/check_spills.py BUILD_LOG
"""
from __future__ import annotations

import pathlib
import re
import shutil
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def demangle(name: str) -> str:
    if shutil.which("c++filt"):
        return subprocess.run(["c++filt", name], capture_output=True, text=True).stdout.strip() or name
    return name


def unqualified_name(name: str) -> str:
    """The function's own name, without namespaces, template arguments or parameters, from a demangled
    name or, where c++filt gave up (it does on some long CUTLASS names), from the mangled nested name
    `_ZN<len><id>...<len><id>I...`."""
    if name.startswith("_ZN"):
        i, last = 3, name
        while i < len(name) and name[i].isdigit():
            j = i
            while name[j].isdigit():
                j += 1
            last, i = name[j:j + int(name[i:j])], j + int(name[i:j])
        return last
    return re.sub(r"^(void )?", "", name).split("<")[0].split("(")[0].split("::")[-1]


def _instantiation_allowed(name: str, entry: str) -> bool:
    """Whether the demangled `name` is an instantiation of entry = kernel<leading template arguments>: the
    function's own template argument list (spaces ignored) starts with those arguments."""
    base, args = entry.split("<", 1)
    args = re.sub(r"\s+", "", args)[:-1]  # drop the closing '>'
    head = re.sub(r"\s+", "", re.sub(r"^void ", "", name).split("(")[0])
    m = re.match(r"(?:\w+::)*" + re.escape(base) + r"<(.*)>$", head)
    return m is not None and (m.group(1) + ",").startswith(args + ",")


def spilling_functions(log: str) -> dict[str, tuple[int, int]]:
    found, current = {}, None
    for line in log.splitlines():
        m = re.search(r"Function properties for (\S+)", line)
        if m:
            current = m.group(1)
            continue
        m = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", line)
        if m and current:
            stores, loads = int(m.group(1)), int(m.group(2))
            if stores or loads:
                found[current] = (stores, loads)
            current = None
    return found


def main(path: str) -> int:
    log = pathlib.Path(path).read_text(errors="replace")
    if "Function properties for" not in log:
        print(f"check_spills: no ptxas resource report in {path} (was the extension built with -v?)")
        return 1
    allowed = set(re.findall(r"TD_SPILL_OK\((\w+(?:<[^()]*>)?)\)", "".join(
        p.read_text(errors="replace") for p in (ROOT / "csrc").rglob("*") if p.suffix in (".cu", ".cuh", ".h"))))
    bad = []
    for mangled, (stores, loads) in spilling_functions(log).items():
        name = demangle(mangled)
        kernel = unqualified_name(name)
        ok = kernel in allowed or any(_instantiation_allowed(name, entry) for entry in allowed if "<" in entry)
        print(f"check_spills: {name}: {stores} B spill stores, {loads} B spill loads "
              f"({'allowed' if ok else 'NOT ALLOWED'})")
        if not ok:
            bad.append(kernel)
    serialized = sorted(set(re.findall(r"wgmma\.mma_async instructions are serialized due to ([^']*?) in the "
                                       r"function '(\S+)'", log)))
    for why, mangled in serialized:
        print(f"check_spills: {unqualified_name(demangle(mangled))}: wgmma serialized ({why.strip()})")
    n = log.count("Function properties for")
    print(f"check_spills: {n} function reports, {len(bad)} unexplained spills, {len(serialized)} wgmma-serialized")
    return 1 if bad or serialized else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
