"""``translate_many`` gives exactly what the scalar ``walk`` gives, field by field, on random Mapper-built
scenes and on the adversarial forests of tests/hw/forest.py, in all four paging modes, for every access
kind and privilege under mixes of CR0.WP, EFER.NXE, CR4.SMEP/SMAP/PKE/PKS/PSE and the key registers."""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import replace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from earlymm.arch.modes import Features
from earlymm.hw.memory import PhysMem
from earlymm.hw.walk import walk
from tests.bulk.scenes import make_scene
from tests.bulk.support import ACCESSES, Env, envs, mismatches, snapshot
from tests.hw.forest import make_forest

MODES = ("32", "pae", "4", "5")


def bits(seed: int) -> Iterator[int]:
    rng = random.Random(seed)
    while True:
        yield rng.getrandbits(32)


def check_scene(seed: int, mode: str, n_envs: int = 4) -> list[str]:
    scene = make_scene(seed, mode)
    before, writes = snapshot(scene.mem), scene.mem.writes
    bad: list[str] = []
    for env in envs(bits(seed), n_envs):
        if mode not in ("4", "5"):
            env = replace(env, pke=False, pks=False)  # protection keys exist only in IA-32e paging
        plan = env.plan(mode, scene.features)
        for kind, user, implicit, ac in ACCESSES:
            bad += mismatches(scene.mem, plan, scene.root, scene.vas, kind, user, implicit, ac, env.pkru, env.pkrs,
                              scene.pdptes, label=f"seed={seed} mode={mode} M={scene.features.maxphyaddr} {env}")
    assert scene.mem.writes == writes and snapshot(scene.mem) == before, "translate_many wrote memory"
    return bad


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("seed", range(12))
def test_mapper_scenes(seed: int, mode: str) -> None:
    bad = check_scene(seed, mode)
    assert not bad, f"{len(bad)} disagreements:\n  " + "\n  ".join(bad[:10])


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1), mode=st.sampled_from(MODES))
def test_mapper_scenes_property(seed: int, mode: str) -> None:
    bad = check_scene(seed, mode, n_envs=1)
    assert not bad, f"{len(bad)} disagreements:\n  " + "\n  ".join(bad[:10])


def test_scenes_exercise_every_outcome() -> None:
    """The scenes are only worth something if they reach every outcome and every fault reason."""
    reasons: set[str] = set()
    for seed in range(24):
        mode = MODES[seed % 4]
        scene = make_scene(seed, mode)
        keys = mode in ("4", "5")
        plan = Env(True, True, True, True, keys, keys).plan(mode, scene.features)
        for va in scene.vas:
            for kind, user, implicit, ac in ACCESSES:
                r = walk(scene.mem, plan, scene.root, va, kind, user, implicit, ac, 0x5555_5554, 0xAAAA_AAA8,
                         scene.pdptes)
                reasons.add(r.reason.name if r.reason else "OK")
    assert reasons >= {"OK", "NOT_PRESENT", "RESERVED", "USER_SUPERVISOR", "READ_ONLY", "NX", "SMEP", "SMAP",
                       "PK_ACCESS", "PK_WRITE", "NONCANONICAL", "HOLE"}, reasons


@pytest.mark.parametrize("seed", range(48))
def test_adversarial_forests(seed: int) -> None:
    """tests/hw/forest.py's forests: shared and looping tables, pointers outside the pool and beyond
    MAXPHYADDR, misaligned large-page addresses, reserved bits — with and without holes."""
    mode = MODES[seed % 4]
    m = (36, 40, 46, 52)[(seed // 4) % 4]
    forest = make_forest(seed, mode, n_vas=40, maxphyaddr=m)
    mem = PhysMem(absent_zero=seed % 8 < 4)
    for pa, f in forest.frames.items():
        mem.write(pa, bytes(f))
    features = Features(maxphyaddr=m, gbpages=seed % 3 != 0, pse36=seed % 5 != 0)
    pdptes = forest.pdptes() if mode == "pae" else ()
    bad: list[str] = []
    for env in envs(bits(seed), 3):
        if mode not in ("4", "5"):
            env = replace(env, pke=False, pks=False)  # protection keys exist only in IA-32e paging
        plan = env.plan(mode, features)
        for kind, user, implicit, ac in ACCESSES:
            bad += mismatches(mem, plan, forest.root, forest.vas, kind, user, implicit, ac, env.pkru, env.pkrs,
                              pdptes, label=f"forest seed={seed} mode={mode} M={m} {env}")
    assert not bad, f"{len(bad)} disagreements:\n  " + "\n  ".join(bad[:10])
