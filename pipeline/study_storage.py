"""Where a search's study (Optuna) lives.

Storage. Optuna's tables and MLflow's cannot share one database schema: both keep their Alembic
revision in a table named `alembic_version`, and each refuses the other's revision (MLflow: "Can't
locate revision"; Optuna: "no longer compatible with the table schema"). So the study lives beside
the tracking store: for an embedded SQLite store in a sibling file (`mlflow.db` → `mlflow.optuna.db`),
for a PostgreSQL store in the schema `optuna` of the same database; `tune.storage` names another.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from pipeline.errors import PipelineError, first_line

SCHEMA = "optuna"  # the PostgreSQL schema of a study kept in the tracking store's database
HEARTBEAT_SECONDS, GRACE_SECONDS = 10, 60  # a trial whose process stopped beating this long is failed and retried


def storage_url(configured: str | None, tracking_uri: str) -> str:
    """`tune.storage`, else beside the tracking store: a sibling SQLite file of an embedded store, the
    same PostgreSQL database (schema `optuna`) of a PostgreSQL store. A tracking server (http) keeps
    its database to itself: then `tune.storage` must name it."""
    from pipeline.tracking import project_root

    url = configured
    if url is None:
        if tracking_uri.startswith("sqlite:///"):
            store = Path(tracking_uri[len("sqlite:///") :])
            return f"sqlite:///{store.with_name(store.stem + '.optuna.db')}"
        if tracking_uri.startswith(("postgresql://", "postgresql+")):
            url = tracking_uri
        else:
            raise PipelineError(
                f"params.yaml: tune.storage is null and the tracking store is {tracking_uri}, whose database a "
                "search cannot reach through it: set tune.storage to that database (postgresql://host/database; "
                "the study goes into its schema optuna)"
            )
    if url.startswith("postgresql://"):  # SQLAlchemy 2.1 would take psycopg 3; the project installs psycopg2
        return "postgresql+psycopg2://" + url[len("postgresql://") :]
    if url.startswith("sqlite:///") and not url.startswith("sqlite:////"):
        return f"sqlite:///{project_root() / url[len('sqlite:///') :]}"  # relative: at the project root
    return url


def shown_url(url: str) -> str:
    """A storage URL as the console and reports show it: no password, a project file relative."""
    from sqlalchemy.engine import make_url

    from pipeline.tracking import portable_uri

    if url.startswith("sqlite:"):
        return portable_uri(url)
    return make_url(url).render_as_string(hide_password=True)


def connect_args(url: str) -> dict[str, Any]:
    if url.startswith("sqlite:"):
        return {"timeout": 60}  # two processes writing at once wait for each other
    if url.startswith("postgresql"):
        return {"options": f"-csearch_path={SCHEMA}"}
    return {}


def open_storage(url: str):
    """Optuna's RDB storage at `url` (PostgreSQL: in the schema `optuna`, made if missing), with
    heartbeats, so a trial whose process died is failed and run again by whoever looks next. The
    stage opens it first (it makes the tables); a worker waits until the stage's study is there
    (`has_study`): two processes making the same tables at once can both fail."""
    import optuna
    from optuna.storages import RDBStorage

    # Heartbeats and the matplotlib plots are marked experimental (since Optuna 2.8 and 2.2): said once.
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    if url.startswith("sqlite:"):
        Path(url[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)
    elif url.startswith("postgresql"):
        create_schema(url)
    kwargs = {"connect_args": connect_args(url)}
    try:
        return RDBStorage(
            url, engine_kwargs=kwargs, heartbeat_interval=HEARTBEAT_SECONDS, grace_period=GRACE_SECONDS,
            heartbeat_stale_trial_callback=run_again,
        )  # fmt: skip
    except Exception as exc:  # a URL SQLAlchemy cannot open, a server that does not answer, a missing driver
        raise PipelineError(f"tune storage {shown_url(url)}: {first_line(exc)}") from None


def has_study(url: str, name: str) -> bool:
    """Whether the study `name` is in the storage yet, asked without making Optuna's tables (a
    server that does not answer is one line)."""
    import sqlalchemy

    try:
        engine = sqlalchemy.create_engine(url, connect_args=connect_args(url))
        try:
            schema = SCHEMA if url.startswith("postgresql") else None
            if not sqlalchemy.inspect(engine).has_table("studies", schema=schema):
                return False
            with engine.connect() as connection:
                query = sqlalchemy.text("SELECT 1 FROM studies WHERE study_name = :name")
                return connection.execute(query, {"name": name}).first() is not None
        finally:
            engine.dispose()
    except Exception as exc:
        raise PipelineError(f"tune storage {shown_url(url)}: {first_line(exc)}") from None


def create_schema(url: str) -> None:
    import sqlalchemy

    try:
        engine = sqlalchemy.create_engine(url)
        with engine.begin() as connection:
            connection.execute(sqlalchemy.text(f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}"))
        engine.dispose()
    except Exception as exc:
        raise PipelineError(f"tune storage {shown_url(url)}: {first_line(exc)}") from None


def run_again(study, trial) -> None:
    """Queue the values of a trial whose process died, once: the study gets the trial it lost. The
    new trial names the lost one (`failed_trial`, as Optuna's own retry callback does), which is then
    not counted among the failures."""
    import optuna

    if "failed_trial" in trial.system_attrs:
        return  # a retry that died too: not again
    study.add_trial(
        optuna.create_trial(
            state=optuna.trial.TrialState.WAITING, params=trial.params, distributions=trial.distributions,
            system_attrs={"failed_trial": trial.number},
        )
    )  # fmt: skip
