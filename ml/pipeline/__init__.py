"""The daily pipeline: one function per DAG task, MLflow tracking, the Airflow glue, the run summary."""

# The Cosmos task group of the dbt project: its tasks are "dbt_build.<node>", one per model built with its tests.
DBT_TASK_GROUP = "dbt_build"
