"""Server settings: one pydantic-settings class, ``EXITWISE_`` environment prefix.

Every field can be set from the environment (``EXITWISE_MAX_BATCH_SIZE=16``); ``exitwise serve``
flags override the environment. Validators fail fast, before anything is loaded: a missing
bundle, a non-positive budget or limits that contradict each other stop the server at start-up
with one line that names the setting.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from exitwise.bundle import MANIFEST_FILE

from .budget.controller import LEAST_WINDOW


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="EXITWISE_", extra="ignore", frozen=True)

    # --- what to serve, and on what --------------------------------------------------------
    bundle: Path
    model_name: str | None = Field(
        default=None, description="Name in URLs and responses (default: the bundle's name)."
    )
    backend: Literal["torch", "onnx"] = "torch"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    require_gpu: bool = False
    precision: Literal["fp32", "bf16", "fp16"] = Field(
        default="fp32",
        description="torch on CUDA only: autocast dtype (fp32 = calibrated numerics).",
    )
    channels_last: bool = Field(default=True, description="torch on CUDA only.")
    torch_script: bool = Field(
        default=True,
        description="torch, fp32: run each stage as a TorchScript graph of the same operations "
        "(less Python per batch), kept only where its outputs are bit for bit the eager ones.",
    )
    torch_threads: int | None = Field(default=None, ge=1, description="torch intra-op threads.")

    # --- HTTP server ---------------------------------------------------------------------------
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    workers: int = Field(default=1, ge=1)
    log_level: Literal["critical", "error", "warning", "info", "debug"] = "info"
    access_log: bool = Field(default=False, description="Log a line per HTTP request.")
    drain_seconds: float = Field(
        default=2.0,
        ge=0,
        description="After SIGTERM: seconds /readyz answers 503 while requests are still served.",
    )

    # --- batching --------------------------------------------------------------------------------
    max_batch_size: int = Field(default=32, ge=1, le=4096)
    max_wait_ms: float = Field(default=2.0, ge=0, le=10_000)
    max_stage_wait_ms: float = Field(
        default=5.0,
        ge=0,
        le=10_000,
        description="Longest a row waits in front of a stage for company (at least max_wait_ms).",
    )
    max_queue_images: int = Field(default=1024, ge=1)
    decode_threads: int | None = Field(
        default=None,
        ge=0,
        le=64,
        description="Image-decoding threads; 0: the engine's worker decodes (default: 0 when "
        "torch has every usable core, else up to 2).",
    )

    # --- budgets ---------------------------------------------------------------------------------
    default_budget_mflops: float | None = Field(default=None, gt=0)
    default_max_exit: int | None = Field(default=None, ge=1)
    default_top_k: int = Field(default=5, ge=0)

    # --- budget control (serving.budget.control) -------------------------------------------------
    budget_control: Literal["on", "off"] = Field(
        default="on",
        description="Keep each operating point's realised MFLOPs per image on target.",
    )
    budget_control_window: int = Field(
        default=4000,
        ge=LEAST_WINDOW,
        description="Images a decision looks at, at most (at least four checks of 250).",
    )
    budget_control_tolerance: float = Field(
        default=0.02, ge=0, le=1, description="Relative deadband around the target."
    )

    # --- under load (serving.degrade) ------------------------------------------------------------
    degrade: bool = Field(
        default=True,
        description="Requests may be served at cheaper operating points while the forecast wait "
        "is long, and answered from an exit they passed to make room in a full queue (a "
        "request's degrade=false opts out).",
    )
    degrade_queue_ms: float = Field(
        default=50.0,
        gt=0,
        le=60_000,
        description="Forecast wait at which requests get the cheapest point (stepping down "
        "begins at half of it; a queue filling towards max_queue_images steps down alike).",
    )
    degrade_hold_ms: float = Field(
        default=1000.0,
        ge=0,
        le=600_000,
        description="How long the pressure must stay low before the level comes down a point; "
        "doubled (up to 8x) after a step down the load undoes within it.",
    )
    degrade_shed_after_ms: float = Field(
        default=100.0,
        ge=0,
        le=60_000,
        description="Time constant of the share of deadline admissions at the cheapest point "
        "forecast past their deadline; above one half, such requests are refused (503) rather "
        "than answered late, and a shorter burst is answered late (0: refused at once).",
    )

    # --- limits ----------------------------------------------------------------------------------
    max_body_bytes: int = Field(default=16 * 1024 * 1024, ge=1024)
    max_images_per_request: int = Field(default=64, ge=1)
    max_image_pixels: int = Field(default=4096 * 4096, ge=1)
    request_timeout_s: float = Field(default=30.0, gt=0)

    # --- playground page -------------------------------------------------------------------------
    data_root: Path | None = Field(
        default=None,
        description="Where the bundle's data set lives, for the page's sample images "
        "(default: the recipe's data root, then the data set's usual places).",
    )

    # --- security --------------------------------------------------------------------------------
    api_key: SecretStr | None = None
    metrics_require_key: bool = False

    @field_validator("bundle")
    @classmethod
    def _bundle_exists(cls, value: Path) -> Path:
        if not value.is_dir():
            raise ValueError(f"{value}: no such bundle directory")
        if not (value / MANIFEST_FILE).is_file():
            raise ValueError(f"{value}: not a bundle (no {MANIFEST_FILE})")
        return value

    @field_validator("default_budget_mflops")
    @classmethod
    def _finite(cls, value: float | None) -> float | None:
        if value is not None and not math.isfinite(value):
            raise ValueError("must be a finite number")
        return value

    @field_validator("api_key")
    @classmethod
    def _non_empty_key(cls, value: SecretStr | None) -> SecretStr | None:
        # An empty EXITWISE_API_KEY= means "no key", not "the empty key". Around the key, space
        # is not part of it: a key read from a secret file ends with a newline that no client
        # can send (presented keys are stripped), and every request was a 401.
        if value is None:
            return None
        key = value.get_secret_value().strip()
        return SecretStr(key) if key else None

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        if self.max_images_per_request > self.max_queue_images:
            raise ValueError(
                f"max_images_per_request ({self.max_images_per_request}) cannot exceed "
                f"max_queue_images ({self.max_queue_images})"
            )
        if self.require_gpu and self.device == "cpu":
            raise ValueError("require_gpu contradicts device=cpu")
        if self.metrics_require_key and self.api_key is None:
            raise ValueError("metrics_require_key needs an api_key")
        return self

    @property
    def max_wait_s(self) -> float:
        return self.max_wait_ms / 1000.0

    @property
    def max_stage_wait_s(self) -> float:
        return self.max_stage_wait_ms / 1000.0

    @property
    def auth_enabled(self) -> bool:
        return self.api_key is not None
