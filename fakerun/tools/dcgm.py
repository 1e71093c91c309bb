"""`fakerun-smi --serve`: the running job's GPUs as dcgm-exporter serves them, in Prometheus text format.

Needs prometheus_client (the `serve` extra): the metrics are a prometheus_client Collector in a registry
of their own. The metric names, types and help texts are dcgm-exporter's (etc/default-counters.csv and
etc/dcp-metrics-included.csv); the labels are the ones it puts on every sample, in its order: gpu, UUID,
pci_bus_id, device, modelName, Hostname and DCGM_FI_DRIVER_VERSION (its captures since 3.3). Every GPU
of every node of the job is served, each under its simulated host name, so one endpoint shows the whole
simulated cluster. The state is read again on every scrape.

The text is written here rather than by prometheus_client's generate_latest, which renames every counter
`<name>_total` in its HELP and TYPE lines: dcgm-exporter's counters (DCGM_FI_DEV_PCIE_REPLAY_COUNTER ...)
have no such suffix, and dashboards query them by their own names. Writing it also keeps the exporter's
label order and its integers (`345`, where generate_latest writes `345.0`).
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Protocol

from prometheus_client import CollectorRegistry
from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from fakerun.render.smi import SmiGpu
from fakerun.render.smi_reports import memory_temp

__all__ = ["LABELS", "METRICS", "DcgmCollector", "exposition", "parse_address", "start"]

LOOPBACK = "127.0.0.1"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"  # Prometheus' text format
LABELS = ("gpu", "UUID", "pci_bus_id", "device", "modelName", "Hostname", "DCGM_FI_DRIVER_VERSION")

# A job's GPUs: (simulated host, its GPUs and the driver) per node.
Nodes = Sequence[tuple[str, "_Node"]]


class _Node(Protocol):
    """What a node contributes to a scrape: its GPUs and the driver version they run on."""

    @property
    def gpus(self) -> Sequence[SmiGpu]:
        """The node's GPUs."""

    @property
    def driver_version(self) -> str:
        """The driver the node runs."""


def _intensity(g: SmiGpu) -> float:
    """How hard the GPU works, 0-1: its power's place between idle (~10% of the cap) and the cap."""
    idle = g.power_cap_w * 0.1
    return min(1.0, max(0.0, (g.power_w - idle) / max(1.0, g.power_cap_w - idle)))


def _fb_reserved(g: SmiGpu) -> int:
    """Memory the driver reserves (MiB): 328 of an H100's 81559 (its `nvidia-smi -q`), pro rata."""
    return round(g.mem_total_mib * 328 / 81559)


# (name, type, help, reading): dcgm-exporter's rows, in its CSV order.
METRICS: tuple[tuple[str, str, str, Callable[[SmiGpu], float | None]], ...] = (
    ("DCGM_FI_DEV_SM_CLOCK", "gauge", "SM clock frequency (in MHz).", lambda g: g.sm_clock_mhz),
    ("DCGM_FI_DEV_MEM_CLOCK", "gauge", "Memory clock frequency (in MHz).", lambda g: g.mem_clock_mhz),
    ("DCGM_FI_DEV_MEMORY_TEMP", "gauge", "Memory temperature (in C).", memory_temp),
    ("DCGM_FI_DEV_GPU_TEMP", "gauge", "GPU temperature (in C).", lambda g: g.temp_c),
    ("DCGM_FI_DEV_POWER_USAGE", "gauge", "Power draw (in W).", lambda g: round(g.power_w, 3)),
    ("DCGM_FI_DEV_PCIE_REPLAY_COUNTER", "counter", "Total number of PCIe retries.", lambda g: 0),
    ("DCGM_FI_DEV_GPU_UTIL", "gauge", "GPU utilization (in %).", lambda g: g.util_pct),
    ("DCGM_FI_DEV_MEM_COPY_UTIL", "gauge", "Memory utilization (in %).", lambda g: g.mem_util_pct),
    ("DCGM_FI_DEV_ENC_UTIL", "gauge", "Encoder utilization (in %).", lambda g: 0),
    ("DCGM_FI_DEV_DEC_UTIL", "gauge", "Decoder utilization (in %).", lambda g: 0),
    ("DCGM_FI_DEV_XID_ERRORS", "gauge", "Value of the last XID error encountered.", lambda g: 0),
    (
        "DCGM_FI_DEV_FB_FREE",
        "gauge",
        "Framebuffer memory free (in MiB).",
        lambda g: max(0, g.mem_total_mib - g.mem_used_mib - _fb_reserved(g)),
    ),
    ("DCGM_FI_DEV_FB_USED", "gauge", "Framebuffer memory used (in MiB).", lambda g: g.mem_used_mib),
    ("DCGM_FI_DEV_FB_RESERVED", "gauge", "Framebuffer memory reserved (in MiB).", _fb_reserved),
    ("DCGM_FI_DEV_VGPU_LICENSE_STATUS", "gauge", "vGPU License status", lambda g: 0),
    (
        "DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS",
        "counter",
        "Number of remapped rows for uncorrectable errors",
        lambda g: 0,
    ),
    (
        "DCGM_FI_DEV_CORRECTABLE_REMAPPED_ROWS",
        "counter",
        "Number of remapped rows for correctable errors",
        lambda g: 0,
    ),
    ("DCGM_FI_DEV_ROW_REMAP_FAILURE", "gauge", "Whether remapping of rows has failed", lambda g: 0),
    (
        "DCGM_FI_PROF_GR_ENGINE_ACTIVE",
        "gauge",
        "Ratio of time the graphics engine is active.",
        lambda g: round(g.util_pct / 100, 6),
    ),
    # The tensor pipe is busy for the share of the active time the GPU works at full power: GEMM-bound
    # training draws near the cap, a launch-bound one idles its pipes between small kernels.
    (
        "DCGM_FI_PROF_PIPE_TENSOR_ACTIVE",
        "gauge",
        "Ratio of cycles the tensor (HMMA) pipe is active.",
        lambda g: round(g.util_pct / 100 * _intensity(g), 6),
    ),
    (
        "DCGM_FI_PROF_DRAM_ACTIVE",
        "gauge",
        "Ratio of cycles the device memory interface is active sending or receiving data.",
        lambda g: round(g.mem_util_pct / 100, 6),
    ),
)


