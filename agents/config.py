"""Configuration: environment variables (and ``.env``) through pydantic-settings, plus the optional
``keel.toml`` for agents, schedules, prices and custom tool modules.

Every setting has a sensible default except the two secrets; ``require_*`` methods turn a missing
secret into an error that names the variable and says how to get it.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from agents.errors import ConfigError, MissingSettingError
from agents.patterns_config import (
    STEP_CHECK_NAME,
    GraderConfig,
    InjectDocsConfig,
    ResearchConfig,
    RetrievalConfig,
)
from agents.pricing import Price, PriceTable

DEFAULT_TELEGRAM_API_BASE_URL = "https://api.telegram.org/bot"
DEFAULT_ROUTER_MODEL = "claude-haiku-4-5"
DEFAULT_PLANNER_MODEL = "claude-sonnet-4-6"
DEFAULT_EXECUTOR_MODEL = "claude-sonnet-4-6"
DEFAULT_RUN_BUDGET_USD = 0.50
DEFAULT_MAX_STEPS = 10
DEFAULT_RUN_TIMEOUT_S = 600.0
DEFAULT_TOOL_TIMEOUT_S = 15.0
DEFAULT_MAX_TOKENS = 4096


class Settings(BaseSettings):
    """keel's settings. Each field is read from the environment variable named beside it."""

    model_config = SettingsConfigDict(env_file=".env", extra="ignore", populate_by_name=False)

    telegram_bot_token: SecretStr | None = Field(
        None, validation_alias="TELEGRAM_BOT_TOKEN", description="Bot token from @BotFather."
    )
    telegram_api_base_url: str = Field(
        DEFAULT_TELEGRAM_API_BASE_URL, validation_alias="TELEGRAM_API_BASE_URL"
    )
    webhook_url: str | None = Field(
        None, validation_alias="KEEL_WEBHOOK_URL",
        description="Public HTTPS URL Telegram posts updates to; unset: long polling.",
    )
    webhook_secret: SecretStr | None = Field(
        None, validation_alias="KEEL_WEBHOOK_SECRET",
        description="X-Telegram-Bot-Api-Secret-Token (A-Z a-z 0-9 _ -, up to 256); default: "
                    "derived from the bot token.",
    )
    webhook_listen: str = Field(
        "127.0.0.1:8080", validation_alias="KEEL_WEBHOOK_LISTEN",
        description="host:port the webhook server binds (behind your TLS proxy).",
    )
    webhook_max_connections: int = Field(40, ge=1, le=100,
                                         validation_alias="KEEL_WEBHOOK_MAX_CONNECTIONS")
    anthropic_api_key: SecretStr | None = Field(None, validation_alias="ANTHROPIC_API_KEY")
    anthropic_base_url: str | None = Field(None, validation_alias="ANTHROPIC_BASE_URL")
    anthropic_max_retries: int = Field(2, ge=0, le=10, validation_alias="KEEL_ANTHROPIC_MAX_RETRIES")

    data_dir: Path = Field(Path("./data"), validation_alias="KEEL_DATA_DIR")
    database_url: SecretStr | None = Field(
        None, validation_alias="KEEL_DATABASE_URL",
        description="postgresql://user:password@host/db to share one PostgreSQL among processes; "
                    "unset: SQLite in KEEL_DATA_DIR.",
    )
    allowed_user_ids: Annotated[frozenset[int], NoDecode] = Field(
        frozenset(), validation_alias="KEEL_ALLOWED_USER_IDS"
    )
    owner_id: int | None = Field(
        None, validation_alias="KEEL_OWNER_ID",
        description="The owner's Telegram user id; default: the first of KEEL_ALLOWED_USER_IDS.",
    )
    timezone: str = Field("UTC", validation_alias="KEEL_TIMEZONE")
    config_path: Path | None = Field(None, validation_alias="KEEL_CONFIG")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO", validation_alias="KEEL_LOG_LEVEL"
    )

    router_model: str = Field(DEFAULT_ROUTER_MODEL, validation_alias="KEEL_ROUTER_MODEL")
    planner_model: str = Field(DEFAULT_PLANNER_MODEL, validation_alias="KEEL_PLANNER_MODEL")
    executor_model: str = Field(DEFAULT_EXECUTOR_MODEL, validation_alias="KEEL_EXECUTOR_MODEL")

    run_budget_usd: float = Field(DEFAULT_RUN_BUDGET_USD, gt=0, validation_alias="KEEL_RUN_BUDGET_USD")
    max_steps: int = Field(DEFAULT_MAX_STEPS, ge=1, validation_alias="KEEL_MAX_STEPS")
    run_timeout_s: float = Field(DEFAULT_RUN_TIMEOUT_S, gt=0, validation_alias="KEEL_RUN_TIMEOUT_S")
    tool_timeout_s: float = Field(DEFAULT_TOOL_TIMEOUT_S, gt=0, validation_alias="KEEL_TOOL_TIMEOUT_S")
    daily_budget_usd_per_user: float = Field(
        5.0, gt=0, validation_alias="KEEL_DAILY_BUDGET_USD_PER_USER"
    )
    daily_budget_usd_total: float = Field(20.0, gt=0, validation_alias="KEEL_DAILY_BUDGET_USD")
    daily_budget_usd_per_schedule: float | None = Field(
        None, gt=0, validation_alias="KEEL_DAILY_BUDGET_USD_PER_SCHEDULE",
        description="Most one schedule's runs may spend in a UTC day (default: no such cap).",
    )
    escalation_ttl_s: float = Field(86_400, gt=0, validation_alias="KEEL_ESCALATION_TTL_S")
    compact_at_tokens: int = Field(32_000, ge=1000, validation_alias="KEEL_COMPACT_AT_TOKENS")
    router_continue_s: float = Field(
        120.0, ge=0, validation_alias="KEEL_ROUTER_CONTINUE_S",
        description="A message within this many seconds of its conversation's last turn stays "
                    "with the current agent without a router call (0: always route).",
    )
    trace_retention_days: int = Field(30, ge=1, validation_alias="KEEL_TRACE_RETENTION_DAYS")
    retention_days: int = Field(
        30, ge=1, validation_alias="KEEL_RETENTION_DAYS",
        description="Finished database rows older than this many days are deleted (hourly).",
    )
    fetch_allow_private: bool = Field(False, validation_alias="KEEL_FETCH_ALLOW_PRIVATE")
    max_file_bytes: int = Field(
        10_000_000, ge=1, le=20_000_000, validation_alias="KEEL_MAX_FILE_BYTES",
        description="Largest photo, PDF or file keel downloads from a chat, and the largest file "
                    "an agent may send (Telegram lets bots download at most 20 MB).",
    )
    max_text_file_bytes: int = Field(
        200_000, ge=1, le=5_000_000, validation_alias="KEEL_MAX_TEXT_FILE_BYTES",
        description="Largest text file (txt, md, csv, json, code) read into a message as text.",
    )
    transcriber: Literal["none", "command"] = Field(
        "none", validation_alias="KEEL_TRANSCRIBER",
        description="How voice notes become text: 'command' runs KEEL_TRANSCRIBER_COMMAND; "
                    "'none' answers voice notes with how to enable it.",
    )
    transcriber_command: str | None = Field(
        None, validation_alias="KEEL_TRANSCRIBER_COMMAND",
        description="A local program (and arguments) given an audio file's path as its last "
                    "argument; it prints the text. Nothing is downloaded by keel.",
    )
    ratings: bool = Field(
        False, validation_alias="KEEL_RATINGS",
        description="👍 / 👎 buttons under agents' answers (keel.toml `ratings`, globally or per "
                    "agent, overrides it); rated runs export with `keel eval --from-ratings`.",
    )

    @field_validator("allowed_user_ids", mode="before")
    @classmethod
    def _parse_ids(cls, value: Any) -> Any:
        if isinstance(value, str):
            ids = []
            for part in value.replace(";", ",").split(","):
                part = part.strip()
                if not part:
                    continue
                if not part.lstrip("-").isdigit():
                    raise ValueError(
                        f"{part!r} is not a Telegram user id; use numbers separated by commas"
                    )
                ids.append(int(part))
            return frozenset(ids)
        return value

    @model_validator(mode="before")
    @classmethod
    def _owner_defaults_to_first_allowed(cls, data: Any) -> Any:
        # The parsed allowlist is a set and forgets the order; "first" means as written.
        if not isinstance(data, dict):
            return data
        keys = {str(k).upper(): k for k in data}
        owner_key = keys.get("KEEL_OWNER_ID")
        if owner_key is not None and str(data[owner_key]).strip():
            return data
        data = {k: v for k, v in data.items() if k != owner_key}
        first = _first_id(data.get(keys.get("KEEL_ALLOWED_USER_IDS", "")))
        if first is not None:
            data["KEEL_OWNER_ID"] = first
        return data

    @field_validator("timezone")
    @classmethod
    def _check_timezone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(
                f"{value!r} is not an IANA time zone name (e.g. 'Europe/Madrid', 'UTC')"
            ) from None
        return value

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    @field_validator("database_url")
    @classmethod
    def _check_database_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value().startswith(
                ("postgresql://", "postgres://")):
            raise ValueError("must be a postgresql:// URL (unset it to use SQLite under "
                             "KEEL_DATA_DIR)")
        return value

    @property
    def db_path(self) -> Path:
        return self.data_dir / "keel.sqlite3"

    @property
    def database_target(self) -> str | Path:
        """Where keel's database is: KEEL_DATABASE_URL, or the SQLite file in KEEL_DATA_DIR."""
        return self.database_url.get_secret_value() if self.database_url else self.db_path

    @property
    def traces_dir(self) -> Path:
        return self.data_dir / "traces"

    @property
    def files_dir(self) -> Path:
        """Local copies of files people sent and agents made (storage/files.py)."""
        return self.data_dir / "files"

    def require_telegram_token(self) -> str:
        if self.telegram_bot_token is None or not self.telegram_bot_token.get_secret_value():
            raise MissingSettingError(
                "TELEGRAM_BOT_TOKEN",
                "Create a bot with @BotFather in Telegram (/newbot), then put the token it gives "
                "you in .env as TELEGRAM_BOT_TOKEN=123456:ABC... or export it.",
            )
        return self.telegram_bot_token.get_secret_value()

    def require_anthropic_key(self) -> str:
        if self.anthropic_api_key is None or not self.anthropic_api_key.get_secret_value():
            raise MissingSettingError(
                "ANTHROPIC_API_KEY",
                "Create a key at console.anthropic.com (Settings → API keys), then put it in "
                ".env as ANTHROPIC_API_KEY=sk-ant-... or export it.",
            )
        return self.anthropic_api_key.get_secret_value()

    def webhook_listen_address(self) -> tuple[str, int]:
        host, _, port = self.webhook_listen.rpartition(":")
        if not host or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ConfigError(f"KEEL_WEBHOOK_LISTEN must be host:port, got {self.webhook_listen!r}")
        return host.strip("[]"), int(port)

    def webhook_secret_value(self) -> str:
        """The configured secret, or one derived from the bot token."""
        if self.webhook_secret is not None and self.webhook_secret.get_secret_value():
            secret = self.webhook_secret.get_secret_value()
            if not re.fullmatch(r"[A-Za-z0-9_-]{1,256}", secret):
                raise ConfigError("KEEL_WEBHOOK_SECRET may only hold A-Z, a-z, 0-9, _ and -, "
                                  "up to 256 characters")
            return secret
        # stable across restarts and machines sharing the token, unguessable without it
        return hmac.new(self.require_telegram_token().encode(), b"keel webhook secret",
                        hashlib.sha256).hexdigest()

    def secrets(self) -> list[str]:
        """Secret values that must never reach a log or a trace."""
        out = []
        for secret in (self.telegram_bot_token, self.anthropic_api_key, self.webhook_secret):
            if secret is not None and secret.get_secret_value():
                out.append(secret.get_secret_value())
        if self.database_url is not None:
            password = urlsplit(self.database_url.get_secret_value()).password
            if password:
                out.append(password)
        return out


