"""pipeline/registry.py against a real MLflow SQLite store: aliases set while another writer sets
them too (two exports of `dvc exp run --run-all -j 2` registering at once)."""

import sqlite3

from sqlalchemy import event

from pipeline.registry import CHALLENGER


def two_versions(run, name="m"):
    client = run.client
    client.create_registered_model(name)
    for _ in range(2):
        client.create_model_version(name, f"runs:/{run.run_id}/model", run_id=run.run_id)
    return run.registry


def store_file(run):
    return run.tracking_uri[len("sqlite:///") :]


def test_an_alias_another_writer_sets_between_mlflows_read_and_insert_is_moved_not_an_error(mlflow_run):
    registry = two_versions(mlflow_run)
    engine = mlflow_run.client._get_registry_client().store.engine
    interleaved = []

    def other_writer_first(conn, cursor, statement, *args):
        # MLflow has read that no alias exists and is about to insert it: the other export's
        # process sets it now, in its own connection, and commits.
        if statement.startswith("INSERT INTO registered_model_aliases") and not interleaved:
            alias = ("INSERT INTO registered_model_aliases (workspace, name, alias, version) "
                     "SELECT workspace, name, ?, 1 FROM registered_models WHERE name = 'm'")  # fmt: skip
            with sqlite3.connect(store_file(mlflow_run)) as other:
                other.execute(alias, (CHALLENGER,))
            interleaved.append(statement)

    event.listen(engine, "before_cursor_execute", other_writer_first)
    try:
        registry.set_alias("m", CHALLENGER, "2")
    finally:
        event.remove(engine, "before_cursor_execute", other_writer_first)
    assert interleaved, "the other writer never ran: MLflow no longer inserts the alias this way"
    assert str(registry.version_by_alias("m", CHALLENGER).version) == "2"


def test_an_alias_on_a_version_that_does_not_exist_is_still_an_error(mlflow_run):
    from mlflow.exceptions import MlflowException

    registry = two_versions(mlflow_run)
    try:
        registry.set_alias("m", CHALLENGER, "7")
    except MlflowException as exc:
        assert "7" in str(exc)
    else:
        raise AssertionError("an alias on version 7 of a model with two versions was set")
