"""The one configuration object: YAML file + environment overrides, validated once.

Precedence: built-in defaults < YAML file < environment. ``DICOMGW_STATE_DIR``
sets a top-level key, ``DICOMGW_<SECTION>__<KEY>`` a nested one
(``DICOMGW_DIMSE__PORT=11112``). Environment values are read as YAML scalars,
so ``true``, ``11112`` and ``[A, B]`` have their natural types.

Every error names the key path, the bad value and what is allowed
(:class:`dicomgw.errors.ConfigError`). The result is immutable and passed down
explicitly; there is no module-level config.
"""

from __future__ import annotations

import ipaddress
import os
import re
import sys
import urllib.parse
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_origin, get_type_hints
from urllib.parse import urlsplit, urlunsplit

import msgspec
import yaml

from dicomgw.errors import ConfigError
from dicomgw.ul.uids import MAX_UID_LENGTH, UID_PATTERN

ENV_PREFIX = "DICOMGW_"
# DICOMGW_* variables that are not config keys.
ENV_NOT_CONFIG = frozenset({"DICOMGW_CONFIG", "DICOMGW_ADMIN_PASSWORD"})

# Installed as a system package (RPM: a virtualenv under /opt/dicom-gw) the
# state lives in the FHS place; from a source checkout, next to it.
SYSTEM_PREFIX = "/opt/dicom-gw"
SYSTEM_STATE_DIR = "/var/lib/dicom-gw"
SYSTEM_CONFIG_FILE = "/etc/dicom-gw/dicom-gw.yaml"

Port = Annotated[int, msgspec.Meta(ge=1, le=65535)]
PositiveInt = Annotated[int, msgspec.Meta(ge=1)]
Seconds = Annotated[float, msgspec.Meta(gt=0)]
Percent = Annotated[float, msgspec.Meta(gt=0, le=100)]
# PS3.5 6.2: AE is 1-16 characters of the default repertoire without backslash or
# control characters; leading/trailing spaces are not significant.
_AE_PATTERN = r"^[ -\[\]-~]*[!-\[\]-~][ -\[\]-~]*\Z"
# NOTE: \Z, not $: msgspec matches with Python's re, whose $ also matches before a
# final newline ('pacs\n' would pass).
AETitle = Annotated[str, msgspec.Meta(min_length=1, max_length=16, pattern=_AE_PATTERN)]
UID = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_UID_LENGTH, pattern=UID_PATTERN)]
# PS3.8 D.1: the receiver must accept at least this much per P-DATA PDU.
MaxPDU = Annotated[int, msgspec.Meta(ge=4096, le=16 * 1024 * 1024)]


