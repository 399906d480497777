"""The daily pipeline: one function per DAG task, MLflow tracking, the Airflow glue, the run summary."""
