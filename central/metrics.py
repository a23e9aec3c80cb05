"""Prometheus text exposition of the ingest API: uploads by status, bytes, latency histogram.

Hand-written (a few counters and one histogram) to keep the central extra small; the format
is the Prometheus text format 0.0.4.
"""

from __future__ import annotations

import threading
from bisect import bisect_left

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class IngestMetrics:
    """Thread-safe counters, updated once per upload."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.uploads: dict[int, int] = {}
        self.bytes_received = 0
        self.bytes_stored = 0
        self.rows_stored = 0
        self._bucket_counts = [0] * (len(LATENCY_BUCKETS) + 1)
        self._latency_sum = 0.0
        self._latency_count = 0

    def observe(self, status: int, seconds: float, received: int, stored: int, rows: int) -> None:
        with self._lock:
            self.uploads[status] = self.uploads.get(status, 0) + 1
            self.bytes_received += received
            self.bytes_stored += stored
            self.rows_stored += rows
            self._bucket_counts[bisect_left(LATENCY_BUCKETS, seconds)] += 1
            self._latency_sum += seconds
            self._latency_count += 1

    def render(self) -> str:
        with self._lock:
            out = [
                "# HELP fleetpulse_central_uploads_total Batch uploads answered, by HTTP status.",
                "# TYPE fleetpulse_central_uploads_total counter",
            ]
            out += [
                f'fleetpulse_central_uploads_total{{status="{s}"}} {n}'
                for s, n in sorted(self.uploads.items())
            ]
            for name, value, text in (
                ("received_bytes", self.bytes_received, "Upload body bytes read."),
                ("stored_bytes", self.bytes_stored, "Bytes of batches newly landed."),
                ("stored_rows", self.rows_stored, "Rows of batches newly landed."),
            ):
                out += [
                    f"# HELP fleetpulse_central_{name}_total {text}",
                    f"# TYPE fleetpulse_central_{name}_total counter",
                    f"fleetpulse_central_{name}_total {value}",
                ]
            out += [
                "# HELP fleetpulse_central_upload_duration_seconds Time to answer an upload.",
                "# TYPE fleetpulse_central_upload_duration_seconds histogram",
            ]
            cumulative = 0
            for bound, n in zip(LATENCY_BUCKETS, self._bucket_counts, strict=False):
                cumulative += n
                out.append(
                    f'fleetpulse_central_upload_duration_seconds_bucket{{le="{bound}"}} '
                    f"{cumulative}"
                )
            out += [
                'fleetpulse_central_upload_duration_seconds_bucket{le="+Inf"} '
                f"{self._latency_count}",
                f"fleetpulse_central_upload_duration_seconds_sum {self._latency_sum:.6f}",
                f"fleetpulse_central_upload_duration_seconds_count {self._latency_count}",
            ]
        return "\n".join(out) + "\n"