class _Section(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    pass


class DatabaseConfig(_Section, frozen=True):
    dsn: str | None = None
    """PostgreSQL DSN; unset: an embedded PostgreSQL in <state_dir>/pg."""
    pool_min_size: PositiveInt = 2
    pool_max_size: PositiveInt = 10
    statement_timeout_ms: Annotated[int, msgspec.Meta(ge=0)] = 30_000
    connect_timeout_s: Seconds = 10.0
    upgrade_on_start: bool = True
    embedded_run_as: str = "dicomgw"
    """System user that runs the embedded PostgreSQL when dicom-gw runs as root."""

    def __post_init__(self) -> None:
        if self.dsn is not None and not self.dsn.startswith(("postgresql://", "postgres://")):
            raise ValueError("dsn must be a postgresql:// URI (or unset for the embedded server)")
        if self.pool_min_size > self.pool_max_size:
            raise ValueError(
                f"pool_min_size ({self.pool_min_size}) must be <= pool_max_size "
                f"({self.pool_max_size})"
            )


class StorageConfig(_Section, frozen=True):
    root: str | None = None
    """Where instances are stored; unset: <state_dir>/storage."""
    fsync: bool = True
    high_watermark_percent: Percent = 90.0
    """Disk use above which new instances are refused (C-STORE status 0xA700)."""
    low_watermark_percent: Percent = 85.0
    """Disk use below which ingest resumes after the high watermark was crossed."""
    duplicate_policy: Literal["reject", "keep-both"] = "reject"
    """A SOP Instance UID received again with other bytes: refuse it (0x0111) or keep
    it as a new version. Identical bytes are always a Success with one stored copy."""

    def __post_init__(self) -> None:
        if self.low_watermark_percent >= self.high_watermark_percent:
            raise ValueError(
                f"low_watermark_percent ({self.low_watermark_percent}) must be below "
                f"high_watermark_percent ({self.high_watermark_percent})"
            )


class DimseConfig(_Section, frozen=True):
    ae_title: AETitle = "DICOMGW"
    host: str = "0.0.0.0"
    port: Port = 11112
    max_pdu: MaxPDU = 262_144
    max_associations: PositiveInt = 64
    max_associations_per_peer: PositiveInt = 16
    priority_ae_titles: tuple[AETitle, ...] = ()
    """Calling AE titles (the modalities) that may use the last
    ``priority_associations`` slots of ``max_associations``: a flood of other
    peers cannot lock them out."""
    priority_associations: Annotated[int, msgspec.Meta(ge=0)] = 4
    """Slots of ``max_associations`` kept for ``priority_ae_titles`` (none kept
    while that list is empty)."""
    require_called_ae_title: bool = True
    allowed_calling_ae_titles: tuple[AETitle, ...] = ()
    """Empty: any calling AE title is accepted."""
    acse_timeout_s: Seconds = 30.0
    """ARTIM: association set-up and release must complete within this."""
    network_timeout_s: Seconds = 60.0
    """An association with no traffic for this long is aborted."""
    max_instance_bytes: Annotated[int, msgspec.Meta(ge=0)] = 8 * 1024**3
    """A data set larger than this aborts its association while it streams (what
    was written of it is removed); 0: no limit."""
    max_association_s: Seconds = 14_400.0
    """An association still open after this long is aborted (a stuck or hostile
    peer cannot hold a slot for ever); 4 h covers the largest study on a slow link."""
    max_unassociated: PositiveInt = 64
    """TCP connections that have not yet completed association negotiation; more
    are closed at once (before they can send anything)."""
    max_unassociated_per_peer: PositiveInt = 8
    """The same, per peer address."""
    max_operations_in_flight: Annotated[int, msgspec.Meta(ge=1, le=256)] = 16
    """Requests of one association received and not yet answered; past this the
    association is not read (TCP flow control) until one is answered, so a peer
    that ignores the operations window cannot queue work without bound."""
    accepted_sop_classes: tuple[UID, ...] = ()
    """Empty: Verification, every storage SOP class and unknown (private) ones."""
    query_ae_titles: tuple[AETitle, ...] = ()
    """Calling AE titles that may query and retrieve what is stored (C-FIND, C-GET,
    C-MOVE;
    Patient and Study Root); ``"*"``: any that may associate. Empty: Query/Retrieve
    is not offered."""
    max_query_matches: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)] = 10_000
    """A C-FIND with more matches ends, after this many, with A700 (Out of Resources)."""
    max_concurrent_queries: Annotated[int, msgspec.Meta(ge=1, le=64)] = 4
    """C-FINDs searching the index at once (each holds a database connection);
    more wait their turn."""
    accepted_transfer_syntaxes: tuple[UID, ...] = ()
    """Empty: any; otherwise accepted in this order of preference."""
    tls_port: Port | None = None
    """DICOM TLS listener (PS3.15 BCP 195) beside the plain one; 2762 is the port
    IANA registered for DICOM over TLS. Unset: no TLS listener."""
    tls_cert_file: str | None = None
    """PEM certificate (chain) of the TLS listener; unset: ``<tls.dir>/https.crt``."""
    tls_key_file: str | None = None
    """Its unencrypted PEM key; unset: ``<tls.dir>/https.key``."""
    tls_client_ca_file: str | None = None
    """Set: peers must present a certificate issued by these CAs (mutual TLS)."""

    def __post_init__(self) -> None:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("tls_cert_file and tls_key_file are set together, or neither")
        if self.tls_port is not None and self.tls_port == self.port:
            raise ValueError(f"tls_port ({self.tls_port}) must differ from port")
        if self.max_associations_per_peer > self.max_associations:
            raise ValueError(
                f"max_associations_per_peer ({self.max_associations_per_peer}) must be <= "
                f"max_associations ({self.max_associations})"
            )


