"""The ``dicom-gw`` command.

Exit codes: 0 ok, 1 runtime failure, 2 usage or configuration error. Errors are
one line on stderr; a traceback only with ``logging.level: DEBUG``.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NoReturn

import yaml

from dicomgw import __version__
from dicomgw.config import Config, default_config_file, load_config, redacted
from dicomgw.errors import EXIT_RUNTIME, EXIT_USAGE, DicomGwError

log = logging.getLogger("dicomgw.cli")

Handler = Callable[[argparse.Namespace], int]


def _out(text: str) -> None:
    sys.stdout.write(text if text.endswith("\n") else text + "\n")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see --help)\n")


def _config(args: argparse.Namespace) -> Config:
    return load_config(args.config or default_config_file(os.environ))


def _setup_logging(config: Config) -> None:
    from dicomgw.log import setup_logging

    setup_logging(config.logging)


# -- commands --------------------------------------------------------------------


def cmd_serve(args: argparse.Namespace) -> int:
    from dicomgw import serve

    config = _config(args)
    _setup_logging(config)
    serve.run(config, args.config or default_config_file(os.environ))
    return 0


def cmd_receiver(args: argparse.Namespace) -> int:
    from dicomgw import serve

    config = _config(args)
    _setup_logging(config)
    serve.run_receiver(config)
    return 0


def cmd_forwarder(args: argparse.Namespace) -> int:
    from dicomgw import serve

    config = _config(args)
    _setup_logging(config)
    serve.run_forwarder(config)
    return 0


def cmd_api(args: argparse.Namespace) -> int:
    from dicomgw import serve

    config = _config(args)
    _setup_logging(config)
    serve.run_api(config, args.config or default_config_file(os.environ))
    return 0


def cmd_rules_test(args: argparse.Namespace) -> int:
    """Which rules and destinations each file would get, from the rules in force."""
    import dataclasses
    from pathlib import Path

    from dicomgw.db.pool import create_pool
    from dicomgw.db.server import database
    from dicomgw.ingest.recovery import read_record
    from dicomgw.ingest.routing import load_rules, route

    config = _config(args)
    _setup_logging(config)
    overrides = {
        k: v
        for k, v in (
            ("source_ae", args.calling_ae),
            ("called_ae", args.called_ae),
            ("source_ip", args.source_ip),
        )
        if v is not None
    }
    records = []
    for name in args.files:
        try:
            records.append((name, dataclasses.replace(read_record(Path.cwd(), name), **overrides)))
        except (OSError, DicomGwError) as exc:
            raise DicomGwError(f"{name}: cannot read it as a DICOM file: {exc}") from None

    async def evaluate(dsn: str) -> list[str]:
        pool = await create_pool(dsn, config.database)
        try:
            async with pool.acquire() as conn:
                rules = await load_rules(conn)
                names = dict(await conn.fetch("SELECT id, name FROM destinations"))
        finally:
            await pool.close()
        by_id = {r.id: r.name for r in rules}
        lines = []
        for name, record in records:
            routes = route(rules, record)
            lines.append(f"{name}: {len(routes)} destination(s)")
            lines.extend(
                f"  rule '{by_id[r.rule_id]}' -> {names[r.destination_id]}"
                + (f" (held: {r.hold_key}, quiet {r.delay_s}s)" if r.hold_key else "")
                for r in routes
            )
        return lines

    with database(config, adopt=False) as dsn:
        _out("\n".join(asyncio.run(evaluate(dsn))))
    return 0


def _migrate(args: argparse.Namespace, step: Callable[[str, str], None]) -> int:
    from dicomgw.db import migrate
    from dicomgw.db.server import database

    config = _config(args)
    _setup_logging(config)
    with database(config, adopt=False) as dsn:
        step(dsn, args.revision)
        _out(f"schema at {migrate.current(dsn) or 'nothing (empty)'}")
    return 0


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    from dicomgw.db import migrate

    return _migrate(args, migrate.upgrade)


def cmd_db_downgrade(args: argparse.Namespace) -> int:
    from dicomgw.db import migrate

    return _migrate(args, migrate.downgrade)


def cmd_db_status(args: argparse.Namespace) -> int:
    from dicomgw.db import migrate
    from dicomgw.db.server import database

    config = _config(args)
    _setup_logging(config)
    where = (
        "external (database.dsn)" if config.database.dsn else f"embedded ({config.embedded_pg_dir})"
    )
    with database(config, adopt=False) as dsn:
        current, head = migrate.current(dsn), migrate.head()
    migrate.check_known(current)
    state = "up to date" if current == head else "needs 'dicom-gw db upgrade'"
    _out(f"database: {where}\nschema: {current or 'none'} (latest {head}): {state}")
    return 0 if current == head else EXIT_RUNTIME


def cmd_config_check(args: argparse.Namespace) -> int:
    load_config(args.file)
    _out(f"{args.file}: ok")
    return 0


def cmd_config_show(args: argparse.Namespace) -> int:
    _out(yaml.safe_dump(redacted(_config(args)), sort_keys=False))
    return 0


def cmd_user_add(args: argparse.Namespace) -> int:
    from dicomgw.accounts import add_user, validate_new_user
    from dicomgw.db.pool import create_pool
    from dicomgw.db.server import database
    from dicomgw.serve import ensure_schema

    config = _config(args)
    _setup_logging(config)
    validate_new_user(args.name, args.role)
    password = _read_password(args.password_stdin)

    async def add(dsn: str) -> int:
        pool = await create_pool(dsn, config.database)
        try:
            async with pool.acquire() as conn, conn.transaction():
                return await add_user(
                    conn, args.name, args.role, password, min_length=config.api.password_min_length
                )
        finally:
            await pool.close()

    with database(config, adopt=False) as dsn:
        ensure_schema(dsn, upgrade=False)
        user_id = asyncio.run(add(dsn))
    _out(f"user '{args.name}' added with role {args.role} (id {user_id})")
    return 0


def cmd_user_unlock(args: argparse.Namespace) -> int:
    from dicomgw.api.throttle import unlock
    from dicomgw.db.pool import create_pool
    from dicomgw.db.server import database
    from dicomgw.serve import ensure_schema

    config = _config(args)
    _setup_logging(config)

    async def forget(dsn: str) -> int:
        pool = await create_pool(dsn, config.database)
        try:
            async with pool.acquire() as conn:
                return await unlock(conn, args.name)
        finally:
            await pool.close()

    with database(config, adopt=True) as dsn:
        ensure_schema(dsn, upgrade=False)
        forgotten = asyncio.run(forget(dsn))
    _out(f"user '{args.name}': {forgotten} failed login(s) forgotten; logins are not slowed now")
    return 0


def cmd_audit_verify(args: argparse.Namespace) -> int:
    from dicomgw import audit
    from dicomgw.db.pool import create_pool
    from dicomgw.db.server import database

    config = _config(args)
    _setup_logging(config)

    async def check(dsn: str) -> audit.Verification:
        pool = await create_pool(dsn, config.database)
        try:
            async with pool.acquire() as conn:
                return await audit.verify(conn)
        finally:
            await pool.close()

    with database(config, adopt=False) as dsn:
        result = asyncio.run(check(dsn))
    if result.ok:
        _out(f"audit log intact: {result.rows} rows, hash chain verified")
        return 0
    sys.stderr.write(
        f"dicom-gw: audit log TAMPERED at row id {result.first_bad_id}: {result.problem}\n"
    )
    return EXIT_RUNTIME


def cmd_storage_check(args: argparse.Namespace) -> int:
    import time

    import asyncpg

    from dicomgw.db.server import database
    from dicomgw.storage import consistency
    from dicomgw.storage.layout import StorageLayout

    config = _config(args)
    _setup_logging(config)

    async def indexed(dsn: str) -> list[consistency.Indexed]:
        conn = await asyncpg.connect(dsn, timeout=config.database.connect_timeout_s)
        try:
            rows = await conn.fetch(
                "SELECT file_path, size_bytes, dataset_size, checksum FROM instances"
            )
            return [consistency.Indexed(*r) for r in rows]
        finally:
            await conn.close()

    # NOTE: the rows first, then the files: a file renamed into place meanwhile
    # is younger than the settle time, not reported as unindexed.
    started = time.time()
    with database(config, adopt=False) as dsn:
        rows = asyncio.run(indexed(dsn))
    report = consistency.check(
        StorageLayout(config.storage_root), rows, now=started, checksums=args.checksums
    )
    for problem in report.problems:
        detail = f" ({problem.detail})" if problem.detail else ""
        _out(f"{problem.kind}: {problem.file_path}{detail}")
    kinds = {k: sum(p.kind == k for p in report.problems) for k in consistency.KINDS}
    checked = f" ({report.checksummed} checksums read)" if args.checksums else ""
    _out(
        f"{report.indexed} indexed instances, {report.files} files{checked}: "
        + ", ".join(f"{n} {kind}" for kind, n in kinds.items())
    )
    return EXIT_RUNTIME if report.problems else 0


def cmd_tls_install(args: argparse.Namespace) -> int:
    config = _config(args)
    _setup_logging(config)
    chain = Path(args.chain) if args.chain else None
    return _install_certificate(config, Path(args.cert), Path(args.key), chain)


def cmd_tls_install_certbot(args: argparse.Namespace) -> int:
    """certbot's --deploy-hook: it sets RENEWED_LINEAGE to the live directory."""
    config = _config(args)
    _setup_logging(config)
    lineage = os.environ.get("RENEWED_LINEAGE")
    if not lineage:
        raise DicomGwError(
            "RENEWED_LINEAGE is not set: run this as certbot's --deploy-hook, or use "
            "'dicom-gw tls install --cert ... --key ...'"
        )
    live = Path(lineage)
    return _install_certificate(config, live / "cert.pem", live / "privkey.pem", live / "chain.pem")


