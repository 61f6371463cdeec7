"""The device identity: ISA features, microarchitecture and a device class that tells apart CPUs
sharing a name. Other CPUs are simulated by overriding the probe with their /proc/cpuinfo."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lepton_search.devices._machine import (
    CPUINFO_ENV,
    CpuProbe,
    FileCpuProbe,
    cpu_identity,
    cpu_identity_from,
    describe_device,
    device_class_of,
    device_kind_of,
    device_manifest,
    microarchitecture,
    same_device_class,
    use_cpu_probe,
)
from lepton_search.testing import SIMULATED_CPUS, cpu_probe, simulated_cpu


def test_the_three_cpus_are_told_apart_though_two_share_a_name() -> None:
    identities = {name: cpu_identity_from(cpu_probe(name), environ={}) for name in SIMULATED_CPUS}
    avx2, zen5, emerald = identities["epyc-avx2"], identities["epyc-zen5"], identities["xeon-emerald-rapids"]
    assert avx2.model_name == zen5.model_name == "AMD EPYC Processor"  # one name, two CPUs
    assert len({i.device_class for i in identities.values()}) == 3
    assert avx2.features == ("avx2", "f16c", "fma")
    assert {"avx512_vnni", "avx512_bf16", "avx_vnni", "avx512f", "avx512bw", "avx512vl"} <= set(zen5.features)
    assert not {"avx512_fp16", "amx_tile"} & set(zen5.features)
    assert {"amx_tile", "amx_int8", "amx_bf16", "avx512_fp16", "avx512_vnni"} <= set(emerald.features)
    assert (avx2.microarchitecture, zen5.microarchitecture, emerald.microarchitecture) == (
        "Zen 2",
        "Zen 5",
        "Emerald Rapids",
    )
    # In words, as reports show them.
    assert avx2.description == "Zen 2, AVX2, no VNNI"
    assert zen5.description == "Zen 5, AVX-512 VNNI/BF16"
    assert emerald.description == "Emerald Rapids, AVX-512 VNNI/BF16/FP16, AMX-INT8/BF16"
    for identity in identities.values():
        assert identity.device_class.startswith("cpu-") and len(identity.device_class) == 16
        assert (identity.logical_cpus, identity.physical_cores) == (2, 2)
        assert identity.hypervisor


def test_the_device_class_is_stable_and_hashes_only_what_decides_kernels(tmp_path: Path) -> None:
    probe = cpu_probe("epyc-zen5")
    first = cpu_identity_from(probe, environ={})
    # Cores, caches and memory are recorded but do not change the class.
    bigger = FileCpuProbe(probe.path, caches_kib={"L3": 1 << 20}, memory_mib=1 << 20, hypervisor_vendor="none")
    assert cpu_identity_from(bigger, environ={}).device_class == first.device_class
    # An environment variable that overrides a library's ISA dispatch does: the kernels differ.
    forced = cpu_identity_from(probe, environ={"ATEN_CPU_CAPABILITY": "avx2"})
    assert forced.device_class != first.device_class and "ATEN_CPU_CAPABILITY=avx2" in forced.description
    # A fresh process reading the same CPU (through $LEPTON_CPUINFO) computes the same class.
    code = "from lepton_search.devices._machine import cpu_identity; print(cpu_identity().device_class)"
    env = {k: v for k, v in os.environ.items() if k not in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA")}
    done = subprocess.run(
        [sys.executable, "-c", code],
        env={**env, CPUINFO_ENV: str(probe.path)},
        capture_output=True,
        text=True,
        check=True,
    )
    assert done.stdout.strip() == first.device_class


def test_this_machines_manifest_names_its_isa_and_class() -> None:
    manifest = device_manifest("cpu")
    cpu = cpu_identity()
    assert manifest["device_kind"] == "cpu"
    assert manifest["device_class"] == cpu.device_class and manifest["device_class_name"] == cpu.description
    assert manifest["cpu"]["isa"] == list(cpu.features) and manifest["cpu"]["source"] == "/proc/cpuinfo"
    assert manifest["cpu"]["logical_cpus"] == os.cpu_count()
    assert manifest["cpu"]["memory_mib"] > 0 and manifest["cpu"]["caches_kib"]
    assert manifest["host"]


def test_a_probe_override_reaches_every_manifest() -> None:
    real = cpu_identity().device_class
    with simulated_cpu("epyc-avx2") as probe:
        manifest = device_manifest("cpu")
        assert manifest["device_class_name"] == "Zen 2, AVX2, no VNNI"
        assert manifest["cpu"]["source"] == str(probe.path)
        with use_cpu_probe(cpu_probe("epyc-zen5")):  # overrides nest
            assert device_manifest("cpu")["device_class_name"] == "Zen 5, AVX-512 VNNI/BF16"
        assert device_manifest("cpu")["device_class_name"] == "Zen 2, AVX2, no VNNI"
    assert cpu_identity().device_class == real


def test_an_unreadable_cpuinfo_gives_a_bare_identity_not_an_error(tmp_path: Path) -> None:
    identity = cpu_identity_from(FileCpuProbe(tmp_path / "missing"), environ={})
    assert identity.features == () and identity.family is None and identity.device_class.startswith("cpu-")
    assert "no AVX2" in identity.description


def test_an_arm_cpu_is_read_from_its_features_line(tmp_path: Path) -> None:
    path = tmp_path / "cpuinfo"
    path.write_text(
        "processor\t: 0\nBogoMIPS\t: 2100.00\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics "
        "fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp ssbs\nCPU implementer\t: 0x41\nCPU architecture: 8\n"
        "CPU variant\t: 0x3\nCPU part\t: 0xd0c\nCPU revision\t: 1\n\n"
    )
    identity = cpu_identity_from(FileCpuProbe(path), environ={})
    assert identity.architecture == "aarch64"
    assert identity.features == ("asimd", "asimddp", "asimdhp")
    assert identity.description.endswith("NEON, dot product, fp16 arithmetic")


@pytest.mark.parametrize(
    ("vendor", "family", "model", "stepping", "expected"),
    [
        ("GenuineIntel", 6, 0x55, 4, "Skylake-SP"),
        ("GenuineIntel", 6, 0x55, 7, "Cascade Lake"),
        ("GenuineIntel", 6, 0x55, 11, "Cooper Lake"),
        ("GenuineIntel", 6, 0x8F, 8, "Sapphire Rapids"),
        ("GenuineIntel", 6, 0xCF, 2, "Emerald Rapids"),
        ("AuthenticAMD", 0x17, 0x31, 0, "Zen 2"),
        ("AuthenticAMD", 0x19, 0x01, 1, "Zen 3"),
        ("AuthenticAMD", 0x19, 0x11, 1, "Zen 4"),
        ("AuthenticAMD", 0x1A, 0x02, 1, "Zen 5"),
        ("AuthenticAMD", 0x15, 0x01, 0, None),
        ("GenuineIntel", 6, None, None, None),
    ],
)
def test_microarchitecture_names(vendor: str, family: int, model: int | None, stepping: int | None, expected) -> None:
    assert microarchitecture(vendor, family, model, stepping) == expected


def test_a_model_number_that_contradicts_the_flags_names_no_microarchitecture() -> None:
    # A hypervisor here reported model 0xA7 (Rocket Lake, a desktop part without AMX) with AMX tiles.
    assert microarchitecture("GenuineIntel", 6, 0xA7, 1, ["avx512f", "amx_tile", "amx_int8"]) is None
    assert microarchitecture("GenuineIntel", 6, 0xA7, 1, ["avx512f"]) == "Rocket Lake"
    assert microarchitecture("GenuineIntel", 6, 0x8F, 8, ["amx_tile"]) == "Sapphire Rapids"


def test_manifests_of_older_versions_still_read() -> None:
    # Before the class was a hash, manifests held "device_class": "cpu" | "gpu".
    old_cpu, old_gpu = {"device_class": "cpu", "device": "AMD EPYC"}, {"device_class": "gpu", "device": "T4"}
    assert (device_kind_of(old_cpu), device_kind_of(old_gpu)) == ("cpu", "gpu")
    assert device_class_of(old_cpu) is None and device_class_of(None) is None
    assert "device class not recorded" in describe_device(old_cpu)
    # An old manifest is comparable with nothing, not even another old one: its CPU is unknown.
    assert not same_device_class(old_cpu, old_cpu)
    new = device_manifest("cpu")
    assert device_kind_of(new) == "cpu" and same_device_class(new, json.loads(json.dumps(new)))
    assert not same_device_class(new, old_cpu)


def test_the_default_probe_reads_this_machine() -> None:
    identity = cpu_identity_from(CpuProbe(), environ={})
    assert identity.source == "/proc/cpuinfo" and identity.model_name