def _first_id(value: Any) -> int | None:
    """The first user id of a raw KEEL_ALLOWED_USER_IDS value (a bad one is reported elsewhere)."""
    if isinstance(value, str):
        for part in value.replace(";", ",").split(","):
            part = part.strip()
            if part:
                return int(part) if part.lstrip("-").isdigit() else None
        return None
    if isinstance(value, list | tuple) and value:
        return int(value[0])
    if isinstance(value, set | frozenset) and value:
        return min(int(v) for v in value)
    return None


def load_settings(**overrides: Any) -> Settings:
    """Settings from the environment and ``.env``; a wrong value becomes a ConfigError."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        raise ConfigError(_explain(exc)) from None


def _explain(exc: ValidationError) -> str:
    lines = ["The configuration has errors:"]
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "?"
        lines.append(f"  {where}: {str(err['msg']).removeprefix('Value error, ')}")
    return "\n".join(lines)


# ---------------------------------------------------------------- keel.toml


class LimitsConfig(BaseModel):
    """Per-agent limits; anything left out falls back to the environment's defaults."""

    model_config = ConfigDict(extra="forbid")

    budget_usd: float | None = Field(None, gt=0)
    max_steps: int | None = Field(None, ge=1)
    timeout_s: float | None = Field(None, gt=0)
    tool_timeout_s: float | None = Field(None, gt=0)
    max_tokens: int | None = Field(None, ge=1)


