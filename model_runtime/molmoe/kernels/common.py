"""What every kernel module shares: whether Triton is there, the two backends, block sizes.

Every op has two backends with one signature:

- ``"triton"``: the kernels (CUDA; also run by Triton's interpreter on CPU tensors when
  ``TRITON_INTERPRET=1`` is set before Triton is imported, which is how the CPU tests check them);
- ``"torch"``: plain torch, the reference and the CPU path.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Literal

import torch

try:  # Triton ships with CUDA builds of torch; CPU machines may lack it (then only "torch" exists)
    import triton  # noqa: F401  (availability check; the kernel modules import it again)
    import triton.language as tl  # noqa: F401

    HAVE_TRITON = True
except ImportError:  # pragma: no cover - depends on the install
    HAVE_TRITON = False

Backend = Literal["triton", "torch"]
BACKENDS: tuple[str, ...] = ("triton", "torch")

#: Block sizes of the kernels: positions per split of the decode attention (a (B, H, ceil(L / chunk))
#: grid; smaller chunks spread a short cache over more programs) and its warps a program (2: on an H100 the
#: decode step ran 1.3-1.6 % and the batch of 8 2.2-3.1 % faster than with 4, alternated in one run;
#: benchmarks/RESULTS.md, "The decode attention at 2 warps"), and the expert rows / output features per program of
#: the MoE kernels where they are not autotuned (Triton's interpreter, or explicit block sizes).
TUNING: dict[str, int] = {"attn_chunk": 64, "attn_warps": 2, "gate_up_block_i": 32, "down_block_d": 16}


@dataclass(frozen=True)
class AttnTile:
    """How the split-K decode attention covers a cache: ``chunk`` positions a split (a program), taken
    ``block_n`` positions a loop step, launched with ``num_warps`` warps and ``num_stages`` pipeline stages
    (which matter only where a split loops, ``chunk > block_n``). The defaults are Triton's launch defaults."""

    chunk: int
    block_n: int
    num_warps: int = 4
    num_stages: int = 3

    def __post_init__(self) -> None:
        for name in ("chunk", "block_n", "num_warps"):
            v = getattr(self, name)
            if v < 1 or v & (v - 1):
                raise ValueError(f"AttnTile.{name} must be a power of two, got {v}")
        if self.block_n > self.chunk:
            raise ValueError(f"AttnTile.block_n ({self.block_n}) exceeds its chunk ({self.chunk})")
        if self.num_stages < 1:
            raise ValueError(f"AttnTile.num_stages must be >= 1, got {self.num_stages}")


#: The decode attention's tiles by batch rows: a batch of B rows takes the entry with the largest key
#: at most B; below every key (and with the table empty) ``TUNING["attn_chunk"]`` positions a split in one
#: step at ``TUNING["attn_warps"]`` warps. Empty: on an H100 no other tile of the sweep beat that one at any batch
#: size (benchmarks/RESULTS.md, "The Triton GEMV's loop pipelined ...; the decode attention's tiles by batch rows").
ATTN_TILES: dict[int, AttnTile] = {}


def attn_tile(rows: int, chunk: int | None = None) -> AttnTile:
    """The tile a decode attention over ``rows`` rows runs with (``chunk`` given: that many positions a split,
    one step for up to 64, as before the table; at ``TUNING["attn_warps"]`` warps)."""
    if chunk is None:
        keys = [k for k in ATTN_TILES if k <= rows]
        if keys:
            return ATTN_TILES[max(keys)]
        chunk = TUNING["attn_chunk"]
    return AttnTile(int(chunk), min(int(chunk), 64), TUNING["attn_warps"])


def block_configs(names: tuple[str, ...], rows: tuple[tuple[int, ...], ...]) -> list:
    """Autotune configurations (``triton.Config``) from rows of values named by ``names``: each a kernel's block
    constant, or ``num_warps``, which goes to the launch."""
    configs = []
    for row in rows:
        meta = dict(zip(names, row, strict=True))
        warps = meta.pop("num_warps")
        configs.append(triton.Config(meta, num_warps=warps))
    return configs


