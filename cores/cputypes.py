"""``/proc/cpuinfo`` parsing and the ``CPU part`` -> core type table.

ARM kernels (32- and 64-bit) print one block per online processor with
``CPU implementer`` and ``CPU part`` hex fields; x86 kernels print
``model name``. The table maps ARM's (implementer, part) pairs to core
names; x86 and unknown parts keep a readable name instead.

``PER_MHZ`` holds a rough relative per-clock performance for each core type
(close to the ``capacity-dmips-mhz`` values kernel device trees give the
cores, big core = 1024). It only ranks clusters when the kernel gives no
``cpu_capacity``; it is never used as a measurement. :func:`speed_rank` is
the one ranking both detection (naming ``little``/``big``) and
``Platform.fastest`` use, so the two never disagree.

When cpuinfo is missing or lists only some CPUs, arm64 still names each CPU
in sysfs (``cpuN/regs/identification/midr_el1``); :func:`processor_from_midr`
reads it into the same record, so the same table names the core.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Tuple

__all__ = [
    "ProcessorInfo",
    "parse_cpuinfo",
    "processor_from_midr",
    "core_type_name",
    "per_mhz",
    "known_positive",
    "speed_rank",
    "CORE_PARTS",
    "PER_MHZ",
]

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
    vendor_id: Optional[str] = None  # x86 only ("GenuineIntel", "AuthenticAMD", ...)

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
            vendor_id=block.get("vendor_id"),
        )
    return out


def processor_from_midr(cpu: int, text: Optional[str]) -> Optional[ProcessorInfo]:
    """An arm64 CPU's identity from sysfs ``regs/identification/midr_el1`` (``0x00000000410fd080``).

    The register carries the same two fields cpuinfo prints as ``CPU
    implementer`` (bits 31..24) and ``CPU part`` (bits 15..4), so the part
    table names the core even where ``/proc/cpuinfo`` is absent (a sandbox,
    a tree copied without ``proc/``) or lists only some CPUs. None when the
    file is missing or is not a hex number.
    """
    value = _hex(text.strip()) if text else None
    if value is None:
        return None
    implementer = (value >> 24) & 0xFF
    part = (value >> 4) & 0xFFF
    if implementer == 0 and part == 0:
        return None  # an all-zero register (an emulator that does not fill it) names nothing
    return ProcessorInfo(cpu=cpu, implementer=implementer, part=part)


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


def per_mhz(core_type: str) -> int:
    """``PER_MHZ`` for a core type, 0 when unknown.

    Vendor names built on an Arm core (``Kryo-Gold (Cortex-A76)``) use the
    Arm core's figure; Intel hybrid suffixes (`` P-core``) are not in the
    table, so x86 model names give 0 and rank by clock alone.
    """
    known = PER_MHZ.get(core_type)
    if known is not None:
        return known
    inner = core_type.rpartition("(")[2].rstrip(")")
    return PER_MHZ.get(inner, 0)


def known_positive(value: Optional[int]) -> Optional[int]:
    """A capacity or clock; None, 0 and negatives are a driver's "don't know", not a speed (None)."""
    return value if value is not None and value > 0 else None


def speed_rank(
    core_type: str, capacity: Optional[int], max_freq_khz: Optional[int], typed: bool = True
) -> Tuple[int, int, int, int, int]:
    """A cluster's per-core speed as a sortable tuple, best evidence first.

    Intel hybrid P over E (the suffix detection gives the type), then the
    kernel's ``cpu_capacity``, then core type x clock, then clock, then the
    type's per-MHz figure alone (what is left when no clock is known: A72
    beats A53 on a kernel without cpufreq). ``typed`` is False when some
    cluster of the same platform has no per-MHz figure: type x clock would
    then compare a product with a bare clock, so the clock alone ranks.
    Missing, zero or negative capacities and clocks count as unknown (0).
    """
    hybrid = 1 if core_type.endswith(" P-core") else 0
    cap = known_positive(capacity) or 0
    freq = known_positive(max_freq_khz) or 0
    per = per_mhz(core_type)
    estimate = per * freq if typed and per and freq else freq
    return (hybrid, cap, estimate, freq, per)
