"""``callgate flows``: flow records for people (filter, follow, table or JSON)."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, TextIO

import typer

from callgate.cli.common import EXIT_USER, require_paths, usage_error

if TYPE_CHECKING:
    from callgate.agent.flowlog.record import FlowPeer, FlowRecord

_VERDICTS = ("deny", "would-deny", "allow")
_FOLLOW_POLL = 0.25  # seconds between looks at a followed file that has nothing new


@dataclass(frozen=True)
class RecordFilter:
    endpoints: tuple[str, ...] = ()
    namespaces: tuple[str, ...] = ()
    verdicts: tuple[str, ...] = ()
    policies: tuple[str, ...] = ()

    def __call__(self, record: FlowRecord) -> bool:
        sides = (record.src.endpoint, record.dst.endpoint)
        if self.endpoints and not any(e in self.endpoints for e in sides):
            return False
        if self.namespaces and not any(e is not None and e.split("/", 1)[0] in self.namespaces for e in sides):
            return False
        if self.verdicts and record.verdict not in self.verdicts:
            return False
        return not self.policies or any(_policy_matches(p, want) for p in record.policies for want in self.policies)


def _policy_matches(entry: str, wanted: str) -> bool:
    """"NetworkPolicy x/web" is asked for as itself or as "x/web"; a cluster
    policy ("ClusterNetworkPolicy deny-all (Admin 10) rule") as "deny-all"."""
    parts = entry.split()
    return entry == wanted or (len(parts) > 1 and parts[1] == wanted) or " ".join(parts[:2]) == wanted


def flows(
    path: Annotated[str, typer.Argument(help="A flow log written by `callgate agent --flow-log` ('-': stdin).")] = "-",
    endpoint: Annotated[list[str] | None, typer.Option(
        "--endpoint", "-e", metavar="NS/NAME", help="Records with this endpoint on either side (repeatable).")] = None,
    namespace: Annotated[list[str] | None, typer.Option(
        "--namespace", "-N", metavar="NS", help="Records with an endpoint of this namespace (repeatable).")] = None,
    verdict: Annotated[list[str] | None, typer.Option(
        "--verdict", metavar="VERDICT", help="deny, would-deny or allow (repeatable).")] = None,
    policy: Annotated[list[str] | None, typer.Option(
        "--policy", "-P", metavar="POLICY",
        help="Records naming this policy: 'NetworkPolicy ns/name', 'ns/name' or a cluster policy's name.")] = None,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep reading records as they are written.")] = False,
    output: Annotated[str, typer.Option("--output", "-o", help="table or json (JSON Lines).")] = "table",
) -> None:
    """Show flow records: which policy decided which connection.

    Reads the JSON Lines that `callgate agent --flow-log PATH` writes, keeps
    the records matching every filter given (a repeated filter matches any of
    its values) and prints them as a table or as JSON Lines. A line that is
    not a record is reported with its line number (exit 1 at the end).

    Example: callgate flows /var/log/callgate/flows.jsonl --verdict deny --namespace shop -f
    """
    from callgate.agent.flowlog.record import RecordError, parse_record

    for value in verdict or ():
        if value not in _VERDICTS:
            usage_error(f"--verdict {value!r}: use deny, would-deny or allow")
    if output not in ("table", "json"):
        usage_error(f"--output {output!r}: use table or json")
    if follow and path == "-":
        usage_error("--follow needs a file, not stdin")
    if path != "-":
        require_paths("'PATH'", [path])
    keep = RecordFilter(tuple(endpoint or ()), tuple(namespace or ()), tuple(verdict or ()), tuple(policy or ()))
    try:
        lines = _follow(path) if follow else _read(path)
        bad = 0
        table = _Table(sys.stdout, streaming=follow) if output == "table" else None
        for number, line in lines:
            if not line.strip():
                continue
            try:
                record = parse_record(line)
            except RecordError as exc:
                bad += 1
                typer.secho(f"error: {path}:{number}: not a flow record: {exc}", err=True, fg="red")
                continue
            if keep(record):
                if table is not None:
                    table.row(record)
                else:
                    sys.stdout.write(record.line())
                if follow:
                    sys.stdout.flush()
        if table is not None:
            table.close()
    except OSError as exc:
        typer.secho(f"error: {path}: {exc.strerror or exc}", err=True, fg="red")
        raise typer.Exit(EXIT_USER) from None
    except KeyboardInterrupt:
        return
    if bad:
        raise typer.Exit(EXIT_USER)


def _read(path: str) -> Iterator[tuple[int, str]]:
    if path == "-":
        yield from enumerate(sys.stdin, 1)
        return
    with open(path, encoding="utf-8", errors="replace") as stream:
        yield from enumerate(stream, 1)


def _follow(path: str) -> Iterator[tuple[int, str]]:
    """The file's lines, then those appended, until interrupted; a file
    replaced (log rotation) or truncated is read again from its start."""
    number = 0
    stream = open(path, encoding="utf-8", errors="replace")  # noqa: SIM115 - reopened on rotation below
    try:
        pending = ""
        while True:
            chunk = stream.readline()
            if chunk:
                pending += chunk
                if pending.endswith("\n"):  # a line being written is taken whole, later
                    number += 1
                    yield number, pending
                    pending = ""
                continue
            time.sleep(_FOLLOW_POLL)
            try:
                current = os.stat(path)
            except FileNotFoundError:
                continue  # between a rotation's rename and the new file
            if current.st_ino != os.fstat(stream.fileno()).st_ino or current.st_size < stream.tell():
                stream.close()
                stream = open(path, encoding="utf-8", errors="replace")  # noqa: SIM115
                number, pending = 0, ""
    finally:
        stream.close()


def _peer(peer: FlowPeer) -> str:
    address = f"[{peer.ip}]" if ":" in peer.ip else peer.ip
    where = f"{address}:{peer.port}" if peer.port is not None else address
    return f"{peer.endpoint} {where}" if peer.endpoint else where


class _Table:
    """Rows under a header. Read whole, the columns fit every row; followed,
    they are wide enough for typical records and a wider value widens its
    column from then on (a log still being written cannot be measured first)."""

    HEADER = ("TIME", "NODE", "VERDICT", "DIR", "PROTO", "SOURCE", "DESTINATION", "POLICIES")

    def __init__(self, out: TextIO, streaming: bool) -> None:
        self.out = out
        self.streaming = streaming
        self.widths = [len(h) for h in self.HEADER]
        if streaming:
            self.widths[:7] = [24, 8, 10, 7, 6, 28, 28]
        self.rows: list[tuple[str, ...]] = []

    def row(self, record: FlowRecord) -> None:
        from callgate.agent.flowlog.record import rfc3339

        cells = (rfc3339(record.time)[:23] + "Z", record.node, record.verdict, record.direction, record.protocol,
                 _peer(record.src), _peer(record.dst), ", ".join(record.policies) or "-")
        if not self.streaming:
            self.rows.append(cells)
            return
        if not self.rows:
            self.rows.append(self.HEADER)
            self._write(self.HEADER)
        self._write(cells)

    def close(self) -> None:
        if self.streaming or not self.rows:
            return
        for cells in self.rows:
            self.widths = [max(w, len(c)) for w, c in zip(self.widths, cells, strict=True)]
        for cells in (self.HEADER, *self.rows):
            self._write(cells)

    def _write(self, cells: tuple[str, ...]) -> None:
        self.widths = [max(w, len(c)) for w, c in zip(self.widths, cells, strict=True)]
        *first, last = cells
        self.out.write("  ".join(c.ljust(w) for c, w in zip(first, self.widths, strict=False)) + "  " + last + "\n")


def register(app: typer.Typer) -> None:
    app.command("flows")(flows)