def _install_certificate(config: Config, cert: Path, key: Path, chain: Path | None) -> int:
    import shlex
    import signal
    import subprocess

    from dicomgw import certificates
    from dicomgw.statedir import running_pid

    chain_pem, key_pem = certificates.validate(cert, key, chain)
    cert_path, _ = certificates.install(config, chain_pem, key_pem)
    installed = certificates.info(certificates.read_certificates(cert_path, "certificate")[0])
    _out(
        f"installed {cert_path}: {installed.subject}, valid until "
        f"{installed.not_after:%Y-%m-%d} ({installed.days_left():.0f} days)"
    )
    certificates.warn_if_expiring(config)
    status = 0
    if config.tls.reload_command.strip():
        command = shlex.split(config.tls.reload_command)
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
            problem = (
                (done.stderr.strip() or f"exit status {done.returncode}") if done.returncode else ""
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            problem = str(exc)
        if problem:
            sys.stderr.write(
                f"dicom-gw: installed, but tls.reload_command '{config.tls.reload_command}' "
                f"failed: {problem}\n"
            )
            status = EXIT_RUNTIME
    pid = running_pid(config.state_path)
    if pid is not None and config.dimse.tls_port is not None and not config.dimse.tls_cert_file:
        # The DICOM TLS listener takes the new certificate for new connections.
        os.kill(pid, signal.SIGHUP)
        _out(f"asked the receiver (pid {pid}) to reload it")
    return status


def cmd_tls_status(args: argparse.Namespace) -> int:
    from dicomgw import certificates

    config = _config(args)
    status = 0
    for label, path in certificates.watched(config).items():
        if not path.exists():
            _out(f"{label}: none installed ({path})")
            continue
        cert = certificates.info(certificates.read_certificates(path, "certificate")[0])
        days = cert.days_left()
        state = (
            "EXPIRED"
            if days <= 0
            else "expires soon"
            if days < config.tls.expiry_warning_days
            else "ok"
        )
        if state != "ok":
            status = EXIT_RUNTIME
        _out(
            f"{label}: {state}: {cert.subject} (names: {', '.join(cert.names) or '-'}), "
            f"issued by {cert.issuer}, valid until {cert.not_after:%Y-%m-%d %H:%M} UTC "
            f"({days:.0f} days) [{path}]"
        )
    return status


def cmd_secrets_rotate(args: argparse.Namespace) -> int:
    from dicomgw import audit
    from dicomgw.db.pool import create_pool
    from dicomgw.db.server import database
    from dicomgw.send import secrets

    config = _config(args)
    _setup_logging(config)

    async def rotate(dsn: str) -> int:
        pool = await create_pool(dsn, config.database)
        try:
            async with pool.acquire() as conn:
                count = await secrets.rotate(conn, config.state_path)
                await audit.record(
                    conn,
                    actor="cli",
                    action="secrets.rotate",
                    detail={"values": count},
                    event_id=audit.SECURITY_ALERT,
                )
                return count
        finally:
            await pool.close()

    with database(config, adopt=False) as dsn:
        count = asyncio.run(rotate(dsn))
    _out(
        f"new secrets key in {config.state_path / secrets.KEY_FILE}; {count} stored secrets "
        "re-encrypted (running processes pick the key up by themselves)"
    )
    return 0


def _read_password(from_stdin: bool) -> str:
    if from_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    if not sys.stdin.isatty():
        raise DicomGwError("no terminal to prompt for the password: use --password-stdin")
    first = getpass.getpass("Password: ")
    if getpass.getpass("Repeat password: ") != first:
        raise DicomGwError("the passwords do not match")
    return first


def cmd_version(args: argparse.Namespace) -> int:
    _out(f"dicom-gw {__version__}")
    return 0


# -- parser ----------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    common = _Parser(add_help=False)
    common.add_argument(
        "--config",
        metavar="FILE",
        help="YAML config file (default: $DICOMGW_CONFIG; built-in defaults + DICOMGW_* env)",
    )
    parser = _Parser(
        prog="dicom-gw",
        description="DICOM gateway: DIMSE/DICOMweb receiver, PostgreSQL index, forwarder.",
    )
    sub = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", parser_class=_Parser
    )

    def add(
        subparsers: argparse._SubParsersAction[_Parser], name: str, handler: Handler, text: str
    ) -> _Parser:
        p = subparsers.add_parser(name, help=text, description=text, parents=[common])
        p.set_defaults(handler=handler)
        return p

    add(sub, "serve", cmd_serve, "run the gateway: DIMSE receiver, forwarder, API, database")
    add(sub, "receiver", cmd_receiver, "run only the DIMSE receiver (migrates the schema)")
    add(sub, "forwarder", cmd_forwarder, "run only the forwarder (on a running database)")
    add(sub, "api", cmd_api, "run only the management API (on a running database)")

    rules = sub.add_parser("rules", help="routing rules", description="Routing rule commands.")
    rules_sub = rules.add_subparsers(
        dest="rules_command", required=True, metavar="COMMAND", parser_class=_Parser
    )
    p = add(rules_sub, "test", cmd_rules_test, "show the routes and destinations FILEs would get")
    p.add_argument("files", nargs="+", metavar="FILE", help="DICOM Part 10 files")
    p.add_argument("--calling-ae", help="as if sent by this AE title (default: the file's)")
    p.add_argument("--called-ae", help="as if sent to this AE title")
    p.add_argument("--source-ip", help="as if sent from this address")

    db = sub.add_parser("db", help="database schema", description="Database schema commands.")
    db_sub = db.add_subparsers(
        dest="db_command", required=True, metavar="COMMAND", parser_class=_Parser
    )
    p = add(db_sub, "upgrade", cmd_db_upgrade, "migrate the schema up (to the latest by default)")
    p.add_argument("revision", nargs="?", default="head", help="target revision (default: head)")
    p = add(db_sub, "downgrade", cmd_db_downgrade, "migrate the schema down to REVISION")
    p.add_argument("revision", help="target revision, e.g. base (drops everything) or 0001")
    add(db_sub, "status", cmd_db_status, "show the schema version; exit 1 if an upgrade is due")

    cfg = sub.add_parser("config", help="configuration", description="Configuration commands.")
    cfg_sub = cfg.add_subparsers(
        dest="config_command", required=True, metavar="COMMAND", parser_class=_Parser
    )
    p = cfg_sub.add_parser(
        "check", help="validate FILE", description="Validate a config FILE (with env overrides)."
    )
    p.add_argument("file", metavar="FILE")
    p.set_defaults(handler=cmd_config_check)
    add(cfg_sub, "show", cmd_config_show, "print the effective config, secrets masked")

    user = sub.add_parser("user", help="user accounts", description="User account commands.")
    user_sub = user.add_subparsers(
        dest="user_command", required=True, metavar="COMMAND", parser_class=_Parser
    )
    p = add(user_sub, "add", cmd_user_add, "add a user for the web UI and API")
    p.add_argument("name", metavar="NAME")
    p.add_argument("--role", required=True, help="admin, operator, viewer, auditor or uploader")
    p.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    p = add(
        user_sub, "unlock", cmd_user_unlock, "forget a user's failed logins (from every address)"
    )
    p.add_argument("name", metavar="NAME")

    audit = sub.add_parser("audit", help="audit log", description="Audit log commands.")
    audit_sub = audit.add_subparsers(
        dest="audit_command", required=True, metavar="COMMAND", parser_class=_Parser
    )
    add(audit_sub, "verify", cmd_audit_verify, "check the audit log's hash chain; exit 1 if broken")

    storage = sub.add_parser(
        "storage", help="stored files", description="Commands for the stored files."
    )
    storage_sub = storage.add_subparsers(
        dest="storage_command", required=True, metavar="COMMAND", parser_class=_Parser
    )
    p = add(
        storage_sub,
        "check",
        cmd_storage_check,
        "compare the index with the files under objects/; exit 1 if they disagree",
    )
    p.add_argument(
        "--checksums",
        action="store_true",
        help="also read every file and compare its data set's CRC-32C with the index",
    )

    sec = sub.add_parser(
        "secrets", help="stored secrets", description="Commands for the secrets key."
    )
    sec_sub = sec.add_subparsers(
        dest="secrets_command", required=True, metavar="COMMAND", parser_class=_Parser
    )
    add(sec_sub, "rotate", cmd_secrets_rotate, "replace the secrets key, re-encrypting secrets")

    tls = sub.add_parser("tls", help="HTTPS certificate", description="Certificate commands.")
    tls_sub = tls.add_subparsers(
        dest="tls_command", required=True, metavar="COMMAND", parser_class=_Parser
    )
    p = add(tls_sub, "install", cmd_tls_install, "validate and install a certificate and key")
    p.add_argument(
        "--cert", required=True, metavar="FILE", help="PEM certificate (may hold the chain)"
    )
    p.add_argument("--key", required=True, metavar="FILE", help="its unencrypted PEM private key")
    p.add_argument("--chain", metavar="FILE", help="PEM intermediates, in order")
    add(
        tls_sub,
        "install-certbot",
        cmd_tls_install_certbot,
        "certbot --deploy-hook: install the renewed certificate from $RENEWED_LINEAGE",
    )
    add(tls_sub, "status", cmd_tls_status, "the installed certificates and their expiry")

    p = sub.add_parser("version", help="print the version", description="Print the version.")
    p.set_defaults(handler=cmd_version)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.handler(args)
    except DicomGwError as exc:
        sys.stderr.write(f"dicom-gw: error: {exc}\n")
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        log.debug("internal error", exc_info=True)
        sys.stderr.write(
            f"dicom-gw: internal error: {type(exc).__name__}: {exc} "
            f"(set DICOMGW_LOGGING__LEVEL=DEBUG for the traceback)\n"
        )
        return EXIT_RUNTIME
    return code


if __name__ == "__main__":
    sys.exit(main())