class AgentConfig(BaseModel):
    """An agent declared in keel.toml under ``[agents.<name>]``."""

    model_config = ConfigDict(extra="forbid")

    description: str
    system: str | None = None
    system_file: Path | None = None
    model: str | None = None
    tools: list[str] = Field(default_factory=list)
    pattern: Literal["react", "plan_execute"] = "react"
    output: Literal["text"] = "text"
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    approve: list[str] = Field(default_factory=list)
    """Tools that ask an approver before each call here, besides those declared so."""
    no_approval: list[str] = Field(default_factory=list)
    """Tools declared as needing approval that run here without asking."""
    approvers: list[int] | None = None
    """Telegram user ids who may approve this agent's calls (default: the owner and admins)."""
    inject_docs: InjectDocsConfig | None = None
    """Documents retrieved once for a fixed query and placed in the cached prefix."""
    grader: GraderConfig | None = None
    """A check of each answer: one retry with its feedback, then a person decides."""
    graders: dict[str, GraderConfig] = Field(default_factory=dict)
    """Checks of tool results, by tool name (over the tool's own declaration): same rule."""
    step_graders: dict[str, GraderConfig] = Field(default_factory=dict)
    """Named checks the planner may attach to a plan step's output: same rule."""
    research: ResearchConfig | None = None
    """Settings of the ``research`` tool's child runs (fan-out of sub-questions)."""
    ratings: bool | None = None
    """👍 / 👎 buttons under this agent's answers (default: keel.toml's ``ratings``)."""

    @field_validator("tools", "approve", "no_approval")
    @classmethod
    def _mcp_tools(cls, names: list[str]) -> list[str]:
        return _mcp_refs(names)

    @model_validator(mode="after")
    def _approval_lists_disjoint(self) -> AgentConfig:
        both = sorted(set(self.approve) & set(self.no_approval))
        if both:
            raise ValueError(f"tool(s) {both} are in both `approve` and `no_approval`")
        return self

    @model_validator(mode="after")
    def _graders_name_what_they_check(self) -> AgentConfig:
        self.graders = dict(zip(_mcp_refs(list(self.graders)), self.graders.values(),
                                strict=True))
        stray = sorted(set(self.graders) - set(self.tools))
        if stray:
            raise ValueError(f"`graders` names tool(s) {stray} that are not in this agent's "
                             "`tools`")
        if self.step_graders and self.pattern != "plan_execute":
            raise ValueError('`step_graders` check plan steps: they need pattern = "plan_execute"')
        bad = sorted(n for n in self.step_graders if not re.match(STEP_CHECK_NAME, n))
        if bad:
            raise ValueError(f"step grader name(s) {bad} must match {STEP_CHECK_NAME}")
        return self