class IndexConfig(_Section, frozen=True):
    batch_size: Annotated[int, msgspec.Meta(ge=1, le=10_000)] = 256
    """Most instances indexed in one transaction (one COPY)."""
    max_delay_ms: Annotated[float, msgspec.Meta(ge=0, le=1000)] = 0.0
    """How long a batch waits for more instances after its first one. 0: none;
    batches still form from what arrives while the previous one commits."""
    scan_bytes: Annotated[int, msgspec.Meta(ge=1024, le=16 * 1024 * 1024)] = 65_536
    """Bytes at the start of each data set kept for the metadata scan."""


class _Destination(_Section, frozen=True):
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+\Z")]
    """Unique; routes refer to it."""
    max_parallel: Annotated[int, msgspec.Meta(ge=1, le=64)] = 2
    """Associations (DIMSE) or HTTP requests (STOW-RS) in flight at once."""
    enabled: bool = True


class DimseDestination(_Destination, frozen=True, kw_only=True, tag="dimse", tag_field="type"):
    """A DICOM peer reached with C-STORE."""

    ae_title: AETitle
    """The peer's (called) AE title."""
    host: str
    port: Port
    calling_ae_title: AETitle = "DICOMGW"
    max_pdu: MaxPDU = 262_144
    """The largest P-DATA-TF PDU dicom-gw accepts from the peer (it sends what the
    peer announces)."""
    preferred_transfer_syntaxes: tuple[UID, ...] = ()
    """Proposed for conversion, in order, when the peer refuses an instance's stored
    transfer syntax. Empty: Explicit VR Little Endian, then Implicit VR Little Endian."""
    tls: bool = False
    """DICOM TLS (PS3.15 Annex B, BCP 195): TLS 1.2 or later, the peer's certificate verified."""
    tls_ca_file: str | None = None
    """PEM CA certificates the peer's certificate must chain to; unset: the system
    trust store."""
    tls_cert_file: str | None = None
    """PEM certificate (chain) dicom-gw presents, for peers that require one (mutual TLS)."""
    tls_key_file: str | None = None
    """The unencrypted PEM private key of ``tls_cert_file``."""
    tls_verify_hostname: bool = True
    """The peer's certificate must name ``host``: a DNS name, or for an IP address an
    IP address subject alternative name. false: only its chain is verified."""
    connect_timeout_s: Seconds = 10.0
    """The TCP connection, and the TLS handshake with ``tls``."""
    network_timeout_s: Seconds = 60.0
    """Waiting for the peer (association reply, C-STORE-RSP, socket writable)."""
    idle_release_s: Seconds = 10.0
    """An association with no work for this long is released."""

    def __post_init__(self) -> None:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            given, missing = (
                ("tls_cert_file", "tls_key_file")
                if self.tls_key_file is None
                else ("tls_key_file", "tls_cert_file")
            )
            raise ValueError(
                f"{given} is set but {missing} is not: a client certificate needs both"
            )
        if not self.tls:
            files = ("tls_ca_file", "tls_cert_file", "tls_key_file")
            stray = [key for key in files if getattr(self, key) is not None]
            if stray:
                raise ValueError(
                    f"{', '.join(stray)} set but tls is false: set tls: true for DICOM TLS"
                )


