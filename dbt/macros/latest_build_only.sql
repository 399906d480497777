{#- Overrides dbt's get_where_subquery for one placeholder: a data test configured with
    `where: "__latest_build_only__"` checks only the rows the latest build of an incremental model wrote (those
    with the largest classified_through_xid: the xmin of that build's snapshot), so the test costs what the
    build did, not the retained log.
    Rows of earlier builds were tested by those builds; a --full-refresh writes, and so tests, every row.
    Any other `where` works as in dbt. -#}
{% macro default__get_where_subquery(relation) -%}
    {%- set where = config.get('where', '') -%}
    {%- if where == '__latest_build_only__' -%}
        {%- set where = 'classified_through_xid = (select max(classified_through_xid) from ' ~ relation ~ ')' -%}
    {%- endif -%}
    {%- if where -%}
        {%- do return('(select * from ' ~ relation ~ ' where ' ~ where ~ ') dbt_subquery') -%}
    {%- endif -%}
    {%- do return(relation) -%}
{%- endmacro %}
