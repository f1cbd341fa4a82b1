"""Times on the wire: google.protobuf.Timestamp and Duration, floats of seconds in the code.

The code computes with time.time() floats (deadlines, ages, orphan timeouts); the API carries
Timestamps and Durations, which every gRPC client maps to its language's own time types.
These four functions are the one crossing. An unset Timestamp reads as 0.0, which the code
has always meant as "never" (never checked, reachable, not orphaned).
"""

from __future__ import annotations

from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp


def stamp(seconds: float) -> Timestamp:
    """The Timestamp of a Unix time in seconds."""
    ts = Timestamp()
    ts.FromNanoseconds(round(seconds * 1e9))
    return ts


def seconds(ts: Timestamp) -> float:
    """Unix seconds of a Timestamp; 0.0 for an unset one."""
    return ts.seconds + ts.nanos / 1e9


def duration(secs: float) -> Duration:
    """The Duration of a span in seconds."""
    d = Duration()
    d.FromNanoseconds(round(secs * 1e9))
    return d


def span(d: Duration) -> float:
    """Seconds of a Duration."""
    return d.seconds + d.nanos / 1e9


def now() -> Timestamp:
    """The Timestamp of this moment (wall clock)."""
    ts = Timestamp()
    ts.GetCurrentTime()
    return ts