class StowDestination(_Destination, frozen=True, kw_only=True, tag="stowrs", tag_field="type"):
    """A DICOMweb server reached with STOW-RS (PS3.18 10.5)."""

    url: Annotated[str, msgspec.Meta(pattern=r"^https?://")]
    """The service base URL; instances are POSTed to <url>/studies."""
    auth: Literal["none", "basic", "bearer"] = "none"
    username: str | None = None
    password: str | None = None
    token: str | None = None
    verify_tls: bool = True
    tls_ca_file: str | None = None
    instances_per_request: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 16
    timeout_s: Seconds = 60.0
    allow_plain_http_credentials: bool = False
    """Send the credentials over plain ``http://`` to a host that is not this one
    (they travel readable by anyone on the path). Off: such a destination is refused."""

    def __post_init__(self) -> None:
        if self.auth == "basic" and (self.username is None or self.password is None):
            raise ValueError("auth 'basic' needs username and password")
        if self.auth == "bearer" and self.token is None:
            raise ValueError("auth 'bearer' needs token")
        host = urllib.parse.urlsplit(self.url).hostname or ""
        if (
            self.auth != "none"
            and self.url.lower().startswith("http://")
            and not _loopback(host)
            and not self.allow_plain_http_credentials
        ):
            raise ValueError(
                f"auth '{self.auth}' over plain http:// to {host} would send the credentials "
                "in clear text: use https://, or set allow_plain_http_credentials: true"
            )


def _loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


Destination = DimseDestination | StowDestination

MatchValue = str | int | list[str]


class Route(_Section, frozen=True, kw_only=True):
    """A routing rule: instances matching ``match`` are forwarded to ``destinations``.

    ``match`` maps an attribute (calling_ae, called_ae, source_ip, modality,
    sop_class_uid or any indexed attribute) to a pattern: ``"CT"`` (equals),
    ``"glob:CT*"``, ``"re:^(CT|MR)$"``, or a list of alternatives. ``{}`` matches all.
    """

    name: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    match: dict[str, MatchValue] = msgspec.field(default_factory=dict)
    destinations: tuple[str, ...]
    enabled: bool = True
    granularity: Literal["instance", "series", "study"] = "instance"
    quiet_period_s: Annotated[int, msgspec.Meta(ge=0, le=86_400)] = 0
    """With series/study granularity: forward once no instance arrived for this long."""


class ForwarderConfig(_Section, frozen=True):
    batch_size: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 32
    """Jobs a worker claims at once (sent over one association)."""
    batch_bytes: Annotated[int, msgspec.Meta(ge=1)] = 64 << 20
    """Most data set bytes a worker claims at once (always at least one job)."""
    lease_s: Annotated[float, msgspec.Meta(ge=1)] = 300.0
    """A claimed job is held this long; its worker renews the lease every third
    of it while it works, so only a worker that died (or lost its database for
    this long) lets its jobs go to another."""
    max_attempts: Annotated[int, msgspec.Meta(ge=1, le=10_000)] = 100
    """Transient failures before a job goes to dead-letter (with the default backoff
    about two days)."""
    permanent_attempts: Annotated[int, msgspec.Meta(ge=1, le=100)] = 3
    """Permanent failures (rejections) before a job goes to dead-letter."""
    backoff_initial_s: Seconds = 5.0
    backoff_max_s: Seconds = 1800.0
    circuit_failures: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 5
    """Consecutive transient failures that open a destination's circuit; it closes
    when a C-ECHO (or HTTP probe) succeeds."""
    circuit_probe_s: Seconds = 30.0
    """Seconds between probes of an open circuit."""
    history_days: Annotated[int, msgspec.Meta(ge=1, le=3650)] = 90
    """Delivered and cancelled jobs, with their attempts, are deleted this long
    after they finished; dead-lettered ones stay until retried or cancelled."""