class DcgmCollector(Collector):
    """A prometheus_client collector that reads the job's GPUs afresh on every scrape."""

    def __init__(self, nodes: Callable[[], Nodes]) -> None:
        """`nodes` returns (host, node) for every node to serve, read at the time of the call."""
        self._nodes = nodes

    def collect(self) -> Iterator[Metric]:
        """One family per dcgm-exporter field, a sample per GPU."""
        rows = [
            (g, (str(g.index), g.uuid, g.bus_id, f"nvidia{g.index}", g.name, host, node.driver_version))
            for host, node in self._nodes()
            for g in node.gpus
        ]
        for name, kind, doc, read in METRICS:
            # Metric, not CounterMetricFamily: dcgm-exporter's counters carry no `_total` suffix.
            family = Metric(name, doc, kind)
            for g, labels in rows:
                value = read(g)
                if value is not None:
                    family.add_sample(name, dict(zip(LABELS, labels, strict=True)), float(value))
            yield family


def parse_address(text: str) -> tuple[str, int]:
    """`[HOST:]PORT` (`[::1]:9400` for IPv6) -> (host, port); the host defaults to the loopback."""
    host, sep, port = text.rpartition(":")
    if not sep:
        host = LOOPBACK
    host = host.strip("[]") or LOOPBACK
    if not port.isdigit() or int(port) > 65535:
        raise ValueError(f"not a port: {port!r} (expected [HOST:]PORT, e.g. 9400 or 0.0.0.0:9400)")
    return host, int(port)


def _escape(value: str) -> str:
    """A label value as the text format quotes it."""
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def _number(value: float) -> str:
    """A sample value as Go prints it: integers without a fraction."""
    return str(int(value)) if value.is_integer() else repr(value)


def exposition(registry: CollectorRegistry) -> bytes:
    """The registry's families in Prometheus' text format, as dcgm-exporter writes them."""
    out = []
    for family in registry.collect():
        out += [f"# HELP {family.name} {family.documentation}", f"# TYPE {family.name} {family.type}"]
        for sample in family.samples:
            labels = ",".join(f'{k}="{_escape(v)}"' for k, v in sample.labels.items())
            out.append(f"{sample.name}{{{labels}}} {_number(sample.value)}")
    return ("\n".join(out) + "\n").encode()


def start(host: str, port: int, nodes: Callable[[], Nodes]) -> ThreadingHTTPServer:
    """Serves /metrics from a registry holding only the DCGM collector, in a daemon thread."""
    # A registry of its own: the default one adds the Python process's metrics, which dcgm-exporter has not.
    registry = CollectorRegistry(auto_describe=False)
    registry.register(DcgmCollector(nodes))

    class Handler(BaseHTTPRequestHandler):
        """GET /metrics: a scrape; anything else: 404."""

        def do_GET(self) -> None:
            """Answers one request."""
            if self.path.split("?", 1)[0] != "/metrics":
                self.send_error(404)
                return
            body = exposition(registry)
            self.send_response(200)
            self.send_header("Content-Type", CONTENT_TYPE)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            """Quiet: a scrape every few seconds would fill the terminal."""

    class Server(ThreadingHTTPServer):
        """The HTTP server, on IPv6 when the host is an IPv6 address."""

        address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        daemon_threads = True

    server = Server((host, port), Handler)
    threading.Thread(target=server.serve_forever, name="dcgm-exporter", daemon=True).start()
    return server
