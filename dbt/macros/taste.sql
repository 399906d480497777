{#- One category's term of the Jensen-Shannon divergence (base 2, so the sum over categories is in [0, 1])
    between two category mixes with shares p and q: 0.5 * p * log2(p / m) + 0.5 * q * log2(q / m), m = (p + q) / 2.
    A zero share contributes nothing (0 * log 0 = 0). -#}
{% macro js_divergence_term(p, q) -%}
    0.5 * (case when ({{ p }}) > 0 then ({{ p }}) * log(2.0, (({{ p }}) / ((({{ p }}) + ({{ q }})) / 2.0))::numeric) else 0 end)
    + 0.5 * (case when ({{ q }}) > 0 then ({{ q }}) * log(2.0, (({{ q }}) / ((({{ p }}) + ({{ q }})) / 2.0))::numeric) else 0 end)
{%- endmacro %}