class ApiConfig(_Section, frozen=True):
    host: str = "127.0.0.1"
    port: Port = 8080
    workers: Annotated[int, msgspec.Meta(ge=1, le=64)] = 1
    behind_https: bool = False
    """Clients reach the API over HTTPS (nginx in front): cookies get Secure, and
    responses carry HSTS."""
    session_idle_timeout_s: Annotated[int, msgspec.Meta(ge=60, le=86_400)] = 1800
    """A session unused this long ends."""
    session_max_age_s: Annotated[int, msgspec.Meta(ge=300, le=30 * 86_400)] = 43_200
    """A session ends this long after login, used or not."""
    password_min_length: Annotated[int, msgspec.Meta(ge=8, le=128)] = 12
    """New passwords are at least this long (at most 1024), and not a common one."""
    metrics_token: Annotated[str, msgspec.Meta(min_length=16)] | None = None
    """GET /metrics answers a request with ``Authorization: Bearer <this>``."""
    metrics_networks: tuple[str, ...] = ()
    """Client addresses or networks (CIDR) GET /metrics answers without the token.
    With neither set, GET /metrics answers nobody."""
    trusted_proxies: tuple[str, ...] = ("127.0.0.1", "::1")
    """Reverse proxies (addresses or CIDR) whose ``X-Forwarded-For`` names the client,
    for login throttling and the audit log. The default trusts the local host: the
    shipped nginx site, which replaces the header with the address it saw."""
    webui_dir: str | None = None
    """The built web UI, served at ``/``; unset: ``webui/dist`` of a source checkout,
    or ``<prefix>/share/dicom-gw/webui`` of an installed package, when present."""

    def __post_init__(self) -> None:
        _check_networks("metrics_networks", self.metrics_networks)
        _check_networks("trusted_proxies", self.trusted_proxies)


def _check_networks(key: str, networks: tuple[str, ...]) -> None:
    for network in networks:
        try:
            ipaddress.ip_network(network, strict=False)
        except ValueError:
            raise ValueError(
                f"{key}: '{network}' is not an IP address or network (e.g. 10.0.5.0/24)"
            ) from None


class DicomwebConfig(_Section, frozen=True):
    max_stow_bytes: Annotated[int, msgspec.Meta(ge=1)] = 8 << 30
    """The largest STOW-RS request body (a larger Content-Length is refused with 413
    before anything is read, and a body that grows past it is cut off)."""
    cors_origins: tuple[str, ...] = ()
    """Origins (``https://viewer.example.org``) whose pages may call /dicom-web/
    (CORS), or ``"*"`` for any; none by default."""
    render_workers: Annotated[int, msgspec.Meta(ge=1, le=32)] = 2
    """Decode processes per API worker for rendered images and thumbnails."""
    render_memory_bytes: Annotated[int, msgspec.Meta(ge=64 << 20)] = 1 << 30
    """The address space a decode process may use (RLIMIT_AS)."""
    render_timeout_s: Annotated[float, msgspec.Meta(gt=0, le=600)] = 30.0
    """A rendering that takes longer is stopped (its process killed): 503."""
    anonymous_read_networks: tuple[str, ...] = ()
    """Client addresses or networks (CIDR) that may read /dicom-web/ without logging
    in (a viewer on a trusted LAN), as a viewer would; none by default."""

    def __post_init__(self) -> None:
        _check_networks("anonymous_read_networks", self.anonymous_read_networks)
        for origin in self.cors_origins:
            if origin != "*" and not re.fullmatch(r"https?://[^/\s]+/?", origin):
                raise ValueError(
                    f"cors_origins: '{origin}' is not an origin (scheme://host[:port]) or '*'"
                )


class RateLimit(_Section, frozen=True):
    """At most ``per_user`` requests of one account and ``per_address`` from one
    address in ``window_s`` (api/throttle.py; past it: 429 with Retry-After)."""

    per_user: PositiveInt
    per_address: PositiveInt
    window_s: Annotated[int, msgspec.Meta(ge=1, le=86_400)] = 60