class ScheduleConfig(BaseModel):
    """A scheduled run declared in keel.toml under ``[[schedules]]``."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,31}$")
    agent: str
    cron: str
    task: str
    timezone: str | None = None
    chat_id: int
    thread_id: int | None = None
    create_topic: bool = False
    budget_usd: float | None = Field(None, gt=0)
    daily_budget_usd: float | None = Field(None, gt=0)
    """Most this schedule's runs may spend in a UTC day (default KEEL_DAILY_BUDGET_USD_PER_SCHEDULE)."""
    misfire_grace_s: int = Field(3600, ge=1)
    approvers: list[int] | None = None
    """Who may approve this schedule's risky tool calls (default: the agent's, else the owner
    and admins)."""
    guard: str | None = None
    """A cheap check run before any model call (``module:function``, see agents/guards.py);
    "nothing new" ends the fire ``skipped`` at $0."""
    guard_message: str | None = None
    """Posted when the guard skips a fire (default: nothing is posted)."""


MCP_TOOL_PREFIX = "mcp:"
MCP_NAME_SEPARATOR = "__"


def mcp_tool_name(server: str, tool: str) -> str:
    """The name the model sees for ``tool`` of MCP server ``server`` (``files__read_file``):
    Anthropic's tool-name alphabet, at most 64 characters."""
    clean = re.sub(r"[^A-Za-z0-9_-]", "_", tool)
    name = f"{server}{MCP_NAME_SEPARATOR}{clean}"
    if len(name) > 64:
        digest = hashlib.sha256(tool.encode()).hexdigest()[:8]
        name = f"{name[:55]}_{digest}"
    return name


def _mcp_refs(names: list[str]) -> list[str]:
    """``mcp:server/tool`` (keel.toml's spelling) → the tool's name in the registry."""
    out = []
    for name in names:
        if name.startswith(MCP_TOOL_PREFIX):
            server, sep, tool = name.removeprefix(MCP_TOOL_PREFIX).partition("/")
            if not sep or not server or not tool or tool == "*":
                raise ValueError(f"{name!r}: name one MCP tool as 'mcp:SERVER/TOOL'")
            name = mcp_tool_name(server, tool)
        out.append(name)
    return out


class RateLimitConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    calls: int = Field(ge=1)
    per_s: float = Field(gt=0)


class McpServerConfig(BaseModel):
    """An MCP tool server in keel.toml under ``[[mcp]]``: a command keel starts (stdio) or a
    streamable HTTP URL. ``${VAR}`` in ``env`` and ``headers`` values is read from keel's
    environment when keel connects, so secrets stay out of keel.toml."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,23}$")
    command: str | None = None
    args: list[str] = Field(default_factory=list)
    env: dict[str, str] = Field(default_factory=dict)
    cwd: Path | None = None
    url: str | None = None
    headers: dict[str, str] = Field(default_factory=dict)
    timeout_s: float | None = Field(None, gt=0)
    """Bound of one tool call, retries included (default: the agent's tool timeout)."""
    connect_timeout_s: float = Field(10.0, gt=0)
    reconnect_after_s: float = Field(30.0, ge=0)
    """After a failure the server is tried again this long later (doubling while it keeps
    failing, up to 10 minutes); meanwhile its tools answer an error at once."""
    side_effects: list[str] = Field(default_factory=list)
    """Tools (their MCP names) that change something: their results are stored per request,
    so a retried run does not repeat the effect, and a lost connection is not retried."""
    not_idempotent: list[str] = Field(default_factory=list)
    """Side-effecting tools whose every call must run (no stored result is given back)."""
    rate_limit: RateLimitConfig | None = None
    """At most ``calls`` calls of this server's tools per tool in any ``per_s`` seconds."""

    @model_validator(mode="after")
    def _one_transport(self) -> McpServerConfig:
        if MCP_NAME_SEPARATOR in self.name:
            raise ValueError(f"[[mcp]] name {self.name!r} may not contain "
                             f"{MCP_NAME_SEPARATOR!r} (it separates server and tool names)")
        if (self.command is None) == (self.url is None):
            raise ValueError(f"[[mcp]] {self.name!r}: give either command (a server keel "
                             "starts) or url (streamable HTTP), not both")
        if self.url is not None and urlsplit(self.url).scheme not in ("http", "https"):
            raise ValueError(f"[[mcp]] {self.name!r}: url must be http:// or https://")
        if self.url is None and self.headers:
            raise ValueError(f"[[mcp]] {self.name!r}: headers apply to a url server only")
        return self


class KeelFile(BaseModel):
    """The optional keel.toml."""

    model_config = ConfigDict(extra="forbid")

    prices: dict[str, Price] = Field(default_factory=dict)
    agents: dict[str, AgentConfig] = Field(default_factory=dict)
    schedules: list[ScheduleConfig] = Field(default_factory=list)
    tool_modules: list[str] = Field(default_factory=list)
    default_agent: str = "assistant"
    evals_dir: Path | None = None
    """Golden tasks for `keel eval` (relative to keel.toml; default: evals/ beside it)."""
    retrieval: RetrievalConfig | None = None
    """The owner's documents for ``search_docs`` and injected retrieval (``keel index``)."""
    mcp: list[McpServerConfig] = Field(default_factory=list)
    """MCP tool servers; an agent allows one of their tools as ``"mcp:SERVER/TOOL"``."""
    ratings: bool | None = None
    """👍 / 👎 buttons under every agent's answers (default: KEEL_RATINGS, off)."""


def load_keel_file(path: Path | None) -> KeelFile:
    """Parse keel.toml; no path means no file (all defaults). Errors name the file and the field."""
    if path is None:
        default = Path("keel.toml")
        if not default.exists():
            return KeelFile()
        path = default
    if not path.exists():
        raise ConfigError(f"KEEL_CONFIG points at {str(path)!r}, which does not exist.")
    try:
        raw = tomllib.loads(path.read_text("utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{str(path)!r} is not valid TOML: {exc}") from None
    try:
        parsed = KeelFile.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"{str(path)!r}: " + _explain(exc)) from None
    for name, agent in parsed.agents.items():
        if agent.system_file is not None and not agent.system_file.is_absolute():
            agent.system_file = path.parent / agent.system_file
        if agent.system is None and agent.system_file is None:
            raise ConfigError(f"{str(path)!r}: agent {name!r} needs `system` or `system_file`.")
    if parsed.retrieval is not None and not parsed.retrieval.corpus.is_absolute():
        parsed.retrieval.corpus = path.parent / parsed.retrieval.corpus
    return parsed


def price_table(keel_file: KeelFile) -> PriceTable:
    return PriceTable.builtin().with_overrides(keel_file.prices)