def triton_interpreting() -> bool:
    """Whether Triton runs kernels in its CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def default_backend(device: torch.device | str) -> Backend:
    """``triton`` on CUDA when Triton is installed, else ``torch``."""
    return "triton" if HAVE_TRITON and torch.device(device).type == "cuda" else "torch"


def check_backend(backend: str, device: torch.device | str) -> Backend:
    """Validate a backend for tensors on ``device``; raises ValueError naming the problem."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose from {BACKENDS}")
    if backend == "triton":
        if not HAVE_TRITON:
            raise ValueError("backend 'triton' needs the triton package (pip install triton)")
        if torch.device(device).type != "cuda" and not triton_interpreting():
            raise ValueError("backend 'triton' on CPU tensors needs TRITON_INTERPRET=1 set before triton is imported")
    return backend  # type: ignore[return-value]


#: Programmatic dependent launch (Hopper and later): a decode-step kernel launched with ``launch_pdl``
#: and its ``PDL`` switch on may be scheduled while the kernel before it drains; it waits at its start
#: (``gdc_wait``) until that kernel's writes are visible, then lets the next kernel launch
#: (``gdc_launch_dependents``). The waiting happens on the GPU, so inside a captured graph the gap
#: between two kernels' executions shrinks to what the wait costs.
if HAVE_TRITON:

    @triton.jit
    def pdl_enter(PDL: tl.constexpr, RELEASE_FIRST: tl.constexpr = False):
        """With ``RELEASE_FIRST`` the other way round: the next kernel may launch before this one waits for
        the one before (``FusedLM(decode_prefetch="weights_early")``). Still correct: the next kernel's own
        wait is for this kernel's completion, which comes after this kernel's wait. It lets a projection
        that follows start its weights' L2 prefetch (:func:`prefetch_l2`) one kernel sooner."""
        if PDL:
            if RELEASE_FIRST:
                tl.extra.cuda.gdc_launch_dependents()
                tl.extra.cuda.gdc_wait()
            else:
                tl.extra.cuda.gdc_wait()
                tl.extra.cuda.gdc_launch_dependents()

    @triton.jit
    def prefetch_l2(ptr, n_elems, LINE: tl.constexpr, BLOCK: tl.constexpr):
        """Ask for ``ptr[0:n_elems]`` in L2, one ``prefetch.global.L2::evict_last`` per line of ``LINE`` elements
        (128 bytes), ``BLOCK`` lines a step. A hint: nothing waits for it and nothing is read into registers. The
        decode step's projections issue it for their own weight rows before :func:`pdl_enter`'s wait, so the rows
        stream into L2 while the kernel before (a small, latency-bound one) still runs; CUDA only (inline PTX)."""
        lines = tl.arange(0, BLOCK) * LINE
        for start in range(0, n_elems, BLOCK * LINE):
            off = tl.minimum(start + lines, n_elems - 1)
            tl.inline_asm_elementwise("prefetch.global.L2::evict_last [$1];\n\tmov.u32 $0, 0;", "=r,l", [ptr + off],
                                      dtype=tl.int32, is_pure=False, pack=1)

    @triton.jit
    def dot_acc(a, b, acc, IEEE: tl.constexpr):
        """``acc + a @ b``; ``IEEE`` (float32 models) keeps full-precision products, as torch's
        float32 matmul, where tl.dot would otherwise use TF32."""
        if IEEE:
            return tl.dot(a, b, acc, input_precision="ieee")
        return tl.dot(a, b, acc)


