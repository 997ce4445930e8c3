"""``/proc/cpuinfo`` parsing and the ``CPU part`` -> core type table.

ARM kernels (32- and 64-bit) print one block per online processor with
``CPU implementer`` and ``CPU part`` hex fields; x86 kernels print
``model name``. The table maps ARM's (implementer, part) pairs to core
names; x86 and unknown parts keep a readable name instead.

``PER_MHZ`` holds a rough relative per-clock performance for each core type
(close to the ``capacity-dmips-mhz`` values kernel device trees give the
cores, big core = 1024). It only ranks clusters when the kernel gives no
``cpu_capacity``; it is never used as a measurement.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Tuple

__all__ = ["ProcessorInfo", "parse_cpuinfo", "core_type_name", "CORE_PARTS", "PER_MHZ"]

#: (implementer, part) -> core name; implementer 0x41 is Arm Ltd.
CORE_PARTS: Dict[Tuple[int, int], str] = {
    (0x41, 0xC05): "Cortex-A5",
    (0x41, 0xC07): "Cortex-A7",
    (0x41, 0xC08): "Cortex-A8",
    (0x41, 0xC09): "Cortex-A9",
    (0x41, 0xC0D): "Cortex-A12",
    (0x41, 0xC0E): "Cortex-A17",
    (0x41, 0xC0F): "Cortex-A15",
    (0x41, 0xD01): "Cortex-A32",
    (0x41, 0xD02): "Cortex-A34",
    (0x41, 0xD03): "Cortex-A53",
    (0x41, 0xD04): "Cortex-A35",
    (0x41, 0xD05): "Cortex-A55",
    (0x41, 0xD06): "Cortex-A65",
    (0x41, 0xD07): "Cortex-A57",
    (0x41, 0xD08): "Cortex-A72",
    (0x41, 0xD09): "Cortex-A73",
    (0x41, 0xD0A): "Cortex-A75",
    (0x41, 0xD0B): "Cortex-A76",
    (0x41, 0xD0C): "Neoverse-N1",
    (0x41, 0xD0D): "Cortex-A77",
    (0x41, 0xD0E): "Cortex-A76AE",
    (0x41, 0xD40): "Neoverse-V1",
    (0x41, 0xD41): "Cortex-A78",
    (0x41, 0xD42): "Cortex-A78AE",
    (0x41, 0xD44): "Cortex-X1",
    (0x41, 0xD46): "Cortex-A510",
    (0x41, 0xD47): "Cortex-A710",
    (0x41, 0xD48): "Cortex-X2",
    (0x41, 0xD49): "Neoverse-N2",
    (0x41, 0xD4B): "Cortex-A78C",
    (0x41, 0xD4C): "Cortex-X1C",
    (0x41, 0xD4D): "Cortex-A715",
    (0x41, 0xD4E): "Cortex-X3",
    (0x41, 0xD4F): "Neoverse-V2",
    (0x41, 0xD80): "Cortex-A520",
    (0x41, 0xD81): "Cortex-A720",
    (0x41, 0xD82): "Cortex-X4",
    # Qualcomm Kryo parts (implementer 0x51) built on Arm cores.
    (0x51, 0x800): "Kryo-Gold (Cortex-A73)",
    (0x51, 0x801): "Kryo-Silver (Cortex-A53)",
    (0x51, 0x802): "Kryo-Gold (Cortex-A75)",
    (0x51, 0x803): "Kryo-Silver (Cortex-A55)",
    (0x51, 0x804): "Kryo-Gold (Cortex-A76)",
    (0x51, 0x805): "Kryo-Silver (Cortex-A55)",
}

#: rough relative per-clock performance (big = 1024), a tie-breaker only
PER_MHZ: Dict[str, int] = {
    "Cortex-A5": 300, "Cortex-A7": 539, "Cortex-A8": 450, "Cortex-A9": 600,
    "Cortex-A12": 800, "Cortex-A15": 1024, "Cortex-A17": 900,
    "Cortex-A32": 450, "Cortex-A34": 450, "Cortex-A35": 450,
    "Cortex-A53": 485, "Cortex-A55": 530, "Cortex-A510": 560, "Cortex-A520": 580,
    "Cortex-A57": 900, "Cortex-A72": 1024, "Cortex-A73": 1024, "Cortex-A75": 1100,
    "Cortex-A76": 1300, "Cortex-A77": 1450, "Cortex-A78": 1600, "Cortex-A710": 1650,
    "Cortex-A715": 1700, "Cortex-A720": 1750, "Cortex-X1": 1900, "Cortex-X2": 2000,
    "Cortex-X3": 2200, "Cortex-X4": 2400,
}


@dataclass(frozen=True)
class ProcessorInfo:
    """One ``processor`` block of ``/proc/cpuinfo``, reduced to what names a core."""

    cpu: int
    implementer: Optional[int] = None
    part: Optional[int] = None
    model_name: Optional[str] = None
    hardware: Optional[str] = None

    @property
    def core_type(self) -> str:
        return core_type_name(self.implementer, self.part, self.model_name)


def _hex(value: Optional[str]) -> Optional[int]:
    if value is None:
        return None
    try:
        return int(value, 16)
    except ValueError:
        return None


def parse_cpuinfo(text: str) -> Dict[int, ProcessorInfo]:
    """``/proc/cpuinfo`` text -> {cpu id: ProcessorInfo}.

    Copes with both layouts: x86 and arm64 (``key\\t: value``), and 32-bit
    ARM, whose trailing ``Hardware``/``Revision`` block belongs to no
    processor (its ``Hardware`` line is copied onto every processor).
    Unparseable blocks are skipped: cpuinfo is a hint, sysfs is the truth.
    """
    blocks = []
    current: Dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            if current:
                blocks.append(current)
                current = {}
            continue
        key, sep, value = line.partition(":")
        if sep:
            current[key.strip().lower()] = value.strip()
    if current:
        blocks.append(current)

    hardware = None
    for block in blocks:
        if "hardware" in block:
            hardware = block["hardware"]
    out: Dict[int, ProcessorInfo] = {}
    for block in blocks:
        if "processor" not in block:
            continue
        try:
            cpu = int(block["processor"])
        except ValueError:
            continue
        model = block.get("model name")
        # 32-bit ARM's "model name" is the ISA ("ARMv7 Processor rev 3 (v7l)"), not a core.
        out[cpu] = ProcessorInfo(
            cpu=cpu,
            implementer=_hex(block.get("cpu implementer")),
            part=_hex(block.get("cpu part")),
            model_name=model,
            hardware=block.get("hardware", hardware),
        )
    return out


def core_type_name(
    implementer: Optional[int], part: Optional[int], model_name: Optional[str] = None
) -> str:
    """A readable core type: ``Cortex-A72``, an x86 model name, or ``ARM 0x41:0xd99``."""
    if implementer is not None and part is not None:
        known = CORE_PARTS.get((implementer, part))
        if known:
            return known
        return f"ARM 0x{implementer:02x}:0x{part:03x}"
    if model_name:
        return " ".join(model_name.split())
    return "unknown"