class UploadsConfig(_Section, frozen=True):
    max_upload_bytes: Annotated[int, msgspec.Meta(ge=1)] = 8 << 30
    """The largest file of an upload (tus ``Tus-Max-Size``)."""
    max_user_bytes_in_flight: Annotated[int, msgspec.Meta(ge=1)] = 32 << 30
    """What one account's unfinished uploads may hold in all (413 past it)."""
    chunk_size: Annotated[int, msgspec.Meta(ge=64 << 10, le=256 << 20)] = 4 << 20
    """The session API's chunk: a phone on a weak link resends at most this much
    after a drop; each chunk costs one fsync and one commit."""
    expire_s: Annotated[int, msgspec.Meta(ge=60)] = 86_400
    """An upload untouched this long is removed with its bytes."""
    duplicate_window_days: Annotated[int, msgspec.Meta(ge=0, le=3650)] = 30
    """An upload of a study received this recently is refused (409) unless forced;
    0: never."""
    max_archive_entries: PositiveInt = 10_000
    max_archive_bytes: Annotated[int, msgspec.Meta(ge=1)] = 16 << 30
    """The uncompressed size of a ZIP's entries in all."""
    max_archive_ratio: PositiveInt = 200
    """Uncompressed over compressed size, per entry (a ZIP bomb's is in the thousands)."""
    create_rate: RateLimit = msgspec.field(
        default_factory=lambda: RateLimit(per_user=10_000, per_address=20_000, window_s=3600)
    )
    """Uploads created (tus POST, session init)."""
    chunk_rate: RateLimit = msgspec.field(
        default_factory=lambda: RateLimit(per_user=6000, per_address=12_000, window_s=60)
    )
    """Chunks written (tus PATCH, session chunk PUT)."""


class TlsConfig(_Section, frozen=True):
    dir: str | None = None
    """Where ``dicom-gw tls`` installs the HTTPS certificate (``https.crt``, full
    chain) and key (``https.key``); unset: ``<state_dir>/tls``."""
    reload_command: str = "systemctl reload nginx"
    """Run after a certificate is installed; empty: none."""
    acme_webroot: str | None = None
    """certbot's webroot (nginx serves ``/.well-known/acme-challenge/`` from it);
    unset: ``<state_dir>/acme``."""
    expiry_warning_days: Annotated[int, msgspec.Meta(ge=1, le=365)] = 30
    """A certificate that expires within this many days is warned about."""


class LoggingConfig(_Section, frozen=True):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    json: bool = True


class Config(_Section, frozen=True):
    state_dir: str = ""
    """Unset: ./var in a source checkout, /var/lib/dicom-gw when installed as a package."""
    database: DatabaseConfig = msgspec.field(default_factory=DatabaseConfig)
    storage: StorageConfig = msgspec.field(default_factory=StorageConfig)
    dimse: DimseConfig = msgspec.field(default_factory=DimseConfig)
    index: IndexConfig = msgspec.field(default_factory=IndexConfig)
    api: ApiConfig = msgspec.field(default_factory=ApiConfig)
    dicomweb: DicomwebConfig = msgspec.field(default_factory=DicomwebConfig)
    uploads: UploadsConfig = msgspec.field(default_factory=UploadsConfig)
    logging: LoggingConfig = msgspec.field(default_factory=LoggingConfig)
    tls: TlsConfig = msgspec.field(default_factory=TlsConfig)
    forwarder: ForwarderConfig = msgspec.field(default_factory=ForwarderConfig)
    destinations: tuple[Destination, ...] = ()
    """Declared destinations, applied to the database at start (by name)."""
    routes: tuple[Route, ...] = ()
    """Declared routing rules, in order, applied at start (by name)."""

    @property
    def state_path(self) -> Path:
        return Path(self.state_dir)

    @property
    def storage_root(self) -> Path:
        return Path(self.storage.root) if self.storage.root else self.state_path / "storage"

    @property
    def tls_dir(self) -> Path:
        return Path(self.tls.dir) if self.tls.dir else self.state_path / "tls"

    @property
    def acme_webroot(self) -> Path:
        return Path(self.tls.acme_webroot) if self.tls.acme_webroot else self.state_path / "acme"

    @property
    def embedded_pg_dir(self) -> Path:
        return self.state_path / "pg"


def default_state_dir() -> str:
    if sys.prefix == SYSTEM_PREFIX:
        return SYSTEM_STATE_DIR
    return str(Path("var").resolve())


