"""Branch and bound: subdomain storage, branching rules, the search loop, and the per-case driver."""
