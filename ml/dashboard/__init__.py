"""The stakeholder dashboard: a Streamlit app (app.py) reading through the API's query layer."""
