"""The HTML pages in a real headless browser: they load offline with no console error, the map and the
tree render, zoom and expand work, and what they show agrees with sources the page did not compute —
QEMU's own ``gva2gpa`` answers for a real guest, and the boot's event stream."""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path

import pytest

from tests.html.browser import Browser, Page
from tests.ptdump.support import FIXTURES, core_of

L4 = next(p for p in FIXTURES if p.name == "qemu-l4")
L5 = next(p for p in FIXTURES if p.name == "qemu-l5")


def run(*argv: str) -> int:
    from earlymm.cli.main import main

    return main(list(argv))


@pytest.fixture(scope="module")
def pages(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("pages")
    out = {"l4": d / "l4.html", "l5": d / "l5.html", "boot": d / "boot.html"}
    assert run("ptdump", str(core_of(L4)), "--html", str(out["l4"])) == 0
    assert run("ptdump", str(core_of(L5)), "--html", str(out["l5"])) == 0
    assert run("boot", "--html", str(out["boot"])) == 0
    return out


def opened(browser: Browser, path: Path) -> Page:
    page = browser.open(path)
    assert page.eval("document.body.dataset.ready") == "1"
    assert page.errors() == []
    return page


def gva2gpa(directory: Path, la57: bool) -> list[tuple[int, int | None]]:
    """QEMU's answers, canonical addresses only (the map shows the canonical space)."""
    out = []
    bits = 57 if la57 else 48
    for line in (directory / "gva2gpa.txt").read_text().splitlines():
        va_text, _tab, what = line.partition("\t")
        va = int(va_text, 16)
        top = va >> (bits - 1)
        if top not in (0, (1 << (65 - bits)) - 1):
            continue
        m = re.match(r"gpa: (0x[0-9a-f]+)", what)
        out.append((va, int(m[1], 16) if m else None))
    return out


@pytest.mark.parametrize("name, fixture, la57", [("l4", L4, False), ("l5", L5, True)])
def test_a_real_guest_page_agrees_with_qemu_gva2gpa(browser: Browser, pages: dict[str, Path], name: str,
                                                     fixture: Path, la57: bool, tmp_path: Path) -> None:
    page = opened(browser, pages[name])
    size = int(page.eval("String(earlymm.map.hi - earlymm.map.lo)"))
    assert size == 1 << (57 if la57 else 48)  # the whole canonical space first
    assert page.eval("document.querySelectorAll('#map-segments rect.seg').length") > 0
    assert page.eval("!!document.getElementById('noncanonical')")
    names = page.eval("[...document.querySelectorAll('#map-regions rect')].map(r => r.dataset.name)")
    assert "Low Kernel Mapping" in names and "High Kernel Mapping" in names
    samples = gva2gpa(fixture, la57)
    mapped = [s for s in samples if s[1] is not None][:25]
    unmapped = [s for s in samples if s[1] is None][:10]
    assert len(mapped) >= 10 and unmapped
    for va, pa in mapped + unmapped:
        # zoom to the page: one segment covers it iff QEMU maps it, and the walk finds QEMU's address
        got = page.eval(f"earlymm.map.gotoVa({va}n); [document.getElementById('map-detail').textContent, "
                        "document.querySelectorAll('#map-segments rect.seg').length, "
                        "Number(earlymm.map.hi - earlymm.map.lo)]")
        detail, segments, window = got
        assert window == 4096
        if pa is None:
            assert segments == 0 and "not mapped" in detail, hex(va)
        else:
            assert segments == 1 and f"→ {pa:#x}," in detail, (hex(va), hex(pa), detail)
    assert page.errors() == []
    assert page.screenshot(tmp_path / f"{name}.png") > 1000


def test_zoom_buttons_wheel_and_regions(browser: Browser, pages: dict[str, Path]) -> None:
    page = opened(browser, pages["l4"])
    whole = page.eval("Number(earlymm.map.hi - earlymm.map.lo)")
    page.eval("document.getElementById('zoom-in').click()")
    assert page.eval("Number(earlymm.map.hi - earlymm.map.lo)") == whole / 4
    page.eval("document.getElementById('zoom-out').click()")
    assert page.eval("Number(earlymm.map.hi - earlymm.map.lo)") == whole
    # clicking a region band zooms to it; the espfix area is aliased (one PMD table under four PUD entries)
    page.eval("[...document.querySelectorAll('#map-regions rect')].find(r => r.dataset.name === 'ESPfix Area')"
              ".dispatchEvent(new MouseEvent('click'))")
    lo = page.eval("document.getElementById('map').dataset.lo")
    assert lo == hex(0xFFFFFF0000000000 & ((1 << 48) - 1))
    assert page.eval("document.querySelectorAll('#map-segments rect.seg[data-alias=\"1\"]').length") >= 1
    page.eval("document.getElementById('map').dispatchEvent(new WheelEvent('wheel', {deltaY: -100, clientX: 300, "
              "clientY: 60, bubbles: true, cancelable: true}))")
    assert page.eval("document.getElementById('map-window').textContent").count("0x") == 2
    page.eval("earlymm.map.zoomTo(0n, 1n)")  # below one page: clamped to one page
    assert page.eval("Number(earlymm.map.hi - earlymm.map.lo)") == 4096
    assert page.errors() == []


def test_tree_expands_and_lists_aliases_once(browser: Browser, pages: dict[str, Path]) -> None:
    page = opened(browser, pages["l4"])
    top = page.eval("document.querySelectorAll('#tree > .tnode > div > .trow').length")
    assert top > 0
    before = page.eval("document.querySelectorAll('#tree .tnode').length")
    page.eval("document.querySelector('#tree .trow.kind-table .tog').click()")
    assert page.eval("document.querySelectorAll('#tree .tnode').length") == before + 1
    # espfix: the PMD table is reached through several PUD entries, listed as its aliases where it is shown
    page.eval("earlymm.tree.reveal(0xffffff0000000000n + (0x3cn << 32n))")
    aliases = page.eval("[...document.querySelectorAll('#tree .aliases')].map(e => e.textContent)")
    assert any(a.startswith("aliases: PDPTE[") for a in aliases)
    shown = page.eval("[...document.querySelectorAll('#tree .tnode[data-node]')].map(e => e.dataset.node)")
    assert len(shown) == len(set(shown))  # a shared table is expanded in one place only
    assert page.errors() == []


def test_the_page_is_self_contained(pages: dict[str, Path]) -> None:
    for path in pages.values():
        text = path.read_text().replace('"http://www.w3.org/2000/svg"', "")  # a namespace name, not a load
        assert "Content-Security-Policy" in text and "default-src 'none'" in text
        assert not re.search(r"<(script|img|link|iframe)[^>]*\s(src|href)=", text, re.I)
        assert "http://" not in text and "https://" not in text
    # 74,149 leaves (qemu info tlb) in a page of tables, not of leaves
    assert pages["l4"].stat().st_size < 400_000


def test_boot_timeline_shows_the_tables_at_each_event(browser: Browser, pages: dict[str, Path], tmp_path: Path) -> None:
    from earlymm.cli.main import main

    page = opened(browser, pages["boot"])
    # the event stream as `earlymm boot --trace --json` gives it
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        main(["boot", "--trace", "--json"])
    events = json.loads(buf.getvalue())["events"]
    faults = [i for i, e in enumerate(events) if e["event"] == "fault_raised" and e["vector"] == 14]
    cr3 = [i for i, e in enumerate(events) if e["event"] == "cr_write" and e["reg"] == "cr3"]
    marks = page.eval("[...document.querySelectorAll('#timeline .mark')].map(m => +m.dataset.event)")
    assert set(faults) | set(cr3) <= set(marks)
    assert page.eval("document.querySelectorAll('#final-tables td').length") == 5
    # before the first early #PF the direct-map slot is empty; after its handler it points at pool page 0
    first = faults[0]
    alloc = next(e for e in events[first:] if e["event"] == "pool_alloc")
    done = next(i for i in range(first, len(events)) if events[i]["event"] == "handler_outcome")
    slot = (int(events[first]["cr2"], 16) >> 39) & 511
    page.eval(f"document.querySelector('#timeline .mark[data-event=\"{first}\"]')"
              ".dispatchEvent(new MouseEvent('click'))")
    assert page.eval("document.getElementById('selected-event').textContent").startswith(f"event {first}: #PF")
    rows = page.eval("[...document.querySelectorAll('#tree > .tnode > div > .trow')].map(r => +r.dataset.idx)")
    assert slot not in rows
    page.eval(f"document.querySelector('#events tr[data-event=\"{done}\"]').click()")
    row = f"#tree > .tnode > div > .trow[data-idx=\"{slot}\"]"
    assert page.eval(f"!!document.querySelector('{row}')")
    page.eval(f"document.querySelector('{row} .tog').click()")
    assert page.eval("document.querySelector('#tree .tnode .tnode').dataset.table") == alloc["phys"][2:]
    assert page.eval("document.querySelectorAll('#tree .badge.changed').length") >= 1
    assert page.errors() == []
    assert page.screenshot(tmp_path / "boot.png") > 1000


def test_matrix_page(browser: Browser, tmp_path: Path) -> None:
    out = tmp_path / "matrix.html"
    assert run("matrix", "--pool-access", "high-map,page-offset", "--pool", "16,64", "--workers", "1",
               "--html", str(out)) == 1
    page = opened(browser, out)
    groups = page.eval("[...document.querySelectorAll('#groups tbody tr')].map(r => r.cells[1].textContent)")
    assert groups == ["halt in x86_64_start_kernel", "booted"]
    cells = page.eval("[...document.querySelectorAll('#pivot-table td')].map(t => t.textContent)")
    assert sorted(cells) == ["0/1", "0/1", "1/1", "1/1"]  # pool-access × pool: page-offset halts, whatever the pool
    page.eval("document.querySelector('#groups tbody tr').click()")
    assert "--pool-access page-offset" in page.eval("document.getElementById('cell-detail').textContent")
    assert page.errors() == []
    assert page.screenshot(tmp_path / "matrix.png") > 1000


SELF_MAPS = {  # one table whose entries all point back at it, in each paging mode (CR0, CR4, EFER, image)
    "4-level": ("0x80050033", "0x20", "0xd01", lambda: bytes(0x1000) + struct.pack("<512Q", *[0x1000 | 7] * 512), 4,
                512 ** 4),
    "32-bit": ("0x80000011", "0x0", "0x0",
               lambda: bytes(0x1000) + struct.pack("<1024I", *([0x1000 | 7] * 256 + [0] * 768)), 2, 256 * 256),
    "pae": ("0x80000011", "0x20", "0x0", lambda: bytes(0x1000) + struct.pack("<4Q", *[0x2000 | 1] * 4)
            + bytes(0x1000 - 32) + struct.pack("<512Q", *([0x2000 | 7] * 128 + [0] * 384)), 3, 4 * 128 * 128),
}


@pytest.mark.parametrize("mode", list(SELF_MAPS))
def test_hostile_self_map_stays_small_and_draws(browser: Browser, tmp_path: Path, mode: str) -> None:
    cr0, cr4, efer, image_bytes, nodes, leaves = SELF_MAPS[mode]
    image = tmp_path / "selfmap.raw"
    image.write_bytes(image_bytes())
    out = tmp_path / "selfmap.html"
    assert run("ptdump", str(image), "--cr3", "0x1000", "--cr0", cr0, "--cr4", cr4, "--efer", efer,
               "--html", str(out)) == 0
    data = json.loads(re.search(r'id="earlymm-data">(.*?)</script>', out.read_text(), re.S)[1])  # type: ignore[index]
    assert data["views"][0]["mode"] == mode
    assert len(data["nodes"]) == nodes and data["nodes"][data["views"][0]["roots"][0]["root"]][4] == leaves
    assert out.stat().st_size < 150_000
    page = opened(browser, out)
    assert 0 < page.eval("document.querySelectorAll('#map-segments rect.seg').length") < 3000
    page.eval("document.getElementById('zoom-in').click(); document.getElementById('zoom-in').click()")
    page.eval("document.querySelector('#tree .trow.kind-table .tog').click()")
    # the table is its own child: shown once, with its aliases listed; the first entry expands into it
    assert page.eval("document.querySelectorAll('#tree .tnode[data-node]').length") == 2
    aliases = page.eval("document.querySelector('#tree .tnode .tnode .aliases').textContent")
    assert aliases.startswith("aliases: ")
    page.eval("earlymm.map.gotoVa(0x1000n)")  # PTE[1] is the table's own second entry: it maps the table's target
    target = "0x2000" if mode == "pae" else "0x1000"
    assert f"0x1000 → {target}," in page.eval("document.getElementById('map-detail').textContent")
    assert page.errors() == []


def test_a_crashed_boot_page(browser: Browser, tmp_path: Path) -> None:
    # __va() for the pool pages: the handler faults inside itself until early_recursion_flag halts it
    out = tmp_path / "halt.html"
    assert run("boot", "--pool-access", "page-offset", "--html", str(out)) == 1
    page = opened(browser, out)
    assert page.eval("document.querySelector('#boot-summary .fail').textContent").startswith("halt in ")
    nested = page.eval("[...document.querySelectorAll('#events tr')].filter(r => r.cells[1]?.textContent === "
                       "'fault_raised').length")
    assert nested >= 2 and page.eval("document.querySelectorAll('#timeline circle.mark').length") == nested
    page.eval("document.querySelector('#timeline circle.mark:last-of-type').dispatchEvent(new MouseEvent('click'))")
    assert "tables as at event" in page.eval("document.getElementById('selected-event').textContent")
    assert page.errors() == []