def default_config_file(env: Mapping[str, str]) -> str | None:
    if "DICOMGW_CONFIG" in env:
        return env["DICOMGW_CONFIG"]
    if sys.prefix == SYSTEM_PREFIX and Path(SYSTEM_CONFIG_FILE).exists():
        return SYSTEM_CONFIG_FILE
    return None


def load_config(path: str | None = None, env: Mapping[str, str] | None = None) -> Config:
    """Read ``path`` (if any), apply environment overrides, validate."""
    env = os.environ if env is None else env
    raw: dict[str, Any] = {}
    sources: dict[str, str] = {}
    if path is not None:
        raw = _read_yaml(path)
        sources = {key: path for key in _leaf_paths(raw)}
    for var, value in sorted(env.items()):
        if var.startswith(ENV_PREFIX) and var not in ENV_NOT_CONFIG:
            keys = _env_key_path(var)
            _set_path(raw, keys, _env_value(var, value))
            sources[".".join(keys)] = f"environment variable {var}"
    config = _validate(raw, sources)
    _check_names(config, sources)
    if not config.state_dir:
        config = msgspec.structs.replace(config, state_dir=default_state_dir())
    return msgspec.structs.replace(config, state_dir=str(Path(config.state_dir).resolve()))


def _read_yaml(path: str) -> dict[str, Any]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError("(file)", f"cannot read config file '{path}': {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError("(file)", f"'{path}' is not valid YAML{where}: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError("(top level)", "must be a mapping of sections", type(data).__name__, path)
    return data


def _env_key_path(var: str) -> list[str]:
    keys = var[len(ENV_PREFIX) :].lower().split("__")
    if not all(keys) or len(keys) > 2:
        raise ConfigError(
            var,
            "is not a config override; use DICOMGW_<KEY> or DICOMGW_<SECTION>__<KEY>",
            source="environment",
        )
    return keys


def _env_value(var: str, value: str) -> Any:
    try:
        return yaml.safe_load(value) if value.strip() else value
    except yaml.YAMLError:
        return value


def _set_path(raw: dict[str, Any], keys: list[str], value: Any) -> None:
    node = raw
    for key in keys[:-1]:
        child = node.get(key)
        if not isinstance(child, dict):
            child = {}
            node[key] = child
        node = child
    node[keys[-1]] = value


def _leaf_paths(raw: Mapping[str, Any], prefix: str = "") -> list[str]:
    out = []
    for key, value in raw.items():
        path = f"{prefix}{key}"
        out.append(path)
        if isinstance(value, Mapping):
            out.extend(_leaf_paths(value, f"{path}."))
    return out


def _check_names(config: Config, sources: Mapping[str, str]) -> None:
    """Names unique, and every route's destinations declared."""
    names = [d.name for d in config.destinations]
    for i, name in enumerate(names):
        if name in names[:i]:
            raise ConfigError(
                f"destinations[{i}].name",
                "is declared twice",
                name,
                sources.get("destinations", ""),
            )
    routes = [r.name for r in config.routes]
    for i, route in enumerate(config.routes):
        if route.name in routes[:i]:
            raise ConfigError(
                f"routes[{i}].name", "is declared twice", route.name, sources.get("routes", "")
            )
        for target in route.destinations:
            if target not in names:
                raise ConfigError(
                    f"routes[{i}].destinations",
                    f"names destination '{target}', which is not declared "
                    f"(declared: {', '.join(names) or 'none'})",
                    list(route.destinations),
                    sources.get("routes", ""),
                )


_MSGSPEC_PATH = re.compile(r" - at `\$((?:\.[A-Za-z0-9_]+|\[\d+\])*)`$")
_UNKNOWN_FIELD = re.compile(r"^Object contains unknown field `([^`]*)`$")
_MISSING_FIELD = re.compile(r"^Object missing required field `([^`]*)`$")


def _validate(raw: dict[str, Any], sources: Mapping[str, str]) -> Config:
    try:
        return msgspec.convert(raw, Config, strict=True)
    except msgspec.ValidationError as exc:
        raise _config_error(str(exc), raw, sources) from None


def _config_error(message: str, raw: Mapping[str, Any], sources: Mapping[str, str]) -> ConfigError:
    match = _MSGSPEC_PATH.search(message)
    path = match.group(1) if match else ""
    problem = message[: match.start()] if match else message
    parts = [p for p in re.split(r"\.|(?=\[)", path) if p]
    unknown = _UNKNOWN_FIELD.match(problem)
    missing = _MISSING_FIELD.match(problem)
    if missing:
        parts.append(missing.group(1))
        problem = "required key missing"
    elif unknown:
        parts.append(unknown.group(1))
        allowed = ", ".join(sorted(_fields_at(parts[:-1])))
        problem = f"unknown key; allowed here: {allowed}"
    else:
        problem = _allowed_hint(problem, parts)
    key = ".".join(parts).replace(".[", "[") or "(top level)"
    value = None if unknown or missing else _lookup(raw, parts)
    source = sources.get(key.split("[")[0], "")
    return ConfigError(key, problem, value, source)


def _fields_at(parts: list[str]) -> list[str]:
    node = _field_type(parts)
    members = get_args(node) or (node,)
    return sorted(
        {f for m in members if isinstance(m, type) for f in getattr(m, "__struct_fields__", ())}
    )


def _allowed_hint(problem: str, parts: list[str]) -> str:
    """msgspec's message, made to read like the rest and listing the choices."""
    if repr(_AE_PATTERN) in problem:
        return "not an AE title: 1-16 printable ASCII characters, not all spaces, no backslash"
    problem = problem.replace("`", "")
    if problem.startswith("Expected"):
        problem = "expected" + problem[len("Expected") :]
    problem = problem.replace("Invalid enum value", "invalid value").replace(
        "Invalid value", "invalid value"
    )
    hint = _field_type(parts)
    if hint is not None and get_origin(hint) is Literal:
        return f"{problem}; allowed: {', '.join(map(str, get_args(hint)))}"
    return problem


def _field_type(parts: list[str]) -> Any:
    """The type at a key path; a list item (``[0]``) is its item type, a tagged
    union (destinations) every member."""
    node: Any = Config
    for part in parts:
        if part.startswith("["):
            args = get_args(node)
            node = args[0] if args else None
            continue
        members = [m for m in (get_args(node) or (node,)) if isinstance(m, type)]
        hints = [
            get_type_hints(m, include_extras=False).get(part)
            for m in members
            if issubclass(m, msgspec.Struct)
        ]
        node = next((h for h in hints if h is not None), None)
        if node is None and part == "type" and members:
            return Literal["dimse", "stowrs"]
    return node


def _lookup(raw: Mapping[str, Any], parts: list[str]) -> Any:
    node: Any = raw
    for part in parts:
        if part.startswith("[") and isinstance(node, list):
            index = int(part[1:-1])
            node = node[index] if index < len(node) else None
        elif isinstance(node, Mapping):
            node = node.get(part)
        else:
            return None
    return node if not isinstance(node, Mapping) else None


_SECRET_KEYS = re.compile(r"password|secret|token", re.IGNORECASE)


def redacted(config: Config) -> dict[str, Any]:
    """The effective config as plain data with secrets masked, for ``config show``."""
    data: dict[str, Any] = msgspec.to_builtins(config)
    dsn = data["database"]["dsn"]
    if dsn:
        data["database"]["dsn"] = _mask_dsn(dsn)
    masked: dict[str, Any] = _mask_keys(data)
    return masked


def _mask_keys(node: Any) -> Any:
    if isinstance(node, dict):
        return {
            k: ("********" if _SECRET_KEYS.search(k) and v else _mask_keys(v))
            for k, v in node.items()
        }
    if isinstance(node, list):
        return [_mask_keys(v) for v in node]
    return node


def _mask_dsn(dsn: str) -> str:
    parts = urlsplit(dsn)
    if parts.password is None:
        return re.sub(r"(password=)[^&]+", r"\1********", dsn)
    netloc = parts.netloc.replace(f":{parts.password}@", ":********@", 1)
    return urlunsplit(parts._replace(netloc=netloc))
