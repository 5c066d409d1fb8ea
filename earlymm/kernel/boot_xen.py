"""The Xen PV x86-64 boot path (spec §5.3–§5.5) as a sequence of phases: the domain builder's start of
day → ``startup_xen`` → ``xen_start_kernel`` (``xen_setup_kernel_pagetable``) → ``setup_arch``'s
page-table steps through the Xen ops → ``load_cr3`` at the end of ``init_mem_mapping`` →
``x86_init.paging.pagetable_init`` = ``xen_pagetable_init`` (``paging_init`` populating the vmemmap, then
``xen_post_allocator_init``)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

from earlymm.hw.events import Event, ListTrace
from earlymm.hw.faults import SimulationError
from earlymm.kernel import invariants_xen
from earlymm.kernel.backtrace import guest_chain
from earlymm.kernel.boot import BootResult, Observer, run_path
from earlymm.kernel.consts import START_KERNEL_MAP
from earlymm.kernel.context import KernelConfig, KernelContext
from earlymm.kernel.events import PhaseEntered
from earlymm.kernel.image import install_image
from earlymm.kernel.layout import build_layout
from earlymm.kernel.mm_state import MmState
from earlymm.kernel.phases import Phase
from earlymm.kernel.setup import setup_arch
from earlymm.kernel.sparse import paging_init
from earlymm.kernel.xen.enlighten import early_trap_init, startup_xen, xen_post_allocator_init, xen_start_kernel
from earlymm.platform.xen.builder import GuestPhys, PvKernel
from earlymm.platform.xen.domain import DomainConfig, create_domain


def make_context_xen(dom: DomainConfig, kernel: KernelConfig, *, trace: bool = False,
                     image_size: int = 24 << 20) -> KernelContext:
    """The composition root of the Xen PV path: a CONFIG_XEN image, the host, Xen and the domain the
    builder made from it, the kernel context over them."""
    layout = build_layout(kernel.profile, kernel.pool_pages, image_size, xen=True)
    events = ListTrace(enabled=trace, keep=64)
    events.emit(PhaseEntered("domain builder"))

    def install(phys: GuestPhys) -> None:
        install_image(phys, layout, layout.link_phys("_text"))

    pv_kernel = PvKernel(virt_base=START_KERNEL_MAP, kstart=layout.text, kend=layout.end,
                         entry=layout["startup_xen"], hypercall_page=layout["hypercall_page"], install=install)
    platform = create_domain(dom, pv_kernel, events)
    return KernelContext(platform, layout, kernel)


def xen_pagetable_init(ctx: KernelContext, st: MmState) -> None:
    """``xen_pagetable_init`` (v3.9): ``paging_init`` — the struct pages now exist — then the full ops."""
    paging_init(ctx, st)
    xen_post_allocator_init(ctx)


def xen_pv_x86_64(ctx: KernelContext, obs: Observer, write_cr3_late: bool, bug: str = "") -> Iterator[Phase]:
    ctx.enter_phase(Phase.XEN_START_KERNEL)
    startup_xen(ctx, write_cr3_late, bug)
    obs.checks.extend(invariants_xen.at_entry(ctx))
    yield Phase.XEN_START_KERNEL  # its first instruction: the builder's tables
    xen_start_kernel(ctx)
    obs.checks.extend(invariants_xen.after_setup_kernel_pagetable(ctx))
    ctx.pagetable_init = xen_pagetable_init
    ctx.enter_phase(Phase.SETUP_ARCH)
    early_trap_init(ctx)
    arch = setup_arch(ctx)
    yield next(arch)
    after = next(arch)
    obs.checks.extend(invariants_xen.after_init_mem_mapping(ctx))
    yield after
    yield from arch
    obs.checks.extend(invariants_xen.at_end(ctx))
    yield Phase.END


def explain_xen(ctx: KernelContext, error: SimulationError) -> str:
    chain = guest_chain(error.__traceback__)
    return f"; guest call chain: {' ← '.join(chain)}" if chain else ""


def boot_xen(dom: DomainConfig, kernel: KernelConfig, *, write_cr3_late: bool = False, until: Phase | None = None,
             trace: bool = False, image_size: int = 24 << 20, bug: str = "",
             listeners: Sequence[Callable[[Event], None]] = (),
             instrument: Callable[[KernelContext], None] | None = None) -> BootResult:
    """Boot the Xen PV path; ``write_cr3_late`` is the kernel before seed 004's fix; ``bug`` one of
    ``GUEST_BUGS`` (a guest mistake Xen's validation catches); ``instrument`` as for ``boot``."""
    ctx = make_context_xen(dom, kernel, trace=trace, image_size=image_size)
    ctx.trace.listeners.extend(listeners)
    if instrument is not None:
        instrument(ctx)
    obs = Observer()
    ctx.observer = obs
    return run_path(ctx, xen_pv_x86_64(ctx, obs, write_cr3_late, bug), obs, until, explain_xen)