#: "Last arrival" epilogues (``FusedLM(decode_epilogues="last_program")``, ``decode_router="splitk"``): a
#: kernel split over programs (output tiles, key/value chunks, the reduction's columns) does the work
#: that needs all of them (a row's RMSNorm, the attention's merge of its splits, the router's top-k,
#: the experts' weighted sum) in the one program that finishes last, instead of in a second kernel. Each program counts itself
#: on an int32 counter in global memory after its stores; the program that sees the count reach the
#: group's size reads what the others wrote and sets the counter back to zero for the next launch.
#: The counters are a zeroed buffer that lives as long as the decode step that uses it
#: (:func:`arrival_counters`); kernels of one stream run one after another, so they share it.
if HAVE_TRITON:

    @triton.jit
    def arrive_last(counter_ptr, total):
        """Count this program on ``counter_ptr``; True in the one of ``total`` programs that arrives
        last (which also resets the counter). The CTA barrier orders every thread's earlier stores
        before the single gpu-scope release/acquire atomic, as CUTLASS's split-K semaphore does; the
        last program's loads after it see the other programs' stores."""
        tl.debug_barrier()
        last = tl.atomic_add(counter_ptr, 1, sem="acq_rel", scope="gpu") == total - 1
        tl.store(counter_ptr, 0, mask=last)
        return last


#: counters of one decode step's last-arrival epilogues: one per (row, head) of the attention's merge, the
#: largest user (decode batches of up to 16 rows at up to 64 heads)
ARRIVAL_COUNTERS = 16 * 64


def arrival_counters(device: torch.device | str) -> torch.Tensor:
    """A zeroed int32 buffer of :data:`ARRIVAL_COUNTERS` counters for :func:`arrive_last` (allocate it
    outside a CUDA graph capture and keep it as long as the captured steps that use it)."""
    return torch.zeros(ARRIVAL_COUNTERS, dtype=torch.int32, device=device)


def check_counters(op: str, counters: torch.Tensor | None, needed: int = 1, per: str = "") -> None:
    """Raise ValueError naming ``op`` unless ``counters`` holds ``needed`` arrival counters (one ``per`` each)."""
    if counters is None:
        raise ValueError(f"{op} needs arrival counters (kernels.arrival_counters)" + (f", one per {per}" if per else ""))
    if counters.numel() < needed:
        raise ValueError(f"{op}: {counters.numel()} counters for {needed} {per}s")


def check_decode_rows(op: str, rows: int, limit: int) -> None:
    """Raise ValueError naming ``op`` when a decode batch of ``rows`` exceeds the ``limit`` rows it serves."""
    if rows > limit:
        raise ValueError(f"{op} serves up to {limit} rows (a decode batch), got {rows}")


def pdl_options(pdl: bool) -> dict[str, bool]:
    """Launch keywords of a kernel with a ``PDL`` switch: none when off (the kernel's default)."""
    return {"PDL": True, "launch_pdl": True} if pdl else {}


def check_pdl(device: torch.device | str) -> None:
    """Raise ValueError naming why programmatic dependent launch cannot run on ``device``."""
    dev = torch.device(device)
    if not HAVE_TRITON or dev.type != "cuda" or triton_interpreting():
        raise ValueError("pdl=True needs the Triton kernels on a CUDA GPU (not the torch backend or the interpreter)")
    if torch.cuda.get_device_capability(dev)[0] < 9:
        raise ValueError(f"pdl=True needs compute capability 9.0 or later, {torch.cuda.get_device_name(dev)} has "
                         f"{'.'.join(map(str, torch.cuda.get_device_capability(dev)))}")
    if not triton_has_pdl():
        raise ValueError(f"pdl=True needs a Triton with grid dependency control (tl.extra.cuda.gdc_wait and the "
                         f"launch_pdl option); this one is {triton.__version__}")


def pdl_available(device: torch.device | str) -> bool:
    """Whether programmatic dependent launch can run on ``device`` (:func:`check_pdl` passes)."""
    try:
        check_pdl(device)
    except ValueError:
        return False
    return True


def triton_has_pdl() -> bool:
    """Whether the installed Triton has grid dependency control: the ``gdc_wait`` /
    ``gdc_launch_dependents`` instructions and the ``launch_pdl`` launch option."""
    if not HAVE_TRITON:
        return False
    import dataclasses

    try:
        import triton.language.extra.cuda as tl_cuda
        from triton.backends.nvidia.compiler import CUDAOptions
    except ImportError:
        return False
    return hasattr(tl_cuda, "gdc_wait") and "launch_pdl" in {f.name for f in dataclasses.fields(CUDAOptions)}


def _p2(n: int) -> int:
    return 1 << max(int(n) - 1, 0).bit_length()
